"""A compiled step that computes wrong gradients is caught before training, and the run learns what it should.

On an H100, about one process in ten compiled a training step whose forward was right and whose gradients were
~10^4 times too large, for the whole run; the run learned next to nothing and said nothing. Here the fault is made
on purpose: the compiled decoder layers scale the gradient flowing back through them, as the real one did, while
the eager layers stay right. The check (trainer.guard) compares the two on one micro-batch before training.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from trainer import autotuned
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


def _run_both(tmp_path, monkeypatch, capsys, compiled_layers, where: str = "ahead") -> tuple[ListSink, ListSink, str]:
    """The eager run, then the compiled run with `compiled_layers` standing in for trainer.fused's (compiled ahead
    or at the first step): (eager run's events, compiled run's events, compiled run's log)."""
    import trainer.fused
    import trainer.run

    eager = ListSink()
    assert run(CFG.replace(compile="off", output_dir=str(tmp_path / "runs" / "off")), eager) == 0
    monkeypatch.setattr(trainer.fused, "compiled_layers", compiled_layers)
    if where == "first step":
        monkeypatch.setattr(trainer.run, "_compile_ahead", lambda *a, **k: a[5])  # the plan as it was
    capsys.readouterr()
    compiled = ListSink()
    assert run(CFG.replace(compile="on", output_dir=str(tmp_path / "runs" / "on")), compiled) == 0
    return eager, compiled, capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("where", ["ahead", "first step"])
def test_a_compiled_step_with_wrong_gradients_is_dropped_and_the_run_learns_what_the_eager_run_learns(
        tmp_path, monkeypatch, capsys, where):
    """Compiled ahead (the default) or at the first step (shapes that vary): either way the fault is caught before
    any update, the run trains eagerly and says why, and its steps are the eager run's."""
    eager, faulty, log = _run_both(tmp_path, monkeypatch, capsys, _faulty_compiled_layers, where)

    assert "the compiled step's gradients disagree with the eager step's" in log
    assert "inductor kept no other kernel configs to try: this run trains without torch.compile" in log
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

    eager, late, log = _run_both(tmp_path, monkeypatch, capsys, late_fault)

    assert "compiled step checked against the eager step" in log
    assert "first step: the compiled step's gradient norm is" in log and "this step runs again" in log
    assert _losses(late)[0] == pytest.approx(_losses(eager)[0], rel=1e-6)
    assert _norms(late)[0] == pytest.approx(_norms(eager)[0], rel=0.05)
    assert _losses(late) == pytest.approx(_losses(eager), rel=1e-3)


class _Kernel:
    """A Triton kernel as inductor leaves it after timing its configs: every compiled config, and the one it
    launches with (`make_launcher` fails for the configs in `broken`)."""

    def __init__(self, *configs: str, chosen: str, broken: tuple[str, ...] = ()):
        self.compile_results = [SimpleNamespace(config=c, make_launcher=self._loader(c, c in broken)) for c in configs]
        self.launchers = [SimpleNamespace(config=chosen)]

    @staticmethod
    def _loader(config: str, broken: bool):
        def make_launcher():
            if broken:
                raise RuntimeError("out of resources: shared memory")
            return SimpleNamespace(config=config)

        return make_launcher

    def config(self) -> str:
        return self.launchers[0].config


def _layers_wrong_with(kernel: _Kernel, wrong: str):
    """Compiled decoder layers whose gradients are wrong while `kernel` launches with its `wrong` config (the fault
    found on the GPU: one config of one fused RMSNorm-backward kernel)."""

    def compiled_layers(model, mode):
        faulty = dict(_faulty_compiled_layers(model, mode))

        def call_for(layer):
            def call(*args, **kwargs):
                return (faulty[layer] if kernel.config() == wrong else layer._call_impl)(*args, **kwargs)

            return call

        return [(layer, call_for(layer)) for layer in faulty]

    return compiled_layers


@pytest.mark.slow
@pytest.mark.parametrize("where", ["ahead", "first step"])
def test_a_kernel_config_that_computes_wrong_gradients_is_picked_again_and_the_run_stays_compiled(
        tmp_path, monkeypatch, capsys, where):
    """Inductor timed the wrong config of a kernel fastest; another kernel it also chose by timing is tried first
    and changes nothing (its choice is put back). With the kernel's other config the compiled step agrees with the
    eager one: the run keeps torch.compile, says which config it kept, and learns what the eager run learns."""
    decoy = _Kernel("XBLOCK: 1, R0_BLOCK: 1024", "XBLOCK: 1, R0_BLOCK: 512", chosen="XBLOCK: 1, R0_BLOCK: 1024")
    norm_backward = _Kernel("XBLOCK: 2, R0_BLOCK: 256", "XBLOCK: 2, R0_BLOCK: 128", chosen="XBLOCK: 2, R0_BLOCK: 256")
    monkeypatch.setattr(autotuned, "choices", lambda: [autotuned.Choice("triton_red_fused_add_view_17", decoy),
                                                       autotuned.Choice("triton_red_fused_rms_norm_backward", norm_backward)])
    eager, repicked, log = _run_both(tmp_path, monkeypatch, capsys,
                                     _layers_wrong_with(norm_backward, "XBLOCK: 2, R0_BLOCK: 256"), where)

    assert "the compiled step's gradients disagree with the eager step's" in log
    assert ("inductor had timed triton_red_fused_rms_norm_backward fastest with [XBLOCK: 2, R0_BLOCK: 256]; with "
            "[XBLOCK: 2, R0_BLOCK: 128] the compiled step's gradients agree") in log
    assert "this run keeps torch.compile" in log and "trains without torch.compile" not in log
    assert norm_backward.config() == "XBLOCK: 2, R0_BLOCK: 128" and decoy.config() == "XBLOCK: 1, R0_BLOCK: 1024"
    assert _losses(repicked)[0] == pytest.approx(_losses(eager)[0], rel=1e-6)
    assert _losses(repicked) == pytest.approx(_losses(eager), rel=1e-3)
    assert max(_norms(repicked)) < 100 * max(_norms(eager))


def test_trying_the_others_tries_each_passed_over_config_keeps_the_first_accepted_and_otherwise_puts_the_choice_back():
    kernel = _Kernel("a", "b", "c", "d", chosen="a", broken=("b",))
    tried = []

    def accept_d():
        tried.append(kernel.config())
        return "agrees" if kernel.config() == "d" else None

    assert autotuned.try_others(autotuned.Choice("k", kernel), accept_d) == ("d", "agrees")
    assert tried == ["c", "d"] and kernel.config() == "d"  # the chosen one is not tried; one that cannot load is skipped

    assert autotuned.try_others(autotuned.Choice("k", kernel), lambda: None) is None
    assert kernel.config() == "d"


def test_kernels_with_one_config_or_none_loaded_offer_no_choice():
    """On a CPU inductor builds C++ kernels, not Triton ones: nothing to pick again, so a disagreeing step trains
    eagerly (the tests above)."""
    assert all(len(c.kernel.compile_results) > 1 for c in autotuned.choices())


def test_inductor_internals_that_surprise_the_repick_leave_the_run_training_eagerly(monkeypatch, capsys):
    from trainer import guard

    def other_torch():
        raise AttributeError("'CachingAutotuner' object has no attribute 'compile_results'")

    monkeypatch.setattr(autotuned, "choices", other_torch)
    grads = [torch.ones(3)]
    assert guard.repick(lambda: [torch.ones(3) * 1e4], grads) is None
    assert ("picking kernel configs again failed (AttributeError: 'CachingAutotuner' object has no attribute "
            "'compile_results'): this run trains without torch.compile") in capsys.readouterr().err
