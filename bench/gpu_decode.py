"""Probe: is the baseline eval's generation GPU-bound, and what on the GPU slows it beside the encodes?

The trainer encodes the first epoch's images during the baseline eval (trainer.encoding), where the generation
then runs at about half speed (BENCHMARKS.md, ninth and tenth sets). Moving the encodes' Python off the interpreter
(a replayed CUDA graph) and their images off the DataLoader (one pinned image reused) changed nothing (fourteenth
set), so this looks at the GPU. It times gemma-3-4b's greedy generation at the eval's shape (185 prompts of 420
tokens, 32 new tokens, random weights) alone, with torch.profiler's kernel time against its wall, and beside a
thread that keeps one of these on a stream of its own, at most two queued: the vision tower's 16-image encode as a
CUDA graph (`encode`), large matmuls (`matmul`, compute-bound) or large copies (`copy`, memory-bound).
`--static`: also with transformers' static KV cache (its first call timed apart: the decode step's compile), alone
and beside each side load.

    python3 bench/gpu_decode.py --out $OUT/decode          # on the GPU
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from gpu_vision import graph_of, save_json  # noqa: E402


def prompts(model, batch: int, length: int):
    """Left-padded random text prompts (0-7 pads a row): the decode's shapes, not its content."""
    import torch

    gen = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(1000, 200_000, (batch, length), device="cuda", generator=gen)
    mask = torch.ones_like(ids)
    for row in range(batch):
        mask[row, : row % 8] = 0
    ids[mask == 0] = model.generation_config.pad_token_id
    return ids, mask


def side_work(kind: str, model):
    """One unit of the side thread's GPU work (a callable queuing it on the current stream)."""
    import torch

    if kind == "encode":
        inner = model.model
        size = inner.config.vision_config.image_size
        pixels = torch.randn(16, 3, size, size, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            encode = graph_of(lambda px: inner.get_image_features(px, return_dict=True).pooler_output, pixels)
        return lambda: encode(pixels)
    if kind == "matmul":
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        return lambda: [a @ a for _ in range(8)]
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return lambda: [dst.copy_(src) for _ in range(32)]


def beside(fn, work):
    """(seconds of fn(), side units done per second) with a thread queuing `work` on its own stream."""
    import torch

    stop, done, stream = threading.Event(), [0], torch.cuda.Stream()

    def loop():
        queued = []
        while not stop.is_set():
            with torch.cuda.stream(stream):
                work()
            event = torch.cuda.Event(blocking=True)
            event.record(stream)
            queued.append(event)
            while len(queued) >= 2:
                queued.pop(0).synchronize()
                done[0] += 1
        for event in queued:
            event.synchronize()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    time.sleep(1.0)
    done[0] = 0
    seconds = timed(fn)
    rate = done[0] / seconds
    stop.set()
    thread.join()
    return seconds, rate


def timed(fn) -> float:
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def kernel_time(fn) -> dict:
    """torch.profiler: GPU kernel time summed against the wall of one fn()."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        wall = timed(fn)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in kernels) / 1e6
    top = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:10]
    return {"wall_s": round(wall, 3), "kernel_s": round(busy, 3), "kernels": len(kernels),
            "top": [{"name": e.key[:80], "ms": round(e.device_time_total / 1e3, 1), "count": e.count} for e in top]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="/tmp/gpu-bench")
    parser.add_argument("--batch", type=int, default=185)
    parser.add_argument("--length", type=int, default=420)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--side", default="encode,matmul,copy")
    parser.add_argument("--static", action="store_true", help="also time generation with a static KV cache")
    args = parser.parse_args()
    import torch
    from gpu_models import SPECS, build_model, build_processor

    model = build_model(SPECS["gemma-3-4b"], build_processor("gemma3", Path(args.work)), "cuda")
    ids, mask = prompts(model, args.batch, args.length)

    def generate(**extra):
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                                  min_new_tokens=args.new_tokens, do_sample=False, **extra)

    timed(generate)  # warm-up
    rows = [{"variant": "alone", "seconds": round(timed(generate), 3)}]
    result = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "args": vars(args), "rows": rows}
    print(rows[-1], flush=True)  # each row as it comes: a crash beside the encode lost a call's rows (fifteenth set)
    result["alone_profile"] = kernel_time(generate)
    if args.static:  # transformers' StaticCache: written in place, where the dynamic cache concatenates every step
        def static():
            return generate(cache_implementation="static")

        first = timed(static)  # the decode step's compile (inductor's on-disk cache cold or warm) and CUDA graphs
        rows.append({"variant": "alone, static cache", "seconds": round(timed(static), 3),
                     "first_call_s": round(first, 3), "same_tokens": bool(torch.equal(generate(), static()))})
        print(rows[-1], flush=True)
        result["static_profile"] = kernel_time(static)
    fns = {"": generate, ", static cache": static} if args.static else {"": generate}
    for kind in filter(None, args.side.split(",")):
        work = side_work(kind, model)
        solo = timed(lambda w=work: [w() for _ in range(4)]) / 4
        for label, fn in fns.items():
            seconds, rate = beside(fn, work)
            rows.append({"variant": kind + label, "seconds": round(seconds, 3),
                         "side_unit_ms_alone": round(1e3 * solo, 1), "side_units_per_s_beside": round(rate, 1),
                         "side_gpu_share": round(rate * solo, 2)})
            print(rows[-1], flush=True)
    rows.append({"variant": "alone", "seconds": round(timed(generate), 3)})
    save_json(result, Path(args.out) / "decode.json")


if __name__ == "__main__":
    main()
