"""`python -m trainer` end to end as a subprocess: outputs contract, resume after SIGKILL, errors, learning."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.trainer.conftest import ROOT, trainer_env

TINY = ["--model-id", "builtin:tiny-gemma3", "--dataset", "builtin:synthetic-pets", "--prompt", "short",
        "--batch-size", "8", "--gradient-accumulation-steps", "1", "--learning-rate", "1e-2", "--lora-r", "8"]
REPORT_KEYS = {"accuracy", "macro_f1", "n", "unknown", "unknown_rate", "accuracy_ci95", "labels", "per_class",
               "confusion"}
EVENT_KEYS = {
    "start": {"run_id", "attempt", "model_id", "dataset", "train_size", "eval_size", "total_steps",
              "resumed_from_step"},
    "step": {"step", "total_steps", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "eta_s", "gpu_mem_gib"},
    "eval_progress": {"phase", "mode", "done", "total"},
    "eval": {"phase", "mode", "accuracy", "macro_f1", "n", "unknown_rate", "accuracy_ci95"},
    "checkpoint": {"step", "path"},
    "done": {"metrics_path", "baseline", "final", "elapsed_s"},
    "memory_plan": {"micro_batch", "accumulation", "checkpointing", "why", "feature_cache"},
    "image_cache": {"images", "train_images", "gib", "offload", "during_baseline"},
}


def run_trainer(args, env=None, module="trainer", timeout=240):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                          env=env or trainer_env(), timeout=timeout)


def events_of(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_end_to_end_outputs_contract_and_merge(tmp_path):
    out = tmp_path / "run"
    env = trainer_env(RUN_ID="run-123", CLOUD_RUN_TASK_ATTEMPT="0")
    proc = run_trainer([*TINY, "--output-dir", str(out), "--train-size", "74", "--eval-size", "37",
                        "--max-steps", "4", "--save-steps", "2", "--merge"], env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = events_of(proc.stdout)
    assert [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()] == events
    for event in events:
        assert EVENT_KEYS[event["event"]] <= set(event), event
        assert event["time"].endswith("Z")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("step") == 4 and kinds.count("eval") == 4
    assert events[0]["run_id"] == "run-123" and events[0]["resumed_from_step"] is None
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [2, 4]

    for name in ("config.json", "metrics.json", "predictions.jsonl", "DONE", "adapter/adapter_config.json",
                 "adapter/tokenizer.json", "merged/model.safetensors", "merged/config.json"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["baseline"]) >= REPORT_KEYS and set(metrics["final"]) >= REPORT_KEYS
    assert set(metrics["final_by_mode"]) == {"generate", "constrained"} and metrics["eval_mode"] == "both"
    assert metrics["delta"]["accuracy"] == pytest.approx(metrics["final"]["accuracy"] - metrics["baseline"]["accuracy"])
    assert [x["step"] for x in metrics["train_loss"]] == [1, 2, 3, 4]
    assert {"torch", "transformers", "peft"} <= set(metrics["versions"]) and metrics["timings"]["total_s"] > 0
    assert json.loads((out / "config.json").read_text())["max_steps"] == 4
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 37 * 4 and {r["phase"] for r in rows} == {"baseline", "final"}
    merged = json.loads((out / "merged" / "config.json").read_text())
    assert merged.get("dtype", merged.get("torch_dtype")) == "bfloat16"

    # A finished run started again exits 0 at once and says so.
    again = run_trainer([*TINY, "--output-dir", str(out)], env=env)
    assert again.returncode == 0 and events_of(again.stdout)[-1]["already_done"] is True


@pytest.mark.slow
def test_resume_after_sigkill_mid_training(tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "--output-dir", str(out), "--train-size", "185", "--eval-size", "37", "--num-epochs", "2",
            "--save-steps", "5", "--eval-mode", "constrained"]
    proc = subprocess.Popen([sys.executable, "-m", "trainer", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=trainer_env())
    killed_after = None
    for line in proc.stdout:
        if '"event": "checkpoint"' in line:
            os.kill(proc.pid, signal.SIGKILL)
            killed_after = json.loads(line)["step"]
            break
    proc.wait(timeout=60)
    assert killed_after is not None and proc.returncode == -signal.SIGKILL
    assert not (out / "DONE").exists()

    resumed = run_trainer(args, env=trainer_env(CLOUD_RUN_TASK_ATTEMPT="1"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    events = events_of(resumed.stdout)
    start = events[0]
    assert start["attempt"] == 1 and start["resumed_from_step"] is not None
    assert start["resumed_from_step"] >= killed_after
    assert not [e for e in events if e.get("phase") == "baseline"]  # baseline reused, not recomputed
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps[0] == start["resumed_from_step"] + 1 and steps[-1] == start["total_steps"]
    assert "baseline already recorded" in resumed.stderr
    assert (out / "DONE").exists()


def test_failures_end_with_one_error_line_and_never_leak_the_token(tmp_path):
    secret = "hf_SECRETtoken1234567"
    env = trainer_env(HF_TOKEN=secret)
    bad = run_trainer(["--model-id", "builtin:tiny-gemma3", "--dataset", str(tmp_path / secret / "missing"),
                       "--output-dir", str(tmp_path / "out")], env=env)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("error: DataError: dataset")
    last = json.loads(bad.stdout.strip().splitlines()[-1])
    assert last["event"] == "error" and "not found" in last["message"]
    written = (tmp_path / "out" / "events.jsonl").read_text()
    for text in (bad.stdout, bad.stderr, written):
        assert secret not in text and "***" in text

    config = run_trainer(["--train-size", "0", "--output-dir", str(tmp_path / "o2")], env=env)
    assert config.returncode == 2
    assert config.stderr.strip().splitlines()[-1].startswith("error: invalid configuration: --train-size")
    assert json.loads(config.stdout.strip().splitlines()[-1])["event"] == "error"


@pytest.mark.slow
def test_learning_easy_task_goes_from_chance_to_90_percent(tmp_path):
    from trainer.builtin import synthetic_image
    from trainer.labels import LABELS

    classes = [0, 9, 18, 27]  # four hues far apart on the colour wheel
    for label in classes:
        for i in range(40):
            split = "train" if i < 30 else "test"
            path = tmp_path / "data" / split / LABELS[label].replace(" ", "_") / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            synthetic_image(label, i).save(path)
    out = tmp_path / "run"
    proc = run_trainer([*TINY, "--dataset", str(tmp_path / "data"), "--output-dir", str(out),
                        "--train-size", "120", "--eval-size", "all", "--num-epochs", "4", "--batch-size", "8",
                        "--save-steps", "0"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for mode in ("generate", "constrained"):
        before, after = metrics["baseline_by_mode"][mode], metrics["final_by_mode"][mode]
        assert before["accuracy"] <= 0.5, (mode, before["accuracy"])
        assert after["accuracy"] >= 0.9, (mode, after["accuracy"])
        assert after["n"] == 40


@pytest.mark.slow
def test_builtin_cli_dirs_load_back_gemma4_end_to_end(tmp_path):
    for asset in ("tiny-gemma4", "builtin:synthetic-pets"):
        made = run_trainer([asset, str(tmp_path / asset.removeprefix("builtin:"))], module="trainer.builtin")
        assert made.returncode == 0, made.stderr[-2000:]
    assert (tmp_path / "synthetic-pets" / "data" / "train-00000-of-00001.parquet").is_file()
    out = tmp_path / "run"
    proc = run_trainer(["--model-id", str(tmp_path / "tiny-gemma4"), "--dataset", str(tmp_path / "synthetic-pets"),
                        "--output-dir", str(out), "--train-size", "37", "--eval-size", "37", "--max-steps", "2",
                        "--batch-size", "4", "--lora-target", "all-linear", "--eval-mode", "constrained"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "DONE").exists() and (out / "adapter" / "adapter_model.safetensors").exists()
    unknown = run_trainer(["nope", str(tmp_path / "x")], module="trainer.builtin")
    assert unknown.returncode == 2 and unknown.stderr.strip().splitlines()[-1].startswith("error: unknown built-in")


@pytest.mark.slow
def test_sigterm_ends_with_an_error_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "trainer", *TINY, "--output-dir", str(tmp_path / "run"),
                             "--train-size", "370", "--eval-size", "37", "--num-epochs", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=trainer_env())
    for line in proc.stdout:
        if '"event": "step"' in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert json.loads(rest.strip().splitlines()[-1])["event"] == "error"
    assert err.strip().splitlines()[-1].startswith("error: Terminated: received SIGTERM")


def test_events_carry_a_cloud_logging_severity(tmp_path):
    """Cloud Logging takes `severity` from JSON stdout lines; errors must stand out from progress."""
    import io
    import json

    from trainer.events import JsonlSink

    stream = io.StringIO()
    sink = JsonlSink(tmp_path / "events.jsonl", stream=stream)
    sink.emit("step", step=1, loss=1.0)
    sink.emit("error", message="boom")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (first["severity"], second["severity"]) == ("INFO", "ERROR")


def test_progress_events_reach_the_file_in_batches_and_nothing_is_lost(tmp_path):
    """On the FUSE-mounted output dir each close re-uploads events.jsonl: steps are batched, the rest are not."""
    import io
    import json

    from trainer.events import JsonlSink

    now = [0.0]
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(path, stream=io.StringIO(), flush_s=10, clock=lambda: now[0])
    lines = lambda: [json.loads(x)["event"] for x in path.read_text().splitlines()] if path.exists() else []  # noqa: E731
    sink.emit("start")
    sink.emit("step", step=1)
    sink.emit("step", step=2)
    assert lines() == ["start"]
    now[0] = 10
    sink.emit("step", step=3)
    assert lines() == ["start", "step", "step", "step"]
    sink.emit("step", step=4)
    sink.emit("error", message="boom")  # an error exit writes out everything buffered before it
    assert lines() == ["start", "step", "step", "step", "step", "error"]


def test_scrub_hides_the_token_even_with_its_newline_and_anything_shaped_like_one(monkeypatch):
    from trainer.events import hf_token, scrub

    monkeypatch.setenv("HF_TOKEN", "  secret-value-42\n")
    assert hf_token() == "secret-value-42"
    assert scrub("url?t=secret-value-42 and hf_" + "a1B2" * 9) == "url?t=*** and ***"
