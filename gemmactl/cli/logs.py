"""`gemmactl logs` (placeholder until its issue lands)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Adds this module's command(s) to the root app."""
