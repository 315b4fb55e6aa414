"""One table from exception type to (message, hint); the CLI prints one line and a hint, no traceback.

`GEMMACTL_DEBUG=1` re-raises so the full traceback shows.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from gemmactl.errors import GemmactlError

Formatter = Callable[[BaseException], tuple[str, str | None]]

DEBUG_HINT = "set GEMMACTL_DEBUG=1 for the full traceback"


def _ours(e: BaseException) -> tuple[str, str | None]:
    assert isinstance(e, GemmactlError)
    return e.message, e.hint


def _interrupted(e: BaseException) -> tuple[str, str | None]:
    return "interrupted", "re-run the same command: every step is safe to repeat"


def _os_error(e: BaseException) -> tuple[str, str | None]:
    assert isinstance(e, OSError)
    where = f": {e.filename}" if e.filename else ""
    return f"{e.strerror or e}{where}", DEBUG_HINT


def _unexpected(e: BaseException) -> tuple[str, str | None]:
    return f"unexpected {type(e).__name__}: {e}", DEBUG_HINT


# Order matters: the first matching type wins (subclasses before their bases).
ERROR_FORMATTERS: list[tuple[type[BaseException], Formatter]] = [
    (GemmactlError, _ours),
    (KeyboardInterrupt, _interrupted),
    (OSError, _os_error),
    (Exception, _unexpected),
]


def debug_enabled() -> bool:
    return os.environ.get("GEMMACTL_DEBUG", "").lower() not in ("", "0", "false", "no")


def format_error(e: BaseException) -> tuple[str, str | None, int]:
    """(message, hint, exit code) for any exception."""
    for kind, formatter in ERROR_FORMATTERS:
        if isinstance(e, kind):
            message, hint = formatter(e)
            code = e.exit_code if isinstance(e, GemmactlError) else (130 if isinstance(e, KeyboardInterrupt) else 1)
            return message, hint, code
    return str(e), DEBUG_HINT, 1
