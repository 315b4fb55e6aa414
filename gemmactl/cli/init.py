"""`gemmactl init`: set up the project (or the local backend) for fine-tuning, idempotently."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from gemmactl.cli._common import connect, settings
from gemmactl.cli._options import DryRunOpt, HfTokenFileOpt, JsonOpt
from gemmactl.cli._output import out

BucketOpt = Annotated[
    str | None, typer.Option("--bucket", help="Bucket name (default: <project>-gemma-finetuning-<region>).")
]

EPILOG = """\
Examples:

  gemmactl init --project my-proj --hf-token-file ~/.hf_token

  gemmactl init --dry-run --json

  gemmactl --local init
"""


def init(
    ctx: typer.Context,
    hf_token_file: HfTokenFileOpt = None,
    bucket: BucketOpt = None,
    dry_run: DryRunOpt = False,
    json: JsonOpt = False,
) -> None:
    """Enable APIs and create the service account, bucket, registry, HF token secret and IAM bindings."""
    from gemmactl import setup, tokens

    out.json_mode = json
    s = settings(ctx, bucket=bucket)
    token = tokens.read_token(hf_token_file)  # a bad file fails here, before any API call
    s, cloud = connect(s)
    snapshot = setup.with_retries(lambda: setup.observe(cloud, s))
    if token is None and setup.needs_token(snapshot) and not dry_run:
        token = _ask_token(local=cloud.backend == "local")
    plan = setup.build_plan(s, snapshot, token)
    if not dry_run:
        with out.err.status("applying the plan…") as status:
            plan = setup.apply_plan(plan, cloud, s, token, on_step=_report,
                                    on_progress=lambda message: status.update(message))
    _show(plan, project=s.project or "", backend=cloud.backend, dry_run=dry_run)


def _ask_token(*, local: bool):
    from gemmactl import tokens
    from gemmactl.errors import UsageError

    if not sys.stdin.isatty():
        if local:
            return None  # the local backend works without a token for builtin: models
        raise UsageError("the secret needs a Hugging Face token and there is no terminal to ask for it",
                         hint="pass --hf-token-file FILE or set HF_TOKEN")
    return tokens.prompt_token(out.secret_input)


def _report(step) -> None:
    verb = {"create": "created", "update": "updated"}.get(step.state, step.state)
    out.success(f"{verb} {step.resource} {step.name}")


def _show(plan, *, project: str, backend: str, dry_run: bool) -> None:
    rows = [step.row() for step in plan]
    if out.json_mode:
        out.json({"project": project, "backend": backend, "dry_run": dry_run, "steps": rows})
        return
    title = f"init {'plan' if dry_run else 'result'} for {project} ({backend})"
    out.table(["resource", "name", "state", "detail"], [list(r.values()) for r in rows], title=title)
    if dry_run:
        out.hint("nothing was changed; run without --dry-run to apply")
    else:
        out.hint("next: gemmactl doctor")


def register(app: typer.Typer) -> None:
    """Adds `init` to the root app."""
    app.command("init", epilog=EPILOG)(init)
