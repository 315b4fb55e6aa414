"""Annotated option aliases shared by commands (declared once, reused in signatures)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Show what would change; change nothing.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
FollowOpt = Annotated[bool, typer.Option("--follow", "-f", help="Stream progress until it ends.")]
HfTokenFileOpt = Annotated[
    Path | None,
    typer.Option("--hf-token-file", help="Read the Hugging Face token from this file (else $HF_TOKEN, then the stored secret).",
                 dir_okay=False),
]
