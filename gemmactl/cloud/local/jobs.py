"""Local backend's Jobs, Logs and Builds: a job is a JSON file, an execution a detached runner process.

Layout under the local root: `jobs/<region>/<job>/job.json` (the applied JobSpec) and
`jobs/<region>/<job>/executions/<job>-00001/{state.json,log.jsonl}`. The runner
(gemmactl.cloud.local.runner) owns an execution's state while it is alive; this module only reads it,
except to settle an execution whose runner died without saying so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from gemmactl.cloud import ports
from gemmactl.cloud.local import runner
from gemmactl.errors import NotFoundError

_SEVERITY = {"DEFAULT": 0, "DEBUG": 100, "INFO": 200, "NOTICE": 300, "WARNING": 400, "ERROR": 500,
             "CRITICAL": 600, "ALERT": 700, "EMERGENCY": 800}
CANCEL_WAIT_S = 15.0
PID_FILE = "runner.pid"


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _pid_alive(pid: int | None) -> bool:
    """Alive and not a zombie (a finished runner whose parent, e.g. `train --follow`, has not reaped it)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


class LocalJobs:
    """ports.Jobs over files and subprocesses."""

    def __init__(self, root: Path | str, settings: Any) -> None:
        self.root, self.settings = Path(root), settings
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------------ paths

    def _job_dir(self, region: str, job: str) -> Path:
        return self.root / "jobs" / region / job

    def _exec_dir(self, region: str, job: str, execution: str) -> Path:
        path = self._job_dir(region, job) / "executions" / execution
        if not (path / runner.STATE).is_file():
            raise NotFoundError(f"execution {execution} not found (local job {job})", resource=execution,
                                hint="`gemmactl --local status` lists executions")
        return path

    def _job_file(self, region: str, job: str) -> Path:
        path = self._job_dir(region, job) / "job.json"
        if not path.is_file():
            raise NotFoundError(f"local job {job} not found in {region}", resource=job,
                                hint="`gemmactl --local train` creates it")
        return path

    # ------------------------------------------------------------------ jobs

    def get_job(self, region: str, job: str) -> ports.JobInfo:
        data = json.loads(self._job_file(region, job).read_text())
        names = self._execution_names(region, job)
        spec = data["spec"]
        return ports.JobInfo(job, region, data["generation"], spec["image"], spec["labels"],
                             names[0] if names else None)

    def apply(self, spec: ports.JobSpec) -> tuple[ports.JobInfo, bool]:
        directory = self._job_dir(spec.region, spec.name)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "job.json"
        previous = json.loads(path.read_text()) if path.is_file() else None
        generation = previous["generation"] + 1 if previous else 1
        data = {"generation": generation, "updated": runner.now_iso(), "spec": dataclasses.asdict(spec)}
        tmp = directory / ".job.json.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
        return self.get_job(spec.region, spec.name), previous is None

    # ------------------------------------------------------------------ executions

    def run(self, region: str, job: str, overrides: ports.RunOverrides) -> ports.Execution:
        spec = json.loads(self._job_file(region, job).read_text())["spec"]
        bucket_dir = self._bucket_dir(spec)
        exec_dir = self._new_execution_dir(region, job)
        state = {
            "name": exec_dir.name, "job": job, "region": region, "state": runner.PENDING,
            "create_time": runner.now_iso(), "start_time": None, "completion_time": None, "attempt": 0,
            "retried": 0, "exit_code": None, "reason": None, "message": None,
            "run_id": overrides.env.get("RUN_ID"), "runner_pid": None, "child_pid": None,
            "spec": spec, "overrides": dataclasses.asdict(overrides), "root": str(self.root),
            "project": getattr(self.settings, "project", None), "bucket_dir": bucket_dir,
        }
        runner.write_state(exec_dir, state)
        (exec_dir / runner.LOG).touch()
        with (exec_dir / "runner.err").open("wb") as err:  # the runner's own crash, if any, lands here
            proc = subprocess.Popen(
                [sys.executable, "-m", "gemmactl.cloud.local.runner", str(exec_dir)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True, close_fds=True, cwd=exec_dir,
            )
        self._children[exec_dir.name] = proc
        # A file of its own, so the runner's state.json writes never race with ours.
        (exec_dir / PID_FILE).write_text(str(proc.pid))
        return self._view(state, exec_dir)

    def _bucket_dir(self, spec: dict[str, Any]) -> str:
        """The directory LocalStorage keeps the bucket in: what the job sees at the mount path."""
        return str(self.root / "buckets" / spec["bucket"]) if spec.get("bucket") else str(self.root / "scratch")

    def _new_execution_dir(self, region: str, job: str) -> Path:
        """`<job>-00001`, `<job>-00002`, ...: numbered under a lock so parallel `train`s never collide."""
        base = self._job_dir(region, job) / "executions"
        base.mkdir(parents=True, exist_ok=True)
        with (base / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            names = self._execution_names(region, job)
            number = int(names[0].rsplit("-", 1)[1]) + 1 if names else 1
            path = base / f"{job}-{number:05d}"
            path.mkdir()
        return path

    def _execution_names(self, region: str, job: str) -> list[str]:
        """Newest first."""
        base = self._job_dir(region, job) / "executions"
        if not base.is_dir():
            return []
        names = [p.name for p in base.iterdir() if p.is_dir() and p.name.rsplit("-", 1)[-1].isdigit()]
        return sorted(names, key=lambda n: int(n.rsplit("-", 1)[1]), reverse=True)

    def _settled(self, exec_dir: Path) -> dict[str, Any]:
        """The state, with a dead runner's unfinished execution settled as FAILED (or CANCELLED)."""
        state = runner.read_state(exec_dir)
        child = self._children.get(exec_dir.name)
        if child is not None:
            child.poll()  # reap our own finished runner so it does not linger as a zombie
        if state["state"] in runner.TERMINAL or _pid_alive(_runner_pid(exec_dir)):
            return state
        if not (exec_dir / PID_FILE).exists():
            return state  # `run` is between writing the state and starting the runner
        state = runner.read_state(exec_dir)  # the runner may have finished while we looked
        if state["state"] in runner.TERMINAL:
            return state
        cancelled = (exec_dir / runner.CANCEL_MARK).exists()
        state.update(state=runner.CANCELLED if cancelled else runner.FAILED,
                     reason="CANCELLED" if cancelled else "RUNNER_EXITED",
                     message="The execution was cancelled." if cancelled else _runner_died(exec_dir),
                     completion_time=runner.now_iso())
        runner.write_state(exec_dir, state)
        return state

    def _view(self, state: dict[str, Any], exec_dir: Path) -> ports.Execution:
        s = state["state"]
        return ports.Execution(
            name=state["name"], job=state["job"], state=s, create_time=_time(state["create_time"]),
            start_time=_time(state["start_time"]), completion_time=_time(state["completion_time"]),
            task_count=1, running=int(s == runner.RUNNING), succeeded=int(s == runner.SUCCEEDED),
            failed=int(s == runner.FAILED), cancelled=int(s == runner.CANCELLED), retried=state["retried"],
            reason=state["reason"], message=state["message"], run_id=state["run_id"],
            log_uri=str(exec_dir / runner.LOG),
        )

    def get_execution(self, region: str, job: str, execution: str) -> ports.Execution:
        exec_dir = self._exec_dir(region, job, execution)
        return self._view(self._settled(exec_dir), exec_dir)

    def list_executions(self, region: str, job: str, *, limit: int = 20) -> list[ports.Execution]:
        self._job_file(region, job)
        return [self.get_execution(region, job, n) for n in self._execution_names(region, job)[:limit]]

    def cancel(self, region: str, job: str, execution: str) -> ports.Execution:
        """SIGTERM to the runner (it stops the trainer's process group), then wait for it to settle."""
        exec_dir = self._exec_dir(region, job, execution)
        state = self._settled(exec_dir)
        if state["state"] in runner.TERMINAL:
            return self._view(state, exec_dir)
        (exec_dir / runner.CANCEL_MARK).touch()
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(_runner_pid(exec_dir), signal.SIGTERM)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            state = self._settled(exec_dir)
            if state["state"] in runner.TERMINAL:
                break
            time.sleep(0.1)
        return self._view(state, exec_dir)


def _runner_pid(exec_dir: Path) -> int | None:
    try:
        return int((exec_dir / PID_FILE).read_text())
    except (OSError, ValueError):
        return None


def _runner_died(exec_dir: Path) -> str:
    err = exec_dir / "runner.err"
    tail = err.read_text(errors="replace").strip().splitlines()[-1:] if err.is_file() else []
    return "the local runner exited unexpectedly" + (f": {tail[0]}" if tail else "")


# ------------------------------------------------------------------------------- logs


class LocalLogs:
    """ports.Logs over the runners' log.jsonl files (one 'request' = one read of the files)."""

    def __init__(self, root: Path | str, settings: Any) -> None:
        self.root, self.settings = Path(root), settings

    def read(self, query: ports.LogQuery, *, since: datetime, limit: int = 1000) -> list[ports.LogEntry]:
        base = self.root / "jobs" / query.region / query.job / "executions"
        names = [query.execution] if query.execution else (sorted(os.listdir(base)) if base.is_dir() else [])
        floor = _SEVERITY.get((query.min_severity or "DEFAULT").upper(), 0)
        entries = []
        for name in names:
            path = base / name / runner.LOG
            if path.is_file():
                entries += [e for e in _parse(path) if e.timestamp >= since and _SEVERITY.get(e.severity, 0) >= floor]
        entries.sort(key=lambda e: e.timestamp)
        return entries[:limit]


def _parse(path: Path) -> list[ports.LogEntry]:
    entries = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written right now: read again on the next poll
        text = record["text"]
        payload = None
        if text.startswith("{"):
            with contextlib.suppress(ValueError):
                parsed = json.loads(text)
                payload = parsed if isinstance(parsed, dict) else None
        entries.append(ports.LogEntry(datetime.fromisoformat(record["timestamp"]), record["insert_id"], text,
                                      record.get("severity", "DEFAULT"), payload))
    return entries


# ------------------------------------------------------------------------------- builds


class LocalBuilds:
    """Nothing to build locally (the runner uses this install); a submit records which source it was."""

    def __init__(self, root: Path | str, settings: Any) -> None:
        self.root, self.settings = Path(root), settings

    def _path(self, build_id: str) -> Path:
        return self.root / "builds" / f"{build_id}.json"

    def submit(self, spec: ports.BuildSpec) -> ports.BuildInfo:
        record = {"images": list(spec.images), "source_object": spec.source_object, "tags": list(spec.tags),
                  "created": runner.now_iso()}
        build_id = "local-" + hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]
        self._path(build_id).parent.mkdir(parents=True, exist_ok=True)
        self._path(build_id).write_text(json.dumps({"id": build_id, **record}, indent=2))
        return self._info(build_id, record)

    def _info(self, build_id: str, record: dict[str, Any]) -> ports.BuildInfo:
        return ports.BuildInfo(id=build_id, status="SUCCESS", images=tuple(record["images"]))

    def get(self, region: str, build_id: str) -> ports.BuildInfo:
        if not self._path(build_id).is_file():
            raise NotFoundError(f"local build {build_id} not found", resource=build_id)
        return self._info(build_id, json.loads(self._path(build_id).read_text()))

    def read_log(self, build: ports.BuildInfo, *, offset: int) -> bytes:
        return b""

    def cancel(self, region: str, build_id: str) -> ports.BuildInfo:
        return self.get(region, build_id)
