"""The GPU benchmark's hooks and probes, on CPU.

Generation runs to exactly --max-new-tokens ids, stop tokens or not: the reference's eval figures are for 32
generated tokens per image; a trained model answers in a few and stops, so the benchmark pins the length. Its first
version pinned it through a GenerationConfig subclass that transformers 5 silently dropped, and the final-eval
generation figures measured 2-7 tokens per image without anyone noticing. The attention, GEMM and autotune probes
compute what they claim to and leave the trainer's step alone.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import transformers

from trainer.collate import build_chat_format
from trainer.data import load_splits
from trainer.evaluate import _encode, predict_generate

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_generation_runs_to_max_new_tokens_even_when_the_model_emits_a_stop_token(tiny_gemma3, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setattr(transformers.GenerationMixin, "generate", transformers.GenerationMixin.generate)
    import gpu_train

    model, processor = tiny_gemma3
    model.eval()
    fmt = build_chat_format(processor, "short")
    examples = load_splits("builtin:synthetic-pets").test[:2]
    batch = _encode(processor, fmt, examples, "cpu")
    first = model.generate(**batch, max_new_tokens=1, do_sample=False)[0, -1].item()
    stops_at_once = dataclasses.replace(fmt, end_of_turn_id=first)  # the model's first token now ends its turn
    assert predict_generate(model, processor, stops_at_once, examples, 2, 12, "cpu", lambda d, t: None) == ["", ""]

    marks: dict = {}
    gpu_train._generate_full_length(marks)
    texts = predict_generate(model, processor, stops_at_once, examples, 2, 12, "cpu", lambda d, t: None)
    assert marks["new_tokens"] == [12]
    assert all(t for t in texts)
    sys.modules.pop("gpu_train", None)


def test_step_walls_time_each_step_from_the_previous_one_and_mark_checkpoints(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from gpu_probes import step_walls, train_timeline

    events = [{"event": "start", "t": 0.5}, {"event": "step", "t": 1.5, "epoch": 0.5},
              {"event": "step", "t": 1.75, "epoch": 1.0}, {"event": "checkpoint", "t": 1.8},
              {"event": "step", "t": 2.0, "epoch": 1.5}, {"event": "checkpoint", "t": 9.0}]
    marks = {"train_start": 1.0, "train_end": 2.0}
    assert step_walls(events, marks) == [500, 250, "C", 250, "C"]
    timeline = train_timeline(events, marks)
    assert timeline["first_step_s"] == 0.5 and timeline["later_ms_per_step"] == 200.0
    # the last checkpoint landed beside the final eval, after training: not training time
    assert timeline["checkpoints_s"] == 0.05


def test_the_host_split_probe_times_issuing_each_step_and_waiting_for_the_one_before(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from gpu_probes import host_split, host_split_summary

    import trainer.train as train_mod

    monkeypatch.setattr(train_mod, "_optimizer_step", lambda *a, **k: "queued")
    monkeypatch.setattr(train_mod._Reporter, "flush", lambda self: self.pending.clear())
    marks: dict = {}
    host_split(marks)
    reporter = train_mod._Reporter.__new__(train_mod._Reporter)
    for _ in range(3):
        assert train_mod._optimizer_step() == "queued"
        reporter.pending = ["a step"]
        reporter.flush()
        reporter.flush()  # nothing pending: not a wait
    assert len(marks["host_split"]["issue"]) == 3 and len(marks["host_split"]["wait"]) == 3
    assert set(host_split_summary(marks)) == {"issue_ms", "wait_ms"}


def test_image_bytecode_compiles_modules_where_every_later_process_finds_them(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.delenv("PYTHONPYCACHEPREFIX", raising=False)
    import gpu_train

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("X = 1\n")
    prefix = tmp_path / "pyc"
    info = gpu_train.image_bytecode([str(tmp_path / "pkg"), str(tmp_path / "missing")], str(prefix))
    monkeypatch.delenv("PYTHONPYCACHEPREFIX")  # set for the configurations' processes, not for this one
    assert info["bytecode_prefix"] == str(prefix)
    assert list(prefix.rglob("mod.cpython-*.pyc"))
    sys.modules.pop("gpu_train", None)


def test_the_attention_probes_unmasked_split_computes_gemma3s_masked_attention(monkeypatch):
    """bench/gpu_attention.py times a causal call plus a call for the image rows against the boolean mask: both
    must give the same attention and gradients, or its timings compare different things."""
    import torch
    from torch.nn.attention import SDPBackend

    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_attention

    q, k, v = (torch.randn(2, h, 24, 8, dtype=torch.float64, requires_grad=True) for h in (4, 2, 2))
    mask = gpu_attention.gemma3_mask(24, 3, 10, "cpu")
    assert mask[5, 12] and not mask[2, 5] and not mask[13, 20] and mask[20, 13]  # image both ways; causal elsewhere
    outs = [gpu_attention.masked(q, k, v, mask, SDPBackend.MATH), gpu_attention.split(q, k, v, 3, 13, SDPBackend.MATH)]
    grads = [torch.autograd.grad(o.square().sum(), (q, k, v)) for o in outs]
    torch.testing.assert_close(outs[1], outs[0])
    for a, b in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(a, b)


def test_the_padded_head_probes_compute_the_towers_attention_and_leave_it_as_it_was(tiny_gemma3, monkeypatch):
    """bench/gpu_headdim.py and gpu_vision.py --pad-heads time attention over zero-padded heads: the same function
    (scale kept at the real head size), or their timings compare different work; the tower gets its own back."""
    import torch
    import torch.nn.functional as F

    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_headdim
    import gpu_vision

    q, k, v = (torch.randn(2, 3, 20, 12, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(gpu_headdim.padded_sdpa(q, k, v, 32), F.scaled_dot_product_attention(q, k, v))
    inner = tiny_gemma3[0].model
    size = inner.config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    before = inner.vision_tower.config._attn_implementation
    with torch.no_grad():
        plain = inner.get_image_features(pixels, return_dict=True).pooler_output
        with gpu_vision.padded_heads(inner, 40):
            padded = inner.get_image_features(pixels, return_dict=True).pooler_output
    torch.testing.assert_close(padded, plain)
    assert inner.vision_tower.config._attn_implementation == before


def test_the_gemm_probes_fused_and_separate_projections_compute_the_same(monkeypatch):
    """bench/gpu_gemm.py times q/k/v as one GEMM over concatenated weights against three: same products, or the
    saving it reports compares different work."""
    import types

    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_gemm

    row = gpu_gemm.group_row("qkv", 32, [16, 8, 8], types.SimpleNamespace(tokens=12, iters=1, device="cpu"))
    assert row["max_abs_diff_fwd"] == 0.0  # the same dot products, one GEMM or three
    assert row["max_abs_diff_bwd"] < 1e-3  # the input gradient's sums, in bf16, in another order
    assert row["saved_ms_per_step"] == round(row["saved_ms_per_layer"] * gpu_gemm.LAYERS, 2)


def test_the_autotune_probe_reports_without_touching_the_step(monkeypatch):
    import trainer.guard as guard_mod
    import trainer.train as train_mod

    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_probes

    monkeypatch.setattr(guard_mod, "first_compiled_step", lambda *a, **k: ("loss", "plan"))
    monkeypatch.setattr(train_mod, "compile_ahead", lambda *a, **k: "plan")
    marks: dict = {}
    gpu_probes.probe_benchmarks(marks)
    assert guard_mod.first_compiled_step() == ("loss", "plan") and train_mod.compile_ahead() == "plan"
    assert marks["autotuned_kernels"][-1]["benchmark_all_configs_calls"] == 0  # no Triton kernels on CPU


def test_the_cache_check_encodes_first_epoch_chunks_again_and_finds_a_feature_cached_wrong(tmp_path, monkeypatch):
    """BENCH_CHECK_CACHE: after training, some of the first epoch's chunks are encoded again in line and compared
    with what the run cached; a corrupted entry is counted."""
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_probes

    import trainer.features as features_mod
    import trainer.run as run_mod
    from trainer.config import TrainConfig
    from trainer.events import ListSink

    monkeypatch.setattr(features_mod.FeatureCache, "encoder", features_mod.FeatureCache.encoder)
    monkeypatch.setattr(run_mod, "train", run_mod.train)
    real_train = run_mod.train

    def corrupting(*a, **k):  # one cached feature goes wrong during training
        state = real_train(*a, **k)
        entry = a[10].cache.entries[a[11][0].image_id]
        entry["pixel_values"] = entry["pixel_values"] + 1.0
        return state

    monkeypatch.setattr(run_mod, "train", corrupting)
    marks: dict = {}
    gpu_probes.check_cache(marks, chunks_checked=64)
    cfg = TrainConfig(model_id="builtin:tiny-gemma3", dataset="builtin:synthetic-pets", prompt="short", train_size=16,
                      eval_size=4, batch_size=4, gradient_accumulation_steps=1, max_steps=4, save_steps=0,
                      eval_mode="constrained", num_workers=0, output_dir=str(tmp_path / "run"))
    assert run_mod.run(cfg, ListSink()) == 0
    check = marks["cache_check"]
    assert check["images"] >= 16 and check["differ"] >= 1 and check["max_abs_diff"] >= 1.0


def test_a_run_that_did_not_learn_shows_in_its_accuracy_and_adapter_norms(tmp_path, monkeypatch):
    """The bench records the primary mode's accuracy before and after and the saved adapter's LoRA norms: B starts
    at zero, so a run whose optimizer never moved the adapter shows a B norm of 0."""
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.delenv("BENCH_TRAINER_ROOT", raising=False)
    import gpu_learning

    import trainer.run as run_mod
    from trainer.config import TrainConfig
    from trainer.events import ListSink

    cfg = TrainConfig(model_id="builtin:tiny-gemma3", dataset="builtin:synthetic-pets", prompt="short", train_size=8,
                      eval_size=4, batch_size=4, gradient_accumulation_steps=1, max_steps=2, save_steps=0,
                      eval_mode="constrained", num_workers=0, output_dir=str(tmp_path / "run"))
    assert run_mod.run(cfg, ListSink()) == 0
    assert set(gpu_learning.accuracy(cfg)) == {"baseline", "final"}
    norms = gpu_learning.adapter_norms(cfg)
    assert norms["lora_A"] > 0 and norms["lora_B"] > 0
    assert isinstance(gpu_learning.dynamo_counters(), dict)


def test_the_grad_probe_reports_where_a_gradient_lives_and_steps_a_huge_one_again(tmp_path, monkeypatch):
    """BENCH_GRAD_PROBE: the first steps' gradient norms by parameter; a step over the threshold (here every one)
    is stepped again compiled and eagerly, and training goes on from its own gradients."""
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_learning
    import torch

    import trainer.run as run_mod
    import trainer.train as train_mod
    from trainer.config import TrainConfig
    from trainer.events import ListSink

    monkeypatch.setattr(train_mod, "run_step", train_mod.run_step)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", torch.nn.utils.clip_grad_norm_)
    marks: dict = {}
    gpu_learning.grad_probe(marks, steps=2, anomalous=0.0)
    cfg = TrainConfig(model_id="builtin:tiny-gemma3", dataset="builtin:synthetic-pets", prompt="short", train_size=8,
                      eval_size=4, batch_size=4, gradient_accumulation_steps=1, max_steps=3, save_steps=0,
                      eval_mode="constrained", num_workers=0, output_dir=str(tmp_path / "run"))
    sink = ListSink()
    assert run_mod.run(cfg, sink) == 0
    first, second = marks["grad_probe"]
    assert first["lora_weight_norms"]["lora_B"] == 0.0 and second["lora_weight_norms"]["lora_B"] > 0
    assert all("lora_" in name for name, _, _ in first["top"]) and first["frozen_abs_sum"] > 0
    for report in (first, second):
        assert abs(report["again_compiled"] - report["total"]) < 0.5 * report["total"]
        assert abs(report["again_eager"] - report["total"]) < 0.5 * report["total"]
    steps = [e for e in sink.events if e["event"] == "step"]
    assert abs(steps[0]["grad_norm"] - first["total"]) < 1e-3 * first["total"]


def test_the_bench_records_what_the_compile_check_saw(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_learning

    import trainer.guard as guard_mod
    import trainer.run as run_mod
    from trainer.config import TrainConfig
    from trainer.events import ListSink

    monkeypatch.setattr(guard_mod, "compare", guard_mod.compare)
    monkeypatch.setattr(guard_mod, "again_eagerly", guard_mod.again_eagerly)
    monkeypatch.setattr(guard_mod, "check_compiled", guard_mod.check_compiled)
    marks: dict = {}
    gpu_learning.record_compile_checks(marks)
    cfg = TrainConfig(model_id="builtin:tiny-gemma3", dataset="builtin:synthetic-pets", prompt="short", train_size=8,
                      eval_size=4, batch_size=4, gradient_accumulation_steps=1, max_steps=2, save_steps=0,
                      eval_mode="constrained", num_workers=0, compile="on", output_dir=str(tmp_path / "run"))
    assert run_mod.run(cfg, ListSink()) == 0
    (check,) = marks["compile_checks"]
    assert check["agree"] and check["eager_norm"] > 0 and check["cosine"] > 0.99
    assert "first_step_again" not in marks
    assert marks["compile_check_s"] > 0
    assert marks["kernel_configs"] == {}  # a CPU compile builds C++ kernels, none of them Triton's
