"""Fewer passes over the activations in a training step: the same function, computed in fewer kernels.

A profile of the fast path's step at gemma-3-4b dims on an H100 (bench/gpu_step.py, BENCHMARKS.md) put 60 % of
the GPU time outside the matrix products, in memory-bound passes:
- peft's LoRA layer casts each input to the fp32 adapter dtype, runs dropout and both adapter products in fp32,
  and adds the fp32 result to the bf16 base output (several full-width fp32 passes per module, 7 modules a layer).
  Here the adapter runs in the activations' dtype and the second product is added inside the GEMM (`addmm`,
  cuBLAS's epilogue). The adapters themselves stay fp32 (the optimizer's master weights); what is cast per step
  is their ~30M numbers, not the activations. This is ordinary mixed precision, what autocast would do.
- Gemma's RMSNorm (up-cast, square, mean, rsqrt, scale, down-cast: five kernels each way) goes through torch's
  fused rms_norm kernel.
Measured (H100, gemma-3-4b dims, 16 samples of 421 tokens): 684 -> 388-402 ms per step, 64 -> 53 GiB peak.
Compiling the norm and GeGLU functions alone cost 76 s of start-up for no gain over the fused kernel; compiling
whole decoder layers (below) takes the step to 277-280 ms (bench/gpu_step.py, BENCHMARKS.md).

`fused_training(model)` patches module instances for the duration of a block and restores them afterwards, so
evaluation, merging and saving see peft's and transformers' own code. The patched forwards are made once per module
and reused: torch.compile guards on their identity (new closures every step recompiled every step).

`fused_training(model, compiled="plain")` also runs each decoder layer through `torch.compile` (regional: one graph
per layer kind, shared by all layers of that kind), with static shapes (the trainer pads compiled micro-batches to
one shape) and inductor's `fallback_random` so dropout draws eager's masks: the compiled step computes what the
eager one does, to rounding (tests/trainer/test_fused.py). Compiled code is used only inside the block, so eval and
generation never trigger compiles. trainer.compiling decides when to compile and keeps the compiled artifacts
across processes.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from types import MethodType

import torch
import torch.nn.functional as F


def gemma_rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, offset: float) -> torch.Tensor:
    """Gemma's RMSNorm (fp32 math, scale offset + w, one rounding back) through torch's fused rms_norm kernel.

    The kernel needs input and weight of one dtype, so the input is still up-cast; normalising and scaling are
    one kernel instead of five (forward and backward).
    """
    scale = offset + weight.float() if weight is not None else None
    return F.rms_norm(x.float(), x.shape[-1:], scale, eps).type_as(x)


# ------------------------------------------------------------------------------------------- forwards
# Module-level functions bound to each module (MethodType): compiled graphs guard a bound method by its function,
# shared by every layer (a partial over each weight was guarded by identity: one recompile per layer), and
# deepcopy rebinds a bound method to the copied module where a closure would keep the original.
def _lora(self, x, *args, **kwargs):
    """A peft LoRA Linear's forward with the adapter in the input's dtype and its add fused into one addmm."""
    if self.disable_adapters or self.merged:  # adapters toggled inside the block: peft's own path
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x, *args, **kwargs)
    name = self.active_adapters[0]
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    h = F.linear(self.lora_dropout[name](x), a.to(x.dtype))
    flat = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), b.to(x.dtype).t(),
                       alpha=self.scaling[name])
    return flat.view(result.shape)


def _gemma3_norm(self, x):
    return gemma_rms_norm(x, self.weight, self.eps, 1.0)


def _gemma4_norm(self, x):
    return gemma_rms_norm(x, self.weight if getattr(self, "with_scale", True) else None, self.eps, 0.0)


def lora_forward(module) -> Callable:
    return MethodType(_lora, module)


def norm_forward(module, offset: float) -> Callable:
    """Gemma's RMSNorm forward through the fused kernel: offset 1.0 (Gemma 3, scale 1 + w) or 0.0 (Gemma 4)."""
    return MethodType(_gemma3_norm if offset == 1.0 else _gemma4_norm, module)


# ------------------------------------------------------------------------------------------- patching
def fusable(model) -> Iterator[tuple[torch.nn.Module, Callable[[], Callable]]]:
    """(module, maker of its fused forward) for every module this file knows how to fuse; the rest is left alone.

    Norms only in the language model: the image side (Gemma 3's projector norm, Gemma 4's vision norms) is
    computed by trainer.features, on a thread of its own while steps run, and must see the same code whether a
    step is inside this block or not.
    """
    text = language_model(model)
    norms = {id(m) for m in text.modules()} if text is not None else set()
    for module in model.modules():
        kind = type(module).__name__
        if _is_plain_lora(module):
            yield module, partial(lora_forward, module)
        elif kind == "Gemma3RMSNorm" and id(module) in norms:
            yield module, partial(norm_forward, module, 1.0)
        elif kind == "Gemma4RMSNorm" and id(module) in norms:
            yield module, partial(norm_forward, module, 0.0)


def _is_plain_lora(module) -> bool:
    """A peft LoRA Linear with one active adapter and no variant (DoRA etc.), not merged."""
    return (hasattr(module, "lora_A") and hasattr(module, "base_layer") and hasattr(module, "scaling")
            and type(module.base_layer).__name__ in ("Linear", "Linear4bit")
            and len(module.active_adapters) == 1 and not getattr(module, "lora_variant", None)
            and not module.merged)


def _once(module, key: str, make: Callable) -> Callable:
    """The same function object every time for `module`: compiled graphs guard on a patched forward's identity."""
    fn = module.__dict__.get(key)
    if fn is None:
        fn = module.__dict__[key] = make()
    return fn


def language_model(model) -> torch.nn.Module | None:
    """The text decoder (the module with both `layers` and `embed_tokens`), or None."""
    for module in model.modules():
        if hasattr(module, "layers") and hasattr(module, "embed_tokens"):
            return module
    return None


def decoder_layers(model) -> list[torch.nn.Module]:
    """The language model's decoder layers."""
    text = language_model(model)
    return list(text.layers) if text is not None else []


DYNAMIC = False  # static shapes (the trainer pads compiled micro-batches to one shape): dynamic-shape graphs took
# 114 s to compile cold and 63 s warm on an H100, static ones ~29 s cold and ~7 s warm (BENCHMARKS.md)


COMPILE_OPTIONS: dict[str, dict] = {  # inductor's options per compile mode; trainer.compiling says which pays
    "plain": {},
    # every GEMM autotuned between cuBLAS and inductor's Triton templates, which take the LoRA add, the norm and
    # GeGLU pieces into the matrix product: 268 -> 251 ms a gemma-3-4b step on an H100, for ~5 min more of
    # compiling cold (BENCHMARKS.md, sixteenth set). Not on a CPU: the templates are Triton's. Without the last two,
    # inductor prints a table of timings for every GEMM shape (~300 lines) into the job's log.
    "autotuned": {"max_autotune_gemm": True, "max_autotune_gemm_backends": "ATEN,TRITON",
                  "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False},
}


def compiled_layers(model, mode: str = "plain") -> list[tuple[torch.nn.Module, Callable]]:
    """(decoder layer, its compiled call) pairs for a COMPILE_OPTIONS mode; compiled lazily on first use, then
    reused."""
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True  # dropout from eager's RNG: the same masks as the eager step
    torch._dynamo.config.automatic_dynamic_shapes = DYNAMIC  # a new shape: its own static graph, not a dynamic one
    options = COMPILE_OPTIONS[mode] or None

    def make(layer):
        return lambda: torch.compile(layer._call_impl, dynamic=DYNAMIC, options=options)

    return [(layer, _once(layer, f"_gemmactl_compiled_{mode}", make(layer))) for layer in decoder_layers(model)]


_PATCHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(fused, compiled): patch list}


def _patches(model, enabled: bool, compiled: str | None) -> tuple[list, list]:
    """(module, fused forward) and (layer, compiled call) pairs for `model`, found once per model: walking its
    ~2,000 modules on every step cost the host ~35 ms a step at gemma-3-4b size, which the GPU waited for."""
    found = _PATCHES.setdefault(model, {})
    key = (enabled, compiled)
    if key not in found:
        found[key] = ([(m, _once(m, "_gemmactl_fused", make)) for m, make in fusable(model)] if enabled else [],
                      compiled_layers(model, compiled) if compiled else [])
    return found[key]


@contextmanager
def fused_training(model, enabled: bool = True, compiled: str | None = None):
    """Inside: LoRA layers and Gemma RMSNorms of `model` run their fused forwards (and, with `compiled` a
    COMPILE_OPTIONS mode, compiled decoder layers).

    Which modules those are is found on the first call for a model: the trainer changes no module after LoRA is
    applied, and each patched forward still checks at call time whether its adapter is merged or switched off.
    """
    patched, layers = _patches(model, enabled, compiled)
    for module, forward in patched:
        module.forward = forward  # an instance attribute shadows the class's forward
    for layer, call in layers:
        layer._compiled_call_impl = call  # what nn.Module.compile() sets: __call__ runs it instead of _call_impl
    try:
        yield
    finally:
        for module, _ in patched:
            del module.forward
        for layer, _ in layers:
            layer._compiled_call_impl = None
