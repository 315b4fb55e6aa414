"""Glue every command shares: global options → Settings, and Settings → the cloud ports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from gemmactl import cloud as cloud_seam
from gemmactl.cloud import Cloud
from gemmactl.settings import Settings, load_settings


@dataclass
class GlobalOptions:
    config: Path | None = None
    flags: dict[str, Any] = field(default_factory=dict)


def global_options(ctx: typer.Context) -> GlobalOptions:
    root = ctx.find_root()
    if not isinstance(root.obj, GlobalOptions):
        root.obj = GlobalOptions()
    return root.obj


def settings(ctx: typer.Context, **flags: Any) -> Settings:
    """Settings from all layers; `flags` are this command's own (None = not given)."""
    g = global_options(ctx)
    merged = {**g.flags, **{k: v for k, v in flags.items() if v is not None}}
    return load_settings(merged, config_path=g.config)


def connect(s: Settings) -> tuple[Settings, Cloud]:
    """The backend for these settings, with the project filled in from the backend when unset."""
    c = cloud_seam.get_cloud(s)
    if not s.project:
        s = s.with_project(c.project)
    return s, c


def follow_to_end(cloud: Cloud, s: Settings, name: str, **options: Any) -> Any:
    """Stream an execution until it ends (`logs --follow`, `train --follow`). Ctrl-C stops following, never the
    job (exit 130, with the commands to get back to it); a failed or cancelled execution raises JobFailedError."""
    from gemmactl import logview
    from gemmactl.cli._output import out

    cmd = command_prefix(cloud)
    try:
        final = logview.follow_execution(cloud, s, name, **options)
    except KeyboardInterrupt:
        short = logview.short_execution_name(name)
        out.warning(f"stopped following; execution {short} keeps running")
        out.hint(f"`{cmd} logs {short} --follow` to watch it again, `{cmd} cancel {short}` to stop it")
        raise typer.Exit(130) from None
    logview.raise_for_execution(final, cmd=cmd)
    out.success(f"execution {final.name} succeeded")
    return final


def command_prefix(cloud: Cloud) -> str:
    """How the user reaches this backend again, for hints."""
    return "gemmactl --local" if cloud.backend == "local" else "gemmactl"
