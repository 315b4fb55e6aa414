"""JSON-lines progress events: one object per line on stdout and appended to <output_dir>/events.jsonl.

`gemmactl logs` renders these, so the shapes are a contract (see the trainer README / issue 3). Every event has
"event" (its type) and "time" (ISO-8601 UTC). Human-readable lines go to stderr through `log()`. Secrets (the
HF token) are scrubbed from everything written.

The file copy is buffered for frequent progress events (`step`, `eval_progress`): on Cloud Run the output dir is a
Cloud Storage FUSE mount where every close re-uploads the whole object, so one open/append/close per step would
cost an upload of the growing file per step. Any other event (start, checkpoint, eval, done, error...) writes the
buffer out at once, as does a progress event once `flush_s` seconds have passed since the last write; stdout is
never buffered. So the file always holds complete lines, and nothing is lost on an error exit.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol


class EventSink(Protocol):
    def emit(self, event: str, **fields: Any) -> None: ...


_HF_TOKEN_SHAPE = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")


def hf_token() -> str | None:
    """HF_TOKEN, stripped: a secret pasted with its newline must neither break auth nor slip past `scrub`."""
    return (os.environ.get("HF_TOKEN") or "").strip() or None


def scrub(text: str) -> str:
    """Remove the HF token (and anything shaped like one) from a string before it is printed or written."""
    token = hf_token()
    if token and len(token) >= 4:
        text = text.replace(token, "***")
    return _HF_TOKEN_SHAPE.sub("***", text)


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf; a diverged loss must still produce parseable lines.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


PROGRESS_EVENTS = frozenset({"step", "eval_progress"})


class JsonlSink:
    """Writes each event to stdout (flushed at once, Cloud Logging picks it up) and appends it to a file."""

    def __init__(self, path: Path | None, stream=None, flush_s: float = 15.0, clock=time.monotonic):
        self.path = path
        self.stream = stream or sys.stdout
        self.flush_s = flush_s
        self._clock = clock
        self._pending: list[str] = []
        self._last_write = clock()

    def emit(self, event: str, **fields: Any) -> None:
        # Cloud Logging reads `severity` from a JSON line, so `gemmactl logs --severity INFO` keeps progress.
        severity = "ERROR" if event == "error" else "INFO"
        record = {"event": event, "time": now_iso(), "severity": severity, **fields}
        line = scrub(json.dumps(_clean(record), allow_nan=False))
        print(line, file=self.stream, flush=True)
        if self.path is None:
            return
        self._pending.append(line + "\n")
        if event not in PROGRESS_EVENTS or self._clock() - self._last_write >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Append the buffered lines to the file in one open/write/close."""
        if self.path is None or not self._pending:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write("".join(self._pending))
        self._pending.clear()
        self._last_write = self._clock()


class NullSink:
    """Drops every event (tests, library use)."""

    def emit(self, event: str, **fields: Any) -> None:
        pass


class ListSink:
    """Keeps events in memory (tests)."""

    def __init__(self):
        self.events: list[dict[str, Any]] = []

    def emit(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})


def log(message: str) -> None:
    """A plain human line on stderr."""
    print(scrub(message), file=sys.stderr, flush=True)


@contextmanager
def heartbeat(what: str, every_s: float = 60.0) -> Iterator[None]:
    """Log `what` with the time elapsed every `every_s` seconds until the block ends: a wait with nothing else to
    say (an autotuned compile, ~5 min cold) still shows the job is alive."""
    done, start = threading.Event(), time.perf_counter()

    def beat():
        while not done.wait(every_s):
            log(f"{what}: {time.perf_counter() - start:.0f} s so far")

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
