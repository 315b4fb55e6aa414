"""The step variants bench/gpu_step.py times: each patches the model (cumulatively) and names the context to run in.

The compiled variants differ only in inductor's options (INDUCTOR below), so one table says what each one tries;
a variant's options are set before its layers compile and put back before the next variant's.
"""

from __future__ import annotations

import contextlib

# inductor options per compiled variant ("a.b" names an option of inductor's sub-config a)
INDUCTOR: dict[str, dict] = {
    "fused_compile": {},  # dynamic shapes
    "fused_compile_static": {},  # static shapes: the trainer's choice
    "fused_graphs": {},  # + CUDA graphs over the compiled layers (tried, not kept: BENCHMARKS.md)
    "cpp_wrapper": {"cpp_wrapper": True},  # inductor's C++ wrapper (tried, not kept: BENCHMARKS.md)
    "autotune": {},  # the trainer's "autotuned" mode: GEMMs autotuned against inductor's Triton templates
    # + Hopper's persistent TMA templates (seventeenth set: its cold autotune outran a 330 s call; no figure yet)
    "autotune_tma": {"triton.enable_persistent_tma_matmul": True},
    "cdt": {"coordinate_descent_tuning": True},  # the pointwise and reduction kernels' launch configs tuned
}
AUTOTUNED = {"autotune", "autotune_tma"}  # compiled in trainer.fused's "autotuned" mode, the rest "plain"
_DEFAULTS: dict[str, object] = {}  # inductor's own values of every option a variant changed


def lora_modules(model):
    return [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]


def _set_inductor(options: dict) -> None:
    """Inductor's options as `options` says, every other one a variant touched back at its default."""
    import torch._inductor.config as inductor_config

    def holder(name):
        *parents, leaf = name.split(".")
        obj = inductor_config
        for part in parents:
            obj = getattr(obj, part)
        return obj, leaf

    for name in set(options) | set(_DEFAULTS):
        obj, leaf = holder(name)
        _DEFAULTS.setdefault(name, getattr(obj, leaf))
        setattr(obj, leaf, options.get(name, _DEFAULTS[name]))


def _compiled(name: str, model, state: dict) -> None:
    """trainer.fused's compiled decoder layers, compiled afresh under this variant's inductor options."""
    import torch

    import trainer.fused
    from trainer.fused import decoder_layers, fused_training

    torch._dynamo.reset()
    _set_inductor(INDUCTOR[name])
    trainer.fused._PATCHES.pop(model, None)  # the layers' compiled calls are found again
    trainer.fused.DYNAMIC = name == "fused_compile"
    graphs = name == "fused_graphs"
    for layer in decoder_layers(model):
        for key in [key for key in layer.__dict__ if key.startswith("_gemmactl_compiled")]:
            del layer.__dict__[key]
        if graphs:  # what fused_training's compiled_layers makes, in inductor's "reduce-overhead" mode
            layer.__dict__["_gemmactl_compiled_plain"] = torch.compile(layer._call_impl, dynamic=False,
                                                                 mode="reduce-overhead")

    @contextlib.contextmanager
    def ctx():
        if graphs:  # the last step's graph outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        with fused_training(model, compiled="autotuned" if name in AUTOTUNED else "plain"):
            yield

    state["ctx"] = ctx


def _fused(name: str, model, state: dict) -> None:
    from trainer.fused import fused_training  # trainer.fused, as the trainer's step runs it

    state["ctx"] = lambda: fused_training(model)


def _amp(name: str, model, state: dict) -> None:
    """peft's layers with bf16 adapter compute: autocast, no fp32 input cast."""
    import torch

    for m in lora_modules(model):
        m.cast_input_dtype_enabled = False
    state["ctx"] = lambda: torch.autocast(model.device.type, dtype=torch.bfloat16)


def _addmm(name: str, model, state: dict) -> None:
    from trainer.fused import lora_forward  # trainer.fused's LoRA forward alone (replaces amp)

    state.pop("ctx", None)
    for m in lora_modules(model):
        m.forward = lora_forward(m)


def _norm(name: str, model, state: dict) -> None:
    from trainer.fused import norm_forward  # + trainer.fused's RMSNorm

    for m in model.modules():
        if type(m).__name__ == "Gemma3RMSNorm":
            m.forward = norm_forward(m, 1.0)


def _nogc(name: str, model, state: dict) -> None:
    """Python's cyclic GC off (everything made so far frozen first), for every later variant."""
    import gc

    gc.collect()
    gc.freeze()
    gc.disable()


def _nodropout(name: str, model, state: dict) -> None:
    import torch

    for m in lora_modules(model):
        for key in list(m.lora_dropout):
            m.lora_dropout[key] = torch.nn.Identity()


def _regional(name: str, model, state: dict) -> None:
    """Each decoder layer compiled as it is (peft's layers); _fr: dropout draws eager's masks."""
    import torch
    import torch._inductor.config as inductor_config

    from trainer.fused import decoder_layers

    torch._dynamo.reset()
    inductor_config.fallback_random = name == "compile_fr"
    for layer in decoder_layers(model):
        layer.compile()


PATCHES = {"fused": _fused, "amp": _amp, "addmm": _addmm, "norm": _norm, "nogc": _nogc, "nodropout": _nodropout,
           "compile": _regional, "compile_fr": _regional, "peft": lambda *_: None,
           **{name: _compiled for name in INDUCTOR}}


def apply_variant(name: str, model, state: dict):
    """Patch the model for `name` (cumulative); returns the autocast-like context factory to run forwards in."""
    if name not in PATCHES:
        raise SystemExit(f"unknown variant {name}; known: {', '.join(PATCHES)}")
    PATCHES[name](name, model, state)
    return state.get("ctx", contextlib.nullcontext)
