"""`gemmactl config show`: every setting, its value and where it came from."""

from __future__ import annotations

import typer

from gemmactl.cli._common import settings
from gemmactl.cli._options import JsonOpt
from gemmactl.cli._output import out

config_app = typer.Typer(help="Inspect gemmactl's settings.", no_args_is_help=True)

EPILOG = """\
Examples:

  gemmactl config show

  GEMMACTL_REGION=us-central1 gemmactl config show --json

  gemmactl --config staging.toml config show
"""


@config_app.command("show", epilog=EPILOG)
def config_show(ctx: typer.Context, json: JsonOpt = False) -> None:
    """Show each setting with its source: default < gemmactl.toml < GEMMACTL_* env < flag."""
    out.json_mode = json
    s = settings(ctx)
    rows = s.shown()
    out.table(["setting", "value", "source"], rows, title="gemmactl settings",
              json_rows=[{"setting": n, "value": v, "source": src} for n, v, src in rows])
    if not s.project and s.backend == "gcp":
        out.hint("no project set: pass --project, set GOOGLE_CLOUD_PROJECT, or gemmactl uses ADC's project")


def register(app: typer.Typer) -> None:
    """Adds the `config` group to the root app."""
    app.add_typer(config_app, name="config")
