"""A resumed run trains exactly as the uninterrupted one would (same batches, dropout, optimizer state)."""

from __future__ import annotations

import shutil

import pytest

from trainer.config import TrainConfig
from trainer.events import ListSink
from trainer.run import run


@pytest.mark.slow
@pytest.mark.parametrize("compile_", ["off", "on"])  # on: the resumed run compiles ahead from its checkpoint's RNG
def test_resume_from_checkpoint_reproduces_the_losses(tmp_path, compile_, capsys):
    base = TrainConfig(compile=compile_, model_id="builtin:tiny-gemma3", dataset="builtin:synthetic-pets", prompt="short",
                       train_size=37, eval_size=37, batch_size=4, gradient_accumulation_steps=2, max_steps=6,
                       save_steps=3, keep_checkpoints=5, learning_rate=1e-2, lora_r=4, lora_dropout=0.3,
                       eval_mode="constrained", num_workers=0)
    full = ListSink()
    assert run(base.replace(output_dir=str(tmp_path / "full")), full) == 0
    # Simulate a task killed right after step 3: only the step-3 checkpoint and the baseline survive.
    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-3", killed / "checkpoints" / "step-3")
    shutil.copy(tmp_path / "full" / "checkpoints" / "baseline.json", killed / "checkpoints" / "baseline.json")
    resumed = ListSink()
    assert run(base.replace(output_dir=str(killed)), resumed) == 0

    def losses(sink):
        return {e["step"]: e["loss"] for e in sink.events if e["event"] == "step"}

    assert resumed.events[0]["resumed_from_step"] == 3
    assert sorted(losses(resumed)) == [4, 5, 6]
    for step, loss in losses(resumed).items():
        assert loss == pytest.approx(losses(full)[step], rel=1e-5), step
    final = [e for e in full.events if e["event"] == "eval" and e["phase"] == "final"]
    again = [e for e in resumed.events if e["event"] == "eval" and e["phase"] == "final"]
    assert again[0]["accuracy"] == pytest.approx(final[0]["accuracy"])
    if compile_ == "on":  # the recorded baseline leaves the compile a phase of its own, with no eval images beside it
        log = capsys.readouterr().err
        assert log.count("training step compiled") == 2 and log.count("eval images, beside the compile") == 1
