"""The training loop: plain PyTorch, LoRA parameters only, checkpoint + exact resume.

Each optimizer step takes its samples from a seeded permutation per epoch (trainer.batches), so the data order is
a pure function of (seed, step): a resumed run trains on exactly the samples the killed one would have. The loss is
the mean over all the step's answer tokens, so how a step is split into micro-batches (`StepPlan`, chosen by
trainer.memory) does not change the gradient. `plain_loss_sum` is the reference computation; `answer_loss_sum` the
fast one (LM head at the answer positions only), fed cached image features by trainer.features;
tests/trainer/test_fast_path.py holds them equal.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainer import guard  # by module: the bench wraps its functions
from trainer.batches import StepBatches, prepare_batches
from trainer.checkpoint import checkpoints_root
from trainer.collate import IGNORE
from trainer.config import TrainConfig
from trainer.events import EventSink
from trainer.snapshot import BackgroundCheckpoints, reserve_host_memory, snapshot

ANSWER_ROWS = "answer_rows"  # batch key: answer_rows(labels), computed on the host (answer_loss_sum)


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


def forward_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over answer tokens (labels != -100), next-token shifted."""
    return plain_loss_sum(model, batch) / (batch["labels"][:, 1:] != IGNORE).sum()


def plain_loss_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed cross-entropy over answer tokens through the model's own forward: the reference path.

    The model computes full-vocabulary logits at every position (262k x ~420 per sample); only the answer
    positions are up-cast and used.
    """
    labels = batch["labels"]
    out = model(**_model_inputs(batch), use_cache=False)  # no KV cache in training
    targets = labels[:, 1:]
    keep = targets != IGNORE
    return F.cross_entropy(out.logits[:, :-1][keep].float(), targets[keep], reduction="sum")


def answer_loss_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The same loss with the LM head applied only at the answer positions.

    Gemma's 262k-word head over every position costs ~1.3 GFLOP per token forward and as much backward, and
    GBs of logits; the loss needs it at ~5 positions per sample. Runs the inner model for hidden states, then
    the head (and Gemma 4's final logit soft-cap, exactly as its forward applies it) on the kept rows only.
    The rows come from `batch["answer_rows"]` when the caller computed them on the host (`answer_rows`): found
    on the GPU, they would make the host wait for the whole forward pass before it could queue the backward.
    """
    labels = batch["labels"]
    rows = batch.get(ANSWER_ROWS)
    rows = answer_rows(labels) if rows is None else rows
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(**_model_inputs(batch), use_cache=False).last_hidden_state
    logits = base.lm_head(hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows))
    cap = base.config.get_text_config().final_logit_softcapping if base.config.model_type == "gemma4" else None
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits.float(), labels.reshape(-1).index_select(0, rows + 1), reduction="sum")


def answer_rows(labels: torch.Tensor) -> torch.Tensor:
    """Flat indices (into batch x tokens) of the positions whose next token is an answer token, in row order:
    the rows `hidden[:, :-1][labels[:, 1:] != -100]` picks, as an index (row + 1 is the target's position)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    return keep.flatten().nonzero().squeeze(1)


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k not in ("labels", ANSWER_ROWS)}


def answer_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def lr_lambda(total: int, warmup_ratio: float) -> Callable[[int], float]:
    """Linear warm-up then linear decay to zero."""
    warmup = math.ceil(total * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def build_optimizer(model, cfg: TrainConfig, total: int):
    params = guard.trainable(model)
    fused = torch.cuda.is_available() and all(p.is_cuda for p in params)
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused or None)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, cfg.warmup_ratio))


def load_state(ckpt: Path, model, opt, sched) -> TrainState:
    """Resume point: adapter, optimizer, scheduler and RNG as checkpointed (trainer.snapshot)."""
    from trainer.snapshot import load_snapshot

    step, losses = load_snapshot(ckpt, model, opt, sched)
    return TrainState(step=step, losses=losses)


@dataclass(frozen=True)
class StepPlan:
    """How one optimizer step's samples are computed; none of it changes what is learned.

    `micro_batch` samples per forward/backward (the step's batch_size x accumulation samples are split into
    passes of this size), `loss` the per-pass summed loss (plain or answer-only), `cache` the image features.
    """

    micro_batch: int
    loss: Callable = plain_loss_sum
    cache: object | None = None  # trainer.features.FeatureCache when the vision tower is frozen
    fused: bool = False  # trainer.fused: LoRA and RMSNorm in fewer kernels (the same function)
    compile_mode: str | None = None  # set: decoder layers torch.compiled this way (trainer.fused.COMPILE_OPTIONS)
    compile_cache: Path | None = None  # set: the first step compiles them and writes the artifacts to this file
    # (cleared when `compile_ahead` has done both before training)
    shape: tuple[int, int] | None = None  # (rows, tokens) every micro-batch is padded to: one compiled graph
    encode_ahead: bool = False  # first-epoch images encoded on a thread + stream of their own (trainer.encoding)
    checked_norm: float | None = None  # the eager gradient norm the compile check saw (trainer.guard): the first
    # compiled step's must be of its order, or the step runs again eagerly


def run_step(model, micro_batches: list[dict], plan: StepPlan, device) -> torch.Tensor:
    """Forward/backward every micro-batch of one step; the loss is the mean over all the step's answer tokens.

    Normalising by the step's token count (not per micro-batch) makes the gradient independent of how the step
    is split, so the planner may choose any micro-batch size without changing what is learned. Returns the loss
    as a device scalar: reading it is the caller's choice, as it makes the host wait for the step.
    """
    n_tokens = sum(answer_tokens(b) for b in micro_batches)  # host-side labels: no wait
    total = torch.zeros((), device=device)
    with step_context(model, plan.cache is not None, plan.fused, plan.compile_mode):
        for batch in micro_batches:
            loss = plan.loss(model, to_device(batch, device))
            (loss / n_tokens).backward()
            total += loss.detach()
    return total / n_tokens


def to_device(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """The batch on `device` without waiting for the GPU: host tensors are pinned and copied asynchronously, and
    the answer positions are found on the host first (trainer.train.answer_rows)."""
    if "labels" in batch and batch["labels"].device.type == "cpu":
        batch = {**batch, ANSWER_ROWS: answer_rows(batch["labels"])}
    cuda = torch.device(device).type == "cuda"
    return {k: (v.pin_memory() if cuda and v.device.type == "cpu" else v).to(device, non_blocking=True)
            for k, v in batch.items()}


@contextlib.contextmanager
def step_context(model, cached: bool, fused: bool, compiled: str | None = None):
    """Inside: pixel_values are cached image features (trainer.features) and the fused (and, in the `compiled`
    mode, compiled) forwards run (trainer.fused); all are no-ops for the plain path."""
    from trainer.features import image_features_passthrough
    from trainer.fused import fused_training

    with (image_features_passthrough(model) if cached else contextlib.nullcontext()), \
            fused_training(model, fused, compiled):
        yield


def train(model, processor, dataset, cfg: TrainConfig, state: TrainState, opt, sched, total: int,
          device: torch.device, sink: EventSink, plan: StepPlan | None = None, examples=None,
          prepared: tuple[list[list[int]], StepBatches] | None = None,
          writes: BackgroundCheckpoints | None = None) -> TrainState:
    """Run optimizer steps state.step+1 .. total, emitting step and checkpoint events.

    A step's loss is read (which waits for the GPU) only once the next step is queued, so the GPU never idles
    while the host reports and prepares; the first and the last step are read at once. Checkpoints are copied
    off in stream order and written by a thread (trainer.snapshot), so they do not wait for the GPU either.
    `prepared`: `prepare_batches(...)` for the same state, made earlier (its images may be encoding already).
    `writes`: the caller's `checkpoint_writer`; the last checkpoint may then still be writing on return (the
    caller waits for it), else it has landed.
    """
    plan = plan or StepPlan(cfg.batch_size)
    steps, batches = prepared or prepare_batches(dataset, examples, processor, cfg, plan, state.step, total, device)
    if torch.device(device).type == "cuda" and state.step < total:
        reserve_host_memory(model, opt)  # the first images decode meanwhile; the first checkpoint would wait for it
    model.train()
    report = _Reporter(sink, state, total, len(dataset) / (cfg.batch_size * cfg.gradient_accumulation_steps),
                       cfg.learning_rate)
    checkpoints = writes or checkpoint_writer(cfg, sink)
    try:
        for indices, micro_batches in zip(steps, batches, strict=True):
            loss, norm, plan = _optimizer_step(model, micro_batches, plan, opt, sched, cfg, device,
                                               first=report.queued == 0)
            step = report.queue(loss, len(indices), sched.get_last_lr()[0], norm)
            first = step == report.first_step + 1
            if first or step == total:
                report.flush()
            if plan.compile_cache is not None and first:
                _save_compiled(plan.compile_cache)  # now, not at the end: a killed task's retry starts warm
            if step == total or (cfg.save_steps and step % cfg.save_steps == 0):
                # the step's loss goes in unread (a device tensor): reading it would drain the GPU's queue
                checkpoints.save(step, snapshot(model, opt, sched, step, report.losses()))
        report.flush()
    except BaseException:
        batches.close()  # stops the encode-ahead thread (trainer.encoding) before the error goes up
        checkpoints.wait(quiet=True)  # the last checkpoint still lands, for the retry
        raise
    batches.close()
    if writes is None:
        checkpoints.wait()
    return state


def checkpoint_writer(cfg: TrainConfig, sink: EventSink) -> BackgroundCheckpoints:
    """The run's checkpoint writer (one write at a time, on a thread): "checkpoint" events as each lands."""
    return BackgroundCheckpoints(checkpoints_root(cfg.output_dir), cfg.keep_checkpoints,
                                 lambda step, path: sink.emit("checkpoint", step=step, path=str(path)))


class _Reporter:
    """Step events from device losses: all but the newest queued step are read (and checked) on `queue`."""

    def __init__(self, sink: EventSink, state: TrainState, total: int, steps_per_epoch: float, learning_rate: float):
        self.sink, self.state, self.total, self.steps_per_epoch = sink, state, total, steps_per_epoch
        self.learning_rate = learning_rate
        self.first_step, self.queued, self.pending = state.step, 0, []
        self.started = self.last = time.perf_counter()

    def queue(self, loss: torch.Tensor, samples: int, lr: float, grad_norm: torch.Tensor | None = None) -> int:
        """Read the steps queued before, then queue this one; returns its step number."""
        self.flush()
        self.queued += 1
        step = self.first_step + self.queued
        self.pending.append((step, loss, samples, lr, grad_norm))
        return step

    def losses(self) -> list[dict]:
        """Every step's loss so far: floats for the steps read, device tensors for the ones still queued."""
        return self.state.losses + [{"step": step, "loss": loss_t} for step, loss_t, *_ in self.pending]

    def flush(self) -> None:
        for step, loss_t, samples, lr, norm_t in self.pending:
            loss, norm = loss_t.item(), None if norm_t is None else float(norm_t)
            for what, value in (("loss", loss), ("the gradient norm", norm)):
                if value is not None and not math.isfinite(value):
                    raise FloatingPointError(f"{what} is {value} at step {step}; lower --learning-rate "
                                             f"(now {self.learning_rate}) or check the data")
            now = time.perf_counter()
            self.state.step = step
            self.state.losses.append({"step": step, "loss": loss})
            per_step = (now - self.started) / (step - self.first_step)
            self.sink.emit("step", step=step, total_steps=self.total, epoch=round(step / self.steps_per_epoch, 4),
                           loss=loss, lr=lr, grad_norm=norm, samples_per_s=samples / (now - self.last),
                           eta_s=per_step * (self.total - step), gpu_mem_gib=gpu_memory_gib())
            self.last = now
        self.pending = []


def _optimizer_step(model, micro_batches: list[dict], plan: StepPlan, opt, sched, cfg: TrainConfig, device,
                    first: bool) -> tuple[torch.Tensor, torch.Tensor, StepPlan]:
    """Forward/backward over the step's micro-batches, clip, update; (device loss, device gradient norm before
    clipping, the plan for the next steps). A norm of 0 means no gradient reached the adapter."""
    tripwire = first and plan.compile_mode is not None and plan.checked_norm is not None
    rng = guard.rng_state() if tripwire else None
    if plan.compile_cache is not None and first:
        loss, plan = guard.first_compiled_step(model, micro_batches, plan, device)
    else:
        loss = run_step(model, micro_batches, plan, device)
    # the optimizer's own list: collecting trainable parameters from the model walks every module each step
    params = [p for group in opt.param_groups for p in group["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    if tripwire and not guard.plausible(float(norm), plan.checked_norm):  # the first step is read at once anyway
        loss, norm, plan = guard.again_eagerly(model, micro_batches, plan, cfg.max_grad_norm, device, rng, float(norm))
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return loss, norm, plan


def compile_ahead(model, batch: dict, plan: StepPlan, device) -> StepPlan:
    """Compile the training step before training, on `batch`: a micro-batch of the compiled shape whose values do
    not matter. One forward + backward, then its gradients, dropout draws and train mode are undone, so the run
    learns what it learns compiling at its first step (tests/trainer/test_fast_path.py).

    Returns the plan for the steps: compiled, with nothing left to compile or write (`compile_cache` cleared once
    the artifacts are written) and checked against the eager step on `batch` (trainer.guard), or not compiled at
    all if compiling failed or the check found its gradients wrong.
    """
    from trainer.compiling import compile_failed, compiling

    was_training = model.training
    devices = [torch.device(device).index or torch.cuda.current_device()] if torch.device(device).type == "cuda" else []
    model.train()
    try:
        with torch.random.fork_rng(devices=devices), compiling(plan.compile_mode, "training step"):
            run_step(model, [batch], plan, device)
    except Exception as exc:  # noqa: BLE001 -- any compiler failure: the run trains eagerly instead
        compile_failed(exc)
        return replace(plan, compile_cache=None, compile_mode=None)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    _save_compiled(plan.compile_cache)  # before the evals and training: a killed task's retry starts warm
    return guard.check_compiled(model, batch, replace(plan, compile_cache=None), device)


def _save_compiled(path: Path) -> None:
    from trainer.compiling import compiled_new_artifacts, save_cache
    from trainer.events import log

    if not compiled_new_artifacts(path):
        log(f"compile cache: everything came from {path}; nothing new to write")
        return
    t = time.perf_counter()
    size = save_cache(path)
    log(f"compile cache: {size / 1e6:.1f} MB written to {path} in {time.perf_counter() - t:.1f} s")


def gpu_memory_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
