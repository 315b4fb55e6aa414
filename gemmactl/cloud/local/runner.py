"""The local backend's "Cloud Run task": a detached process that runs `python -m trainer` like a job would.

`LocalJobs.run` starts `python -m gemmactl.cloud.local.runner EXECUTION_DIR` in its own session. The runner
gives the trainer the job's args and env (the bucket directory in place of /mnt/gcs, HF_TOKEN from the local
secret as an env var, never an argument, RUN_ID, CLOUD_RUN_TASK_ATTEMPT), timestamps every output line into
`log.jsonl`, retries failed attempts up to max_retries as Cloud Run does, and keeps `state.json` current.
SIGTERM (from `cancel`) stops the trainer's process group and ends the execution as CANCELLED.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
TERMINAL = {SUCCEEDED, FAILED, CANCELLED}
STATE, LOG, CANCEL_MARK = "state.json", "log.jsonl", "cancel-requested"
GRACE_S = 10.0  # like Cloud Run: SIGTERM, then SIGKILL after a grace period


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def read_state(exec_dir: Path) -> dict[str, Any]:
    return json.loads((exec_dir / STATE).read_text())


def write_state(exec_dir: Path, state: dict[str, Any]) -> None:
    """Atomic: readers (status, logs --follow) never see a half-written file."""
    tmp = exec_dir / f".{STATE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, exec_dir / STATE)


# ------------------------------------------------------------------------------- the log file


class LogWriter:
    """Appends one JSON object per output line: timestamp, insert id, severity, text, stream, attempt."""

    def __init__(self, path: Path, execution: str) -> None:
        self.path, self.execution = path, execution
        self.secrets: tuple[str, ...] = ()  # values scrubbed from every line
        self.lock = threading.Lock()
        self.seq = 0
        self.attempt = 0

    def write(self, text: str, *, stream: str = "stdout", severity: str | None = None) -> None:
        for secret in self.secrets:
            text = text.replace(secret, "***")  # belt and braces: the trainer scrubs too
        with self.lock:
            self.seq += 1
            record = {"timestamp": now_iso(), "insert_id": f"{self.execution}-{self.seq:07d}",
                      "severity": severity or _severity(text), "text": text, "stream": stream,
                      "attempt": self.attempt}
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def pump(self, pipe: IO[str], stream: str, last: list[str]) -> None:
        for line in pipe:
            line = line.rstrip("\n")
            if line:
                self.write(line, stream=stream)
                last[:] = [line]


def _severity(text: str) -> str:
    """JSON lines carry their own severity (as Cloud Logging reads them); error events are ERROR."""
    if text.startswith("{"):
        try:
            payload = json.loads(text)
        except ValueError:
            return "DEFAULT"
        if isinstance(payload, dict):
            if isinstance(payload.get("severity"), str):
                return payload["severity"].upper()
            if payload.get("event") == "error":
                return "ERROR"
    return "ERROR" if text.startswith("error:") else "DEFAULT"


# ------------------------------------------------------------------------------- environment


def rewrite(value: str, mount: str, bucket_dir: str) -> str:
    """`/mnt/gcs/x` → `<bucket dir>/x` (only whole path prefixes)."""
    if value == mount or value.startswith(mount + "/"):
        return bucket_dir + value[len(mount):]
    return value


def trainer_env(state: dict[str, Any], bucket_dir: str, secrets: dict[str, str], attempt: int) -> dict[str, str]:
    spec, overrides = state["spec"], state["overrides"]
    mount = spec["mount_path"]
    env = {k: v for k, v in os.environ.items() if k not in spec["secret_env"] and not k.startswith("GEMMACTL_")}
    env.update({k: rewrite(v, mount, bucket_dir) for k, v in {**spec["env"], **overrides["env"]}.items()})
    env.update(secrets)
    env.update({
        "CLOUD_RUN_JOB": state["job"], "CLOUD_RUN_EXECUTION": state["name"], "CLOUD_RUN_TASK_INDEX": "0",
        "CLOUD_RUN_TASK_COUNT": "1", "CLOUD_RUN_TASK_ATTEMPT": str(attempt), "PYTHONUNBUFFERED": "1",
    })
    return env


def _secrets(state: dict[str, Any], log: LogWriter) -> dict[str, str]:
    """Secret env vars from the local secret store (values stay in memory and the child's env only)."""
    from gemmactl.cloud.local import make_local_cloud
    from gemmactl.errors import GemmactlError
    from gemmactl.settings import Settings

    cloud = make_local_cloud(Settings(backend="local", local_dir=state["root"], project=state.get("project")))
    values = {}
    for name, ref in state["spec"]["secret_env"].items():
        try:
            value = cloud.secrets.latest_value(ref["secret"])
        except GemmactlError:
            value = None
        if value:
            values[name] = value.reveal()
        else:
            log.write(f"secret {ref['secret']} has no value: {name} is not set (fine for builtin: and staged "
                      "models; run `gemmactl --local init` to store a token)", stream="system", severity="WARNING")
    return values


# ------------------------------------------------------------------------------- the task


class Task:
    """One execution: attempts of the trainer until success, retries exhausted, timeout or cancel."""

    def __init__(self, exec_dir: Path) -> None:
        self.dir = exec_dir
        self.state = read_state(exec_dir)
        self.child: subprocess.Popen[str] | None = None
        self.cancelled = False

    def save(self, **changes: Any) -> None:
        self.state.update(changes)
        write_state(self.dir, self.state)

    def on_sigterm(self, *_: Any) -> None:
        self.cancelled = True
        self._signal_child(signal.SIGTERM)

    def _signal_child(self, sig: int) -> None:
        # The whole group: DataLoader workers outlive a killed trainer otherwise.
        if self.child is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.child.pid, sig)

    def run(self) -> int:
        spec, overrides = self.state["spec"], self.state["overrides"]
        bucket_dir = self.state["bucket_dir"]
        args = [rewrite(a, spec["mount_path"], bucket_dir) for a in (overrides["args"] or spec["args"])]
        timeout = overrides.get("timeout_s") or spec["timeout_s"]
        log = LogWriter(self.dir / LOG, self.state["name"])
        secrets = _secrets(self.state, log)
        log.secrets = tuple(v for v in secrets.values() if v)
        self.save(state=RUNNING, start_time=now_iso(), runner_pid=os.getpid())
        attempts = spec["max_retries"] + 1
        for attempt in range(attempts):
            if self.cancelled or (self.dir / CANCEL_MARK).exists():
                break
            log.attempt = attempt
            self.save(attempt=attempt, retried=attempt)
            log.write(f"Starting attempt {attempt + 1}/{attempts}: python -m trainer", stream="system",
                      severity="INFO")
            code, last = self._attempt(args, trainer_env(self.state, bucket_dir, secrets, attempt), timeout, log)
            if code == 0:
                return self._finish(SUCCEEDED, None, "Execution completed successfully.", code, log)
            if self.cancelled:
                break
            why = "timed out" if code is None else f"exited with code {code}"
            log.write(f"Attempt {attempt + 1} {why}" + ("; retrying" if attempt + 1 < attempts else ""),
                      stream="system", severity="WARNING")
        if self.cancelled or (self.dir / CANCEL_MARK).exists():
            return self._finish(CANCELLED, "CANCELLED", "The execution was cancelled.", None, log)
        reason = "TASK_TIMEOUT" if code is None else "NON_ZERO_EXIT_CODE"
        message = f"Task {why} after {attempts} attempt(s)" + (f": {last}" if last else "")
        return self._finish(FAILED, reason, message, code, log)

    def _attempt(self, args: list[str], env: dict[str, str], timeout: float, log: LogWriter) -> tuple[int | None, str]:
        """Run the trainer once; (exit code or None on timeout, its last stderr line)."""
        self.child = subprocess.Popen(
            [sys.executable, "-m", "trainer", *args], env=env, cwd=self.dir, text=True, bufsize=1,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        self.save(child_pid=self.child.pid)
        last_err: list[str] = []
        pumps = [threading.Thread(target=log.pump, args=(self.child.stdout, "stdout", [])),
                 threading.Thread(target=log.pump, args=(self.child.stderr, "stderr", last_err))]
        for t in pumps:
            t.start()
        code: int | None
        try:
            code = self.child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal_child(signal.SIGTERM)
            code = None
        self._reap()
        for t in pumps:
            t.join()
        last = last_err[0] if last_err else ""
        return code, last.removeprefix("error: ")

    def _reap(self) -> None:
        assert self.child is not None
        try:
            self.child.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            self._signal_child(signal.SIGKILL)
            self.child.wait()

    def _finish(self, state: str, reason: str | None, message: str, code: int | None, log: LogWriter) -> int:
        log.write(message, stream="system", severity="INFO" if state == SUCCEEDED else "ERROR")
        self.save(state=state, reason=reason, message=message, exit_code=code, completion_time=now_iso(),
                  child_pid=None)
        return 0 if state == SUCCEEDED else 1


def main(argv: list[str]) -> int:
    exec_dir = Path(argv[0])
    task = Task(exec_dir)
    signal.signal(signal.SIGTERM, task.on_sigterm)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # detached: a closed terminal must not end the run
    try:
        return task.run()
    except Exception as e:  # noqa: BLE001 - the runner must always leave a terminal state behind
        task.save(state=FAILED, reason="RUNNER_ERROR", message=f"local runner failed: {type(e).__name__}: {e}",
                  completion_time=now_iso())
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
