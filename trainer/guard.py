"""The compiled training step checked against the eager step before it trains; one that disagrees is put right or
dropped.

On an H100, in about one process in nine, the compiled step's forward was right but its gradients were garbage ~10^4
times too large, from the first step to the last, and the run learned next to nothing (BENCHMARKS.md, twentieth and
twenty-first sets). The cause: one Triton kernel inductor picks between two configs by timing, at its first launch,
in every process, and one of the two computes wrong gradients (trainer.autotuned). One check settles it: compiled
and eager gradients on one micro-batch, before training. If they disagree, each kernel inductor chose a config for
by timing is tried with the configs it passed over (`repick`), and the first that makes them agree is kept; if none
does, the run trains without torch.compile, slower but still learning what it should.

Where the step compiles ahead (trainer.train.compile_ahead), the check runs on its stand-in micro-batch, and the
first training step's gradient norm must then be of the order the check saw (`plausible`), or that step runs again
eagerly (`again_eagerly`): the baseline eval and the encode thread run in between. Where the first step compiles
(`first_compiled_step`), that step itself is run both ways and compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

NORM_RATIO = 2.0  # compiled and eager gradient norms further apart than this factor disagree (rounding: ~1e-3)
MIN_COSINE = 0.9  # ... as do gradients whose directions are less aligned than this (same dropout masks: ~1.0)
FIRST_STEP_RATIO = 100.0  # the first compiled step's gradient norm at most this many times the check's eager one


@dataclass(frozen=True)
class Verdict:
    """How the compiled step's gradients compare with the eager step's on the same micro-batch."""

    compiled_norm: float
    eager_norm: float
    cosine: float

    @property
    def agree(self) -> bool:
        if not (math.isfinite(self.compiled_norm) and math.isfinite(self.cosine)):
            return False
        if self.eager_norm == 0.0:
            return self.compiled_norm == 0.0
        ratio = self.compiled_norm / self.eager_norm
        return 1 / NORM_RATIO <= ratio <= NORM_RATIO and self.cosine >= MIN_COSINE

    def figures(self) -> str:
        return (f"gradient norm {self.compiled_norm:.4g} compiled, {self.eager_norm:.4g} eager, "
                f"cosine {self.cosine:.4f}")

    def line(self) -> str:
        if self.agree:
            return f"compiled step checked against the eager step: {self.figures()}"
        return f"the compiled step's gradients disagree with the eager step's on the same micro-batch ({self.figures()})"


def compare(compiled: list[torch.Tensor | None], eager: list[torch.Tensor | None]) -> Verdict:
    """Norms and cosine of two gradient lists (one entry per trainable parameter; None counts as zeros), summed on
    the gradients' device and read once."""
    sums = []
    for c, e in zip(compiled, eager, strict=True):
        if c is None and e is None:
            continue
        c = (torch.zeros_like(e) if c is None else c).detach().double()
        e = (torch.zeros_like(c) if e is None else e).detach().double()
        sums.append(torch.stack([c.square().sum(), e.square().sum(), (c * e).sum()]))
    if not sums:
        return Verdict(0.0, 0.0, 1.0)
    sq_c, sq_e, dot = torch.stack(sums).sum(0).tolist()
    norm_c, norm_e = math.sqrt(sq_c), math.sqrt(sq_e)
    cosine = dot / (norm_c * norm_e) if norm_c > 0 and norm_e > 0 else float(norm_c == norm_e)
    return Verdict(norm_c, norm_e, cosine)


def plausible(norm: float, checked: float) -> bool:
    """Whether the first training step's gradient norm fits the eager norm the check saw on its stand-in batch.

    The check's batch is one sample repeated, the step's batch distinct samples: their norms differ by a small
    factor, where the fault seen on the GPU multiplies them by ~10^4. This catches a fault that shows only after
    the check (the baseline eval or the encode thread run between the two).
    """
    return math.isfinite(norm) and (checked == 0.0 or norm <= FIRST_STEP_RATIO * checked)


def trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def step_gradients(model, micro_batches: list[dict], plan, device) -> list[torch.Tensor | None]:
    """The gradients one step on `micro_batches` computes, its RNG draws and the gradients then undone."""
    from trainer.train import run_step

    rng = rng_state()
    run_step(model, micro_batches, plan, device)
    set_rng_state(rng)
    params = trainable(model)
    grads = [p.grad for p in params]
    for p in params:
        p.grad = None
    return grads


def check_compiled(model, batch: dict, plan, device):
    """`plan` if its compiled step computes the eager step's gradients on `batch` (with the eager norm, for
    `plausible`), perhaps after a kernel's config is picked again (`repick`), else `plan` without compiling; the RNG,
    the gradients and the train mode are as they were."""
    was_training = model.training
    model.train()
    try:
        eager_plan = replace(plan, compile_mode=None, compile_cache=None)
        eager = step_gradients(model, [batch], eager_plan, device)
        verdict = compare(step_gradients(model, [batch], plan, device), eager)
        if not _agrees(verdict):
            verdict = repick(lambda: step_gradients(model, [batch], plan, device), eager)
    finally:
        model.train(was_training)
    return replace(plan, checked_norm=verdict.eager_norm) if verdict is not None else eager_plan


def repick(compiled_gradients, eager: list[torch.Tensor | None]) -> Verdict | None:
    """After a disagreement: the kernels inductor chose a config for by timing (trainer.autotuned) tried with each
    config it passed over, one kernel at a time; the verdict of the first that agrees (and that config kept), or
    None, every choice as it was."""
    from trainer import autotuned
    from trainer.events import log

    def agreeing() -> Verdict | None:
        verdict = compare(compiled_gradients(), eager)
        return verdict if verdict.agree else None

    choices, why = [], "inductor kept no other kernel configs to try"
    try:  # inductor's internals, as a torch version has them: any surprise there only means training eagerly
        choices = autotuned.choices()
        for choice in choices:
            chosen = choice.chosen()
            if (found := autotuned.try_others(choice, agreeing)) is not None:
                config, verdict = found
                log(f"inductor had timed {choice.name} fastest with [{chosen}]; with [{config}] the compiled step's "
                    f"gradients agree with the eager step's ({verdict.figures()}): this run keeps torch.compile")
                return verdict
        if choices:
            why = "no other config of the kernels inductor chose by timing puts the compiled step right"
    except Exception as exc:  # noqa: BLE001
        why = f"picking kernel configs again failed ({type(exc).__name__}: {exc})"
    log(f"{why}: this run trains without torch.compile, slower but learning what it should")
    return None


def first_compiled_step(model, micro_batches: list[dict], plan, device) -> tuple[torch.Tensor, object]:
    """The first step compiles (when `compile_ahead` could not: shapes that vary, i.e. no feature cache, so no
    encodes beside it) and is checked against the eager step from the same RNG state. If compiling fails or the
    two disagree (and no `repick` puts them right), the run goes on eagerly from the eager step, so it only loses
    the speed-up."""
    from trainer.compiling import compile_failed, compiling
    from trainer.train import run_step

    rng = rng_state()
    eager_plan = replace(plan, compile_cache=None, compile_mode=None)
    try:
        with compiling(plan.compile_mode, "first step"):
            loss = run_step(model, micro_batches, plan, device)
    except Exception as exc:  # noqa: BLE001 -- any compiler failure; the eager step below re-raises real errors
        compile_failed(exc)
        set_rng_state(rng)
        model.zero_grad(set_to_none=True)
        return run_step(model, micro_batches, eager_plan, device), eager_plan
    compiled, after = [p.grad for p in trainable(model)], rng_state()
    set_rng_state(rng)
    model.zero_grad(set_to_none=True)
    eager_loss = run_step(model, micro_batches, eager_plan, device)
    eager = [p.grad for p in trainable(model)]
    if not _agrees(compare(compiled, eager)):
        return eager_loss, _repicked(model, micro_batches, plan, device, rng, eager) or eager_plan
    for p, grad in zip(trainable(model), compiled, strict=True):
        p.grad = grad
    set_rng_state(after)
    return loss, plan


def _repicked(model, micro_batches: list[dict], plan, device, rng: tuple, eager: list[torch.Tensor | None]):
    """`plan` if `repick` puts its compiled step right, else None; the eager step's gradients and RNG stay as
    they were, so the first step is the eager one either way."""
    after = rng_state()
    for p in trainable(model):
        p.grad = None  # else the steps below would add into the eager gradients, in place

    def compiled_again() -> list[torch.Tensor | None]:
        set_rng_state(rng)
        return step_gradients(model, micro_batches, plan, device)

    verdict = repick(compiled_again, eager)
    for p, grad in zip(trainable(model), eager, strict=True):
        p.grad = grad
    set_rng_state(after)
    return plan if verdict is not None else None


def again_eagerly(model, micro_batches: list[dict], plan, max_grad_norm: float, device, rng: tuple,
                  norm: float) -> tuple[torch.Tensor, torch.Tensor, object]:
    """The first step again, eagerly and from the same RNG state, after its compiled run came out implausible:
    (device loss, gradient norm before clipping, the plan without compiling)."""
    from trainer.events import log
    from trainer.train import run_step

    log(f"first step: the compiled step's gradient norm is {norm:.4g}, where the compile check saw "
        f"{plan.checked_norm:.4g}; this step runs again and the rest run without torch.compile, slower but learning "
        "what they should")
    set_rng_state(rng)
    params = trainable(model)
    for p in params:
        p.grad = None
    plan = replace(plan, compile_mode=None, checked_norm=None)
    loss = run_step(model, micro_batches, plan, device)
    return loss, torch.nn.utils.clip_grad_norm_(params, max_grad_norm), plan


def _agrees(verdict: Verdict) -> bool:
    from trainer.events import log

    log(verdict.line())
    return verdict.agree


def rng_state() -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])
