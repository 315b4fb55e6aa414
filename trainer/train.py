"""The training loop: plain PyTorch, LoRA parameters only, checkpoint + exact resume.

Micro-batches come from a seeded permutation per epoch (`MicroBatches`), so the data order is a pure function of
(seed, step): a resumed run trains on exactly the batches the killed one would have. The loss is computed in
`forward_loss` only, over the answer tokens, so faster variants (cached image features, logits at answer positions
only) can replace that one function and be compared against it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainer.checkpoint import checkpoints_root, save_checkpoint
from trainer.collate import IGNORE, pad_batch
from trainer.config import TrainConfig
from trainer.events import EventSink


@dataclass
class TrainState:
    step: int = 0
    losses: list[dict] = field(default_factory=list)  # [{"step": n, "loss": f}]


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def plan_steps(n_train: int, cfg: TrainConfig) -> tuple[int, int]:
    """(micro-batches per epoch, total optimizer steps)."""
    micro_per_epoch = math.ceil(n_train / cfg.batch_size)
    total = math.ceil(micro_per_epoch * cfg.num_epochs / cfg.gradient_accumulation_steps)
    return micro_per_epoch, min(total, cfg.max_steps) if cfg.max_steps else total


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


def forward_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over answer tokens (labels != -100), next-token shifted."""
    labels = batch["labels"]
    out = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False)  # no KV cache in training
    targets = labels[:, 1:]
    keep = targets != IGNORE
    # Up-cast only the answer positions: full-vocabulary fp32 logits for every position would cost GBs.
    logits = out.logits[:, :-1][keep].float()
    return F.cross_entropy(logits, targets[keep])


def lr_lambda(total: int, warmup_ratio: float) -> Callable[[int], float]:
    """Linear warm-up then linear decay to zero."""
    warmup = math.ceil(total * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def build_optimizer(model, cfg: TrainConfig, total: int):
    params = [p for p in model.parameters() if p.requires_grad]
    fused = torch.cuda.is_available() and all(p.is_cuda for p in params)
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused or None)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, cfg.warmup_ratio))


def save_state(out_dir: Path, model, processor, opt, sched, state: TrainState) -> None:
    """Adapter weights + optimizer/scheduler/RNG state: everything an exact resume needs."""
    model.save_pretrained(out_dir / "adapter")
    torch.save({"step": state.step, "losses": state.losses, "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
               out_dir / "trainer_state.pt")


def load_state(ckpt: Path, model, opt, sched) -> TrainState:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(ckpt / "adapter" / "adapter_model.safetensors")))
    saved = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=False)
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    if saved["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    return TrainState(step=saved["step"], losses=saved["losses"])


def train(model, processor, dataset, cfg: TrainConfig, state: TrainState, opt, sched, total: int,
          device: torch.device, sink: EventSink) -> TrainState:
    """Run optimizer steps state.step+1 .. total, emitting step and checkpoint events."""
    accum = cfg.gradient_accumulation_steps
    micro_per_epoch, _ = plan_steps(len(dataset), cfg)
    sampler = MicroBatches(len(dataset), cfg.batch_size, cfg.seed, state.step * accum, (total - state.step) * accum)
    workers = cfg.num_workers if device.type == "cuda" else 0  # CPU runs: workers only compete for the cores
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                         collate_fn=partial(pad_batch, pad_id=processor.tokenizer.pad_token_id),
                                         pin_memory=device.type == "cuda", persistent_workers=False,
                                         # own generator: the loader's worker-seed draw must not advance the
                                         # global RNG, or a resumed run would get other dropout masks
                                         generator=torch.Generator().manual_seed(cfg.seed + state.step))
    batches = iter(loader)
    model.train()
    started, first_step = time.perf_counter(), state.step
    while state.step < total:
        t0 = time.perf_counter()
        loss_sum = 0.0
        for _ in range(accum):
            batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
            loss = forward_loss(model, batch) / accum
            loss.backward()
            loss_sum += loss.item()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        state.step += 1
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"loss is {loss_sum} at step {state.step}; lower --learning-rate "
                                     f"(now {cfg.learning_rate}) or check the data")
        state.losses.append({"step": state.step, "loss": loss_sum})
        elapsed = time.perf_counter() - started
        per_step = elapsed / (state.step - first_step)
        sink.emit("step", step=state.step, total_steps=total,
                  epoch=round(state.step * accum / micro_per_epoch, 4), loss=loss_sum,
                  lr=sched.get_last_lr()[0], samples_per_s=cfg.batch_size * accum / (time.perf_counter() - t0),
                  eta_s=per_step * (total - state.step), gpu_mem_gib=gpu_memory_gib())
        if state.step == total or (cfg.save_steps and state.step % cfg.save_steps == 0):
            write = partial(save_state, model=model, processor=processor, opt=opt, sched=sched, state=state)
            path = save_checkpoint(checkpoints_root(cfg.output_dir), state.step, write, keep=cfg.keep_checkpoints)
            sink.emit("checkpoint", step=state.step, path=str(path))
    return state


def gpu_memory_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
