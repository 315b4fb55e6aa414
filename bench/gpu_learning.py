"""Did the run learn, and if not, where did its gradients go wrong? The bench's answers, recorded with each run.

Runs of the full recipe ended at about their first loss in 9 of 84 sets' runs (BENCHMARKS.md, "A run that did not
learn"). These record what tells such a run apart: the primary eval's accuracy before and after, the saved adapter's
LoRA norms, dynamo's counters, the trainer's compile check (trainer.guard) and, with BENCH_GRAD_PROBE=1, where the
first steps' gradients live.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def accuracy(cfg) -> dict:
    """Baseline and final accuracy / macro-F1 of the primary eval mode (metrics.json): did the run learn?"""
    path = Path(cfg.output_dir) / "metrics.json"
    if not path.is_file():
        return {}
    metrics = json.loads(path.read_text())
    return {phase: {k: metrics[phase][k] for k in ("accuracy", "macro_f1")} for phase in ("baseline", "final")}


def adapter_norms(cfg) -> dict:
    """Norms of the saved adapter's LoRA A and B matrices: B starts at zero, so a B norm of ~0 after training
    means the optimizer never moved it (no gradient reached it, or it updated other tensors)."""
    path = Path(cfg.output_dir) / "adapter" / "adapter_model.safetensors"
    if not path.is_file():
        return {}
    from safetensors.torch import load_file

    norms: dict[str, float] = {}
    for name, t in load_file(str(path)).items():
        key = "lora_A" if "lora_A" in name else "lora_B" if "lora_B" in name else "other"
        norms[key] = norms.get(key, 0.0) + float(t.float().pow(2).sum())
    return {k: round(v ** 0.5, 4) for k, v in norms.items()}


def dynamo_counters() -> dict:
    """Dynamo's counters for the run (graphs, recompiles, breaks): a run that compiled differently shows here."""
    from torch._dynamo.utils import counters

    return {k: dict(v) for k, v in counters.items() if k in ("stats", "frames", "recompiles", "unimplemented")
            or k.startswith("graph_break")}


def grad_probe(marks: dict, steps: int = 2, anomalous: float = 1000.0) -> None:
    """Where a step's gradient lives (`grad_probe`, one entry per step for the first `steps` steps): the total norm,
    the 8 largest per-parameter gradient norms with the parameter's own norm, the adapter's A and B norms and a sum
    over every frozen weight (a base weight changed in memory shows against a run on the same shards). A step whose
    norm is over `anomalous` runs again on the same micro-batches, compiled and eagerly, from its gradients saved
    and restored after: a wrong kernel repeats in the compiled run only, a wrong state in both."""
    import torch

    import trainer.train as train_mod

    real_clip, real_step, seen = torch.nn.utils.clip_grad_norm_, train_mod.run_step, []

    def run_step(model, micro_batches, plan, device):
        seen.append((model, micro_batches, plan, device))
        return real_step(model, micro_batches, plan, device)

    def clip(params, *a, **k):
        params = list(params)
        if len(marks.setdefault("grad_probe", [])) < steps and seen:
            marks["grad_probe"].append(_grad_report(params, *seen[-1], anomalous, real_step))
        return real_clip(params, *a, **k)

    train_mod.run_step = run_step
    torch.nn.utils.clip_grad_norm_ = clip


def _grad_report(params, model, micro_batches, plan, device, anomalous, real_step) -> dict:
    from dataclasses import replace

    import torch

    names = {id(p): n for n, p in model.named_parameters()}
    norms = torch.stack([p.grad.float().norm() for p in params]).cpu()
    total = float(norms.norm())
    top = sorted(range(len(params)), key=lambda i: -float(norms[i]))[:8]
    lora = {k: float(torch.stack([p.detach().float().norm() for n, p in model.named_parameters() if k in n]).norm())
            for k in ("lora_A", "lora_B")}
    frozen = float(sum(p.float().abs().sum() for p in model.parameters() if not p.requires_grad))
    report = {"total": total, "top": [(names.get(id(params[i]), "?"), round(float(norms[i]), 4),
                                       round(float(params[i].detach().float().norm()), 4)) for i in top],
              "lora_weight_norms": lora, "frozen_abs_sum": frozen}
    if total > anomalous:
        saved = [p.grad for p in params]
        for label, again_plan in (("again_compiled", plan), ("again_eager", replace(plan, compile_mode=None))):
            model.zero_grad(set_to_none=True)
            real_step(model, micro_batches, again_plan, device)
            report[label] = float(torch.stack([p.grad.float().norm() for p in params if p.grad is not None]).norm())
        for p, g in zip(params, saved, strict=True):
            p.grad = g
    return report


def kernel_configs() -> dict:
    """The Triton config each loaded inductor kernel launches with, by `module file:kernel`, with how many it was
    chosen from (more than one: chosen by timing at its first launch, in this process)."""
    from torch._inductor.codecache import PyCodeCache

    chosen = {}
    for module in list(PyCodeCache.modules):
        for name, kernel in vars(module).items():
            launchers = getattr(kernel, "launchers", None)
            if launchers is None or not hasattr(kernel, "fn"):
                continue
            where = f"{Path(getattr(module, '__file__', '?')).stem}:{name}"
            chosen[where] = [len(launchers), str(launchers[0].config) if launchers else None,
                             len(getattr(kernel, "compile_results", []) or [])]
    return chosen


def _multi_config_kernels() -> list[tuple[str, object]]:
    """(module:kernel, kernel) for each kernel inductor timed between configs in this process (trainer.autotuned;
    an older trainer checkout has none)."""
    import importlib.util

    if importlib.util.find_spec("trainer.autotuned") is None:
        return []
    from trainer import autotuned

    return [(f"{c.module}:{c.name}", c.kernel) for c in autotuned.choices()]


def force_first_configs() -> list[dict]:
    """Every kernel inductor chose a config for by timing set back to the config it compiled first (for the kernel
    found wrong on the H100, the wrong one): the guard's repick then has a fault to put right in every process."""
    forced = []
    for where, kernel in _multi_config_kernels():
        was = str(kernel.launchers[0].config)
        kernel.launchers = [kernel.compile_results[0].make_launcher()]
        forced.append({"kernel": where, "was": was, "now": str(kernel.launchers[0].config)})
    return forced


def config_swaps(guard_mod, compare, model, batch, plan, device) -> list[dict]:
    """Each kernel inductor chose between configs by timing, run with each of its configs in turn (the others as
    chosen) and checked against the eager step: which config, if any, computes wrong gradients."""
    from dataclasses import replace

    was_training = model.training
    model.train()
    try:
        return _swap_each(guard_mod, compare, model, batch, replace(plan, compile_cache=None), device)
    finally:
        model.train(was_training)


def _swap_each(guard_mod, compare, model, batch, compiled_plan, device) -> list[dict]:
    from dataclasses import replace

    eager = guard_mod.step_gradients(model, [batch], replace(compiled_plan, compile_mode=None), device)
    swaps = []
    for where, kernel in _multi_config_kernels():
        chosen = kernel.launchers
        try:
            for result in kernel.compile_results:
                kernel.launchers = [result.make_launcher()]
                verdict = compare(guard_mod.step_gradients(model, [batch], compiled_plan, device), eager)
                swaps.append({"kernel": where, "config": str(result.config), "chosen": str(chosen[0].config),
                              **verdict.__dict__, "agree": verdict.agree})
        except Exception as exc:  # noqa: BLE001 -- a probe: say what failed and go on
            swaps.append({"kernel": where, "error": repr(exc)[:300]})
        finally:
            kernel.launchers = chosen
    return swaps


def record_compile_checks(marks: dict) -> None:
    """What the trainer's compile check saw (`compile_checks`: compiled and eager gradient norms, cosine, agree; one
    entry per comparison, a repick's included), its wall time (`compile_check_s`), the Triton config each kernel
    launches with after it (`kernel_configs`) and whether the first step ran again eagerly (`first_step_again`); an
    older trainer checkout has none of them. BENCH_FORCE_FIRST_CONFIG=1 sets the timed kernels to their first
    configs before the check (`forced_configs`); BENCH_CONFIG_SWAP=1 checks every config of each after it
    (`config_swaps`)."""
    import importlib.util

    if importlib.util.find_spec("trainer.guard") is None:
        return
    import trainer.guard as guard_mod

    real_compare, real_again, real_check = guard_mod.compare, guard_mod.again_eagerly, guard_mod.check_compiled

    def compare(*a, **k):
        verdict = real_compare(*a, **k)
        marks.setdefault("compile_checks", []).append({**verdict.__dict__, "agree": verdict.agree})
        return verdict

    def again(*a, **k):
        marks["first_step_again"] = a[-1]  # the compiled step's implausible gradient norm
        return real_again(*a, **k)

    def check(*a, **k):
        import time

        import torch

        if os.environ.get("BENCH_FORCE_FIRST_CONFIG") == "1":
            marks["forced_configs"] = force_first_configs()
        start = time.perf_counter()
        plan = real_check(*a, **k)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        marks["compile_check_s"] = round(time.perf_counter() - start, 3)
        marks["kernel_configs"] = kernel_configs()
        if os.environ.get("BENCH_CONFIG_SWAP") == "1":
            marks["config_swaps"] = config_swaps(guard_mod, real_compare, *a)
        return plan

    guard_mod.compare, guard_mod.again_eagerly, guard_mod.check_compiled = compare, again, check
