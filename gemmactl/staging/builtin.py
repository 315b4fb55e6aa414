"""Built-in assets (`builtin:tiny-gemma3`, `builtin:tiny-gemma4`, `builtin:synthetic-pets`): generated, not downloaded.

The trainer package writes them (`python -m trainer.builtin ID DIR`, in a subprocess so gemmactl never
imports torch); the files then go through the same verified copy as hub files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gemmactl.errors import GemmactlError, UsageError
from gemmactl.staging.hub import CHUNK, DATASET, MODEL, RemoteFile, Snapshot

BUILTINS = {"tiny-gemma3": MODEL, "tiny-gemma4": MODEL, "synthetic-pets": DATASET}
_NEEDS = {MODEL: ("trainer.builtin", "torch", "transformers", "tokenizers"),
          DATASET: ("trainer.builtin", "numpy", "PIL", "pyarrow")}  # fmt: skip
GENERATE_TIMEOUT_S = 900
INSTALL_HINT = "pip install 'gemmactl[trainer]'"


def check_builtin(asset_id: str, kind: str) -> str:
    """The bare name of a valid built-in of this kind (UsageError otherwise)."""
    name = asset_id.removeprefix("builtin:")
    choices = [f"builtin:{n}" for n, k in BUILTINS.items() if k == kind]
    if BUILTINS.get(name) != kind:
        raise UsageError(f"unknown built-in {kind} '{asset_id}'", hint=f"choose one of: {', '.join(choices)}")
    return name


def _check_installed(kind: str) -> None:
    missing = [m for m in _NEEDS[kind] if not _importable(m)]
    if missing:
        raise GemmactlError(f"generating built-in assets needs the trainer extra (missing: {', '.join(missing)})",
                            hint=INSTALL_HINT)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def generate(name: str, out_dir: Path) -> None:
    """Run the trainer's generator into `out_dir` (a fresh temporary directory)."""
    _check_installed(BUILTINS[name])
    cmd = [sys.executable, "-m", "trainer.builtin", name, str(out_dir)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=GENERATE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise GemmactlError(f"generating builtin:{name} took over {GENERATE_TIMEOUT_S} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise GemmactlError(f"generating builtin:{name} failed: {last}",
                            hint=f"run `{' '.join(cmd[1:])}` to see the full output")


def snapshot_dir(name: str, root: Path) -> Snapshot:
    """A snapshot of the generated files; the revision is a digest of their contents."""
    files = tuple(RemoteFile(p.relative_to(root).as_posix(), p.stat().st_size, sha256=_sha256(p))
                  for p in sorted(root.rglob("*")) if p.is_file())
    revision = hashlib.sha256("".join(f"{f.path}\0{f.sha256}\n" for f in files).encode()).hexdigest()[:40]
    return Snapshot(f"builtin:{name}", BUILTINS[name], revision, files)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class DirSource:
    """Reads snapshot files from a local directory (the generated built-in)."""

    root: Path

    def read(self, file: RemoteFile, offset: int = 0) -> Iterator[bytes]:
        with (self.root / file.path).open("rb") as f:
            f.seek(offset)
            yield from iter(lambda: f.read(CHUNK), b"")
