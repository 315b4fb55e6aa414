"""Probe: does a thread waiting on a CUDA event slow the kernel launches of another thread?

The encode-ahead thread (trainer.encoding) spends most of its life in `event.synchronize()`, waiting for its
queued encodes, while the training thread or the baseline eval's launch-bound generation launches kernels. A
default CUDA event's wait spins, polling the driver; `torch.cuda.Event(blocking=True)` sleeps instead. This times
the main thread's host cost per launch of a tiny kernel while a side thread keeps the GPU busy with large matmuls
on its own stream and waits for each one: spinning, sleeping, or no side thread at all; and with the side stream
on a green context that leaves some SMs to the main stream (`greenN`: the side stream gets N SMs). Once the
launch queue is full the host waits for the GPU, so this is also each tiny kernel's time on a shared GPU.

    python3 bench/gpu_spin.py --out $OUT/spin          # on the GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from gpu_vision import save_json  # noqa: E402


def side_stream(sms: int | None):
    """(stream, green context or None): a plain stream, or one limited to `sms` SMs by a green context."""
    import torch

    if not sms:
        return torch.cuda.Stream(), None
    from torch.cuda.green_contexts import GreenContext

    ctx = GreenContext.create(num_sms=sms, device_id=0)
    return ctx.Stream(), ctx


def side_thread(stop: threading.Event, blocking: bool, size: int, sms: int | None, state: dict) -> threading.Thread:
    """A thread that queues batches of matmuls on its own stream, at most two ahead, waits on an event for each,
    counts the batches done in `state["done"]` and leaves a failure in `state["error"]`."""
    import torch

    def run():
        try:
            work(*side_stream(sms))
        except Exception as exc:  # noqa: BLE001 -- raised by measure()
            state["error"] = exc

    def work(stream, _ctx):
        a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
        queued = []
        while not stop.is_set():
            with torch.cuda.stream(stream):
                for _ in range(4):
                    a = (a @ a).clamp_(-1, 1)  # ~4 x 2 x size^3 FLOP, a few ms of GPU
            event = torch.cuda.Event(blocking=blocking)
            event.record(stream)
            queued.append(event)
            while len(queued) >= 2:
                queued.pop(0).synchronize()
                state["done"] += 1
        for event in queued:
            event.synchronize()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def launches(n: int, width: int) -> float:
    """Host microseconds per launch of a tiny elementwise kernel, the GPU synchronised at the end only."""
    import torch

    x = torch.zeros(width, device="cuda")
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        x.add_(1.0)
    host = time.perf_counter() - start
    torch.cuda.synchronize()
    return host / n * 1e6


def measure(variant: str, args) -> dict:
    """Median host us per launch over `args.repeats` bursts, with the side thread of `variant` running."""
    stop = threading.Event()
    sms = int(variant.removeprefix("green")) if variant.startswith("green") else None
    state = {"done": 0, "error": None}
    thread = None if variant == "alone" else side_thread(stop, variant == "blocking", args.size, sms, state)
    time.sleep(0.5)  # the side thread's first matmuls are queued
    started, state["done"] = time.perf_counter(), 0
    per_launch = [launches(args.launches, args.width) for _ in range(args.repeats)]
    side = state["done"] / (time.perf_counter() - started) if thread is not None else None
    stop.set()
    if thread is not None:
        thread.join()
    if state["error"] is not None:
        raise state["error"]
    return {"variant": variant, "us_per_launch": round(statistics.median(per_launch), 2),
            "all": [round(v, 2) for v in per_launch], "side_batches_per_s": side and round(side, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--launches", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--side-sms", type=int, nargs="*", default=[112, 96, 64],
                        help="green variants: the side thread's stream gets these many SMs (multiples of 8)")
    args = parser.parse_args()
    import torch

    launches(1000, args.width)  # warm-up: the kernel loaded, the allocator primed
    variants = ["alone", "spinning", "blocking"] + [f"green{n}" for n in args.side_sms] + ["alone"]
    rows = []
    for variant in variants:
        try:
            rows.append(measure(variant, args))
        except (RuntimeError, AttributeError, TypeError, ImportError) as exc:  # no green contexts in this build
            rows.append({"variant": variant, "error": f"{type(exc).__name__}: {exc}"})
    save_json({"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "args": vars(args), "rows": rows},
              Path(args.out) / "spin.json")


if __name__ == "__main__":
    main()
