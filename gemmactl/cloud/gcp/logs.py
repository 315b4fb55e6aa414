"""ports.Logs over Cloud Logging (HTTP): one `entries.list` request per read, the caller keeps the cursor."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from gemmactl.cloud import ports
from gemmactl.cloud.gcp._clients import GcpContext
from gemmactl.cloud.gcp._errors import call

_SEVERITIES = ("DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY")


def rfc3339(moment: datetime) -> str:
    """UTC, microseconds, 'Z' (a naive datetime is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _quote(value: str) -> str:
    return json.dumps(value)  # a Logging filter string literal has JSON's escaping rules


def build_filter(query: ports.LogQuery, since: datetime) -> str:
    """The Logging filter for one job (and execution). Always carries its own timestamp bound: without one,
    the client library silently adds `timestamp>=now-24h`."""
    parts = [
        'resource.type="cloud_run_job"',
        f"resource.labels.job_name={_quote(query.job)}",
        f"resource.labels.location={_quote(query.region)}",
    ]
    if query.execution:
        short = query.execution.rsplit("/", 1)[-1]  # the label holds the short id
        parts.append(f'labels."run.googleapis.com/execution_name"={_quote(short)}')
    parts.append(f'timestamp>="{rfc3339(since)}"')
    if query.min_severity:
        severity = query.min_severity.upper()
        if severity not in _SEVERITIES:
            from gemmactl.errors import UsageError

            raise UsageError(f"unknown severity '{query.min_severity}'", hint=f"one of: {', '.join(_SEVERITIES)}")
        parts.append(f"severity>={severity}")
    return " AND ".join(parts)


def to_entry(entry: Any) -> ports.LogEntry:
    """A ports.LogEntry from a google.cloud.logging TextEntry / StructEntry (or any other entry)."""
    payload = entry.payload
    if isinstance(payload, dict):
        text, kept = json.dumps(payload, separators=(",", ":"), ensure_ascii=False), payload
    else:
        text, kept = ("" if payload is None else str(payload)).rstrip("\n"), None
    timestamp = entry.timestamp or datetime.now(UTC)
    return ports.LogEntry(
        timestamp=timestamp,
        insert_id=entry.insert_id or "",
        text=text,
        severity=entry.severity or "DEFAULT",
        payload=kept,
    )


def _parse(resource: dict[str, Any], client: Any) -> Any:
    from google.cloud.logging_v2.entries import LogEntry, StructEntry, TextEntry

    if "textPayload" in resource:
        return TextEntry.from_api_repr(resource, client)
    if "jsonPayload" in resource:
        return StructEntry.from_api_repr(resource, client)
    return LogEntry.from_api_repr(resource, client)


class CloudLogging:
    """Reads a Cloud Run job's stdout/stderr entries."""

    def __init__(self, ctx: GcpContext) -> None:
        self._ctx = ctx

    def read(self, query: ports.LogQuery, *, since: datetime, limit: int = 1000) -> list[ports.LogEntry]:
        client = self._ctx.logging()
        body = {
            "resourceNames": [f"projects/{self._ctx.project}"],
            "filter": build_filter(query, since),
            "orderBy": "timestamp asc",
            "pageSize": max(1, min(limit, 1000)),
        }
        # Exactly the request `Client.list_entries` sends, minus its auto-paging: Logging's read quota is
        # tight, so one call is one request and the caller decides when to ask again.
        response = call(
            f"read logs of job {query.job} in {query.region}",
            lambda: client._connection.api_request(method="POST", path="/entries:list", data=body),
            clock=self._ctx.clock,
        )
        return [to_entry(_parse(r, client)) for r in response.get("entries", [])[:limit]]
