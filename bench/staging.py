"""Loopback benchmark: `stage-model`'s streamed copy vs download-to-disk-then-upload (the seed recipe's way).

Both sides use the same endpoints: the fake hub (tests/fakes/fake_hub.py, in its own process) and
gcp-storage-emulator, reached by the real gcp adapter / google-cloud-storage through STORAGE_EMULATOR_HOST.
Baseline = `huggingface_hub.snapshot_download` to a temp dir (what `hf download` does) followed by a
sequential `blob.upload_from_filename` per file (copy_to_gcs.py in the seed recipe).

    python bench/staging.py [--files 8] [--mib 16] [--workers 8] [--repeat 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROJECT, BUCKET, REPO = "bench-project", "bench-bucket", "bench/model"
PHASES: list[float] = []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _serve_hub(files: int, mib: int, port_queue: mp.Queue) -> None:
    from tests.fakes.fake_hub import FakeHub

    rng = random.Random(0)
    data = {f"model-{i + 1:05d}-of-{files:05d}.safetensors": rng.randbytes(mib << 20) for i in range(files)}
    data["config.json"] = b"{}"
    with FakeHub() as hub:
        hub.add_repo(REPO, data)
        port_queue.put(hub.url)
        while True:
            time.sleep(3600)


def _start_emulator() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    exe = Path(sys.executable).with_name("gcp-storage-emulator")
    proc = subprocess.Popen([str(exe), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    _wait(f"{url}/storage/v1/b?project=probe")
    return proc, url


def _fresh_bucket(name: str) -> None:
    from google.cloud import storage

    client = storage.Client(project=PROJECT)
    client.create_bucket(name)


def run_streamed(bucket: str, workers: int) -> float:
    from gemmactl import staging
    from gemmactl.cloud.gcp import make_gcp_cloud
    from gemmactl.settings import Settings
    from gemmactl.staging.copy import NullProgress

    cloud = make_gcp_cloud(Settings(project=PROJECT, bucket=bucket))
    started = time.perf_counter()
    with staging.prepared(cloud, bucket, staging.Request(REPO, "model", workers=workers), None) as (plan, source):
        staging.execute(cloud, plan, source, workers=workers, progress=NullProgress())
    return time.perf_counter() - started


def run_baseline(bucket: str, workers: int) -> float:
    from google.cloud import storage
    from huggingface_hub import snapshot_download

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(snapshot_download(REPO, local_dir=tmp, max_workers=workers, token=False))
        PHASES.append(time.perf_counter() - started)  # download phase, reported for honesty
        blob_bucket = storage.Client(project=PROJECT).bucket(bucket)
        for path in sorted(p for p in local.rglob("*") if p.is_file() and ".cache" not in p.parts):
            blob_bucket.blob(f"{REPO}/{path.relative_to(local).as_posix()}").upload_from_filename(str(path))
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--mib", type=int, default=16)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    queue: mp.Queue = mp.get_context("spawn").Queue()
    hub = mp.get_context("spawn").Process(target=_serve_hub, args=(args.files, args.mib, queue), daemon=True)
    hub.start()
    hub_url = queue.get(timeout=120)
    emulator, emulator_url = _start_emulator()
    os.environ.update(HF_ENDPOINT=hub_url, STORAGE_EMULATOR_HOST=emulator_url, NO_GCE_CHECK="true",
                      HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1")
    total_mb = (args.files * (args.mib << 20) + 2) / 1e6
    try:
        results: dict[str, list[float]] = {"baseline": [], "streamed": []}
        for i in range(args.repeat):
            for name, fn in (("baseline", run_baseline), ("streamed", run_streamed)):
                bucket = f"{BUCKET}-{name}-{i}"
                _fresh_bucket(bucket)
                results[name].append(fn(bucket, args.workers))
    finally:
        emulator.terminate()
        hub.terminate()
    best = {k: min(v) for k, v in results.items()}
    print(f"date: {datetime.now(UTC):%Y-%m-%d}  machine: {platform.machine()} {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print(f"data: {args.files} × {args.mib} MiB + config.json = {total_mb:.0f} MB; workers {args.workers}; "
          f"best of {args.repeat}")
    for name, seconds in best.items():
        print(f"{name:9s} {seconds:6.2f} s  {total_mb / seconds:7.1f} MB/s   (runs: "
              + ", ".join(f"{s:.2f}" for s in results[name]) + ")")
    print("baseline download phase: " + ", ".join(f"{s:.2f} s" for s in PHASES) + " (the rest is the upload)")
    print(f"speed-up: {best['baseline'] / best['streamed']:.2f}×")


if __name__ == "__main__":
    main()
