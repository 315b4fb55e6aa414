"""The fast path learns exactly what the plain path learns: same losses, same predictions, only sooner.

The fast path caches image features (frozen vision tower), computes logits only at the answer positions, splits
each optimizer step into planned micro-batches and scores the 37 labels in one packed pass. Each piece is checked
against the plain computation on the tiny models, then whole runs are compared end to end.
"""

from __future__ import annotations

import json
import logging
import types
import warnings

import pytest
import torch

from trainer.collate import answer_ids, build_chat_format, encode_train_sample, pad_batch
from trainer.config import TrainConfig
from trainer.data import load_splits
from trainer.evaluate import _encode, candidate_tensor, score_labels
from trainer.events import ListSink
from trainer.features import FeatureCache, image_features_passthrough
from trainer.labels import LABELS
from trainer.model import apply_lora
from trainer.run import run
from trainer.scoring import score_labels_packed
from trainer.train import StepPlan, answer_loss_sum, plain_loss_sum, run_step

FAMILIES = ["tiny_gemma3", "tiny_gemma4"]


def _fresh(request, name):
    """A private copy of a session fixture's model (LoRA wraps it in place)."""
    import copy

    model, processor = request.getfixturevalue(name)
    return copy.deepcopy(model), processor


@pytest.mark.parametrize("name", FAMILIES)
def test_cached_features_and_answer_only_logits_give_the_plain_loss(request, name):
    model, processor = _fresh(request, name)
    model = apply_lora(model, TrainConfig(lora_dropout=0.0))
    fmt = build_chat_format(processor, "list")
    examples = load_splits("builtin:synthetic-pets").train[:5]
    plain_batch = pad_batch([encode_train_sample(processor, fmt, ex.open(), ex.label) for ex in examples],
                            processor.tokenizer.pad_token_id)
    cache = FeatureCache(model, processor, fmt, torch.device("cpu"))
    fast_batch = next(cache.train_batches(examples, [list(range(5))], num_workers=0))

    model.train()
    plain = plain_loss_sum(model, plain_batch)
    with image_features_passthrough(model):
        fast = answer_loss_sum(model, fast_batch)
    assert cache.encoded == 5
    assert fast.item() == pytest.approx(plain.item(), rel=1e-5)
    assert torch.equal(fast_batch["labels"], plain_batch["labels"])


@pytest.mark.parametrize("name", FAMILIES)
def test_packed_label_scoring_equals_scoring_each_label_on_its_own(request, name):
    model, processor = _fresh(request, name)
    model.eval()
    fmt = build_chat_format(processor, "list")
    examples = load_splits("builtin:synthetic-pets").test[:4]
    cand, mask = candidate_tensor(processor.tokenizer, fmt)
    plain = score_labels(model, _encode(processor, fmt, examples, "cpu"), cand, mask)
    ids = [answer_ids(processor.tokenizer, fmt, i) for i in range(len(LABELS))]
    packed = score_labels_packed(model, _encode(processor, fmt, examples, "cpu"), ids)
    assert packed.shape == (4, len(LABELS))
    torch.testing.assert_close(packed, plain, rtol=1e-4, atol=1e-4)
    assert torch.equal(packed.argmax(-1), plain.argmax(-1))


def test_how_a_step_is_split_into_micro_batches_does_not_change_the_gradient(tiny_gemma3):
    model, processor = tiny_gemma3
    import copy

    model = apply_lora(copy.deepcopy(model), TrainConfig(lora_dropout=0.0))
    fmt = build_chat_format(processor, "short")
    examples = load_splits("builtin:synthetic-pets").train[::37][:4]  # different labels: different lengths
    samples = [encode_train_sample(processor, fmt, ex.open(), ex.label) for ex in examples]
    pad = processor.tokenizer.pad_token_id

    def grads(split):
        model.zero_grad(set_to_none=True)
        loss = run_step(model, [pad_batch(samples[a:b], pad) for a, b in split], StepPlan(4, plain_loss_sum), "cpu").item()
        return loss, [p.grad.clone() for p in model.parameters() if p.requires_grad]

    whole_loss, whole = grads([(0, 4)])
    split_loss, split = grads([(0, 1), (1, 3), (3, 4)])
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)
    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("fixed", "plain", "ckpt", "expected"), [
    (10, 4, 1, (8, 2, False)),  # 10 + 8 x 4 GiB fits in 72 GiB, 16 samples would not: no checkpointing needed
    (10, 9, 1, (16, 1, True)),  # only 4 fit without; checkpointing fits all 16: worth the recompute
    (10, 20, 17, (2, 8, False)),  # 2 fit without, checkpointing does not double it: not worth it
    (65, 9, 1, (4, 4, True)),  # not even 1 fits without checkpointing
])
def test_memory_plan_picks_the_micro_batch_and_checkpointing_from_measured_memory(monkeypatch, fixed, plain, ckpt,
                                                                                    expected):
    import trainer.memory as memory

    gib = 2**30
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _: types.SimpleNamespace(total_memory=80 * gib))
    state = {"checkpointing": False}
    # the probe's peak: fixed + per-sample x samples, per sample smaller with checkpointing
    monkeypatch.setattr(memory, "_probe", lambda _m, n, _l, _c: (fixed + n * (ckpt if state["checkpointing"]
                                                                               else plain)) * gib)
    plan = memory.plan_memory(TrainConfig(batch_size=8, gradient_accumulation_steps=2), torch.nn.Linear(2, 2),
                              lambda m: m, None, torch.device("cuda"), lambda: state.update(checkpointing=True),
                              disable_checkpointing=lambda: state.update(checkpointing=False))
    assert (plan.micro_batch, plan.accumulation, plan.checkpointing) == expected
    assert state["checkpointing"] == plan.checkpointing  # the model is left in the state the plan says
    assert "per sample" in plan.why


def test_a_fixed_micro_batch_must_divide_the_step():
    from trainer.config import ConfigError

    assert TrainConfig(batch_size=8, gradient_accumulation_steps=2, micro_batch=4).validate().micro_batch == 4
    with pytest.raises(ConfigError, match="must divide"):
        TrainConfig(batch_size=8, gradient_accumulation_steps=2, micro_batch=3).validate()


@pytest.mark.slow
@pytest.mark.parametrize("model_id", ["builtin:tiny-gemma3", "builtin:tiny-gemma4"])
def test_fast_run_learns_what_the_plain_run_learns(tmp_path, model_id):
    cfg = TrainConfig(model_id=model_id, dataset="builtin:synthetic-pets", prompt="short", train_size=37,
                      eval_size=37, batch_size=2, gradient_accumulation_steps=3, num_epochs=2, learning_rate=1e-2,
                      lora_r=4, eval_mode="both", max_new_tokens=4, num_workers=0, save_steps=0,
                      # dropout masks are random draws whose shape follows the micro-batch padding, so they differ
                      # between any two splits of a step; without dropout the two paths must agree step by step
                      lora_dropout=0.0)
    sinks = {}
    for fast in (False, True):
        sinks[fast] = ListSink()
        assert run(cfg.replace(fast_path=fast, output_dir=str(tmp_path / str(fast))), sinks[fast]) == 0

    def losses(sink):
        return [e["loss"] for e in sink.events if e["event"] == "step"]

    assert len(losses(sinks[True])) == len(losses(sinks[False])) == 13  # ceil(2 epochs x 37 / 6)
    assert losses(sinks[True]) == pytest.approx(losses(sinks[False]), rel=1e-3)
    plan = next(e for e in sinks[True].events if e["event"] == "memory_plan")
    assert plan["feature_cache"] and plan["micro_batch"] == 6
    cache = next(e for e in sinks[True].events if e["event"] == "image_cache")
    assert cache["images"] == 37 + 37  # every train and eval image through the vision tower exactly once

    def predictions(fast):
        rows = [json.loads(line) for line in (tmp_path / str(fast) / "predictions.jsonl").read_text().splitlines()]
        return [(r["phase"], r["mode"], r["image_id"], r["pred"]) for r in rows]

    assert predictions(True) == predictions(False)


@pytest.mark.slow
@pytest.mark.parametrize("model_id", ["builtin:tiny-gemma3", "builtin:tiny-gemma4"])
def test_lora_on_the_vision_tower_trains_without_the_feature_cache(tmp_path, model_id):
    # all-linear puts adapters in the vision tower: its features change every step, so nothing may be cached
    cfg = TrainConfig(model_id=model_id, dataset="builtin:synthetic-pets", prompt="short", train_size=12,
                      eval_size=6, batch_size=2, gradient_accumulation_steps=2, max_steps=2, lora_target="all-linear",
                      eval_mode="constrained", num_workers=0, save_steps=0, output_dir=str(tmp_path / "run"))
    sink = ListSink()
    assert run(cfg, sink) == 0
    plan = next(e for e in sink.events if e["event"] == "memory_plan")
    assert plan["feature_cache"] is False and plan["micro_batch"] == 4
    assert not any(e["event"] == "image_cache" for e in sink.events)
    assert [e["step"] for e in sink.events if e["event"] == "step"] == [1, 2]


def test_a_fixed_shape_batch_adds_nothing_to_the_loss_or_the_gradient(tiny_gemma3):
    import copy

    from trainer.collate import fixed_shape_batch

    model, processor = tiny_gemma3
    model = apply_lora(copy.deepcopy(model), TrainConfig(lora_dropout=0.0)).train()
    fmt = build_chat_format(processor, "short")
    examples = load_splits("builtin:synthetic-pets").train[::37][:3]
    samples = [encode_train_sample(processor, fmt, ex.open(), ex.label) for ex in examples]
    pad = processor.tokenizer.pad_token_id

    def loss_and_grads(batch):
        model.zero_grad(set_to_none=True)
        loss = plain_loss_sum(model, batch)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    natural = pad_batch(samples, pad)
    fixed = fixed_shape_batch(samples, pad, rows=5, width=natural["input_ids"].shape[1] + 7)
    assert fixed["input_ids"].shape == (5, natural["input_ids"].shape[1] + 7)
    assert (fixed["labels"][3:] == -100).all()  # filler rows: copies of a sample with every label ignored
    loss, grads = loss_and_grads(natural)
    fixed_loss, fixed_grads = loss_and_grads(fixed)
    assert fixed_loss == pytest.approx(loss, rel=1e-5)
    for a, b in zip(grads, fixed_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("changes", "device", "steps", "warm", "expected"), [
    ({}, "cpu", 10_000, set(), (None, "CPU")),
    ({"quantization": "4bit"}, "cuda", 10_000, set(), (None, "bf16 fast path")),
    ({}, "cuda", 188, set(), (None, "less than a cold compile")),  # the default 1000 x 3: ~22 s saved < ~29 s
    ({}, "cuda", 690, set(), ("plain", "more than a cold compile")),  # the full 3680-image split x 3
    ({}, "cuda", 188, {"plain"}, ("plain", "more than a warm start")),  # an earlier run left the compiled artifacts
    ({}, "cuda", 188, {"autotuned"}, ("autotuned", "more than a warm start")),  # a --compile on run left them
    ({}, "cuda", 188, {"plain", "autotuned"}, ("autotuned", "more than a warm start")),  # the faster step wins
    ({}, "cuda", 20, {"plain", "autotuned"}, (None, "less than a warm start")),
    ({}, "cuda", 100_000, set(), ("autotuned", "more than a cold compile")),  # ~5 min of autotuning repaid
    ({"compile": "on"}, "cuda", 1, set(), ("autotuned", "--compile on")),
    ({"compile": "on"}, "cpu", 1, set(), ("plain", "--compile on")),  # Triton's GEMM templates need a GPU
    ({"compile": "on", "quantization": "4bit"}, "cuda", 1, set(), ("plain", "--compile on")),  # 4-bit: unmeasured
    ({"compile": "off"}, "cuda", 10_000, {"plain"}, (None, "--compile off")),
])
def test_auto_compiles_in_the_mode_the_run_repays(changes, device, steps, warm, expected):
    from trainer.compiling import choose_compile

    mode, why = choose_compile(TrainConfig(**changes), torch.device(device), False, True, steps, 16, warm)
    assert mode == expected[0] and expected[1] in why


def test_every_mode_auto_can_choose_has_inductor_options_and_no_others():
    """trainer.compiling weighs the modes, trainer.fused compiles them: a mode in one table only would fail its
    compile with a KeyError, which the first step would read as a compiler failure and quietly train on eagerly."""
    from trainer.compiling import MODES
    from trainer.fused import COMPILE_OPTIONS

    assert set(MODES) == set(COMPILE_OPTIONS)


def test_a_cache_file_that_does_not_load_is_decided_again_as_absent(tmp_path, monkeypatch, capsys):
    import trainer.run
    from trainer.compiling import cache_path

    cfg = TrainConfig(output_dir=str(tmp_path / "runs" / "a"), train_size=1000, num_epochs=3)
    ns = types.SimpleNamespace
    model = ns(config=ns(get_text_config=lambda: ns(to_dict=lambda: {})))
    device = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    stale = cache_path(cfg, model, device, "autotuned")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"\x00from another torch")
    mode, why, path = trainer.run._compile_choice(cfg, model, device, False, 1000, True)
    # a warm autotuned start was assumed; cold it would cost ~5 min, more than the run saves
    assert (mode, path) == (None, None) and "less than a cold compile" in why
    assert "not loaded" in capsys.readouterr().err


@pytest.mark.slow
def test_a_compiled_run_learns_what_the_eager_run_learns_and_the_next_run_starts_warm(tmp_path):
    cfg = TrainConfig(model_id="builtin:tiny-gemma3", dataset="builtin:synthetic-pets", prompt="short",
                      train_size=37, eval_size=6, batch_size=16, gradient_accumulation_steps=1, num_epochs=1,
                      learning_rate=1e-2, lora_r=4, eval_mode="constrained", num_workers=0, save_steps=0,
                      # compiled micro-batches are padded to one shape, and dropout masks follow the shape; without
                      # dropout the two runs must agree step by step (tests/trainer/test_fused.py: same masks
                      # at the same shape)
                      lora_dropout=0.0)
    sinks = {}
    for name in ("off", "on", "again"):
        sinks[name] = ListSink()
        compile_ = "off" if name == "off" else "on"
        assert run(cfg.replace(compile=compile_, output_dir=str(tmp_path / "runs" / name)), sinks[name]) == 0

    def losses(sink):
        return [e["loss"] for e in sink.events if e["event"] == "step"]

    assert len(losses(sinks["off"])) == 3  # 16 + 16 + 5: the last micro-batch is padded to 16 rows when compiled
    assert losses(sinks["on"]) == pytest.approx(losses(sinks["off"]), rel=1e-4)
    assert losses(sinks["again"]) == pytest.approx(losses(sinks["on"]), rel=1e-6)
    plans = {name: next(e for e in sink.events if e["event"] == "memory_plan") for name, sink in sinks.items()}
    assert not plans["off"]["compile"] and plans["on"]["compile"]
    assert "loaded from the cache" in plans["again"]["compile_why"]
    assert list((tmp_path / "runs" / ".compile-cache").glob("*.bin"))


def test_compiling_ahead_undoes_its_step_gradients_dropout_draws_and_train_mode(request, tmp_path, monkeypatch):
    """A resumed run compiles ahead from its checkpoint's RNG state: the stand-in step's dropout draws must not
    shift the masks the resumed steps draw."""
    import trainer.fused
    from trainer.run import _compiled_shape
    from trainer.train import compile_ahead

    monkeypatch.setattr(trainer.fused, "compiled_layers",  # the layers' own calls: what is undone, not inductor
                        lambda model, mode: [(layer, layer._call_impl) for layer in trainer.fused.decoder_layers(model)])
    model, processor = _fresh(request, "tiny_gemma3")
    model = apply_lora(model, TrainConfig(lora_r=4, lora_dropout=0.1))
    fmt = build_chat_format(processor, "short")
    examples = load_splits("builtin:synthetic-pets").train[:2]
    cache = FeatureCache(model, processor, fmt, torch.device("cpu"))
    shape = _compiled_shape(cache, types.SimpleNamespace(processor=processor), fmt, examples, 4)
    batch = next(cache.train_batches(examples, [[0] * 4], 0, shape=shape))
    plan = StepPlan(4, answer_loss_sum, cache, fused=True, compile_mode="plain", compile_cache=tmp_path / "c.bin",
                    shape=shape)
    model.eval()
    rng = torch.get_rng_state()
    compiled = compile_ahead(model, batch, plan, "cpu")
    assert torch.equal(torch.get_rng_state(), rng) and not model.training
    assert all(p.grad is None for p in model.parameters())
    assert (compiled.compile_mode, compiled.compile_cache) == ("plain", None)  # compiled; nothing left to do
    model.train()
    run_step(model, [batch], compiled, "cpu")  # the same step, not undone, draws its dropout masks
    assert not torch.equal(torch.get_rng_state(), rng)


@pytest.mark.slow
def test_the_step_compiles_beside_the_eval_encodes_before_training_and_learns_what_the_first_step_would(
        tmp_path, monkeypatch, capsys):
    """Compiling ahead runs one forward + backward on a stand-in batch: its gradients and dropout draws are undone,
    so the run learns bit for bit what a run compiling at its first step learns, and evaluates the same."""
    import trainer.run

    cfg = TrainConfig(model_id="builtin:tiny-gemma3", dataset="builtin:synthetic-pets", prompt="short",
                      train_size=32, eval_size=6, batch_size=16, gradient_accumulation_steps=1, num_epochs=1,
                      learning_rate=1e-2, lora_r=4, lora_dropout=0.1, eval_mode="constrained", num_workers=0,
                      save_steps=0, compile="on")
    sinks = {name: ListSink() for name in ("ahead", "first_step")}
    assert run(cfg.replace(output_dir=str(tmp_path / "runs" / "ahead")), sinks["ahead"]) == 0
    ahead_log = capsys.readouterr().err
    monkeypatch.setattr(trainer.run, "_compile_ahead", lambda *a, **k: a[5])  # the plan as it was: first step compiles
    assert run(cfg.replace(output_dir=str(tmp_path / "runs" / "first_step")), sinks["first_step"]) == 0
    first_step_log = capsys.readouterr().err

    def losses(sink):
        return [e["loss"] for e in sink.events if e["event"] == "step"]

    assert losses(sinks["ahead"]) == losses(sinks["first_step"])  # same dropout masks, same updates
    metrics = {name: json.loads((tmp_path / "runs" / name / "metrics.json").read_text()) for name in sinks}
    assert metrics["ahead"]["baseline"] == metrics["first_step"]["baseline"]
    assert metrics["ahead"]["final"] == metrics["first_step"]["final"]
    assert "compile_s" not in metrics["ahead"]["timings"]  # inside the baseline phase, beside its image encodes
    # the eval images went through the vision tower beside the compile, once; the first step compiled nothing
    assert "eval images, beside the compile: 6 images encoded" in ahead_log
    assert "training step compiled" in ahead_log and "first step" not in ahead_log
    assert "first step: compiling" in first_step_log


@pytest.mark.slow
def test_when_compiling_fails_the_run_trains_on_eagerly_and_says_so(tmp_path, monkeypatch, capsys):
    import trainer.fused

    def no_compiler(model, mode):  # what Triton raises in an image without a C compiler
        def fail(*args, **kwargs):
            raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")

        return [(layer, fail) for layer in trainer.fused.decoder_layers(model)]

    cfg = TrainConfig(model_id="builtin:tiny-gemma3", dataset="builtin:synthetic-pets", prompt="short",
                      train_size=16, eval_size=4, batch_size=8, gradient_accumulation_steps=1, num_epochs=1,
                      lora_r=4, eval_mode="constrained", num_workers=0, save_steps=0, lora_dropout=0.1)
    sinks = {name: ListSink() for name in ("off", "failed")}
    assert run(cfg.replace(compile="off", output_dir=str(tmp_path / "runs" / "off")), sinks["off"]) == 0
    monkeypatch.setattr(trainer.fused, "compiled_layers", no_compiler)
    assert run(cfg.replace(compile="on", output_dir=str(tmp_path / "runs" / "failed")), sinks["failed"]) == 0

    def losses(sink):
        return [e["loss"] for e in sink.events if e["event"] == "step"]

    # the failed attempt's RNG draws are rolled back: the first step draws the eager run's dropout masks; later
    # batches stay padded to the compiled shape, so their masks are laid out differently (same distribution)
    assert losses(sinks["failed"])[0] == pytest.approx(losses(sinks["off"])[0], rel=1e-6)
    assert losses(sinks["failed"]) == pytest.approx(losses(sinks["off"]), rel=1e-3)
    assert "torch.compile failed (RuntimeError: Failed to find C compiler" in capsys.readouterr().err
    assert not (tmp_path / "runs" / ".compile-cache").exists()


def test_a_torn_compile_cache_only_means_a_cold_compile(tmp_path, capsys):
    from trainer.compiling import load_cache

    torn = tmp_path / "cache.bin"
    torn.write_bytes(b"\x00half a file")
    assert load_cache(torn) is False and load_cache(tmp_path / "missing.bin") is False
    assert "not loaded" in capsys.readouterr().err


def test_a_long_compile_still_logs_that_the_job_is_alive_and_stops_when_it_ends(capsys):
    import time

    from trainer.events import heartbeat

    with heartbeat("first step: still compiling", every_s=0.05):
        time.sleep(0.3)
    beats = capsys.readouterr().err.splitlines()
    assert len(beats) >= 2 and all(b.startswith("first step: still compiling: ") for b in beats)
    time.sleep(0.15)
    assert capsys.readouterr().err == ""


class _Kept(logging.Handler):
    """The records a logger lets through (handlers on it see only what its filters keep)."""

    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _inductor_drops_a_choice():
    """What inductor 2.11-2.13 logs when an autotune choice does not build on the GPU, then drops it."""
    log = logging.getLogger("torch._inductor.select_algorithm")
    error = RuntimeError("No valid triton configs. OutOfMemoryError: out of resource: triton_mm Required: 262144")
    log.error("Exception %s for benchmark choice %s", error, "TritonTemplateCaller(mm)", exc_info=error)
    log.error("Runtime error during autotuning: \n%s. \nIgnoring this choice.", str(error))
    warnings.warn("TypedStorage is deprecated. It will be removed in the future", UserWarning, stacklevel=1)


def test_the_autotune_choices_inductor_drops_stay_out_of_the_log_and_real_errors_do_not():
    from trainer.compiling import quiet_autotune

    kept, log = _Kept(), logging.getLogger("torch._inductor.select_algorithm")
    log.addHandler(kept)
    try:
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            with quiet_autotune() as skipped:
                _inductor_drops_a_choice()
                log.error("Runtime error for autotuning triton choices, defaulting to extern kernels.")
            _inductor_drops_a_choice()  # outside: inductor's logging and warnings as they were
    finally:
        log.removeHandler(kept)
    assert skipped.reports == 2 and [str(w.message)[:26] for w in shown] == ["TypedStorage is deprecated"]
    assert kept.messages[0] == "Runtime error for autotuning triton choices, defaulting to extern kernels."
    assert len(kept.messages) == 3 and "Ignoring this choice" in kept.messages[2]


@pytest.mark.slow
def test_an_autotuned_compile_says_in_one_line_what_inductor_dropped(tmp_path, monkeypatch, capsys):
    import trainer.fused

    dropped = []

    def dropping_choices(model, mode):  # each layer's compile drops a choice once, then the layer runs as compiled
        def call(layer):
            def compiled(*args, **kwargs):
                if layer not in dropped:
                    dropped.append(layer)
                    _inductor_drops_a_choice()
                return layer._call_impl(*args, **kwargs)
            return compiled

        return [(layer, call(layer)) for layer in trainer.fused.decoder_layers(model)]

    monkeypatch.setattr(trainer.fused, "compiled_layers", dropping_choices)
    cfg = TrainConfig(model_id="builtin:tiny-gemma3", dataset="builtin:synthetic-pets", prompt="short",
                      train_size=16, eval_size=4, batch_size=8, gradient_accumulation_steps=1, num_epochs=1,
                      lora_r=4, eval_mode="constrained", num_workers=0, save_steps=0, compile="on")
    kept, log = _Kept(), logging.getLogger("torch._inductor.select_algorithm")
    log.addHandler(kept)
    try:
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            assert run(cfg.replace(output_dir=str(tmp_path / "runs" / "x")), ListSink()) == 0
    finally:
        log.removeHandler(kept)
    err = capsys.readouterr().err
    assert dropped and f"({2 * len(dropped)} reports of it kept out of this log)" in err
    assert not [w for w in shown if "TypedStorage" in str(w.message)]
    assert kept.messages == [] and "Ignoring this choice" not in err
