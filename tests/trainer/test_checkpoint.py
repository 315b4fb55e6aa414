"""Checkpoints: written in place + completion marker, no directory renames (FUSE), newest complete one wins, incomplete ones ignored, pruning."""

from __future__ import annotations

import json
from pathlib import Path

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


def _lora_state(request):
    import copy

    import torch

    from trainer.config import TrainConfig
    from trainer.model import apply_lora
    from trainer.train import build_optimizer

    model, _ = request.getfixturevalue("tiny_gemma3")
    model = apply_lora(copy.deepcopy(model), TrainConfig())
    opt, sched = build_optimizer(model, TrainConfig(), total=10)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    opt.step()
    sched.step()
    return model, opt, sched


def test_a_snapshot_is_a_frozen_copy_and_a_checkpoint_resumes_to_the_same_state(request, tmp_path):
    import torch
    from peft import get_peft_model_state_dict

    from trainer.snapshot import load_snapshot, snapshot, write_snapshot

    model, opt, sched = _lora_state(request)
    want = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}
    want_opt = [(s["exp_avg"].clone(), s["exp_avg_sq"].clone()) for s in opt.state.values()]
    snap = snapshot(model, opt, sched, 1, [{"step": 1, "loss": torch.tensor(2.5)}])  # step 1's loss still unread
    with torch.no_grad():  # the next step changes everything; the snapshot must not see it
        for p in model.parameters():
            p.add_(1.0)
        for s in opt.state.values():
            s["exp_avg"].zero_()
    write_snapshot(tmp_path, snap)

    step, losses = load_snapshot(tmp_path, model, opt, sched)
    assert step == 1 and losses == [{"step": 1, "loss": 2.5}]
    for k, v in get_peft_model_state_dict(model).items():
        assert torch.equal(v, want[k]), k
    for s, (avg, avg_sq) in zip(opt.state.values(), want_opt, strict=True):
        assert torch.equal(s["exp_avg"], avg) and torch.equal(s["exp_avg_sq"], avg_sq)


@pytest.mark.parametrize("fused", [False, True])
def test_the_host_buffers_a_snapshot_takes_are_known_before_the_first_step(request, monkeypatch, fused):
    """reserve_host_memory pins them before training, so the first checkpoint does not (fused AdamW keeps its step
    counts beside the parameters, the unfused one on the CPU)."""
    import copy

    import torch

    from trainer import snapshot
    from trainer.config import TrainConfig
    from trainer.model import apply_lora

    model, _ = request.getfixturevalue("tiny_gemma3")
    model = apply_lora(copy.deepcopy(model), TrainConfig())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=fused or None)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    planned = snapshot.host_buffers(model, opt)
    snapshot.reserve_host_memory(model, opt)  # nothing on the GPU here: pins nothing, changes nothing

    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    taken, groups = [], snapshot._groups
    monkeypatch.setattr(snapshot, "_groups", lambda value: [
        taken.append((d, t, sum(x.numel() for x in g))) or (d, t, g) for d, t, g in groups(value)])
    snapshot.snapshot(model, opt, sched, 1, [{"step": 1, "loss": torch.tensor(2.5)}])

    assert sorted(map(str, taken)) == sorted(map(str, planned))
    # adapter, the unread loss, the optimizer (moments + one step count per parameter: all fp32 on the CPU here)
    assert len(taken) == 3 and sum(n for *_, n in taken) == 3 * sum(p.numel() for p in params) + len(params) + 1


def test_a_checkpoint_of_a_step_whose_loss_is_not_finite_is_not_written(request, tmp_path):
    import math

    import torch

    from trainer.snapshot import snapshot, write_snapshot

    model, opt, sched = _lora_state(request)
    snap = snapshot(model, opt, sched, 2, [{"step": 1, "loss": 2.5}, {"step": 2, "loss": torch.tensor(math.inf)}])
    with pytest.raises(FloatingPointError, match="loss is inf at step 2: checkpoint not written"):
        write_snapshot(tmp_path, snap)
    assert not (tmp_path / "adapter").exists()


def test_a_warm_compile_cache_is_not_written_again_unless_something_new_was_compiled(monkeypatch):
    from collections import Counter, defaultdict

    import torch._dynamo.utils

    from trainer import compiling

    path = Path("/runs/.compile-cache/key.bin")
    counts = defaultdict(Counter)
    monkeypatch.setattr(torch._dynamo.utils, "counters", counts)
    monkeypatch.setattr(compiling, "_LOADED", {path})
    assert compiling.compiled_new_artifacts(path)  # nothing counted at all: write, to be safe
    counts["aot_autograd"]["autograd_cache_hit"] = 4
    assert not compiling.compiled_new_artifacts(path)  # every graph came from the loaded file
    assert compiling.compiled_new_artifacts(Path("/runs/.compile-cache/other.bin"))  # hits from torch's own cache
    counts["inductor"]["fxgraph_cache_miss"] = 1
    assert compiling.compiled_new_artifacts(path)


def _gated_final_write(monkeypatch, last_step: int, fail: bool = False):
    """The last checkpoint's write waits (up to 30 s) for the final eval to have reported, then lands or fails."""
    import threading

    from trainer import snapshot
    from trainer.events import ListSink

    evaluated, real = threading.Event(), snapshot.write_snapshot

    class Sink(ListSink):
        def emit(self, event, **fields):
            super().emit(event, **fields)
            evaluated.set() if event == "eval" and fields["phase"] == "final" else None

    def write(out_dir, snap):
        if snap["trainer"]["step"] == last_step:
            assert evaluated.wait(30), "the run waited for its last checkpoint before the final eval"
            if fail:
                raise OSError("No space left on device")
        real(out_dir, snap)

    monkeypatch.setattr(snapshot, "write_snapshot", write)
    return Sink()


@pytest.mark.slow
@pytest.mark.parametrize("fail", [False, True])
def test_the_last_checkpoint_lands_beside_the_final_eval_and_the_run_ends_only_once_it_has(tmp_path, monkeypatch,
                                                                                          fail):
    from trainer.config import TrainConfig
    from trainer.run import run

    cfg = TrainConfig(model_id="builtin:tiny-gemma3", dataset="builtin:synthetic-pets", prompt="short",
                      train_size=16, eval_size=8, batch_size=4, gradient_accumulation_steps=1, max_steps=4,
                      save_steps=2, eval_mode="constrained", num_workers=0, output_dir=str(tmp_path / "run"))
    sink = _gated_final_write(monkeypatch, last_step=4, fail=fail)
    if fail:  # the run fails after its final eval: no DONE, and a retry resumes from step 2 (then re-evaluates)
        with pytest.raises(OSError, match="No space left"):
            run(cfg, sink)
        assert not (tmp_path / "run" / "DONE").exists() and not (tmp_path / "run" / "metrics.json").exists()
        assert latest_checkpoint(tmp_path / "run" / "checkpoints")[0] == 2
        return
    assert run(cfg, sink) == 0
    kinds = [(e["event"], e.get("phase") or e.get("step")) for e in sink.events if e["event"] in
             ("eval", "checkpoint", "done")]
    assert kinds == [("eval", "baseline"), ("checkpoint", 2), ("eval", "final"), ("checkpoint", 4), ("done", None)]
    assert latest_checkpoint(tmp_path / "run" / "checkpoints")[0] == 4 and (tmp_path / "run" / "DONE").exists()
