"""The trainer's JSON-lines progress events: recognise them in log entries and describe them in words.

The trainer prints one JSON object per line (stdout → Cloud Logging, and runs/<id>/events.jsonl). On
Cloud Run a JSON line becomes a structured entry whose payload is a protobuf Struct, so integers come
back as floats and Logging may consume the "time" field into the entry's timestamp. `parse_event`
undoes both so an event read from Logging and the same event read from the file compare equal.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gemmactl.cloud.ports import LogEntry

KINDS = frozenset({"start", "step", "eval_progress", "eval", "checkpoint", "done", "error"})


def _normalise(value: Any) -> Any:
    # Struct payloads turn every number into a double: 10 comes back as 10.0.
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def iso_ms(ts: datetime) -> str:
    """UTC ISO-8601 with milliseconds and a Z, the trainer's own "time" format."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _canonical_time(text: Any) -> Any:
    try:
        return iso_ms(datetime.fromisoformat(str(text).replace("Z", "+00:00")))
    except ValueError:
        return text


def parse_line(line: str) -> dict[str, Any] | None:
    """The event in one line of text, or None for a plain line."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return _as_event(data)


def _as_event(data: Any, fallback_time: datetime | None = None) -> dict[str, Any] | None:
    if not isinstance(data, dict) or data.get("event") not in KINDS:
        return None
    event = _normalise(data)
    if "time" in event:
        event["time"] = _canonical_time(event["time"])
    elif fallback_time is not None:
        event["time"] = iso_ms(fallback_time)
    return event


def parse_event(entry: LogEntry) -> dict[str, Any] | None:
    """The trainer event carried by a log entry (structured payload or a JSON text line), else None."""
    if entry.payload is not None:
        event = _as_event(entry.payload, entry.timestamp)
        if event is not None:
            return event
    event = parse_line(entry.text)
    if event is not None and "time" not in event:
        event["time"] = iso_ms(entry.timestamp)
    return event


def event_key(event: dict[str, Any]) -> str:
    """Identity of an event across sources (Logging vs events.jsonl), for de-duplication."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), default=str)


# ------------------------------------------------------------------------------ words


def duration(seconds: float | None) -> str:
    """12 → '12s', 754 → '12m34s', 7380 → '2h03m'."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f} %"


def ci(bounds: Any) -> str:
    if not isinstance(bounds, list | tuple) or len(bounds) != 2:
        return "-"
    return f"[{100 * bounds[0]:.1f}, {100 * bounds[1]:.1f}]"


def step_stats(event: dict[str, Any]) -> str:
    """'loss 1.2345 · grad 0.83 · lr 2.0e-04 · 3.1 samples/s · ETA 12m30s · GPU 31.2 GiB' for a step event (an
    older trainer's events have no grad norm)."""
    parts = []
    if isinstance(event.get("loss"), int | float):
        parts.append(f"loss {event['loss']:.4f}")
    if isinstance(event.get("grad_norm"), int | float):
        parts.append(f"grad {event['grad_norm']:.2f}")
    if isinstance(event.get("lr"), int | float):
        parts.append(f"lr {event['lr']:.1e}")
    if isinstance(event.get("samples_per_s"), int | float):
        parts.append(f"{event['samples_per_s']:.1f} samples/s")
    parts.append(f"ETA {duration(event.get('eta_s'))}")
    gpu = event.get("gpu_mem_gib")
    parts.append(f"GPU {gpu:.1f} GiB" if isinstance(gpu, int | float) else "GPU -")
    return " · ".join(parts)


def describe(event: dict[str, Any]) -> str:
    """One plain line for any event (used when no live display is possible, e.g. piped output)."""
    kind = event.get("event")
    if kind == "start":
        resumed = event.get("resumed_from_step") or 0
        tail = f", resuming from step {resumed}" if resumed else ""
        # Cloud Run's CLOUD_RUN_TASK_ATTEMPT counts from 0: attempt 0 is the first try.
        retry = f" (retry {event['attempt']})" if event.get("attempt") else ""
        return (f"run {event.get('run_id', '?')}{retry}: {event.get('model_id', '?')} "
                f"on {event.get('dataset', '?')}, train {event.get('train_size', '?')} / eval "
                f"{event.get('eval_size', '?')}, {event.get('total_steps', '?')} steps{tail}")
    if kind == "step":
        total = event.get("total_steps") or 0
        share = f" ({100 * event.get('step', 0) / total:.0f}%)" if total else ""
        return f"step {event.get('step')}/{total or '?'}{share} epoch {event.get('epoch', '-')} · {step_stats(event)}"
    if kind == "eval_progress":
        return (f"{event.get('phase', '?')} eval ({event.get('mode', '?')}): "
                f"{event.get('done', '?')}/{event.get('total', '?')}")
    if kind == "eval":
        return (f"{event.get('phase', '?')} eval ({event.get('mode', '?')}): accuracy {pct(event.get('accuracy'))} "
                f"{ci(event.get('accuracy_ci95'))}, macro-F1 {_num(event.get('macro_f1'))}, n={event.get('n', '?')}, "
                f"unknown {pct(event.get('unknown_rate'))}")
    if kind == "memory_plan":
        mode = f" ({event['compile_mode']})" if event.get("compile") and event.get("compile_mode") else ""
        compiled = f", torch.compile {'on' if event['compile'] else 'off'}{mode}" if "compile" in event else ""
        ahead = ", images encoded ahead" if event.get("encode_ahead") else ""
        return (f"memory plan: micro-batch {event.get('micro_batch', '?')} × {event.get('accumulation', '?')}, "
                f"checkpointing {'on' if event.get('checkpointing') else 'off'}{compiled}{ahead} "
                f"({event.get('why', '-')})")
    if kind == "checkpoint":
        return f"checkpoint at step {event.get('step')}: {event.get('path', '?')}"
    if kind == "done":
        return f"done in {duration(event.get('elapsed_s'))}; metrics at {event.get('metrics_path', '?')}"
    if kind == "error":
        return f"trainer error: {event.get('message', '?')}"
    return json.dumps(event)


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def signed(value: Any, *, percent: bool = False) -> str:
    """'+73.0 pp' / '+0.741': a delta with its sign."""
    if not isinstance(value, int | float):
        return "-"
    return f"{100 * value:+.1f} pp" if percent else f"{value:+.3f}"


# ------------------------------------------------------------------------------ rendering


class Renderer:
    """Turns log entries and events into output: a live progress bar on a terminal, plain lines otherwise,
    raw JSON lines in --json mode. Each event is shown once, whichever source delivered it first."""

    def __init__(self, console: Any, *, live: bool = False, json_mode: bool = False, err: Any = None) -> None:
        self.console, self.live, self.json_mode = console, live, json_mode
        self.err = err or console
        self.finished = False  # a done or error event was seen
        self.last_error: str | None = None
        self._seen: set[str] = set()
        self._evals: dict[tuple[str, str], dict[str, Any]] = {}
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._eval_marks: dict[str, int] = {}

    def __enter__(self) -> Renderer:
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), console=self.console, redirect_stdout=False,
                redirect_stderr=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # ------------------------------------------------------------------ inputs

    def entry(self, entry: LogEntry) -> None:
        if self.json_mode:
            self._json({"timestamp": iso_ms(entry.timestamp), "severity": entry.severity,
                        "insert_id": entry.insert_id, "text": entry.text, "payload": entry.payload})
            return
        event = parse_event(entry)
        if event is not None:
            self.event(event)
        else:
            self._line(entry)

    def event(self, event: dict[str, Any], *, source: str = "logging") -> None:
        key = event_key(event)
        if key in self._seen:
            return
        self._seen.add(key)
        if self.json_mode:
            if source != "logging":
                self._json({"source": source, "payload": event})
            return
        kind = event.get("event")
        if kind in ("done", "error"):
            self.finished = True
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event)

    def note(self, message: str) -> None:
        """A remark from gemmactl itself (not from the job)."""
        self.err.print(f"[dim]{escape(message)}[/dim]")

    # ------------------------------------------------------------------ events

    def _on_start(self, event: dict[str, Any]) -> None:
        self._print(Text(describe(event), style="bold"))
        if self._progress is not None and event.get("total_steps"):
            self._task("train", "training", event["total_steps"], event.get("resumed_from_step") or 0, "")

    def _on_step(self, event: dict[str, Any]) -> None:
        if self._progress is None:
            self._print(Text(describe(event)))
            return
        self._task("train", "training", event.get("total_steps"), event.get("step", 0), step_stats(event))

    def _on_eval_progress(self, event: dict[str, Any]) -> None:
        name = f"{event.get('phase', '?')} eval ({event.get('mode', '?')})"
        done, total = event.get("done", 0), event.get("total") or 0
        if self._progress is not None:
            self._task(name, name, total, done, "")
            return
        # Piped output: a line per quarter, not one per batch.
        quarter = int(4 * done / total) if total else 4
        if quarter > self._eval_marks.get(name, -1):
            self._eval_marks[name] = quarter
            self._print(Text(describe(event), style="dim"))

    def _on_eval(self, event: dict[str, Any]) -> None:
        self._evals[(str(event.get("phase")), str(event.get("mode")))] = event
        self._print(eval_table([event], title="evaluation"))

    def _on_checkpoint(self, event: dict[str, Any]) -> None:
        self._print(Text(describe(event), style="dim"))

    def _on_done(self, event: dict[str, Any]) -> None:
        self._print(comparison_table(event, self._evals))
        self._print(Text(describe(event), style="green"))

    def _on_error(self, event: dict[str, Any]) -> None:
        self.last_error = str(event.get("message", ""))
        self._print(Text(describe(event), style="bold red"))

    # ------------------------------------------------------------------ plumbing

    def _task(self, key: str, description: str, total: Any, completed: Any, stats: str) -> None:
        if key not in self._tasks:
            self._tasks[key] = self._progress.add_task(description, total=total or None, stats=stats)
        self._progress.update(self._tasks[key], total=total or None, completed=completed, stats=stats)

    def _line(self, entry: LogEntry) -> None:
        rank = _SEVERITY_STYLE.get(entry.severity, "")
        line = Text(entry.timestamp.astimezone(UTC).strftime("%H:%M:%S "), style="dim")
        line.append(entry.text.rstrip("\n"), style=rank)
        self._print(line)

    def _print(self, renderable: Any) -> None:
        self.console.print(renderable, soft_wrap=not isinstance(renderable, Table))

    def _json(self, data: dict[str, Any]) -> None:
        self.console.out(json.dumps(data, default=str), highlight=False)


_SEVERITY_STYLE = {"WARNING": "yellow", "ERROR": "red", "CRITICAL": "bold red", "ALERT": "bold red",
                   "EMERGENCY": "bold red"}


def eval_table(rows: list[dict[str, Any]], *, title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("phase", "mode", "accuracy", "95% CI", "macro-F1", "n", "unknown"):
        table.add_column(column, justify="left" if column in ("phase", "mode") else "right")
    for e in rows:
        table.add_row(str(e.get("phase", "-")), str(e.get("mode", "-")), pct(e.get("accuracy")),
                      ci(e.get("accuracy_ci95")), _num(e.get("macro_f1")), str(e.get("n", "-")),
                      pct(e.get("unknown_rate")))
    return table


def comparison_table(done: dict[str, Any], evals: dict[tuple[str, str], dict[str, Any]]) -> Table:
    """Baseline vs fine-tuned with deltas, from a done event (CIs from the eval events when seen)."""
    base, final = done.get("baseline") or {}, done.get("final") or {}
    ci_of = {phase: _matching(evals, phase, headline).get("accuracy_ci95")
             for phase, headline in (("baseline", base), ("final", final))}
    mode = _matching(evals, "final", final).get("mode")
    table = Table(title="baseline vs fine-tuned" + (f" ({mode})" if mode else ""), title_justify="left")
    for column in ("metric", "baseline", "fine-tuned", "delta"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    table.add_row("accuracy", f"{pct(base.get('accuracy'))} {ci(ci_of.get('baseline'))}".replace(" -", ""),
                  f"{pct(final.get('accuracy'))} {ci(ci_of.get('final'))}".replace(" -", ""),
                  signed(delta(final.get("accuracy"), base.get("accuracy")), percent=True))
    table.add_row("macro-F1", _num(base.get("macro_f1")), _num(final.get("macro_f1")),
                  signed(delta(final.get("macro_f1"), base.get("macro_f1"))))
    return table


def _matching(evals: dict[tuple[str, str], dict[str, Any]], phase: str, headline: dict[str, Any]) -> dict[str, Any]:
    """The eval event of `phase` the done event's headline came from (the trainer's primary mode)."""
    for (p, _), e in evals.items():
        if p == phase and e.get("accuracy") == headline.get("accuracy") and \
                e.get("macro_f1") == headline.get("macro_f1"):
            return e
    return {}


def delta(a: Any, b: Any) -> float | None:
    """a - b when both are numbers (a metric may be missing from either side)."""
    return a - b if isinstance(a, int | float) and isinstance(b, int | float) else None
