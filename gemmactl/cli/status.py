"""`gemmactl status`: the job's executions, newest first (state, timing, retries, exit reason, run id)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from gemmactl.cli._common import connect, settings
from gemmactl.cli._options import JsonOpt
from gemmactl.cli._output import out
from gemmactl.cloud import ports
from gemmactl.errors import NotFoundError

EPILOG = """\
Examples:

  gemmactl status

  gemmactl status --limit 5 --json

  gemmactl --local status
"""

LimitOpt = Annotated[int, typer.Option("--limit", "-n", min=1, max=1000, help="How many executions to show.")]
COLUMNS = ("execution", "state", "started", "duration", "tasks", "retries", "exit reason", "run id")
_STYLE = {ports.SUCCEEDED: "green", ports.FAILED: "red", ports.CANCELLED: "yellow", ports.RUNNING: "cyan"}


def status(ctx: typer.Context, limit: LimitOpt = 20, json: JsonOpt = False) -> None:
    """Show the training job's executions, newest first."""
    out.json_mode = json
    s, cloud = connect(settings(ctx))
    try:
        executions = cloud.jobs.list_executions(s.region, s.job, limit=limit)
    except NotFoundError:
        executions = []
    if not executions and not json:
        out.text(f"no executions of job {s.job} in {s.region} yet")
        out.hint("start one with `gemmactl train --size 1000`")
        return
    out.table(COLUMNS, [_row(e) for e in executions], title=f"{s.job} ({s.region})",
              json_rows=[execution_dict(e) for e in executions])


def _row(e: ports.Execution) -> list[Any]:
    style = _STYLE.get(e.state)
    state = f"[{style}]{e.state}[/{style}]" if style else e.state
    started = e.start_time or e.create_time
    return [e.name, state, _local_time(started), format_duration(duration_s(e)), _tasks(e), e.retried or 0,
            e.reason, e.run_id]


def _tasks(e: ports.Execution) -> str:
    parts = [f"{e.succeeded}/{e.task_count} ok"]
    parts += [f"{n} {what}" for n, what in ((e.running, "running"), (e.failed, "failed"),
                                              (e.cancelled, "cancelled")) if n]
    return ", ".join(parts)


def duration_s(e: ports.Execution, now: datetime | None = None) -> float | None:
    """Seconds from start (or creation) to completion, or to now while it runs."""
    start = e.start_time or e.create_time
    if start is None:
        return None
    end = e.completion_time or (None if e.done else (now or datetime.now(UTC)))
    return None if end is None else max(0.0, (end - start).total_seconds())


def format_duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


def _local_time(t: datetime | None) -> str | None:
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S") if t else None


def execution_dict(e: ports.Execution) -> dict[str, Any]:
    """The JSON form of an execution (also used by `cancel --json`)."""
    return {
        "execution": e.name, "job": e.job, "state": e.state, "create_time": e.create_time,
        "start_time": e.start_time, "completion_time": e.completion_time, "duration_s": duration_s(e),
        "task_count": e.task_count, "running": e.running, "succeeded": e.succeeded, "failed": e.failed,
        "cancelled": e.cancelled, "retried": e.retried, "reason": e.reason, "message": e.message,
        "run_id": e.run_id, "log_uri": e.log_uri,
    }


def register(app: typer.Typer) -> None:
    """Adds `status` to the root app."""
    app.command("status", epilog=EPILOG)(status)
