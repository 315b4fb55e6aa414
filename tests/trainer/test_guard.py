"""A compiled step that computes wrong gradients is caught before training, and the run learns what it should.

On an H100, about one process in ten compiled a training step whose forward was right and whose gradients were
~10^4 times too large, for the whole run; the run learned next to nothing and said nothing. Here the fault is made
on purpose: the compiled decoder layers scale the gradient flowing back through them, as the real one did, while
the eager layers stay right. The check (trainer.guard) compares the two on one micro-batch before training.
"""

from __future__ import annotations

import pytest
import torch

from trainer.config import TrainConfig
from trainer.events import ListSink
from trainer.guard import Verdict, compare
from trainer.run import run

CFG = TrainConfig(model_id="builtin:tiny-gemma3", dataset="builtin:synthetic-pets", prompt="short", train_size=16,
                  eval_size=4, batch_size=8, gradient_accumulation_steps=1, num_epochs=1, lora_r=4,
                  eval_mode="constrained", num_workers=0, save_steps=0, lora_dropout=0.1)


class _Amplify(torch.autograd.Function):
    """Identity forward; the gradient flowing back comes out 10^4 times too large (the fault seen on the GPU)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * 1e4


def _faulty_compiled_layers(model, mode):
    """What trainer.fused.compiled_layers returns, with the fault: the right forward, a wrong backward."""
    import trainer.fused

    def faulty(layer):
        def call(*args, **kwargs):
            out = layer._call_impl(*args, **kwargs)
            if isinstance(out, tuple):
                return (_Amplify.apply(out[0]), *out[1:])
            return _Amplify.apply(out)

        return call

    return [(layer, faulty(layer)) for layer in trainer.fused.decoder_layers(model)]


def _losses(sink: ListSink) -> list[float]:
    return [e["loss"] for e in sink.events if e["event"] == "step"]


def _norms(sink: ListSink) -> list[float]:
    return [e["grad_norm"] for e in sink.events if e["event"] == "step"]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["ahead", "first step"])
def test_a_compiled_step_with_wrong_gradients_is_dropped_and_the_run_learns_what_the_eager_run_learns(
        tmp_path, monkeypatch, capsys, where):
    """Compiled ahead (the default) or at the first step (shapes that vary): either way the fault is caught before
    any update, the run trains eagerly and says why, and its steps are the eager run's."""
    import trainer.fused
    import trainer.run

    eager = ListSink()
    assert run(CFG.replace(compile="off", output_dir=str(tmp_path / "runs" / "off")), eager) == 0
    monkeypatch.setattr(trainer.fused, "compiled_layers", _faulty_compiled_layers)
    if where == "first step":
        monkeypatch.setattr(trainer.run, "_compile_ahead", lambda *a, **k: a[5])  # the plan as it was
    capsys.readouterr()
    faulty = ListSink()
    assert run(CFG.replace(compile="on", output_dir=str(tmp_path / "runs" / "on")), faulty) == 0
    log = capsys.readouterr().err

    assert "the compiled step's gradients disagree with the eager step's" in log
    assert "this run trains without torch.compile" in log
    # no update ever used the wrong gradients: the steps are the eager run's, but for dropout masks laid out over
    # batches padded to the compiled shape (the first loss is exact: the adapter's B starts at zero)
    assert _losses(faulty)[0] == pytest.approx(_losses(eager)[0], rel=1e-6)
    assert _norms(faulty)[0] == pytest.approx(_norms(eager)[0], rel=0.05)
    assert _losses(faulty) == pytest.approx(_losses(eager), rel=1e-3)
    assert max(_norms(faulty)) < 100 * max(_norms(eager))


@pytest.mark.slow
def test_a_compiled_step_that_agrees_with_the_eager_step_trains_compiled(tmp_path, capsys):
    sink = ListSink()
    assert run(CFG.replace(compile="on", output_dir=str(tmp_path / "run")), sink) == 0
    log = capsys.readouterr().err
    assert "compiled step checked against the eager step: gradient norm" in log
    assert "disagree" not in log
    plan = next(e for e in sink.events if e["event"] == "memory_plan")
    assert plan["compile"]


def test_gradients_agree_to_rounding_and_disagree_when_scaled_turned_or_not_finite():
    torch.manual_seed(0)
    grads = [torch.randn(4, 3), None, torch.randn(5)]
    close = [g + 1e-3 * torch.randn_like(g) if g is not None else None for g in grads]
    assert compare(grads, close).agree
    assert compare([None, None], [None, None]).agree
    scaled = [g * 1e4 if g is not None else None for g in grads]
    assert not compare(scaled, grads).agree  # the fault seen on the GPU: right direction, 10^4 too large
    assert compare(scaled, grads).cosine == pytest.approx(1.0)
    assert not compare([-g if g is not None else None for g in grads], grads).agree  # right size, wrong way
    assert not compare([grads[0] * float("nan"), None, grads[2]], grads).agree
    assert not compare([torch.zeros(4, 3), None, torch.zeros(5)], grads).agree  # no gradient reached the adapter
    assert not Verdict(1.0, 0.0, 0.0).agree and Verdict(0.0, 0.0, 1.0).agree


@pytest.mark.slow
def test_a_fault_that_shows_only_after_the_check_is_caught_at_the_first_step(tmp_path, monkeypatch, capsys):
    """The baseline eval and the encode thread run between the check and the first step: a compiled step that goes
    wrong in between is caught by its first gradient norm, and that step runs again eagerly before any update."""
    import trainer.fused

    calls = {"n": 0}

    def late_fault(model, mode):
        layers = trainer.fused.decoder_layers(model)
        faulty = dict(_faulty_compiled_layers(model, mode))

        def call_for(layer):
            def call(*args, **kwargs):
                if layer is layers[0]:
                    calls["n"] += 1
                # the compile and the check are the first two compiled forwards; from the third on, the fault
                return (faulty[layer] if calls["n"] > 2 else layer._call_impl)(*args, **kwargs)

            return call

        return [(layer, call_for(layer)) for layer in layers]

    eager = ListSink()
    assert run(CFG.replace(compile="off", output_dir=str(tmp_path / "runs" / "off")), eager) == 0
    monkeypatch.setattr(trainer.fused, "compiled_layers", late_fault)
    capsys.readouterr()
    late = ListSink()
    assert run(CFG.replace(compile="on", output_dir=str(tmp_path / "runs" / "on")), late) == 0
    log = capsys.readouterr().err

    assert "compiled step checked against the eager step" in log
    assert "first step: the compiled step's gradient norm is" in log and "this step runs again" in log
    assert _losses(late)[0] == pytest.approx(_losses(eager)[0], rel=1e-6)
    assert _norms(late)[0] == pytest.approx(_norms(eager)[0], rel=0.05)
    assert _losses(late) == pytest.approx(_losses(eager), rel=1e-3)
