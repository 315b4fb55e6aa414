"""The one output object: every command prints through `out` (rich for people, JSON for scripts).

Results go to stdout; errors, warnings, hints and progress go to stderr, so `--json` output stays
machine-readable even while a progress bar runs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gemmactl.errors import AbortedError

if TYPE_CHECKING:
    from rich.console import Console

# rich is imported on first output, not at start-up: `gemmactl --help` never prints through `out`
# and the import costs ~50 ms of the 0.25 s budget (BENCHMARKS.md).


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _default(o: Any) -> Any:
    if isinstance(o, datetime):
        return o.isoformat()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


class Output:
    """Human (rich) or JSON output. `json_mode` is set per command by its `--json` flag."""

    def __init__(self) -> None:
        self.json_mode = False
        self._console: Console | None = None
        self._err: Console | None = None

    def reset(self) -> None:
        """Fresh consoles bound to the current sys.stdout/stderr (CliRunner swaps them per test)."""
        self.__init__()

    @property
    def console(self) -> Console:
        """The stdout console, created on first use."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(highlight=False, soft_wrap=True)
        return self._console

    @property
    def err(self) -> Console:
        """The stderr console (messages, progress), created on first use."""
        if self._err is None:
            from rich.console import Console

            self._err = Console(stderr=True, highlight=False, soft_wrap=True)
        return self._err

    # ------------------------------------------------------------------ results (stdout)

    def text(self, message: str) -> None:
        if not self.json_mode:
            self.console.print(message)

    def json(self, data: Any) -> None:
        sys.stdout.write(json.dumps(data, indent=2, default=_default) + "\n")

    def result(self, data: dict[str, Any], *, title: str | None = None) -> None:
        """A record: key/value lines for people, one JSON object for scripts."""
        if self.json_mode:
            self.json(data)
            return
        from rich.table import Table

        table = Table(title=title, show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        for key, value in data.items():
            table.add_row(str(key), "-" if value is None else str(value))
        self.console.print(table)

    def table(
        self,
        columns: Sequence[str],
        rows: Iterable[Sequence[Any]],
        *,
        title: str | None = None,
        json_rows: list[dict[str, Any]] | None = None,
    ) -> None:
        """A table for people; a JSON list of row objects (or `json_rows`) for scripts."""
        rows = [list(r) for r in rows]
        if self.json_mode:
            self.json(json_rows if json_rows is not None else [dict(zip(columns, r, strict=False)) for r in rows])
            return
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for column in columns:
            # Fold rather than truncate: names and fix commands must stay copy-pasteable.
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*("-" if v is None else str(v) for v in row))
        self.console.print(table)

    def rich(self, renderable: Any) -> None:
        """Any rich renderable (live tables, panels) in human mode only."""
        if not self.json_mode:
            self.console.print(renderable)

    # ------------------------------------------------------------------ messages (stderr)

    def success(self, message: str) -> None:
        if not self.json_mode:
            self.err.print(f"[green]✓[/green] {message}")

    # Messages are plain text (often built from error messages and paths): escaped, so "[train]"
    # or a bucket name in brackets prints as written instead of vanishing as rich markup.

    def info(self, message: str) -> None:
        self.err.print(message)

    def warning(self, message: str) -> None:
        self.err.print(f"[yellow]warning:[/yellow] {escape(message)}")

    def hint(self, message: str) -> None:
        self.err.print(f"[dim]hint:[/dim] {escape(message)}")

    def error(self, message: str) -> None:
        self.err.print(f"[red]error:[/red] {escape(message)}", markup=True)

    def secret_input(self, prompt: str) -> str:
        """Read a secret from the terminal without echoing it (callers check for a TTY first)."""
        return self.err.input(prompt, password=True)

    def confirm(self, question: str, *, yes: bool) -> None:
        """Ask before a destructive step; refuse without a TTY unless `--yes` was given."""
        if yes:
            return
        if not sys.stdin.isatty():
            raise AbortedError(
                f"{question} needs confirmation and there is no interactive terminal",
                hint="rerun with --yes",
            )
        answer = self.err.input(f"{question} [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            raise AbortedError("aborted", hint="nothing was changed")


out = Output()
