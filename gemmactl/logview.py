"""Follow or dump an execution's logs: a de-duplicating cursor over ports.Logs, paced to Logging's read
quota, with the trainer's JSON events rendered as a live progress bar and eval tables.

Cloud Logging's `entries.list` quota is small and shared by the whole project, so every read goes
through one RateLimiter (at most one request per `poll_s`, never more than one per second). Logging
can lag minutes behind a running job; when it goes quiet, the run's own `runs/<id>/events.jsonl` in
the bucket is tailed as well, and events seen twice are printed once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from gemmactl import events as ev
from gemmactl.cloud.ports import RUNNING, Execution, LogEntry, LogQuery
from gemmactl.errors import ConfigError, JobFailedError, NotFoundError, QuotaError, TransientError, UsageError
from gemmactl.settings import parse_duration

if TYPE_CHECKING:
    from gemmactl.cloud import Cloud
    from gemmactl.settings import Settings

# Cloud Logging's severities, in order (LogSeverity enum values).
SEVERITIES = {"DEFAULT": 0, "DEBUG": 100, "INFO": 200, "NOTICE": 300, "WARNING": 400, "ERROR": 500,
              "CRITICAL": 600, "ALERT": 700, "EMERGENCY": 800}
PAGE = 1000

# The time seam: tests replace these two (or pass clock=/sleep=) so following a run takes no real time.
_clock: Callable[[], float] = time.monotonic
_sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class Pacing:
    """How often to ask what; the defaults keep `logs --follow` well inside Logging's read quota."""

    poll_s: float = 2.0  # between Logging reads (floored at 1 s)
    status_s: float = 5.0  # between execution status reads (Cloud Run Admin API)
    lag_s: float = 20.0  # no new entries this long while RUNNING → also tail events.jsonl
    drain_s: float = 8.0  # after the end, keep reading this long for late entries
    max_backoff_s: float = 60.0


# ------------------------------------------------------------------------------ input parsing


def parse_since(text: str | None, *, now: datetime | None = None) -> datetime | None:
    """'10m' / '2h' / '90s' (ago) or an ISO-8601 time (UTC when it has no offset).

    Bad flags raise ConfigError (exit 2): the CLI root lets anything *named* UsageError through to Click.
    """
    if not text:
        return None
    now = now or datetime.now(UTC)
    try:
        return now - timedelta(seconds=parse_duration(text))
    except UsageError:
        pass
    try:
        ts = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"invalid --since '{text}'", hint="use e.g. 10m, 2h or 2026-01-31T12:00:00Z") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def parse_severity(text: str | None) -> str | None:
    """A Cloud Logging severity name (case-insensitive; 'warn' → WARNING)."""
    if not text:
        return None
    name = {"WARN": "WARNING", "ERR": "ERROR", "CRIT": "CRITICAL"}.get(text.upper(), text.upper())
    if name not in SEVERITIES:
        raise ConfigError(f"invalid severity '{text}'", hint=f"choose one of: {', '.join(SEVERITIES)}")
    return name


def short_execution_name(name: str) -> str:
    """'projects/p/locations/r/jobs/j/executions/x' → 'x'."""
    return name.rstrip("/").rsplit("/", 1)[-1]


# ------------------------------------------------------------------------------ cursor and pacing


@dataclass
class LogCursor:
    """Reads are `timestamp >= since`, so entries at the boundary come back; their insert ids drop them."""

    since: datetime
    seen: set[str] = field(default_factory=set)  # insert ids of entries exactly at `since`

    def take(self, entries: list[LogEntry]) -> list[LogEntry]:
        """The entries not returned before, oldest first; advances the cursor past them."""
        fresh = []
        entries = [e if e.timestamp.tzinfo else replace(e, timestamp=e.timestamp.replace(tzinfo=UTC)) for e in entries]
        for entry in sorted(entries, key=lambda e: e.timestamp):
            if entry.timestamp < self.since or (entry.timestamp == self.since and entry.insert_id in self.seen):
                continue
            if entry.timestamp > self.since:
                self.since, self.seen = entry.timestamp, set()
            self.seen.add(entry.insert_id)
            fresh.append(entry)
        return fresh

    def nudge(self) -> None:
        """Step past a boundary holding a full page of entries (else the same page would return forever)."""
        self.since, self.seen = self.since + timedelta(microseconds=1), set()


class RateLimiter:
    """At most one call per `interval` seconds on an injectable clock; backs off after quota errors."""

    def __init__(self, interval: float, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self.interval = max(1.0, interval)
        self.clock, self.sleep = clock, sleep
        self._next: float | None = None
        self.penalty = 0.0

    def wait(self) -> None:
        now = self.clock()
        if self._next is not None and now < self._next:
            self.sleep(self._next - now)
            now = self.clock()
        self._next = now + self.interval + self.penalty

    def backoff(self, ceiling: float) -> None:
        self.penalty = min(ceiling, max(self.interval, 2 * self.penalty))

    def recover(self) -> None:
        self.penalty = 0.0


class EventsTail:
    """Tails runs/<id>/events.jsonl through Storage.read_bytes(start=offset), whole lines only."""

    def __init__(self, cloud: Cloud, bucket: str, run_id: str) -> None:
        self.cloud, self.bucket = cloud, bucket
        self.name = f"runs/{run_id}/events.jsonl"
        self.offset, self._partial = 0, b""

    def read(self) -> list[dict[str, Any]]:
        try:
            data = self.cloud.storage.read_bytes(self.bucket, self.name, start=self.offset)
        except NotFoundError:
            return []  # the trainer has not written its first event yet
        self.offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        return [e for line in lines if (e := ev.parse_line(line.decode("utf-8", "replace"))) is not None]


# ------------------------------------------------------------------------------ follow


class _Follower:
    """One follow session: Logging polls, status polls, the events.jsonl fallback and the final drain."""

    def __init__(self, cloud: Cloud, settings: Settings, execution: Execution, view: Any,
                 query: LogQuery, since: datetime, pacing: Pacing, clock: Callable[[], float],
                 sleep: Callable[[float], None]) -> None:
        self.cloud, self.settings, self.execution, self.view = cloud, settings, execution, view
        self.query, self.pacing, self.clock = query, pacing, clock
        self.cursor = LogCursor(since)
        self.limiter = RateLimiter(pacing.poll_s, clock, sleep)
        self.tail = EventsTail(cloud, settings.bucket_name, execution.run_id) if execution.run_id else None
        self.tailing = False
        self.last_status = self.last_activity = clock()
        self.requests = 0

    def run(self) -> Execution:
        if not self.execution.done:
            self.view.note(f"following {self.execution.name} ({self.execution.state}); Ctrl-C stops following, "
                           "not the job")
        while True:
            self.poll_logs()
            self.maybe_fall_back()
            if self.clock() - self.last_status >= self.pacing.status_s:
                self.refresh_status()
            if self.execution.done:
                break
        self.drain()
        return self.execution

    def refresh_status(self) -> None:
        s, before = self.settings, self.execution.state
        self.execution = self.cloud.jobs.get_execution(s.region, s.job, self.execution.name)
        self.last_status = self.clock()
        if self.execution.state != before:
            self.view.note(f"execution {self.execution.name}: {before} → {self.execution.state}")

    def poll_logs(self) -> int:
        """One Logging read (paced); renders what is new and returns how many entries that was."""
        self.limiter.wait()
        self.requests += 1
        try:
            entries = self.cloud.logs.read(self.query, since=self.cursor.since, limit=PAGE)
        except (QuotaError, TransientError) as e:
            self.limiter.backoff(self.pacing.max_backoff_s)  # Logging's read quota is per project
            self.view.note(f"log read failed ({e.message}); slowing down to one read per "
                           f"{self.limiter.interval + self.limiter.penalty:.0f}s")
            return 0
        self.limiter.recover()
        fresh = self.cursor.take(entries)
        if len(entries) >= PAGE and not fresh:
            self.cursor.nudge()
        for entry in visible(fresh, self.query.min_severity):
            self.view.entry(entry)
        if fresh:
            self.last_activity = self.clock()
        return len(fresh)

    def maybe_fall_back(self) -> None:
        if self.tail is None:
            return
        if not self.tailing and self.execution.state == RUNNING and \
                self.clock() - self.last_activity >= self.pacing.lag_s:
            self.tailing = True
            self.view.note(f"Cloud Logging is lagging; also reading gs://{self.tail.bucket}/{self.tail.name}")
        if self.tailing:
            self.read_tail()

    def read_tail(self) -> None:
        if self.tail is not None:
            for event in self.tail.read():
                self.view.event(event, source="events.jsonl")

    def drain(self) -> None:
        """Late entries still arrive after the end: read until the final event shows up, or quiet."""
        deadline = self.clock() + self.pacing.drain_s
        while True:
            fresh = self.poll_logs()
            if not fresh and (self.view.finished or self.clock() >= deadline):
                break
        # Whatever Logging dropped or has not ingested yet is in the run's own file.
        self.read_tail()


def follow_execution(
    cloud: Cloud,
    settings: Settings,
    execution_name: str,
    *,
    since: datetime | None = None,
    min_severity: str | None = None,
    pacing: Pacing | None = None,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
    view: Any = None,
) -> Execution:
    """Stream an execution's logs and progress until it ends; returns its final state (never raises on
    failure: see `raise_for_execution`)."""
    execution = cloud.jobs.get_execution(settings.region, settings.job, short_execution_name(execution_name))
    query = LogQuery(settings.region, settings.job, execution.name, min_severity)
    view = view if view is not None else default_view(follow=True)
    follower = _Follower(cloud, settings, execution, view, query, since or default_since(execution),
                         pacing or Pacing(), clock or _clock, sleep or _sleep)
    with view:
        return follower.run()


def dump_logs(
    cloud: Cloud,
    settings: Settings,
    execution_name: str,
    *,
    since: datetime | None = None,
    min_severity: str | None = None,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
    view: Any = None,
) -> int:
    """Print the logs so far (all pages, paced) without waiting; returns how many entries were shown."""
    execution = cloud.jobs.get_execution(settings.region, settings.job, short_execution_name(execution_name))
    query = LogQuery(settings.region, settings.job, execution.name, min_severity)
    view = view if view is not None else default_view(follow=False)
    limiter, shown = RateLimiter(1.0, clock or _clock, sleep or _sleep), 0
    with view:
        for entry in _all_pages(cloud, query, LogCursor(since or default_since(execution)), limiter):
            view.entry(entry)
            shown += 1
        if not shown and execution.run_id and not min_severity:
            shown = _dump_events_file(cloud, settings, execution.run_id, view)
    return shown


def _all_pages(cloud: Cloud, query: LogQuery, cursor: LogCursor, limiter: RateLimiter) -> Iterator[LogEntry]:
    """Every entry from the cursor on, one paced request per page of PAGE entries."""
    while True:
        limiter.wait()
        entries = cloud.logs.read(query, since=cursor.since, limit=PAGE)
        fresh = cursor.take(entries)
        yield from visible(fresh, query.min_severity)
        if len(entries) < PAGE:
            return
        if not fresh:
            cursor.nudge()


def _dump_events_file(cloud: Cloud, settings: Settings, run_id: str, view: Any) -> int:
    tail = EventsTail(cloud, settings.bucket_name, run_id)
    found = tail.read()
    if found:
        view.note(f"Cloud Logging returned nothing; showing gs://{tail.bucket}/{tail.name}")
    for event in found:
        view.event(event, source="events.jsonl")
    return len(found)


def visible(entries: list[LogEntry], min_severity: str | None) -> list[LogEntry]:
    """Entries at or above `min_severity` (the adapters filter server-side too; this keeps every backend
    honest)."""
    if not min_severity:
        return entries
    floor = SEVERITIES[min_severity]
    return [e for e in entries if SEVERITIES.get(e.severity.upper(), 0) >= floor]


def default_since(execution: Execution) -> datetime:
    """From the execution's creation (a minute earlier for clock skew), else the last 24 hours."""
    if execution.create_time is not None:
        ts = execution.create_time
        return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)) - timedelta(minutes=1)
    return datetime.now(UTC) - timedelta(days=1)


def raise_for_execution(execution: Execution, *, cmd: str = "gemmactl") -> None:
    """JobFailedError (exit 1, with Cloud Run's reason) unless the execution succeeded."""
    if execution.state == "SUCCEEDED":
        return
    what = {"CANCELLED": "was cancelled", "FAILED": "failed"}.get(execution.state, f"ended {execution.state}")
    detail = ": ".join(x for x in (execution.reason, execution.message) if x)
    raise JobFailedError(
        f"execution {execution.name} {what}" + (f" ({detail})" if detail else ""),
        execution=execution.name,
        hint=f"`{cmd} logs {execution.name} --severity ERROR` shows the errors, `{cmd} status` the retries",
    )


def default_view(*, follow: bool, stderr: bool = False) -> Any:
    """The renderer bound to the CLI's `out`: a live bar only when both streams are terminals, raw JSON
    lines in --json mode. `stderr=True` renders progress for people on stderr whatever the mode, for a
    command whose own --json result owns stdout (e.g. `train --follow --json`)."""
    from gemmactl.cli._output import out

    if stderr:
        return ev.Renderer(out.err, live=follow and out.err.is_terminal)
    live = follow and not out.json_mode and out.console.is_terminal and out.err.is_terminal
    return ev.Renderer(out.err if live else out.console, live=live, json_mode=out.json_mode, err=out.err)
