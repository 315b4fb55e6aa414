"""Which samples each optimizer step takes, and the micro-batches they are computed in.

Each step takes batch_size x gradient_accumulation_steps samples from a seeded permutation per epoch
(`MicroBatches`), so the data order is a pure function of (seed, step): a resumed run trains on exactly the samples
the killed one would have. `prepare_batches` turns the steps into padded micro-batches of the planned size, from
the feature cache (whose first-epoch images may start encoding before training does: trainer.run) or decoded in
DataLoader workers on the plain path.
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING

import torch

from trainer.collate import pad_batch
from trainer.config import TrainConfig

if TYPE_CHECKING:
    from trainer.train import StepPlan


class MicroBatches(torch.utils.data.Sampler):
    """Index lists of micro-batches `start .. start+count-1` over a fresh seeded permutation each epoch."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, count: int):
        self.n, self.batch_size, self.seed, self.start, self.count = n, batch_size, seed, start, count
        self.per_epoch = math.ceil(n / batch_size)

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        perm, perm_epoch = None, -1
        for g in range(self.start, self.start + self.count):
            epoch, i = divmod(g, self.per_epoch)
            if epoch != perm_epoch:
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
                perm_epoch = epoch
            yield perm[i * self.batch_size:(i + 1) * self.batch_size]


def step_index_lists(n: int, cfg: TrainConfig, first_step: int, total: int) -> list[list[int]]:
    """The sample indices of each optimizer step first_step+1 .. total (the same for every StepPlan)."""
    accum = cfg.gradient_accumulation_steps
    sampler = iter(MicroBatches(n, cfg.batch_size, cfg.seed, first_step * accum, (total - first_step) * accum))
    return [[i for _ in range(accum) for i in next(sampler)] for _ in range(total - first_step)]


def chunked(indices: list[int], size: int) -> list[list[int]]:
    """`indices` in consecutive chunks of `size` (the last may be shorter)."""
    return [indices[s:s + size] for s in range(0, len(indices), size)]


class StepBatches:
    """For each step, the list of its padded micro-batches (decoded in workers, or from the feature cache).

    `close()` also stops an encode-ahead thread that was started before the first batch was asked for.
    """

    def __init__(self, batches, micro: list[list[list[int]]], encoder=None):
        self._steps = ([next(batches) for _ in step] for step in micro)
        self._batches, self.encoder = batches, encoder

    def __iter__(self) -> StepBatches:
        return self

    def __next__(self) -> list[dict]:
        return next(self._steps)

    def close(self) -> None:
        self._steps.close()
        if hasattr(self._batches, "close"):
            self._batches.close()
        if self.encoder is not None:
            self.encoder.close()


def prepare_batches(dataset, examples, processor, cfg: TrainConfig, plan: StepPlan, first_step: int, total: int,
                    device, encode_now: bool = False) -> tuple[list[list[int]], StepBatches]:
    """(sample indices, micro-batches) of steps first_step+1 .. total; `encode_now` starts the encode-ahead
    thread at once (trainer.run: during the baseline eval) instead of at the first batch."""
    steps = step_index_lists(len(dataset), cfg, first_step, total)
    micro = [chunked(step, plan.micro_batch) for step in steps]
    flat = [m for step in micro for m in step]
    # own generator: the loader's worker-seed draw must not advance the global RNG, or a resumed run would
    # get other dropout masks
    generator = torch.Generator().manual_seed(cfg.seed + first_step)
    if plan.cache is not None:
        encoder = plan.cache.encoder(examples, flat, cfg.num_workers, generator, plan.encode_ahead)
        if encode_now:
            encoder.start()
        batches = plan.cache.train_batches(examples, flat, cfg.num_workers, shape=plan.shape, encoder=encoder)
        return steps, StepBatches(batches, micro, encoder)
    workers = cfg.num_workers if device.type == "cuda" else 0  # CPU runs: workers only compete for the cores
    batches = iter(torch.utils.data.DataLoader(
        dataset, batch_sampler=flat, num_workers=workers, pin_memory=device.type == "cuda",
        collate_fn=partial(pad_batch, pad_id=processor.tokenizer.pad_token_id), generator=generator))
    return steps, StepBatches(batches, micro)
