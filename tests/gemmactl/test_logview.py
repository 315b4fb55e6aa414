"""Following an execution: the log cursor, the read pacing, the progress rendering and the events.jsonl
fallback, against the in-memory fake cloud and a fake clock (no test waits for real time)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from rich.console import Console

from gemmactl import logview
from gemmactl.cloud import ports
from gemmactl.errors import JobFailedError, QuotaError, UsageError
from gemmactl.events import Renderer, event_key, parse_event
from gemmactl.settings import Settings
from tests.fakes.fake_cloud import FakeCloud
from tests.fakes.fake_jobs import Outcome

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings(project="test-project", region="europe-west4", job="gemma-finetuning-job")
BUCKET = SETTINGS.bucket_name


class FakeTime:
    """A monotonic clock that only moves when someone sleeps; `at` schedules things to happen."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._scheduled: list[tuple[float, object]] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds
        due = [f for t, f in self._scheduled if t <= self.now]
        self._scheduled = [(t, f) for t, f in self._scheduled if t > self.now]
        for action in due:
            action()

    def at(self, when: float, action) -> None:
        self._scheduled.append((when, action))


def entry(i: int, text: str, *, at: datetime = T0, severity: str = "DEFAULT", payload=None) -> ports.LogEntry:
    return ports.LogEntry(timestamp=at, insert_id=f"id-{i}", text=text, severity=severity, payload=payload)


def step(n: int, total: int = 100, **extra) -> dict:
    return {"event": "step", "time": f"2026-01-01T12:00:{n:02d}.000Z", "step": n, "total_steps": total,
            "epoch": n / total, "loss": 2.0 / n, "lr": 2e-4, "samples_per_s": 3.25, "eta_s": 600 - n,
            "gpu_mem_gib": 31.24, **extra}


def render(live: bool = False, json_mode: bool = False) -> tuple[Renderer, StringIO]:
    buffer = StringIO()
    console = Console(file=buffer, width=160, force_terminal=live, color_system=None, highlight=False)
    return Renderer(console, live=live, json_mode=json_mode), buffer


def started(fake: FakeCloud, outcome: Outcome | str = ports.SUCCEEDED, run_id: str = "run-1") -> ports.Execution:
    """A job with one execution, already RUNNING (its scripted log lines injected)."""
    fake.storage.create_bucket(BUCKET, location="EUROPE-WEST4", labels={})
    fake.jobs.apply(ports.JobSpec(name=SETTINGS.job, region=SETTINGS.region, image="img"))
    fake.jobs.script(outcome)
    execution = fake.jobs.run(SETTINGS.region, SETTINGS.job, ports.RunOverrides(env={"RUN_ID": run_id}))
    return fake.jobs.advance(execution.name, to=ports.RUNNING)


# ------------------------------------------------------------------------------ the cursor


def test_cursor_never_returns_an_entry_twice_across_polls_with_equal_timestamps():
    cursor = logview.LogCursor(since=T0 - timedelta(seconds=1))
    a, b = entry(1, "a"), entry(2, "b")
    c = entry(3, "c")  # same timestamp, arrives one poll later
    d = entry(4, "d", at=T0 + timedelta(seconds=1))

    assert [e.text for e in cursor.take([a, b])] == ["a", "b"]
    assert cursor.since == T0
    assert [e.text for e in cursor.take([a, b, c])] == ["c"]  # Logging returns >= since: a, b again
    assert [e.text for e in cursor.take([b, c, d])] == ["d"]
    assert cursor.take([d]) == []
    assert cursor.since == d.timestamp and cursor.seen == {"id-4"}


def test_cursor_sorts_what_a_backend_returns_out_of_order():
    cursor = logview.LogCursor(since=T0)
    later = entry(2, "later", at=T0 + timedelta(seconds=2))
    assert [e.text for e in cursor.take([later, entry(1, "first")])] == ["first", "later"]


def test_a_full_page_at_one_timestamp_does_not_stall_the_cursor():
    cursor = logview.LogCursor(since=T0)
    cursor.take([entry(1, "x")])
    cursor.nudge()
    assert cursor.since > T0 and not cursor.seen


# ------------------------------------------------------------------------------ pacing


def test_follow_reads_logging_at_most_once_per_second():
    fake, t = FakeCloud(), FakeTime()
    execution = started(fake)
    request_times: list[float] = []
    read = fake.logs.read

    def timed_read(query, *, since, limit=1000):
        request_times.append(t.now)
        return read(query, since=since, limit=limit)

    fake.logs.read = timed_read
    for i in range(1, 40):  # a line every 1.5 s of fake time for a minute
        t.at(1.5 * i, lambda i=i: fake.logs.add(execution.name, f"line {i}", job=SETTINGS.job))
    t.at(60, lambda: fake.jobs.advance(execution.name))
    view, buffer = render()

    final = logview.follow_execution(fake.for_settings(SETTINGS), SETTINGS, execution.name,
                                     clock=t.clock, sleep=t.sleep, view=view)

    assert final.state == ports.SUCCEEDED
    gaps = [b - a for a, b in zip(request_times, request_times[1:], strict=False)]
    assert min(gaps) >= 1.0
    assert len(request_times) <= t.now + 1
    text = buffer.getvalue()
    assert all(text.count(f"line {i}\n") == 1 for i in range(1, 40))


def test_quota_errors_slow_the_polling_down_instead_of_failing():
    fake, t = FakeCloud(), FakeTime()
    execution = started(fake)
    fake.fail_next("logs.read", QuotaError("Quota exceeded for ReadRequestsPerMinutePerProject"))
    fake.fail_next("logs.read", QuotaError("Quota exceeded for ReadRequestsPerMinutePerProject"))
    t.at(30, lambda: fake.jobs.advance(execution.name))
    view, buffer = render()

    final = logview.follow_execution(fake.for_settings(SETTINGS), SETTINGS, execution.name,
                                     clock=t.clock, sleep=t.sleep, view=view)

    assert final.state == ports.SUCCEEDED
    assert max(t.sleeps) >= 4.0  # backed off beyond the normal 2 s
    assert "slowing down" in buffer.getvalue()


# ------------------------------------------------------------------------------ rendering


def test_step_events_render_as_progress_lines_when_piped():
    view, buffer = render()
    with view:
        view.event({"event": "start", "time": "2026-01-01T12:00:00.000Z", "run_id": "run-1", "attempt": 2,
                    "model_id": "google/gemma-3-4b-it", "dataset": "timm/oxford-iiit-pet", "train_size": 1000,
                    "eval_size": 200, "total_steps": 100, "resumed_from_step": 40})
        view.event(step(50, grad_norm=0.8312))
        view.event({"event": "checkpoint", "time": "2026-01-01T12:00:51.000Z", "step": 50, "path": "/ck/50"})

    text = buffer.getvalue()
    assert "run run-1 (retry 2): google/gemma-3-4b-it on timm/oxford-iiit-pet" in text
    assert "resuming from step 40" in text
    assert "step 50/100 (50%)" in text
    assert "loss 0.0400 · grad 0.83" in text and "3.2 samples/s" in text and "ETA 9m10s" in text
    assert "GPU 31.2 GiB" in text and "checkpoint at step 50: /ck/50" in text


def test_live_progress_bar_shows_step_total_loss_eta_and_gpu_memory():
    view, buffer = render(live=True)
    with view:
        for n in (10, 20, 30):
            view.event(step(n))
    text = buffer.getvalue()
    assert "training" in text and "30/100" in text
    assert "loss 0.0667" in text and "ETA 9m30s" in text and "GPU 31.2 GiB" in text


def test_eval_results_render_as_tables_and_done_compares_with_deltas():
    view, buffer = render()
    common = {"mode": "constrained", "n": 200, "time": "2026-01-01T12:10:00.000Z"}
    with view:
        for done in (50, 100, 150, 200):
            view.event({"event": "eval_progress", "phase": "final", "mode": "constrained", "done": done,
                        "total": 200, "time": f"2026-01-01T12:09:{done // 10:02d}.000Z"})
        view.event({"event": "eval", "phase": "baseline", "accuracy": 0.12, "macro_f1": 0.101,
                    "unknown_rate": 0.2, "accuracy_ci95": [0.081, 0.174], **common})
        view.event({"event": "eval", "phase": "final", "accuracy": 0.85, "macro_f1": 0.842,
                    "unknown_rate": 0.005, "accuracy_ci95": [0.795, 0.893], **common})
        view.event({"event": "done", "time": "2026-01-01T12:11:00.000Z", "metrics_path": "/m.json",
                    "baseline": {"accuracy": 0.12, "macro_f1": 0.101},
                    "final": {"accuracy": 0.85, "macro_f1": 0.842}, "elapsed_s": 1500})
    text = buffer.getvalue()
    assert text.count("final eval (constrained):") == 4  # one line per quarter, not per batch
    assert "12.0 %" in text and "[8.1, 17.4]" in text and "0.101" in text and "20.0 %" in text
    assert "baseline vs fine-tuned" in text
    assert "+73.0 pp" in text and "+0.741" in text
    assert "done in 25m00s; metrics at /m.json" in text
    assert view.finished


def test_trainer_error_is_shown_and_remembered():
    view, buffer = render()
    with view:
        view.entry(entry(1, json.dumps({"event": "error", "time": "2026-01-01T12:00:00Z",
                                        "message": "CUDA out of memory"})))
    assert "trainer error: CUDA out of memory" in buffer.getvalue()
    assert view.last_error == "CUDA out of memory" and view.finished


def test_plain_lines_pass_through_with_their_time_and_markup_is_not_interpreted():
    view, buffer = render()
    with view:
        view.entry(entry(1, "loading [bold]shards[/bold] 3/4", severity="WARNING"))
    assert "12:00:00 loading [bold]shards[/bold] 3/4" in buffer.getvalue()


def test_json_mode_prints_raw_entries_as_json_lines():
    view, buffer = render(json_mode=True)
    with view:
        view.entry(entry(1, "plain", severity="INFO"))
        view.entry(entry(2, "{}", payload=step(3)))
    lines = [json.loads(x) for x in buffer.getvalue().splitlines()]
    assert lines[0] == {"timestamp": "2026-01-01T12:00:00.000Z", "severity": "INFO", "insert_id": "id-1",
                        "text": "plain", "payload": None}
    assert lines[1]["payload"]["step"] == 3


def test_an_event_from_logging_and_the_same_from_events_jsonl_are_one_event():
    original = step(7)
    # Cloud Logging: a Struct payload (every number a double) whose "time" became the entry timestamp.
    struct = {k: float(v) if isinstance(v, int) else v for k, v in original.items() if k != "time"}
    from_logging = parse_event(entry(1, json.dumps(struct), at=T0 + timedelta(seconds=7), payload=struct))
    from_file = json.loads(json.dumps(original))
    from gemmactl.events import parse_line

    assert event_key(from_logging) == event_key(parse_line(json.dumps(from_file)))
    view, buffer = render()
    with view:
        view.event(from_logging)
        view.event(parse_line(json.dumps(from_file)), source="events.jsonl")
    assert buffer.getvalue().count("step 7/100") == 1


# ------------------------------------------------------------------------------ follow end to end


def test_follow_ends_on_success_after_draining_late_entries():
    fake, t = FakeCloud(), FakeTime()
    execution = started(fake)
    fake.logs.add(execution.name, step(1), job=SETTINGS.job)
    t.at(10, lambda: fake.jobs.advance(execution.name))
    # Logging delivers the last lines a few seconds after Cloud Run reports the end.
    done = {"event": "done", "time": "2026-01-01T12:01:00.000Z", "metrics_path": "/mnt/gcs/runs/run-1/metrics.json",
            "baseline": {"accuracy": 0.1, "macro_f1": 0.1}, "final": {"accuracy": 0.9, "macro_f1": 0.9},
            "elapsed_s": 60}
    t.at(18, lambda: fake.logs.add(execution.name, done, job=SETTINGS.job))
    view, buffer = render()

    final = logview.follow_execution(fake.for_settings(SETTINGS), SETTINGS, execution.name,
                                     clock=t.clock, sleep=t.sleep, view=view)

    assert final.state == ports.SUCCEEDED
    assert "step 1/100" in buffer.getvalue() and "done in 1m00s" in buffer.getvalue()
    logview.raise_for_execution(final)  # no error


def test_follow_returns_a_failed_execution_and_raise_for_execution_names_the_reason():
    fake, t = FakeCloud(), FakeTime()
    execution = started(fake, Outcome(state=ports.FAILED, message="Task failed with exit code 1."))
    fake.logs.add(execution.name, {"event": "error", "time": "2026-01-01T12:00:05.000Z",
                                   "message": "dataset not staged"}, job=SETTINGS.job, severity="ERROR")
    t.at(6, lambda: fake.jobs.advance(execution.name))
    view, buffer = render()

    final = logview.follow_execution(fake.for_settings(SETTINGS), SETTINGS, execution.name,
                                     clock=t.clock, sleep=t.sleep, view=view)

    assert final.state == ports.FAILED
    assert "trainer error: dataset not staged" in buffer.getvalue()
    with pytest.raises(JobFailedError) as failure:
        logview.raise_for_execution(final)
    assert "failed (NON_ZERO_EXIT_CODE: Task failed with exit code 1.)" in failure.value.message
    assert execution.name in failure.value.hint


def test_when_logging_lags_the_run_events_file_is_tailed_instead():
    fake, t = FakeCloud(), FakeTime()
    execution = started(fake, run_id="run-7")
    name = "runs/run-7/events.jsonl"
    lines = [json.dumps(step(n)) for n in (1, 2, 3)]
    # The file grows while Logging shows nothing; the last line is half-written at first.
    t.at(5, lambda: fake.storage.write_bytes(BUCKET, name, (lines[0] + "\n" + lines[1][:20]).encode()))
    t.at(30, lambda: fake.storage.write_bytes(BUCKET, name, ("\n".join(lines) + "\n").encode()))
    t.at(40, lambda: fake.jobs.advance(execution.name))
    # Logging finally delivers step 2 after the end: already shown, so not printed again.
    t.at(41, lambda: fake.logs.add(execution.name, step(2), job=SETTINGS.job))
    view, buffer = render()

    final = logview.follow_execution(fake.for_settings(SETTINGS), SETTINGS, execution.name,
                                     pacing=logview.Pacing(lag_s=10), clock=t.clock, sleep=t.sleep, view=view)

    text = buffer.getvalue()
    assert final.state == ports.SUCCEEDED
    assert "Cloud Logging is lagging; also reading gs://" in text
    assert [text.count(f"step {n}/100") for n in (1, 2, 3)] == [1, 1, 1]
    assert text.index("step 1/100") < text.index("step 2/100") < text.index("step 3/100")


def test_events_file_is_not_read_while_logging_keeps_up():
    fake, t = FakeCloud(), FakeTime()
    execution = started(fake)
    for i in range(1, 30):
        t.at(i, lambda i=i: fake.logs.add(execution.name, f"tick {i}", job=SETTINGS.job))
    t.at(30, lambda: fake.jobs.advance(execution.name))
    view, _ = render()
    logview.follow_execution(fake.for_settings(SETTINGS), SETTINGS, execution.name, clock=t.clock,
                             sleep=t.sleep, view=view)
    # Only the final drain looks at the file (once).
    assert fake.calls.count("storage.read_bytes") == 1


# ------------------------------------------------------------------------------ dump and inputs


def test_dump_pages_through_everything_and_falls_back_to_the_file_when_logging_is_empty():
    fake, t = FakeCloud(), FakeTime()
    execution = started(fake, run_id="run-3")
    fake.storage.write_bytes(BUCKET, "runs/run-3/events.jsonl", (json.dumps(step(4)) + "\n").encode())
    view, buffer = render()

    shown = logview.dump_logs(fake.for_settings(SETTINGS), SETTINGS, execution.name, clock=t.clock,
                              sleep=t.sleep, view=view)

    assert shown == 1
    assert "Cloud Logging returned nothing" in buffer.getvalue() and "step 4/100" in buffer.getvalue()


def test_dump_with_more_than_a_page_keeps_reading_paced(monkeypatch):
    fake, t = FakeCloud(), FakeTime()
    execution = started(fake)
    monkeypatch.setattr(logview, "PAGE", 10)
    for i in range(25):
        fake.logs.add(execution.name, f"line {i}", job=SETTINGS.job)
    view, buffer = render()

    shown = logview.dump_logs(fake.for_settings(SETTINGS), SETTINGS, execution.name, clock=t.clock,
                              sleep=t.sleep, view=view)

    assert shown == 25 and len(fake.logs.requests) == 3
    assert t.now >= 2.0  # three requests, a second apart


def test_severity_filter_applies_on_every_backend():
    entries = [entry(1, "debug", severity="DEBUG"), entry(2, "warn", severity="WARNING"),
               entry(3, "err", severity="ERROR"), entry(4, "plain")]
    assert [e.text for e in logview.visible(entries, "WARNING")] == ["warn", "err"]
    assert logview.visible(entries, None) == entries


def test_since_and_severity_parsing():
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert logview.parse_since("10m", now=now) == now - timedelta(minutes=10)
    assert logview.parse_since("2026-01-01T11:00:00Z") == datetime(2026, 1, 1, 11, tzinfo=UTC)
    assert logview.parse_since("2026-01-01T11:00:00") == datetime(2026, 1, 1, 11, tzinfo=UTC)
    assert logview.parse_since(None) is None
    assert logview.parse_severity("warn") == "WARNING" and logview.parse_severity("error") == "ERROR"
    with pytest.raises(UsageError):
        logview.parse_since("yesterday")
    with pytest.raises(UsageError):
        logview.parse_severity("loud")


def test_done_table_takes_each_ci_from_the_mode_the_headline_came_from():
    view, buffer = render()

    def evaluation(phase, mode, accuracy, lo, hi):
        return {"event": "eval", "time": f"2026-01-01T12:0{len(phase)}:0{len(mode)}.000Z", "phase": phase,
                "mode": mode, "accuracy": accuracy, "macro_f1": accuracy / 2, "n": 370, "unknown_rate": 0.0,
                "accuracy_ci95": [lo, hi]}

    with view:
        view.event(evaluation("baseline", "generate", 0.10, 0.07, 0.14))
        view.event(evaluation("baseline", "constrained", 0.30, 0.25, 0.35))
        view.event(evaluation("final", "generate", 0.80, 0.75, 0.84))
        view.event(evaluation("final", "constrained", 0.90, 0.86, 0.93))
        view.event({"event": "done", "time": "2026-01-01T12:30:00.000Z", "metrics_path": "/m.json",
                    "baseline": {"accuracy": 0.10, "macro_f1": 0.05}, "final": {"accuracy": 0.80, "macro_f1": 0.40},
                    "elapsed_s": 60})
    comparison = buffer.getvalue().split("baseline vs fine-tuned")[1]
    assert "(generate)" in comparison.splitlines()[0]
    assert "10.0 % [7.0, 14.0]" in comparison and "80.0 % [75.0, 84.0]" in comparison
    assert "+70.0 pp" in comparison


def test_live_follow_on_a_terminal_reports_state_changes_and_progress():
    fake, t = FakeCloud(), FakeTime()
    fake.storage.create_bucket(BUCKET, location="EUROPE-WEST4", labels={})
    fake.jobs.apply(ports.JobSpec(name=SETTINGS.job, region=SETTINGS.region, image="img"))
    execution = fake.jobs.run(SETTINGS.region, SETTINGS.job, ports.RunOverrides(env={"RUN_ID": "run-1"}))
    t.at(6, lambda: fake.jobs.advance(execution.name))  # PENDING → RUNNING (GPU capacity found)
    t.at(8, lambda: fake.logs.add(execution.name, step(5, total=10), job=SETTINGS.job))
    t.at(12, lambda: fake.jobs.advance(execution.name))
    view, buffer = render(live=True)

    final = logview.follow_execution(fake.for_settings(SETTINGS), SETTINGS, execution.name,
                                     clock=t.clock, sleep=t.sleep, view=view)

    text = buffer.getvalue()
    assert final.state == ports.SUCCEEDED
    assert f"following {execution.name} (PENDING)" in text
    assert "PENDING → RUNNING" in text and "RUNNING → SUCCEEDED" in text
    assert "training" in text and "5/10" in text and "loss 0.4000" in text


def test_cursor_treats_naive_timestamps_as_utc():
    cursor = logview.LogCursor(since=T0)
    naive = entry(1, "naive", at=(T0 + timedelta(seconds=1)).replace(tzinfo=None))
    assert [e.text for e in cursor.take([naive])] == ["naive"] and cursor.since.tzinfo is not None


def test_the_memory_plan_event_says_why_in_one_line():
    from gemmactl.events import describe

    line = describe({"event": "memory_plan", "micro_batch": 16, "accumulation": 1, "checkpointing": False,
                     "why": "activations 15.9 GiB fit in 69.8 GiB free"})
    assert line == ("memory plan: micro-batch 16 × 1, checkpointing off "
                    "(activations 15.9 GiB fit in 69.8 GiB free)")


def test_the_memory_plan_line_says_how_the_step_compiles_and_when_images_are_encoded_ahead():
    from gemmactl.events import describe

    line = describe({"event": "memory_plan", "micro_batch": 16, "accumulation": 1, "checkpointing": False,
                     "compile": True, "compile_mode": "autotuned", "encode_ahead": True,
                     "why": "16 of 16 samples per pass fit"})
    assert line == ("memory plan: micro-batch 16 × 1, checkpointing off, torch.compile on (autotuned), "
                    "images encoded ahead (16 of 16 samples per pass fit)")
