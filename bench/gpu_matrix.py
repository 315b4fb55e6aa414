"""The benchmark's driver side: dataset, environment, one process per configuration, the results table.

bench/gpu_train.py's `main` calls these; each configuration runs as `gpu_train.py --one MODEL:MODE` in a fresh
process (clean start-up time and memory) and returns its figures as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

RUNNER = Path(__file__).with_name("gpu_train.py")


# ------------------------------------------------------------------------------------------- data
def make_dataset(root: Path, train_size: int, eval_size: int, seed: int = 0) -> Path:
    """An image-folder dataset of 500x375 JPEGs (smooth colour fields + noise, ~40 KB, like photos)."""
    from concurrent.futures import ProcessPoolExecutor

    from trainer.labels import LABELS

    per_train, per_test = -(-train_size // len(LABELS)) + 1, -(-eval_size // len(LABELS)) + 1
    # File stems differ between splits: the trainer drops test images whose id (breed/stem) is also in train.
    jobs = [(root / split / name.replace(" ", "_") / f"{split}{i:04d}.jpg", seed * 100_000 + c * 1000 + i + off)
            for split, n, off in (("train", per_train, 0), ("test", per_test, 500))
            for c, name in enumerate(LABELS) for i in range(n)]
    if not all(path.is_file() for path, _ in jobs):
        with ProcessPoolExecutor(max(1, min(16, os.cpu_count() or 1))) as pool:
            list(pool.map(_write_jpeg, jobs, chunksize=16))
    return root


def _write_jpeg(job: tuple[Path, int]) -> None:
    import numpy as np
    from PIL import Image

    path, seed = job
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((500, 375), Image.BICUBIC), dtype=np.float32)
    img += rng.normal(0, 10, img.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)


# ------------------------------------------------------------------------------------------- matrix
def measure_peak_tflops() -> float:
    """bf16 8192^3 matmul rate on this GPU (the MFU denominator), median of 10 after warm-up, random data."""
    import torch

    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * 8192**3 / sorted(times)[5] / 1e12


def environment() -> dict:
    import platform

    import torch
    import transformers

    env = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
           "torch": torch.__version__, "transformers": transformers.__version__}
    for pkg in ("peft", "bitsandbytes"):
        try:
            env[pkg] = __import__(pkg).__version__
        except ImportError:
            env[pkg] = None
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_mem_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    return env


def save_checkpoint_dir(name: str, work: Path) -> Path:
    """Write a random gemma-3-4b as an ordinary HF checkpoint (safetensors + processor) for --from-disk."""
    import torch
    from gpu_models import SPECS, build_model, build_processor

    out = work / f"ckpt-{name}"
    if not (out / "config.json").is_file():
        processor = build_processor(SPECS[name].family, work)
        model = build_model(SPECS[name], processor)
        model.save_pretrained(out, max_shard_size="5GB")
        processor.save_pretrained(out)
        del model
        torch.cuda.empty_cache()
    return out


def run_matrix(args) -> list[dict]:
    """Each configuration in a fresh process (clean start-up time and memory), within the time budget."""
    work = Path(args.work)
    sizes = [int(e.split(":")[2]) for e in args.matrix.split(",") if len(e.split(":")) > 2]
    make_dataset(work / "pets", max([args.train_size, *sizes]), args.eval_size)  # the largest entry's train set
    deadline = time.time() + args.budget_s
    results = []
    for item in args.matrix.split(","):
        name, mode, *sizes = item.split(":")  # MODEL:MODE[:TRAIN_SIZE[:EPOCHS]] overrides the sizes per entry
        train_size = sizes[0] if sizes else str(args.train_size)
        epochs = sizes[1] if len(sizes) > 1 else str(args.epochs)
        left = deadline - time.time()
        if left < args.min_left_s:
            results.append({"model": name, "mode": mode, "skipped": f"time budget: {left:.0f} s left"})
            continue
        cmd = [sys.executable, str(RUNNER), "--one", f"{name}:{mode}", "--work", str(work), "--train-size", train_size,
               "--eval-size", str(args.eval_size), "--epochs", epochs, "--max-new-tokens",
               str(args.max_new_tokens), "--overrides", args.overrides, "--out", str(args.out),
               "--profile-steps", args.profile_steps, "--encode", args.encode,
               "--encode-source", args.encode_source] + (["--tiny"] if args.tiny else [])
        cmd += ["--first-step-profile"] if args.first_step_profile else []
        cmd += ["--probe-benchmarks"] if args.probe_benchmarks else []
        if args.from_disk and name == "gemma-3-4b":
            cmd += ["--model-dir", str(save_checkpoint_dir(name, work))]
        results.append(_child(cmd, name, mode, left, work))
        _print_row(results[-1])
    return results


def _child(cmd: list[str], name: str, mode: str, left: float, work: Path) -> dict:
    out = work / f"result-{name}-{mode}.json"
    out.unlink(missing_ok=True)
    log = work / f"log-{name}-{mode}.txt"
    with log.open("w") as fh:
        try:
            proc = subprocess.run(cmd + ["--result", str(out)], stdout=fh, stderr=subprocess.STDOUT, timeout=left)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    if out.is_file():
        return json.loads(out.read_text())
    tail = log.read_text().strip().splitlines()[-3:]
    return {"model": name, "mode": mode, "failed": f"exit {code}: " + " | ".join(tail)[-400:]}


# ------------------------------------------------------------------------------------------- report
COLUMNS = ("model", "mode", "train sps", "steady", "tok/s", "MFU", "peak GiB", "1st step s", "gen ips", "constr ips")


def _row(r: dict) -> list[str]:
    if "train_samples_per_s" not in r:
        return [r["model"], r["mode"], r.get("skipped") or r.get("failed", "?")]
    ev = r["eval"]

    def f(v, fmt="{:.1f}"):
        return "-" if v is None else fmt.format(v)

    gen = ev.get("final_generate", ev.get("baseline_generate", {})).get("images_per_s")
    con = ev.get("final_constrained", ev.get("baseline_constrained", {})).get("images_per_s")
    return [r["model"], r["mode"], f(r["train_samples_per_s"]), f(r["steady_samples_per_s"]),
            f(r["train_tokens_per_s"], "{:.0f}"), f(r["mfu"] and 100 * r["mfu"], "{:.1f}%"),
            f(r["peak_gib"], "{:.2f}"), f(r["first_step_s"]), f(gen), f(con)]


def _print_row(r: dict) -> None:
    print(" | ".join(_row(r)), flush=True)


def print_table(results: list[dict]) -> None:
    print("\n| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for r in results:
        print("| " + " | ".join(_row(r)) + " |")
