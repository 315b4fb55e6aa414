"""Pick the training micro-batch and gradient checkpointing for the GPU we are on, from measured memory.

What is learned depends only on the effective batch (`--batch-size` x `--gradient-accumulation-steps` samples per
optimizer step, loss averaged over all their answer tokens); how a step is split into micro-batches only changes
speed and memory. So the planner runs two probe steps (forward + backward at 1 and 2 samples, RNG and gradients
restored), fits peak memory = fixed + per_sample x m, and takes the largest divisor m of the effective batch that
fits in 90 % of the GPU. Gradient checkpointing is turned on only if not even one sample fits without it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

HEADROOM = 0.90  # fraction of device memory the plan may use (allocator fragmentation, optimizer states, eval)
SMALL_MICRO_BATCH = 8  # below this many samples per pass, try gradient checkpointing for a larger one


@dataclass(frozen=True)
class MemoryPlan:
    micro_batch: int
    accumulation: int
    checkpointing: bool
    why: str
    fixed_gib: float | None = None
    per_sample_gib: float | None = None
    budget_gib: float | None = None

    def event(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def plan_memory(cfg, model, probe_batch: Callable[[int], dict], loss_fn, device,
                enable_checkpointing: Callable[[], None], context: Callable = contextlib.nullcontext,
                disable_checkpointing: Callable[[], None] = lambda: None) -> MemoryPlan:
    """The micro-batch / checkpointing plan for an effective batch of batch_size x accumulation samples."""
    effective = cfg.batch_size * cfg.gradient_accumulation_steps
    forced = cfg.gradient_checkpointing
    if device.type != "cuda":
        if forced == "on":
            enable_checkpointing()
        m = cfg.micro_batch or effective
        return MemoryPlan(m, effective // m, forced == "on", "CPU: memory is not the constraint; "
                          + ("--micro-batch" if cfg.micro_batch else "one pass per step"))
    if forced == "on":
        enable_checkpointing()
    plan = _fit(model, probe_batch, loss_fn, effective, forced == "on", context, cfg.micro_batch)
    if forced == "auto" and plan.micro_batch < min(SMALL_MICRO_BATCH, effective) and not cfg.micro_batch:
        # Too few samples per pass leave the GPU idle between small kernels; recomputing activations (~+30 %
        # forward FLOPs) pays off when it at least doubles the micro-batch.
        enable_checkpointing()
        with_ckpt = _fit(model, probe_batch, loss_fn, effective, True, context, None)
        if with_ckpt.micro_batch >= max(1, 2 * plan.micro_batch):
            plan = with_ckpt
        else:
            disable_checkpointing()
    if plan.micro_batch == 0:
        raise torch.cuda.OutOfMemoryError(f"one training sample does not fit in GPU memory ({plan.why})")
    return plan


def _fit(model, probe_batch, loss_fn, effective: int, checkpointing: bool, context: Callable,
         wanted: int | None) -> MemoryPlan:
    total = torch.cuda.get_device_properties(0).total_memory
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    budget = HEADROOM * total - 12 * trainable  # fp32 Adam moments (8 B) + grads (4 B), created at the first step
    p1 = _probe(model, probe_batch(1), loss_fn, context)
    p2 = _probe(model, probe_batch(2), loss_fn, context) if effective > 1 and p1 is not None else None
    mode = "with" if checkpointing else "without"
    if p1 is None or p1 > budget:
        return MemoryPlan(0, 0, checkpointing, f"1 sample {mode} checkpointing does not fit")
    per_sample = max(p2 - p1, 1) if p2 is not None else p1
    fixed = p1 - per_sample
    m = max(d for d in divisors(effective) if d == 1 or fixed + d * per_sample <= budget)
    if wanted:  # --micro-batch: the user's choice, if it divides the step (checked by the config) and fits
        m = wanted
    gib = 2**30
    why = (f"measured {fixed / gib:.1f} GiB fixed + {per_sample / gib:.2f} GiB per sample {mode} checkpointing; "
           f"{m} of {effective} samples per pass fit in {budget / gib:.0f} GiB of {total / gib:.0f} GiB")
    return MemoryPlan(m, effective // m, checkpointing, why, fixed / gib, per_sample / gib, budget / gib)


def _probe(model, batch: dict, loss_fn, context: Callable) -> int | None:
    """Peak bytes of one forward + backward on `batch` inside `context()` (the training step's: cached features,
    fused forwards); gradients and every RNG are left as they were."""
    was_training = model.training
    model.train()
    batch = {k: v.cuda(non_blocking=True) for k, v in batch.items()}
    try:
        with torch.random.fork_rng(devices=[torch.cuda.current_device()]), context():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            loss_fn(model, batch).backward()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        torch.cuda.empty_cache()


EVAL_CAP = {"generate": 256, "constrained": 64}  # prompts per pass; see eval_batch_size


def eval_batch_size(cfg, model, device, mode: str = "generate", n: int | None = None) -> tuple[int, str]:
    """Eval prompts per pass: the configured size, raised on a GPU (fast path) to what memory allows.

    Decoding is launch-bound at small batches (one decode step of gemma-3-4b costs about the same at 32 and 64
    prompts; at 185 its kernels keep an H100 ~75 % busy), so generation's images/s grows with the batch: up to 256
    prompts. Memory per prompt is its KV
    cache (layers x 2 x kv heads x head_dim x ~512 positions x 2 bytes) plus the prefill's MLP activations;
    constrained scoring also holds ~150 positions of full-vocabulary log-probabilities per prompt, so it stays at
    64. The free memory counts what torch's allocator holds but does not use (after training, most of the GPU).
    Batches are balanced: 370 prompts run as 2 x 185, not 256 + 114.
    """
    if device.type != "cuda" or not cfg.fast_path:
        return cfg.eval_batch_size, "configured"
    # to_dict(): Gemma 4 configs refuse attribute access to values that vary per layer (head_dim, kv heads);
    # the global values are the largest, so the estimate stays on the safe side.
    text = model.config.get_text_config().to_dict()
    kv_heads = text.get("num_key_value_heads") or text["num_attention_heads"]
    head_dim = max(text.get("head_dim") or 0, text.get("global_head_dim") or 0)
    prefill = 3 * 512 * (text.get("intermediate_size") or 4 * text["hidden_size"]) * 2
    per_prompt = 2 * text["num_hidden_layers"] * 2 * kv_heads * head_dim * 512 * 2 + prefill + 16 * 2**20
    free = torch.cuda.mem_get_info()[0] + torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
    fit = int(0.5 * free / per_prompt)
    size = max(cfg.eval_batch_size, min(EVAL_CAP[mode], fit))
    if n:
        size = min(size, math.ceil(n / math.ceil(n / size)))
    return size, f"{fit} prompts' KV cache fit in half the free GPU memory; using {size}"
