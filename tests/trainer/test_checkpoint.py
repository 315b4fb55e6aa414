"""Checkpoints: written in place + completion marker, no directory renames (FUSE), newest complete one wins, incomplete ones ignored, pruning."""

from __future__ import annotations

import json

import pytest

from trainer.checkpoint import MARKER, latest_checkpoint, save_checkpoint


def _writer(payload: bytes):
    def write(d):
        (d / "adapter").mkdir()
        (d / "adapter" / "w.bin").write_bytes(payload)
        (d / "state.pt").write_bytes(b"s" * 10)

    return write


def test_latest_complete_wins_and_incomplete_is_ignored(tmp_path):
    save_checkpoint(tmp_path, 10, _writer(b"a" * 100), keep=5)
    save_checkpoint(tmp_path, 20, _writer(b"b" * 100), keep=5)
    # A task killed mid-write: newer dir, no marker.
    (tmp_path / "step-30").mkdir()
    (tmp_path / "step-30" / "state.pt").write_bytes(b"partial")
    # Killed mid-copy on FUSE: marker present but a listed file is short.
    save_checkpoint(tmp_path, 40, _writer(b"c" * 100), keep=5)
    (tmp_path / "step-40" / "adapter" / "w.bin").write_bytes(b"c" * 10)
    # Leftover temp dir from a dead process.
    (tmp_path / ".tmp-step-50-99999").mkdir()
    step, path = latest_checkpoint(tmp_path)
    assert step == 20 and path.name == "step-20"
    assert json.loads((path / MARKER).read_text())["files"]["adapter/w.bin"] == 100


def test_none_when_empty_and_pruning_keeps_newest(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    for step in (5, 10, 15, 20):
        save_checkpoint(tmp_path, step, _writer(b"x"), keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-15", "step-20"]
    assert latest_checkpoint(tmp_path)[0] == 20


def test_no_directory_is_renamed_because_gcs_fuse_refuses_it(tmp_path, monkeypatch):
    """Cloud Run's FUSE mount of a flat bucket fails a non-empty directory rename; only files may be renamed."""
    import os

    real_replace = os.replace

    def file_only_replace(src, dst):
        assert not os.path.isdir(src), f"directory rename of {src}"
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", file_only_replace)
    monkeypatch.setattr(os, "rename", file_only_replace)
    (tmp_path / "step-7").mkdir()  # a killed attempt's leftover of the same step, with a stale marker
    (tmp_path / "step-7" / MARKER).write_text(json.dumps({"step": 7, "files": {}}))
    save_checkpoint(tmp_path, 7, _writer(b"z" * 3))
    step, path = latest_checkpoint(tmp_path)
    assert step == 7 and json.loads((path / MARKER).read_text())["files"]["adapter/w.bin"] == 3


def test_a_background_checkpoint_lands_complete_reports_in_order_and_raises_its_error_on_the_next_wait(
        tmp_path, monkeypatch):
    import threading

    from trainer import snapshot

    landed, gate = [], threading.Event()
    writer = snapshot.BackgroundCheckpoints(tmp_path, keep=5, done=lambda step, path: landed.append(step))

    def slow(out_dir, snap):  # the training thread goes on while this one writes
        gate.wait(10)
        (out_dir / "weights.bin").write_bytes(snap["bytes"])

    monkeypatch.setattr(snapshot, "write_snapshot", slow)
    writer.save(10, {"bytes": b"a" * 64})
    assert landed == [] and latest_checkpoint(tmp_path) is None  # in flight: nothing to resume from yet
    gate.set()
    writer.save(20, {"bytes": b"b" * 64})  # waits for step 10 first
    writer.wait()
    assert landed == [10, 20] and latest_checkpoint(tmp_path)[0] == 20

    def full(out_dir, snap):
        raise OSError("No space left on device")

    monkeypatch.setattr(snapshot, "write_snapshot", full)
    writer.save(30, {})
    with pytest.raises(OSError, match="No space left"):
        writer.wait()
    assert latest_checkpoint(tmp_path)[0] == 20 and landed == [10, 20]  # the failed one has no marker
