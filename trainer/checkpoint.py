"""Crash-safe checkpoints under <output_dir>/checkpoints/step-N.

A checkpoint is written straight into `step-N` and only then gets its `COMPLETE` marker (itself written to a temp
file and renamed), which lists every file with its size. No directory is ever renamed: Cloud Run mounts the bucket
with Cloud Storage FUSE, which refuses to rename a non-empty directory on a flat-namespace bucket by default
(`rename-dir-limit=0`). A task killed mid-write leaves a `step-N` without a valid marker; `latest_checkpoint` skips
it and the next save of that step (or pruning) removes it.
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
    """Write a checkpoint with `write(step_dir)`, then mark it complete and prune old ones."""
    final = root / f"step-{step}"
    if final.exists():  # a half-written one from a killed attempt: its stale marker must go before new files land
        shutil.rmtree(final)
    final.mkdir(parents=True)
    write(final)
    files = {str(p.relative_to(final)): p.stat().st_size for p in sorted(final.rglob("*")) if p.is_file()}
    marker_tmp = final / f".{MARKER}.tmp"
    marker_tmp.write_text(json.dumps({"step": step, "files": files}, indent=1))
    os.replace(marker_tmp, final / MARKER)
    prune(root, keep)
    return final


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints, and incomplete ones older than the newest."""
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir())
    complete = [(n, p) for n, p in steps if is_complete(p)]
    newest = complete[-1][0] if complete else -1
    abandoned = [(n, p) for n, p in steps if n < newest and (n, p) not in complete]
    for _, path in complete[:-keep] + abandoned:
        shutil.rmtree(path, ignore_errors=True)
