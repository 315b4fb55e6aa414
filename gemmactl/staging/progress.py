"""Rich progress for staging: a total bar (bytes, throughput, ETA) plus one bar per file in flight.

On a non-terminal (CI, Cloud Build logs) it prints one line per finished file instead of redrawing.
"""

from __future__ import annotations

import threading

from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class RichProgress:
    """Implements staging.copy.Progress on a rich console (stderr)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self._bars = Progress(
            TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True,
        )  # fmt: skip
        self._total: TaskID | None = None
        self._files: dict[str, tuple[TaskID, int]] = {}
        self._lock = threading.Lock()

    def start(self, files: int, total_bytes: int, skipped_bytes: int) -> None:
        self._total = self._bars.add_task(f"total ({files} files)", total=total_bytes, completed=skipped_bytes)
        if self.live:
            self._bars.start()

    def file_started(self, path: str, size: int) -> None:
        with self._lock:
            self._files[path] = (self._bars.add_task(f"  {path}", total=size, visible=self.live), size)

    def advance(self, path: str, nbytes: int) -> None:
        self._bars.advance(self._files[path][0], nbytes)
        if self._total is not None:
            self._bars.advance(self._total, nbytes)

    def file_done(self, path: str, *, skipped: bool) -> None:
        with self._lock:
            task, size = self._files.pop(path, (None, 0))
        if task is not None:
            self._bars.remove_task(task)
            self.console.print(f"[green]✓[/green] {path} [dim]({size_text(size)})[/dim]", markup=True, highlight=False)

    def note(self, message: str) -> None:
        self.console.print(message, markup=True, highlight=False)

    def stop(self) -> None:
        self._bars.stop()


def size_text(n: float) -> str:
    """'585.3 kB': decimal units, as rich's transfer columns show them."""
    return decimal(int(n))
