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
Measured (H100, gemma-3-4b dims, 16 samples of 421 tokens): 684 -> 398-402 ms per step, 64 -> 53 GiB peak. Not used:
torch.compile. Compiling the norm and GeGLU functions cost 76 s of start-up for no gain over the fused kernel;
compiling whole decoder layers reached 279 ms but cost 27 s cold, more than it saves on the default 1000-image
run, and its dropout diverged from eager (bench/gpu_step.py, BENCHMARKS.md).

`fused_training(model)` patches module instances for the duration of a block and restores them afterwards, so
evaluation, merging and saving see peft's and transformers' own code. The patched forwards are made once per module
and reused: torch.compile guards on their identity (new closures every step recompiled every step).

`fused_training(model, compiled=True)` also runs each decoder layer through `torch.compile` (regional: one graph
per layer kind, shared by all layers of that kind), with static shapes (the trainer pads compiled micro-batches to
one shape) and inductor's `fallback_random` so dropout draws eager's masks: the compiled step computes what the eager one does, to
rounding (tests/trainer/test_fused.py). Compiled code is used only inside the block, so eval and generation never
trigger compiles. trainer.compiling decides when to compile and keeps the compiled
artifacts across processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

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
def lora_forward(module) -> Callable:
    """A peft LoRA Linear's forward with the adapter in the input's dtype and its add fused into one addmm."""

    def forward(x, *args, **kwargs):
        if module.disable_adapters or module.merged:  # adapters toggled inside the block: peft's own path
            return type(module).forward(module, x, *args, **kwargs)
        result = module.base_layer(x, *args, **kwargs)
        name = module.active_adapters[0]
        a, b = module.lora_A[name].weight, module.lora_B[name].weight
        h = F.linear(module.lora_dropout[name](x), a.to(x.dtype))
        flat = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), b.to(x.dtype).t(),
                           alpha=module.scaling[name])
        return flat.view(result.shape)

    return forward


def norm_forward(module, offset: float) -> Callable:
    """Gemma's RMSNorm forward through the fused kernel. A closure, not a partial over the weight: compiled graphs
    guard a partial by identity (one recompile per layer) but a closure by its code, shared by every layer."""
    with_scale = getattr(module, "with_scale", True)

    def forward(x):
        return gemma_rms_norm(x, module.weight if with_scale else None, module.eps, offset)

    return forward


# ------------------------------------------------------------------------------------------- patching
def fusable(model) -> Iterator[tuple[torch.nn.Module, Callable]]:
    """(module, fused forward) for every module this file knows how to fuse; anything else is left alone."""
    for module in model.modules():
        kind = type(module).__name__
        if _is_plain_lora(module):
            yield module, lora_forward(module)
        elif kind == "Gemma3RMSNorm":
            yield module, norm_forward(module, 1.0)
        elif kind == "Gemma4RMSNorm":
            yield module, norm_forward(module, 0.0)


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


def decoder_layers(model) -> list[torch.nn.Module]:
    """The language model's decoder layers (the module with both `layers` and `embed_tokens`)."""
    for module in model.modules():
        if hasattr(module, "layers") and hasattr(module, "embed_tokens"):
            return list(module.layers)
    return []


DYNAMIC = False  # static shapes (the trainer pads compiled micro-batches to one shape): dynamic-shape graphs took
# 114 s to compile cold and 63 s warm on an H100, static ones ~25 s cold (bench/gpu_step.py, BENCHMARKS.md)


def compiled_layers(model) -> list[tuple[torch.nn.Module, Callable]]:
    """(decoder layer, its compiled call) pairs; compiled lazily on first use, then reused."""
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True  # dropout from eager's RNG: the same masks as the eager step
    torch._dynamo.config.automatic_dynamic_shapes = DYNAMIC  # a new shape: its own static graph, not a dynamic one
    return [(layer, _once(layer, "_gemmactl_compiled", lambda layer=layer: torch.compile(layer._call_impl,
                                                                                           dynamic=DYNAMIC)))
            for layer in decoder_layers(model)]


@contextmanager
def fused_training(model, enabled: bool = True, compiled: bool = False):
    """Inside: LoRA layers and Gemma RMSNorms of `model` run their fused forwards (and compiled decoder layers)."""
    patched = [(m, _once(m, "_gemmactl_fused", lambda m=m, f=f: f)) for m, f in fusable(model)] if enabled else []
    layers = compiled_layers(model) if compiled else []
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
