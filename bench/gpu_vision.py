"""Probe the frozen vision tower's encode at real dims: attention backends, torch.compile, and whether it draws RNG.

The first epoch of the default run spends ~16.5 ms of GPU per 896 px image in SigLIP (27 layers, 4,096 patches,
16 heads of 72 dims): ~5.4 TFLOP per image, of which ~2.1 are attention. This times `get_image_features` (the call
trainer.features makes) per image at several batch sizes, under each SDPA backend, with the trainer's contiguous
residual stream (trainer.model.contiguous_vision_stream) and then also compiled, with the largest
difference from the default features, and checks that an encode leaves the CUDA RNG state alone (so encoding on
another thread cannot shift the training step's dropout masks). `one_per_call`: one image per call, eager and as a
CUDA graph, against the batched call. `--pad-heads`: attention over zero-padded heads (bench/gpu_headdim.py).

    python3 bench/gpu_vision.py --out $OUT/vision          # on the GPU
    python3 bench/gpu_vision.py --out $OUT/vision --only-compiled --compile-modes plain,autotuned --batches 16
    python3 bench/gpu_vision.py --out $OUT/vision --only-compiled --no-compile --pad-heads 80,96,128 --batches 16
    python3 bench/gpu_vision.py --out /tmp/v --tiny --device cpu
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]


def timed(fn, device: str, iters: int) -> float:
    """Median seconds of `fn()` over `iters` runs after two warm-up runs."""
    import torch

    for _ in range(2):
        fn()
    times = []
    for _ in range(iters):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def build(args):
    import torch

    if args.tiny:
        from trainer.builtin import build_model_and_processor

        model, _ = build_model_and_processor("builtin:tiny-gemma3")
        model = model.to(args.device)
    else:
        from gpu_models import SPECS, build_model, build_processor

        model = build_model(SPECS[args.model], build_processor("gemma3", Path(args.work)), args.device)
    inner = model.model
    with torch.no_grad():  # from-config init leaves the projection at zero: features would all compare equal
        inner.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.02)
    size = inner.config.vision_config.image_size
    dtype = next(inner.vision_tower.parameters()).dtype
    gen = torch.Generator(device=args.device).manual_seed(0)
    pixels = torch.randn(max(args.batches), 3, size, size, generator=gen, device=args.device).to(dtype)
    return model.train(), inner, pixels  # train mode: what the trainer's first epoch encodes in


def variants(inner):
    """name -> context manager factory (None: not available)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = {"default": contextlib.nullcontext}
    for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
        backend = getattr(SDPBackend, name, None)
        if backend is not None:
            out[name.lower()] = lambda b=backend: sdpa_kernel([b])
    return out


def run(args) -> dict:
    import torch

    model, inner, pixels = build(args)
    result = {"model": args.model, "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "torch": torch.__version__, "rows": []}
    with torch.no_grad():
        reference = {b: inner.get_image_features(pixels[:b], return_dict=True).pooler_output for b in args.batches}
        result["rng_unchanged"] = rng_unchanged(inner, pixels[:args.batches[0]], args.device)
        if not args.only_compiled:
            for name, ctx in variants(inner).items():
                result["rows"] += [row(name, ctx, inner, pixels[:b], reference[b], args) for b in args.batches]
        from trainer.model import (
            contiguous_vision_stream,  # what the trainer's loader adds (kept from here on)
        )

        contiguous_vision_stream(model)
        for b in args.batches:
            result["rows"].append(row("contiguous", variants(inner)["default"], inner, pixels[:b], reference[b], args))
        for width in args.pad_heads:
            with padded_heads(inner, width):
                b = args.batches[0]
                result["rows"].append(row(f"padded{width}", variants(inner)["default"], inner, pixels[:b], reference[b], args))
        if args.device == "cuda" and not args.only_compiled:
            result["one_per_call"] = one_per_call(inner, pixels[:16], args)
        if args.compile:
            result["rows"] += compiled_rows(inner, pixels, reference, args)
    if args.profile and args.device == "cuda":
        result["profile"] = profile(inner, pixels[:args.batches[0]])
    return result


def compiled_rows(inner, pixels, reference, args) -> list[dict]:
    """The tower compiled: as the dispatcher picks attention at every batch size (unless --only-compiled), then
    with cuDNN attention held, once per trainer.fused.COMPILE_OPTIONS mode in --compile-modes."""
    import torch

    rows, b0 = [], args.batches[0]
    tower = inner.vision_tower
    if not args.only_compiled:
        inner.vision_tower = torch.compile(tower, dynamic=False)
        try:
            for b in args.batches:
                t = time.perf_counter()
                inner.get_image_features(pixels[:b], return_dict=True)
                first = time.perf_counter() - t
                r = row("compiled", contextlib.nullcontext, inner, pixels[:b], reference[b], args)
                rows.append(r | {"first_call_s": round(first, 2)})
        finally:
            inner.vision_tower = tower
    for mode in args.compile_modes:
        rows.append(compiled_with(inner, "cudnn_attention", pixels[:b0], reference[b0], args, mode))
    return rows


def compiled_with(inner, backend: str, pixels, reference, args, mode: str = "plain") -> dict:
    """The tower compiled (static shapes, the trainer's inductor options for `mode`) with SDPA held to one backend
    while tracing and running: inductor picks its attention kernel when it traces, where the eager tower's
    dispatcher picks cuDNN."""
    import torch

    from trainer.fused import COMPILE_OPTIONS

    torch._dynamo.reset()
    tower, ctx = inner.vision_tower, variants(inner)[backend]
    inner.vision_tower = torch.compile(tower, dynamic=False, options=COMPILE_OPTIONS[mode] or None)
    name = f"compiled_{backend}" + ("" if mode == "plain" else f"_{mode}")
    try:
        with ctx():
            t = time.perf_counter()
            inner.get_image_features(pixels, return_dict=True)
            first = time.perf_counter() - t
        return row(name, ctx, inner, pixels, reference, args) | {"first_call_s": round(first, 2)}
    except Exception as exc:  # noqa: BLE001 -- e.g. no cuDNN attention on this device: a row that says so
        return {"variant": name, "batch": len(pixels), "error": str(exc).splitlines()[0][:200]}
    finally:
        inner.vision_tower = tower


@contextlib.contextmanager
def padded_heads(inner, width: int):
    """The tower's attention over heads zero-padded to `width` (bench/gpu_headdim.py: the same function, another
    kernel), through transformers' AttentionInterface; the tower's own implementation is restored after."""
    import torch.nn.functional as F
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def padded(module, q, k, v, mask, **kwargs):
        dim = q.shape[-1]
        q, k, v = (F.pad(t, (0, width - dim)) for t in (q, k, v))
        out, weights = sdpa_attention_forward(module, q, k, v, mask, **kwargs)  # scaling: the module's, 72 ** -0.5
        return out[..., :dim], weights

    name = f"gemmactl_padded{width}"
    AttentionInterface.register(name, padded)
    config = inner.vision_tower.config
    before, config._attn_implementation_internal = config._attn_implementation_internal, name
    try:
        yield
    finally:
        config._attn_implementation_internal = before


def row(name: str, ctx, inner, pixels, reference, args) -> dict:
    try:
        with ctx():
            feats = inner.get_image_features(pixels, return_dict=True).pooler_output
            s = timed(lambda: inner.get_image_features(pixels, return_dict=True), args.device, args.iters)
    except RuntimeError as exc:
        return {"variant": name, "batch": len(pixels), "error": str(exc).splitlines()[0][:200]}
    diff = (feats.float() - reference.float()).abs().max().item()
    scale = reference.float().abs().max().item()
    return {"variant": name, "batch": len(pixels), "ms_per_image": round(1e3 * s / len(pixels), 3),
            "max_abs_diff": diff, "rel_diff": diff / max(scale, 1e-30), "bitwise_equal": bool(torch_equal(feats, reference))}


def one_per_call(inner, pixels, args) -> dict:
    """One image per vision call, eager and replayed as a CUDA graph, against the batched call: GPU ms per image,
    host ms to queue a call, bit equality (tried in the eighth set as a way to encode during the first step's
    compile without taking the interpreter from it; not kept, BENCHMARKS.md)."""
    import torch

    def fn(px):
        return inner.get_image_features(px, return_dict=True).pooler_output

    graphed = graph_of(fn, pixels[:1])
    batched = fn(pixels)
    singles = {"eager": fn, "graph": graphed}
    out = {name: torch.cat([f(pixels[i:i + 1]) for i in range(len(pixels))]) for name, f in singles.items()}
    result = {"eager_equals_batched": torch.equal(out["eager"], batched),
              "graph_equals_eager": torch.equal(out["graph"], out["eager"])}
    for name, f in singles.items():
        def loop(f=f):
            for i in range(len(pixels)):
                f(pixels[i:i + 1])
        result[f"{name}_ms_per_image"] = round(1e3 * timed(loop, "cuda", args.iters) / len(pixels), 3)
        torch.cuda.synchronize()
        t = time.perf_counter()
        loop()  # queued only: the host's share (it also waits once the GPU's launch queue is full)
        result[f"{name}_host_ms_per_call"] = round(1e3 * (time.perf_counter() - t) / len(pixels), 3)
        torch.cuda.synchronize()
    return result


def graph_of(fn, example):
    """`fn` for inputs shaped like `example`, recorded once as a CUDA graph and replayed (static in/out buffers)."""
    import torch

    static_in, stream = example.clone(), torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(static_in)  # lazy set-up (cuBLAS handles, cuDNN plans) outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        static_out = fn(static_in)

    def replay(pixels):
        static_in.copy_(pixels)
        graph.replay()
        return static_out.clone()

    return replay


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def rng_unchanged(inner, pixels, device: str) -> bool:
    """True if an encode in train mode leaves the RNG state (CPU and, on a GPU, CUDA) as it was."""
    import torch

    before = torch.get_rng_state(), torch.cuda.get_rng_state() if device == "cuda" else None
    inner.get_image_features(pixels, return_dict=True)
    after = torch.get_rng_state(), torch.cuda.get_rng_state() if device == "cuda" else None
    return torch.equal(before[0], after[0]) and (before[1] is None or torch.equal(before[1], after[1]))


def profile(inner, pixels) -> list[dict]:
    """GPU time by kernel for one encode, top 15."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    with torch.no_grad(), prof(activities=[ProfilerActivity.CUDA]) as p:
        inner.get_image_features(pixels, return_dict=True)
        torch.cuda.synchronize()
    events = sorted(p.key_averages(), key=lambda e: -e.device_time_total)[:15]
    return [{"name": e.key[:90], "ms": round(e.device_time_total / 1e3, 2), "count": e.count} for e in events]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    p.add_argument("--work", default="/tmp/gpu-bench")
    p.add_argument("--model", default="gemma-3-4b")
    p.add_argument("--batches", default="16,8,32", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--compile-modes", default="plain", type=compile_modes,
                   help="trainer.fused.COMPILE_OPTIONS modes to compile the tower in, cuDNN attention held (plain,autotuned)")
    p.add_argument("--only-compiled", action="store_true",
                   help="skip the eager backends, one image per call and the dispatcher-picked compile")
    p.add_argument("--pad-heads", default="", type=lambda s: [int(x) for x in s.split(",") if x],
                   help="also time the contiguous tower with its attention heads zero-padded to these widths")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = p.parse_args()
    save_json(run(args), Path(args.out) / "vision.json")
    return 0


def compile_modes(text: str) -> list[str]:
    """--compile-modes: a comma list of trainer.fused.COMPILE_OPTIONS modes (a wrong one: argparse's one line)."""
    from trainer.fused import COMPILE_OPTIONS

    modes = text.split(",")
    if unknown := [m for m in modes if m not in COMPILE_OPTIONS]:
        raise argparse.ArgumentTypeError(f"unknown mode {', '.join(unknown)}; known: {', '.join(COMPILE_OPTIONS)}")
    return modes


def save_json(result: dict, path: Path) -> None:
    """Write a probe's result (its folder made first) and print it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
