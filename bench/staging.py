"""Loopback benchmark: `stage-model`'s streamed copy vs download-to-disk-then-upload (the seed recipe's way).

Both sides use the same endpoints: the fake hub (tests/fakes/fake_hub.py, in its own process) and
gcp-storage-emulator, reached by the real gcp adapter / google-cloud-storage through STORAGE_EMULATOR_HOST.
Baseline = `huggingface_hub.snapshot_download` to a temp dir (what `hf download` does) followed by a
sequential `blob.upload_from_filename` per file (copy_to_gcs.py in the seed recipe); a second baseline
uploads with `--workers` threads (what `gsutil -m cp` does), so the comparison is not only against the seed.

`--link-mbps R` models a WAN link on both sides, per connection: the fake hub paces each file body to R MB/s
and a throttling TCP proxy (below) in front of the emulator paces each connection's upload to R MB/s.
Without it nothing is throttled (and on a small machine the run is CPU-bound).

    python bench/staging.py [--files 8] [--mib 16] [--workers 8] [--repeat 2] [--link-mbps 20]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import multiprocessing as mp
import os
import platform
import random
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROJECT, BUCKET, REPO = "bench-project", "bench-bucket", "bench/model"
PHASES: dict[str, list[float]] = {}


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


class ThrottlingProxy:
    """TCP proxy to `upstream`; each connection's client→server bytes are paced to `mbps` MB/s (no idle credit)."""

    def __init__(self, upstream: tuple[str, int], mbps: float) -> None:
        self.upstream, self.rate = upstream, mbps * 1e6
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            threading.Thread(target=self._connection, args=(client,), daemon=True).start()

    def _connection(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.upstream) as server:
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            down = threading.Thread(target=self._pump, args=(server, client, None), daemon=True)
            down.start()
            self._pump(client, server, self.rate)  # the upload direction is the throttled one
            down.join()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, rate: float | None) -> None:
        due = time.monotonic()  # when the link is free again
        with contextlib.suppress(OSError):
            while data := src.recv(64 * 1024):
                if rate:
                    due = max(due, time.monotonic()) + len(data) / rate
                    time.sleep(max(0.0, due - time.monotonic()))
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _data(files: int, mib: int) -> dict[str, bytes]:
    rng = random.Random(0)
    data = {f"model-{i + 1:05d}-of-{files:05d}.safetensors": rng.randbytes(mib << 20) for i in range(files)}
    data["config.json"] = b"{}"
    return data


def _serve_hub(files: int, mib: int, link_mbps: float | None, port_queue: mp.Queue) -> None:
    from tests.fakes.fake_hub import FakeHub

    with FakeHub() as hub:
        hub.link_mbps = link_mbps
        hub.add_repo(REPO, _data(files, mib))
        port_queue.put(hub.url)
        while True:
            time.sleep(3600)


def _serve_emulator(port: int) -> None:
    """gcp-storage-emulator (in memory) on a *threading* HTTP server. Its stock server handles one request
    at a time, which would serialise every upload however many connections the client opens (real GCS
    does not); its storage layer is not thread-safe, so every Storage call is done under one lock."""
    import functools
    import types
    from http.server import ThreadingHTTPServer

    from gcp_storage_emulator import server as gse
    from gcp_storage_emulator.storage import Storage

    lock = threading.RLock()

    def locked(fn: types.FunctionType) -> types.FunctionType:
        @functools.wraps(fn)
        def call(*args: object, **kwargs: object) -> object:
            with lock:
                return fn(*args, **kwargs)
        return call

    for name, fn in list(vars(Storage).items()):
        if isinstance(fn, types.FunctionType) and name != "__init__":
            setattr(Storage, name, locked(fn))

    class ThreadedAPI(gse.APIThread):
        def run(self) -> None:
            handler = functools.partial(gse.RequestHandler, self._storage)
            self._httpd = ThreadingHTTPServer((self._host, self._port), handler)
            self.is_running.set()
            self._httpd.serve_forever()

    gse.APIThread = ThreadedAPI
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    gse.create_server("127.0.0.1", port, in_memory=True).run()


def _start_emulator() -> tuple[mp.Process, int]:
    port = _free_port()
    proc = mp.get_context("spawn").Process(target=_serve_emulator, args=(port,), daemon=True)
    proc.start()
    _wait(f"http://127.0.0.1:{port}/storage/v1/b?project=probe")
    return proc, port


def _fresh_bucket(name: str) -> None:
    from google.cloud import storage

    storage.Client(project=PROJECT).create_bucket(name)


def _check_bucket(name: str, md5s: dict[str, str]) -> None:
    """Every file landed, byte for byte (the emulator's md5), so a fast run is not a broken one."""
    from google.cloud import storage

    got = {b.name.removeprefix(f"{REPO}/"): b.md5_hash for b in storage.Client(project=PROJECT).list_blobs(name)}
    got.pop(".gemmactl-manifest.json", None)
    assert got == md5s, f"{name}: bucket contents differ from the repo"


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


def _baseline(bucket: str, workers: int, upload_threads: int, name: str) -> float:
    from google.cloud import storage
    from huggingface_hub import snapshot_download

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(snapshot_download(REPO, local_dir=tmp, max_workers=workers, token=False))
        PHASES.setdefault(name, []).append(time.perf_counter() - started)  # download phase, reported too
        blob_bucket = storage.Client(project=PROJECT).bucket(bucket)
        paths = sorted(p for p in local.rglob("*") if p.is_file() and ".cache" not in p.parts)

        def upload(path: Path) -> None:
            blob_bucket.blob(f"{REPO}/{path.relative_to(local).as_posix()}").upload_from_filename(str(path))

        with ThreadPoolExecutor(max_workers=upload_threads) as pool:
            list(pool.map(upload, paths))
    return time.perf_counter() - started


def run_baseline_seq(bucket: str, workers: int) -> float:
    """The seed recipe: download everything, then upload one file after another."""
    return _baseline(bucket, workers, 1, "baseline-seq")


def run_baseline_par(bucket: str, workers: int) -> float:
    """Download everything, then upload `workers` files at a time (`gsutil -m cp -r`)."""
    return _baseline(bucket, workers, workers, "baseline-par")


RUNS = {"baseline-seq": run_baseline_seq, "baseline-par": run_baseline_par, "streamed": run_streamed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--mib", type=int, default=16)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--link-mbps", type=float, default=None,
                    help="per-connection cap in MB/s, hub downloads and bucket uploads alike (default: none)")
    args = ap.parse_args()

    spawn = mp.get_context("spawn")
    queue: mp.Queue = spawn.Queue()
    hub = spawn.Process(target=_serve_hub, args=(args.files, args.mib, args.link_mbps, queue), daemon=True)
    hub.start()
    hub_url = queue.get(timeout=120)
    emulator, emulator_port = _start_emulator()
    storage_url = f"http://127.0.0.1:{emulator_port}"
    if args.link_mbps:
        storage_url = ThrottlingProxy(("127.0.0.1", emulator_port), args.link_mbps).url
    os.environ.update(HF_ENDPOINT=hub_url, STORAGE_EMULATOR_HOST=storage_url, NO_GCE_CHECK="true",
                      HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1")
    data = _data(args.files, args.mib)
    md5s = {path: base64.b64encode(hashlib.md5(raw).digest()).decode() for path, raw in data.items()}
    total_mb = sum(map(len, data.values())) / 1e6
    del data
    results: dict[str, list[float]] = {name: [] for name in RUNS}
    try:
        for i in range(args.repeat):
            for name, fn in RUNS.items():
                bucket = f"{BUCKET}-{name}-{i}"
                _fresh_bucket(bucket)
                results[name].append(fn(bucket, args.workers))
                _check_bucket(bucket, md5s)
    finally:
        emulator.terminate()
        hub.terminate()
    best = {k: min(v) for k, v in results.items()}
    link = f"{args.link_mbps:g} MB/s per connection" if args.link_mbps else "none"
    print(f"date: {datetime.now(UTC):%Y-%m-%d}  machine: {platform.machine()} {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print(f"data: {args.files} × {args.mib} MiB + config.json = {total_mb:.0f} MB; workers {args.workers}; "
          f"link cap: {link}; best of {args.repeat}")
    for name, seconds in best.items():
        print(f"{name:12s} {seconds:6.2f} s  {total_mb / seconds:7.1f} MB/s   (runs: "
              + ", ".join(f"{s:.2f}" for s in results[name]) + ")")
    for name, phases in PHASES.items():
        print(f"{name} download phase: " + ", ".join(f"{s:.2f} s" for s in phases) + " (the rest is the upload)")
    for name in ("baseline-seq", "baseline-par"):
        print(f"speed-up vs {name}: {best[name] / best['streamed']:.2f}×")


if __name__ == "__main__":
    main()
