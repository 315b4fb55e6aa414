"""The root Typer app: global options, command registration and the error handler around them."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from gemmactl.cli._common import global_options
from gemmactl.cli._errors import debug_enabled, format_error
from gemmactl.cli._output import out

# One module per command (or group); each exposes `register(app)`. Imported at start-up, so they
# import only Typer and our light modules at top level; heavy imports happen inside commands.
COMMAND_MODULES = (
    "init",
    "doctor",
    "config",
    "stage",
    "build",
    "train",
    "logs",
    "status",
    "cancel",
    "results",
)


class _Group(TyperGroup):
    """Turns our exceptions into one line + hint and an exit code (Typer's hook for this)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except BaseException as e:  # noqa: BLE001 - the single place errors are reported
            if debug_enabled() or isinstance(e, SystemExit) or _is_click_error(e):
                raise
            message, hint, code = format_error(e)
            out.error(message)
            if hint:
                out.hint(hint)
            raise typer.Exit(code) from None


# Click's own usage errors (exit 2) must reach Click's handler; matched by name because Typer
# vendors Click privately and we never import it.
_CLICK_PASSTHROUGH = {"UsageError", "BadParameter", "MissingParameter", "NoSuchOption", "BadOptionUsage",
                      "BadArgumentUsage", "NoArgsIsHelpError", "Exit", "Abort"}

def _is_click_error(e: BaseException) -> bool:
    # Our own UsageError shares Click's class name, so the module decides.
    return type(e).__name__ in _CLICK_PASSTHROUGH and not type(e).__module__.startswith("gemmactl")


app = typer.Typer(
    name="gemmactl",
    cls=_Group,
    help="Fine-tune Gemma vision-language models on Cloud Run Jobs with serverless GPUs, or locally.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    # Plain Click help: typer's rich help renderer imports markdown-it, pygments and rich.traceback
    # (~160 ms of the 0.25 s start-up budget, BENCHMARKS.md); errors are ours and print via rich anyway.
    rich_markup_mode=None,
)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", help="Settings file (default: ./gemmactl.toml).", dir_okay=False)
    ] = None,
    project: Annotated[str | None, typer.Option("--project", help="Google Cloud project id.")] = None,
    region: Annotated[str | None, typer.Option("--region", help="Region of the job and bucket.")] = None,
    local: Annotated[
        bool, typer.Option("--local", help="Use the embedded local backend (no cloud account needed).")
    ] = False,
    local_dir: Annotated[
        str | None, typer.Option("--local-dir", help="Where the local backend keeps its state.")
    ] = None,
) -> None:
    """Global options, valid before any command."""
    out.reset()
    g = global_options(ctx)
    g.config = config
    flags = {"project": project, "region": region, "local_dir": local_dir}
    if local:
        flags["backend"] = "local"
    g.flags = {k: v for k, v in flags.items() if v is not None}


def _register_all() -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"gemmactl.cli.{name}")
        module.register(app)


_register_all()


def main() -> None:
    """Console-script entry point."""
    try:
        app(prog_name="gemmactl")
    except KeyboardInterrupt:
        out.error("interrupted")
        sys.exit(130)
