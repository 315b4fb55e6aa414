"""`gemmactl results` as a user runs it: the comparison table, --json, the two PNGs, and clear errors for
runs that are still going or failed (fake cloud, plus one story on the local backend)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from gemmactl import results as res
from gemmactl.settings import Settings
from trainer.labels import LABELS
from trainer.metrics import classification_report

BUCKET = Settings(project="test-project").bucket_name
PNG = b"\x89PNG\r\n\x1a\n"


def metrics(baseline_right: int = 5, final_right: int = 33, *, steps: int = 30) -> dict:
    """A metrics.json as the trainer writes it: one eval image per breed (37), plus two unknowns."""
    truth = list(range(len(LABELS)))

    def predictions(right: int) -> list[int | None]:
        wrong = [(t + 1) % len(LABELS) for t in truth[right:]]
        return truth[:right] + wrong[:-2] + [None, None] if len(wrong) >= 2 else truth[:right] + wrong

    base, final = classification_report(truth, predictions(baseline_right)), classification_report(
        truth, predictions(final_right))
    return {
        "baseline": base, "final": final,
        "delta": {"accuracy": final["accuracy"] - base["accuracy"], "macro_f1": final["macro_f1"] - base["macro_f1"]},
        "config": {"model_id": "google/gemma-3-4b-it", "dataset": "timm/oxford-iiit-pet", "train_size": 1000},
        "versions": {"torch": "2.13.0"},
        "timings": {"baseline_eval_s": 125.0, "train_s": 1210.0, "final_eval_s": 118.0, "total_s": 1500.0},
        "peak_memory_gib": 31.24,
        "train_loss": [{"step": s, "loss": 3.0 / s} for s in range(1, steps + 1)],
        "eval_mode": "constrained",
    }


def put(fake, name: str, data: bytes | str | dict, *, at: datetime | None = None) -> None:
    if BUCKET not in fake.buckets:
        fake.storage.create_bucket(BUCKET, location="EUROPE-WEST4", labels={})
    raw = json.dumps(data).encode() if isinstance(data, dict) else data.encode() if isinstance(data, str) else data
    fake.storage.write_bytes(BUCKET, name, raw)
    if at is not None:  # pin the object's update time so "latest" does not depend on the test's speed
        blob, info = fake.buckets[BUCKET].objects[name]
        fake.buckets[BUCKET].objects[name] = (blob, replace(info, updated=at))


def test_results_of_the_latest_run_compare_baseline_and_fine_tuned(cli, fake_cloud):
    put(fake_cloud, "runs/older/metrics.json", metrics(1, 2), at=datetime(2026, 1, 1, tzinfo=UTC))
    put(fake_cloud, "runs/newer/metrics.json", metrics(), at=datetime(2026, 1, 2, tzinfo=UTC))
    put(fake_cloud, "runs/newer/checkpoints/step-10/adapter.bin", b"x")

    result = cli("--project", "test-project", "results")

    text = result.stdout
    assert "run newer: model google/gemma-3-4b-it, dataset timm/oxford-iiit-pet, train_size 1000" in text
    assert "eval constrained, n=37" in text
    assert "13.5 %" in text and "89.2 %" in text and "+75.7 pp" in text  # 5/37 → 33/37
    assert "[" in text and "95 % CI" in text
    assert "unknown answers" in text and "5.4 %" in text
    assert "worst classes (fine-tuned, lowest F1)" in text
    assert "most confused:" in text
    assert "time: baseline eval 2m05s, train 20m10s, final eval 1m58s, total 25m00s" in text
    assert "peak GPU memory 31.2 GiB" in text
    assert f"confusion: gs://{BUCKET}/runs/newer/confusion.png" in text


def test_results_write_both_pngs_to_the_bucket_and_a_local_directory(cli, fake_cloud, tmp_path):
    put(fake_cloud, "runs/r1/metrics.json", metrics())

    cli("--project", "test-project", "results", "r1", "--out", str(tmp_path / "report"))

    for name in ("confusion.png", "loss.png"):
        assert fake_cloud.storage.read_bytes(BUCKET, f"runs/r1/{name}").startswith(PNG)
        assert (tmp_path / "report" / name).read_bytes().startswith(PNG)


def test_default_local_directory_is_per_run_under_the_working_directory(cli, fake_cloud):
    put(fake_cloud, "runs/r1/metrics.json", metrics())
    result = cli("--project", "test-project", "results", "r1")
    local = Path("gemmactl-results/r1/confusion.png")
    assert local.read_bytes().startswith(PNG) and str(local) in result.stdout


def test_results_json_is_the_summary(cli, fake_cloud):
    put(fake_cloud, "runs/r1/metrics.json", metrics())

    summary = json.loads(cli("--project", "test-project", "results", "r1", "--json", "--worst", "3").stdout)

    assert summary["run"] == "r1" and summary["eval_mode"] == "constrained"
    assert summary["baseline"]["accuracy"] == 5 / 37 and summary["final"]["accuracy"] == 33 / 37
    assert summary["delta"]["accuracy"] == 28 / 37
    assert len(summary["final"]["accuracy_ci95"]) == 2 and summary["final"]["unknown_rate"] == 2 / 37
    assert [r["f1"] for r in summary["worst_classes"]] == sorted(r["f1"] for r in summary["worst_classes"])
    assert len(summary["worst_classes"]) == 3 and summary["worst_classes"][0]["f1"] == 0.0
    assert summary["peak_memory_gib"] == 31.24 and summary["timings"]["total_s"] == 1500.0
    assert summary["plots"]["confusion"]["bucket"] == f"gs://{BUCKET}/runs/r1/confusion.png"


def test_no_plots_only_reads(cli, fake_cloud):
    put(fake_cloud, "runs/r1/metrics.json", metrics())
    before = list(fake_cloud.mutations)
    result = cli("--project", "test-project", "results", "--no-plots")
    assert fake_cloud.mutations == before and "confusion:" not in result.stdout
    assert not Path("gemmactl-results").exists()


def test_a_run_still_going_says_so_and_points_at_logs_follow(cli, fake_cloud):
    put(fake_cloud, "runs/r2/config.json", {"train_size": 1000})
    put(fake_cloud, "runs/r2/events.jsonl", json.dumps(
        {"event": "step", "time": "2026-01-01T00:00:00Z", "step": 40, "total_steps": 100, "loss": 1.0}) + "\n")

    result = cli("--project", "test-project", "results", "r2", expect=1)

    assert "run r2 has no metrics.json yet: still running (last: step 40/100" in result.stderr
    assert "gemmactl logs --follow" in result.stderr
    assert "Traceback" not in result.output


def test_a_failed_run_shows_the_trainer_error(cli, fake_cloud):
    events = [{"event": "start", "time": "2026-01-01T00:00:00Z", "run_id": "r3"},
              {"event": "error", "time": "2026-01-01T00:00:09Z", "message": "CUDA out of memory"}]
    put(fake_cloud, "runs/r3/events.jsonl", "\n".join(json.dumps(e) for e in events) + "\n")
    result = cli("--project", "test-project", "results", "r3", expect=1)
    assert "run r3 failed: CUDA out of memory" in result.stderr and "gemmactl logs" in result.stderr


def test_partial_or_corrupt_metrics_are_one_clear_line(cli, fake_cloud):
    partial = metrics()
    del partial["final"]
    put(fake_cloud, "runs/r4/metrics.json", partial)
    put(fake_cloud, "runs/r5/metrics.json", '{"baseline": {"accura')

    result = cli("--project", "test-project", "results", "r4", expect=1)
    assert "runs/r4/metrics.json has no final evaluation yet" in result.stderr
    assert "gemmactl logs --follow" in result.stderr
    result = cli("--project", "test-project", "results", "r5", expect=1)
    assert "runs/r5/metrics.json is not valid JSON" in result.stderr


def test_no_runs_or_an_unknown_run(cli, fake_cloud):
    put(fake_cloud, "datasets/x/manifest.json", {})
    result = cli("--project", "test-project", "results", expect=1)
    assert f"no finished run in gs://{BUCKET}/runs/" in result.stderr and "gemmactl status" in result.stderr
    result = cli("--project", "test-project", "results", "nope", expect=1)
    assert "no run nope in" in result.stderr


def test_results_on_the_local_backend(cli, tmp_path):
    from gemmactl.cloud.local import make_local_cloud

    settings = Settings(backend="local", local_dir=str(tmp_path / "state"), project="local")
    storage = make_local_cloud(settings).storage
    storage.create_bucket(settings.bucket_name, location="LOCAL", labels={})
    storage.write_bytes(settings.bucket_name, "runs/demo/metrics.json", json.dumps(metrics()).encode())

    result = cli("--local", "--local-dir", str(tmp_path / "state"), "results", "--out", str(tmp_path / "out"))

    stored = Path(storage.local_path(settings.bucket_name)) / "runs/demo/confusion.png"
    assert stored.read_bytes().startswith(PNG) and str(stored) in result.stdout
    assert (tmp_path / "out" / "loss.png").read_bytes().startswith(PNG)


def test_summary_and_plots_are_pure_functions_of_the_metrics():
    m = metrics(steps=3)
    summary = res.summarize("r", m, worst=37)
    assert len(summary["worst_classes"]) == 37  # every class is present once
    assert res.most_confused(m["final"], 2)[0]["count"] == 1
    assert res.loss_png(m["train_loss"]).startswith(PNG)
    assert res.confusion_png(m["baseline"]).startswith(PNG)


def test_runs_evaluated_in_both_modes_show_each_mode(cli, fake_cloud):
    m = metrics()
    constrained_base, constrained_final = metrics(20, 36)["baseline"], metrics(20, 36)["final"]
    m.update(eval_mode="both", baseline_by_mode={"generate": m["baseline"], "constrained": constrained_base},
             final_by_mode={"generate": m["final"], "constrained": constrained_final})
    put(fake_cloud, "runs/r1/metrics.json", m)

    text = cli("--project", "test-project", "results", "--no-plots").stdout
    summary = json.loads(cli("--project", "test-project", "results", "--no-plots", "--json").stdout)

    assert "eval generate, n=37" in text and "accuracy by eval mode" in text
    assert "54.1 %" in text and "97.3 %" in text  # constrained: 20/37 → 36/37
    assert summary["primary_mode"] == "generate"
    assert summary["by_mode"]["constrained"]["delta"]["accuracy"] == 16 / 37
