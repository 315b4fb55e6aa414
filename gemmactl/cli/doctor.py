"""`gemmactl doctor`: check the setup end to end, one row per check, with the fix for each failure."""

from __future__ import annotations

from typing import Annotated

import typer

from gemmactl.cli._common import connect, settings
from gemmactl.cli._options import HfTokenFileOpt, JsonOpt
from gemmactl.cli._output import out

GpuTypeOpt = Annotated[str | None, typer.Option("--gpu-type", help="GPU type, e.g. nvidia-rtx-pro-6000.")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="Hugging Face model id to check access to.")]
BucketOpt = Annotated[str | None, typer.Option("--bucket", help="Bucket name to check.")]

EPILOG = """\
Examples:

  gemmactl doctor --project my-proj

  gemmactl doctor --model google/gemma-3-27b-it --json

  gemmactl --local doctor
"""


def doctor(
    ctx: typer.Context,
    hf_token_file: HfTokenFileOpt = None,
    gpu_type: GpuTypeOpt = None,
    model: ModelOpt = None,
    bucket: BucketOpt = None,
    json: JsonOpt = False,
) -> None:
    """Check credentials, APIs, service account, bucket, GPU region, secret and Hugging Face access."""
    from gemmactl import checks, tokens
    from gemmactl.errors import ConfigError, CredentialsError

    out.json_mode = json
    s = settings(ctx, gpu_type=gpu_type, model=model, bucket=bucket)
    token = tokens.read_token(hf_token_file)
    source = "--hf-token-file" if hf_token_file else "HF_TOKEN"
    try:
        s, cloud = connect(s)
        s.require_project()
    except (CredentialsError, ConfigError) as e:
        # No credentials is a finding, not a crash: show it as the first row and still check the rest.
        ctx_ = checks.Context(s, None, token, source)
        rows = [checks.Check("credentials and project", checks.FAIL, e.message, e.hint), *checks.run_checks(ctx_)]
    else:
        rows = checks.run_checks(checks.Context(s, cloud, token, source))
    _show(rows)
    if any(r.status == checks.FAIL for r in rows):
        raise typer.Exit(1)


def _show(rows) -> None:
    from rich.markup import escape

    colour = {"ok": "[green]ok[/green]", "warn": "[yellow]warn[/yellow]", "fail": "[red]fail[/red]"}
    table_rows = [[r.check, colour.get(r.status, r.status), escape(r.detail), escape(r.fix or "")] for r in rows]
    out.table(["check", "status", "detail", "fix"], table_rows, title="gemmactl doctor",
              json_rows=[r.row() for r in rows])
    failed = sum(r.status == "fail" for r in rows)
    if failed:
        out.hint(f"{failed} check(s) failed; run the fix shown in each failed row")


def register(app: typer.Typer) -> None:
    """Adds `doctor` to the root app."""
    app.command("doctor", epilog=EPILOG)(doctor)
