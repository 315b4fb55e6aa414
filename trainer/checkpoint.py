"""Crash-safe checkpoints under <output_dir>/checkpoints/step-N.

A checkpoint is written to a temporary directory, renamed to `step-N`, and only then gets its `COMPLETE` marker,
which lists every file with its size. On a GCS FUSE mount a directory rename is a copy object by object, so a task
killed mid-write or mid-rename leaves a directory without a valid marker; `latest_checkpoint` skips it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoints_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def is_complete(path: Path) -> bool:
    """True when the marker exists and every file it lists is present with the recorded size."""
    try:
        files = json.loads((path / MARKER).read_text())["files"]
        return all((path / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def latest_checkpoint(root: Path) -> tuple[int, Path] | None:
    """(step, path) of the newest complete checkpoint, or None. Incomplete ones are ignored."""
    found = []
    if root.is_dir():
        for child in root.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and child.is_dir() and is_complete(child):
                found.append((int(match.group(1)), child))
    return max(found, default=None)


def save_checkpoint(root: Path, step: int, write: Callable[[Path], None], keep: int = 2) -> Path:
    """Write a checkpoint with `write(tmp_dir)`, rename it into place, mark it complete, prune old ones."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    final = root / f"step-{step}"
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    files = {str(p.relative_to(final)): p.stat().st_size for p in sorted(final.rglob("*")) if p.is_file()}
    marker_tmp = final / f".{MARKER}.tmp"
    marker_tmp.write_text(json.dumps({"step": step, "files": files}, indent=1))
    os.replace(marker_tmp, final / MARKER)
    prune(root, keep)
    return final


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints, and stale temporary dirs."""
    complete = sorted(
        (int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and is_complete(p)
    )
    for _, path in complete[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    for stale in root.glob(".tmp-step-*"):
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)
