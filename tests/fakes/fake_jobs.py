"""In-memory fakes of the Jobs, Logs and Builds ports, with Cloud Run's and Cloud Build's state machines.

Executions go PENDING → RUNNING → SUCCEEDED / FAILED / CANCELLED. Tests move them with `advance()`, or
set `auto_advance = True` so each `get_execution` moves one step (a follow loop then ends by itself);
`script()` decides how the next executions end and which log lines they print. Everything applied or run
is recorded (`applied`, `runs`) so tests assert the exact specs; failures are injected with `fail_next`.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from gemmactl.cloud import ports
from gemmactl.errors import NotFoundError

START = datetime(2026, 1, 1, tzinfo=UTC)


class _Clock:
    """A fake clock that moves one second per event, so timestamps are ordered and deterministic."""

    def __init__(self) -> None:
        self.now = START

    def tick(self, seconds: float = 1.0) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def _hooks(cloud: Any, name: str, mutating: bool) -> None:
    """Share FakeCloud's bookkeeping: `call()` (failure injection, call log) and its `mutations` list."""
    mutations = getattr(cloud, "mutations", None)
    before = len(mutations) if isinstance(mutations, list) else 0
    call = getattr(cloud, "call", None)
    if callable(call):
        call(name)
    # FakeCloud only counts the ports it knows as mutating; count ours unless it already did.
    if mutating and isinstance(mutations, list) and len(mutations) == before:
        mutations.append(name)


@dataclass
class Outcome:
    """How a scripted execution ends, and what it prints while running."""

    state: str = ports.SUCCEEDED
    reason: str | None = None
    message: str | None = None
    retried: int = 0
    logs: list[Any] = field(default_factory=list)  # str lines or dict JSON payloads


@dataclass
class _Exec:
    job: str
    region: str
    name: str
    overrides: ports.RunOverrides
    outcome: Outcome
    state: str = ports.PENDING
    create_time: datetime | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    reason: str | None = None
    message: str | None = None
    retried: int = 0

    def view(self) -> ports.Execution:
        done = self.state in ports.TERMINAL_STATES
        return ports.Execution(
            name=self.name,
            job=self.job,
            state=self.state,
            create_time=self.create_time,
            start_time=self.start_time,
            completion_time=self.completion_time,
            task_count=1,
            running=int(self.state == ports.RUNNING),
            succeeded=int(self.state == ports.SUCCEEDED),
            failed=int(done and self.state == ports.FAILED),
            cancelled=int(self.state == ports.CANCELLED),
            retried=self.retried,
            reason=self.reason,
            message=self.message,
            run_id=self.overrides.env.get("RUN_ID"),
            log_uri=f"https://console.cloud.google.com/run/jobs/executions/details/{self.region}/{self.name}",
        )


class FakeJobs:
    """ports.Jobs in memory."""

    def __init__(self, cloud: Any) -> None:
        self.cloud = cloud
        self.clock = _Clock()
        self.jobs: dict[tuple[str, str], tuple[ports.JobSpec, ports.JobInfo]] = {}
        self.applied: list[ports.JobSpec] = []
        self.runs: list[tuple[str, ports.RunOverrides]] = []
        self.executions: dict[str, _Exec] = {}
        self.auto_advance = False
        self._scripted: deque[Outcome] = deque()
        self._failures: dict[str, list[BaseException]] = {}
        self._counter = 0

    # ------------------------------------------------------------------ test controls

    def script(self, *outcomes: Outcome | str) -> None:
        """How the next executions end, in order (a state string is a bare Outcome)."""
        for o in outcomes:
            self._scripted.append(Outcome(state=o) if isinstance(o, str) else o)

    def fail_next(self, method: str, error: BaseException) -> None:
        """The next call of `method` ("apply", "run", ...) raises `error`."""
        self._failures.setdefault(method, []).append(error)

    def advance(self, execution: str | None = None, *, to: str | None = None) -> ports.Execution:
        """One step (or straight `to` a state) for `execution`, default the newest one."""
        ex = self.executions[execution] if execution else list(self.executions.values())[-1]
        target = to or _next_state(ex)
        while ex.state != target and ex.state not in ports.TERMINAL_STATES:
            self._step(ex, final=target if target in ports.TERMINAL_STATES else None)
        return ex.view()

    def _step(self, ex: _Exec, final: str | None = None) -> None:
        now = self.clock.tick()
        if ex.state == ports.PENDING:
            ex.state, ex.start_time = ports.RUNNING, now
            logs = getattr(self.cloud, "logs", None)
            if isinstance(logs, FakeLogs):
                for line in ex.outcome.logs:
                    logs.add(ex.name, line, job=ex.job)
            return
        outcome = ex.outcome if final is None else replace(ex.outcome, state=final)
        ex.state, ex.completion_time, ex.retried = outcome.state, now, outcome.retried
        if outcome.state == ports.FAILED:
            ex.reason = outcome.reason or "NON_ZERO_EXIT_CODE"
            ex.message = outcome.message or "Task failed with exit code 1."
        elif outcome.state == ports.CANCELLED:
            ex.reason, ex.message = "CANCELLED", outcome.message or "The execution was cancelled."

    def _call(self, method: str, mutating: bool) -> None:
        _hooks(self.cloud, f"jobs.{method}", mutating)
        queue = self._failures.get(method)
        if queue:
            raise queue.pop(0)

    # ------------------------------------------------------------------ ports.Jobs

    def get_job(self, region: str, job: str) -> ports.JobInfo:
        self._call("get_job", False)
        if (region, job) not in self.jobs:
            raise NotFoundError(f"job {job} not found in {region}", resource=job)
        return self.jobs[(region, job)][1]

    def apply(self, spec: ports.JobSpec) -> tuple[ports.JobInfo, bool]:
        self._call("apply", True)
        key = (spec.region, spec.name)
        previous = self.jobs.get(key)
        generation = previous[1].generation + 1 if previous else 1
        latest = previous[1].latest_execution if previous else None
        info = ports.JobInfo(spec.name, spec.region, generation, spec.image, dict(spec.labels), latest)
        self.jobs[key] = (spec, info)
        self.applied.append(spec)
        return info, previous is None

    def run(self, region: str, job: str, overrides: ports.RunOverrides) -> ports.Execution:
        self._call("run", True)
        if (region, job) not in self.jobs:
            raise NotFoundError(f"job {job} not found in {region}", resource=job)
        self._counter += 1
        name = f"{job}-{self._counter:05d}"
        outcome = self._scripted.popleft() if self._scripted else Outcome()
        ex = _Exec(job, region, name, overrides, outcome, create_time=self.clock.tick())
        self.executions[name] = ex
        self.runs.append((job, overrides))
        spec, info = self.jobs[(region, job)]
        self.jobs[(region, job)] = (spec, replace(info, latest_execution=name))
        return ex.view()

    def _get(self, region: str, job: str, execution: str) -> _Exec:
        ex = self.executions.get(execution)
        if ex is None or ex.job != job or ex.region != region:
            raise NotFoundError(f"execution {execution} not found", resource=execution)
        return ex

    def get_execution(self, region: str, job: str, execution: str) -> ports.Execution:
        self._call("get_execution", False)
        ex = self._get(region, job, execution)
        if self.auto_advance and ex.state not in ports.TERMINAL_STATES:
            self._step(ex)
        return ex.view()

    def list_executions(self, region: str, job: str, *, limit: int = 20) -> list[ports.Execution]:
        self._call("list_executions", False)
        if (region, job) not in self.jobs:
            raise NotFoundError(f"job {job} not found in {region}", resource=job)
        mine = [e.view() for e in self.executions.values() if e.job == job and e.region == region]
        return list(reversed(mine))[:limit]

    def cancel(self, region: str, job: str, execution: str) -> ports.Execution:
        self._call("cancel", True)
        ex = self._get(region, job, execution)
        if ex.state not in ports.TERMINAL_STATES:
            ex.state, ex.completion_time = ports.CANCELLED, self.clock.tick()
            ex.reason, ex.message = "CANCELLED", "The execution was cancelled."
        return ex.view()


def _next_state(ex: _Exec) -> str:
    return ports.RUNNING if ex.state == ports.PENDING else ex.outcome.state


# ------------------------------------------------------------------------------- logs


class FakeLogs:
    """ports.Logs in memory: entries injected with `add()`; every `read()` is counted in `requests`."""

    def __init__(self, cloud: Any) -> None:
        self.cloud = cloud
        self.entries: list[tuple[str, str, ports.LogEntry]] = []  # (job, execution, entry)
        self.requests: list[tuple[ports.LogQuery, datetime]] = []
        self._counter = 0

    def _clock(self) -> _Clock:
        jobs = getattr(self.cloud, "jobs", None)
        if isinstance(jobs, FakeJobs):
            return jobs.clock
        self.__dict__.setdefault("_own_clock", _Clock())
        return self.__dict__["_own_clock"]

    def add(
        self,
        execution: str,
        line: str | dict[str, Any],
        *,
        job: str | None = None,
        severity: str = "DEFAULT",
        timestamp: datetime | None = None,
    ) -> ports.LogEntry:
        """Append one entry (a dict becomes a JSON payload, as Cloud Run parses JSON lines)."""
        self._counter += 1
        payload = line if isinstance(line, dict) else None
        text = json.dumps(line) if payload is not None else str(line)
        if payload is not None and isinstance(payload.get("severity"), str):
            severity = payload["severity"]
        entry = ports.LogEntry(
            timestamp=timestamp or self._clock().tick(0.1),
            insert_id=f"fake-{self._counter:08d}",
            text=text,
            severity=severity,
            payload=payload,
        )
        self.entries.append((job or execution.rsplit("-", 1)[0], execution, entry))
        return entry

    def read(self, query: ports.LogQuery, *, since: datetime, limit: int = 1000) -> list[ports.LogEntry]:
        _hooks(self.cloud, "logs.read", False)
        self.requests.append((query, since))
        floor = _SEVERITIES.get((query.min_severity or "DEFAULT").upper(), 0)
        found = [
            e
            for job, ex, e in self.entries
            if job == query.job
            and (query.execution is None or ex == query.execution)
            and e.timestamp >= since
            and _SEVERITIES.get(e.severity, 0) >= floor
        ]
        return sorted(found, key=lambda e: e.timestamp)[:limit]


_SEVERITIES = {"DEFAULT": 0, "DEBUG": 100, "INFO": 200, "NOTICE": 300, "WARNING": 400, "ERROR": 500,
               "CRITICAL": 600, "ALERT": 700, "EMERGENCY": 800}


# ------------------------------------------------------------------------------- builds


@dataclass
class BuildOutcome:
    status: str = "SUCCESS"
    failure_detail: str | None = None
    log: bytes = b"Step #0: Successfully built\nPUSH\nDONE\n"


@dataclass
class _Build:
    spec: ports.BuildSpec
    info: ports.BuildInfo
    outcome: BuildOutcome
    log: bytes = b""


class FakeBuilds:
    """ports.Builds in memory: QUEUED → WORKING → the scripted outcome, one step per `get()`."""

    def __init__(self, cloud: Any) -> None:
        self.cloud = cloud
        self.submitted: list[ports.BuildSpec] = []
        self.builds: dict[str, _Build] = {}
        self._scripted: deque[BuildOutcome] = deque()
        self._failures: dict[str, list[BaseException]] = {}

    def script(self, *outcomes: BuildOutcome | str) -> None:
        for o in outcomes:
            self._scripted.append(BuildOutcome(status=o) if isinstance(o, str) else o)

    def fail_next(self, method: str, error: BaseException) -> None:
        self._failures.setdefault(method, []).append(error)

    def _call(self, method: str, mutating: bool) -> None:
        _hooks(self.cloud, f"builds.{method}", mutating)
        queue = self._failures.get(method)
        if queue:
            raise queue.pop(0)

    def submit(self, spec: ports.BuildSpec) -> ports.BuildInfo:
        self._call("submit", True)
        build_id = f"fake-build-{len(self.builds) + 1:04d}"
        outcome = self._scripted.popleft() if self._scripted else BuildOutcome()
        info = ports.BuildInfo(
            id=build_id,
            status="QUEUED",
            log_url=f"https://console.cloud.google.com/cloud-build/builds;region={spec.region}/{build_id}",
            logs_bucket=spec.logs_bucket,
        )
        self.builds[build_id] = _Build(spec, info, outcome)
        self.submitted.append(spec)
        return info

    def get(self, region: str, build_id: str) -> ports.BuildInfo:
        self._call("get", False)
        build = self._build(build_id)
        if not build.info.done:
            self._step(build)
        return build.info

    def _step(self, build: _Build) -> None:
        if build.info.status in ("QUEUED", "PENDING"):
            build.info = replace(build.info, status="WORKING")
            build.log += b"starting build\n"
            return
        o = build.outcome
        images = tuple(f"{i}@sha256:{'0' * 64}" for i in build.spec.images) if o.status == "SUCCESS" else ()
        build.info = replace(build.info, status=o.status, failure_detail=o.failure_detail, images=images)
        build.log += o.log
        if o.status == "SUCCESS":
            _mark_images(self.cloud, build.spec.images)

    def _build(self, build_id: str) -> _Build:
        if build_id not in self.builds:
            raise NotFoundError(f"build {build_id} not found", resource=build_id)
        return self.builds[build_id]

    def read_log(self, build: ports.BuildInfo, *, offset: int) -> bytes:
        self._call("read_log", False)
        return self._build(build.id).log[offset:]

    def cancel(self, region: str, build_id: str) -> ports.BuildInfo:
        self._call("cancel", True)
        build = self._build(build_id)
        if not build.info.done:
            build.info = replace(build.info, status="CANCELLED")
        return build.info


def _mark_images(cloud: Any, images: tuple[str, ...]) -> None:
    """A pushed image then exists for `registry.image_exists` (FakeCloud keeps them in `images`)."""
    known = getattr(cloud, "images", None)
    if isinstance(known, set):
        known.update(images)


__all__ = ["FakeJobs", "FakeLogs", "FakeBuilds", "Outcome", "BuildOutcome"]
