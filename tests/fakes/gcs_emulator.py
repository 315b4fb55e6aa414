"""gcp-storage-emulator (in memory) as a subprocess on a free 127.0.0.1 port, for the GCS tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class EmulatorDidNotStart(RuntimeError):
    """The emulator exited or did not answer within the deadline."""


@contextmanager
def running_emulator(project_number: str | None = None, *, timeout: float = 20) -> Iterator[str]:
    """Start the emulator, yield its URL once it answers, stop it on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("gcp-storage-emulator")
    args = [str(exe), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"]
    if project_number:
        args += ["--project-number", project_number]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b?project=probe", timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise EmulatorDidNotStart("gcp-storage-emulator did not start") from None
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
