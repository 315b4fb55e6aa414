"""Start-up time of `gemmactl --help`, hyperfine-style: warm-up runs, then N timed runs, median reported.

Run: `python bench/cli_startup.py [--runs 20] [--json]` (or `make bench-cli`). Target: median ≤ 0.25 s.
Also lists any Google / ML module imported at start-up (there must be none).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time

TARGET_S = 0.25
HEAVY = ("google", "torch", "transformers", "huggingface_hub", "matplotlib", "numpy", "peft", "datasets")


def _command() -> list[str]:
    script = shutil.which("gemmactl", path=os.path.dirname(sys.executable))
    return [script, "--help"] if script else [sys.executable, "-m", "gemmactl", "--help"]


def _time_once(cmd: list[str]) -> tuple[float, float]:
    """(wall, cpu) seconds. CPU time (user+sys of the child) is the steadier number on a shared machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _heavy_imports() -> list[str]:
    code = "import sys; sys.argv=['gemmactl','--help']\nfrom gemmactl.cli.app import main\ntry: main()\nexcept SystemExit: pass"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True)
    names = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    return sorted(n for n in names if n.split(".")[0] in HEAVY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cmd = _command()
    for _ in range(args.warmup):
        _time_once(cmd)
    samples = [_time_once(cmd) for _ in range(args.runs)]
    times = sorted(wall for wall, _ in samples)
    cpu = statistics.median(c for _, c in samples)
    result = {
        "command": " ".join([os.path.basename(cmd[0]), *cmd[1:]]),
        "runs": args.runs,
        "median_s": round(statistics.median(times), 4),
        "min_s": round(times[0], 4),
        "max_s": round(times[-1], 4),
        "stdev_s": round(statistics.stdev(times), 4) if len(times) > 1 else 0.0,
        "median_cpu_s": round(cpu, 4),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "target_s": TARGET_S,
        "heavy_imports": _heavy_imports(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        ok = result["median_s"] <= TARGET_S
        print(f"{result['command']}: median {result['median_s']:.3f} s over {args.runs} runs "
              f"(min {result['min_s']:.3f}, max {result['max_s']:.3f}, σ {result['stdev_s']:.3f}; "
              f"median CPU {result['median_cpu_s']:.3f} s; load {result['load_avg_1m']}); "
              f"target ≤ {TARGET_S} s: {'met' if ok else 'MISSED'}")
        print(f"heavy modules imported at start-up: {', '.join(result['heavy_imports']) or 'none'}")


if __name__ == "__main__":
    main()
