"""Settings: built-in defaults < gemmactl.toml < GEMMACTL_* env < flags, each value with its source.

`gemmactl.toml` is read from `--config PATH` or the current directory. Keys are the field names below
(top level), plus an optional `[train]` table of trainer defaults. Env vars are `GEMMACTL_<FIELD>`
in upper case; the project also comes from `GOOGLE_CLOUD_PROJECT` / `CLOUDSDK_CORE_PROJECT`, and,
when nothing names it, from Application Default Credentials (resolved by the cloud layer).
Everything is validated here, before any API call.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from gemmactl.errors import ConfigError

CONFIG_FILE = "gemmactl.toml"
DEFAULT, TOML, ENV, FLAG, DERIVED = "default", "gemmactl.toml", "env", "flag", "derived"

_PROJECT_RE = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_SA_RE = re.compile(r"^[a-z]([-a-z0-9]{4,28}[a-z0-9])$")
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_MEMORY_RE = re.compile(r"^[0-9]+(Mi|Gi)$")
_DURATION_RE = re.compile(r"^([0-9]+)(s|m|h|d)?$")


def _default_local_dir() -> str:
    from platformdirs import user_data_dir

    return str(Path(user_data_dir("gemmactl")) / "local")


@dataclass(frozen=True)
class Settings:
    """Resolved settings; `sources` maps each field to where its value came from."""

    backend: str = "gcp"
    project: str | None = None
    region: str = "europe-west4"
    bucket: str | None = None
    service_account: str = "finetune-gemma-job-sa"
    repository: str = "gemma-finetuning"
    secret: str = "HF_TOKEN"
    image: str = "gemma-finetune"
    job: str = "gemma-finetuning-job"
    gpu_type: str = "nvidia-rtx-pro-6000"
    cpu: str = "20"
    memory: str = "80Gi"
    task_timeout: str = "6h"
    max_retries: int = 3
    network: str | None = None
    subnet: str | None = None
    vpc_egress: str | None = None
    model: str = "google/gemma-3-4b-it"
    dataset: str = "timm/oxford-iiit-pet"
    local_dir: str | None = None
    train: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    # ---------------------------------------------------------------- derived values

    @property
    def bucket_name(self) -> str:
        """The explicit bucket, or `<project>-gemma-finetuning-<region>` as the seed recipe names it."""
        if self.bucket:
            return self.bucket
        return f"{self.require_project()}-gemma-finetuning-{self.region}"

    @property
    def service_account_email(self) -> str:
        if "@" in self.service_account:
            return self.service_account
        return f"{self.service_account}@{self.require_project()}.iam.gserviceaccount.com"

    @property
    def image_repo(self) -> str:
        """`<region>-docker.pkg.dev/<project>/<repository>/<image>` (no tag)."""
        return f"{self.region}-docker.pkg.dev/{self.require_project()}/{self.repository}/{self.image}"

    @property
    def task_timeout_s(self) -> int:
        return parse_duration(self.task_timeout)

    @property
    def local_root(self) -> Path:
        return Path(self.local_dir or _default_local_dir()).expanduser()

    def require_project(self) -> str:
        if not self.project:
            raise ConfigError(
                "no Google Cloud project is set",
                hint="pass --project ID, set GOOGLE_CLOUD_PROJECT, or `gcloud config set project ID`",
            )
        return self.project

    def with_project(self, project: str, source: str = "ADC") -> Settings:
        return replace(self, project=project, sources={**self.sources, "project": source})

    def source_of(self, name: str) -> str:
        return self.sources.get(name, DEFAULT)

    def shown(self) -> list[tuple[str, str, str]]:
        """(name, value, source) rows for `gemmactl config show`, derived values included."""
        rows = []
        for f in fields(self):
            if f.name == "sources":
                continue
            value = getattr(self, f.name)
            source = self.source_of(f.name)
            if f.name == "bucket" and not value and self.project:
                value, source = self.bucket_name, DERIVED
            if f.name == "local_dir" and not value:
                value = str(self.local_root)
            rows.append((f.name, _show(value), source))
        return rows


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


# ------------------------------------------------------------------------------- validation


def parse_duration(text: str) -> int:
    """'6h' / '360m' / '90s' / '3600' → seconds."""
    m = _DURATION_RE.match(str(text).strip())
    if not m:
        raise ConfigError(f"invalid duration '{text}'", hint="use e.g. 6h, 90m or 3600s")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2) or "s"]


def _check(pattern: re.Pattern[str], example: str) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if value is not None and not pattern.match(str(value)):
            raise ConfigError(f"invalid {name.replace('_', ' ')} '{value}'", hint=f"expected e.g. {example}")

    return check


def _check_choice(*choices: str) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if value is not None and value not in choices:
            raise ConfigError(f"invalid {name} '{value}'", hint=f"choose one of: {', '.join(choices)}")

    return check


def _check_gpu(name: str, value: Any) -> None:
    from gemmactl.gpus import GPUS

    if value not in GPUS:
        raise ConfigError(f"unknown GPU type '{value}'", hint=f"choose one of: {', '.join(GPUS)}")


def _check_cpu(name: str, value: Any) -> None:
    try:
        ok = float(value) > 0
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"invalid cpu '{value}'", hint="a number of vCPUs, e.g. 20")


def _check_retries(name: str, value: Any) -> None:
    if not 0 <= int(value) <= 10:
        raise ConfigError(f"max retries must be 0..10, got {value}", hint="Cloud Run allows at most 10")


def _check_sa(name: str, value: Any) -> None:
    if "@" not in str(value):
        _check(_SA_RE, "finetune-gemma-job-sa (6-30 lowercase letters, digits, hyphens)")(name, value)


_VALIDATORS: dict[str, Callable[[str, Any], None]] = {
    "backend": _check_choice("gcp", "local"),
    "project": _check(_PROJECT_RE, "my-project-123 (6-30 lowercase letters, digits, hyphens)"),
    "region": _check(_REGION_RE, "europe-west4"),
    "bucket": _check(_BUCKET_RE, "my-project-gemma-finetuning-europe-west4"),
    "service_account": _check_sa,
    "repository": _check(_NAME_RE, "gemma-finetuning"),
    "secret": _check(_SECRET_RE, "HF_TOKEN"),
    "image": _check(_NAME_RE, "gemma-finetune"),
    "job": _check(_NAME_RE, "gemma-finetuning-job"),
    "gpu_type": _check_gpu,
    "cpu": _check_cpu,
    "memory": _check(_MEMORY_RE, "80Gi"),
    "task_timeout": lambda n, v: parse_duration(v),
    "max_retries": _check_retries,
    "vpc_egress": _check_choice("private-ranges-only", "all-traffic"),
}


def validate(settings: Settings) -> Settings:
    """Raise ConfigError naming the first bad value and where it came from."""
    for name, check in _VALIDATORS.items():
        value = getattr(settings, name)
        if value is None:
            continue
        try:
            check(name, value)
        except ConfigError as e:
            source = settings.source_of(name)
            raise ConfigError(f"{e.message} (from {source})", hint=e.hint) from None
    return settings


# ------------------------------------------------------------------------------- loading

_FIELD_NAMES = [f.name for f in fields(Settings) if f.name not in ("sources", "train")]
_INT_FIELDS = {"max_retries"}


def _coerce(name: str, value: Any, source: str) -> Any:
    if value is None:
        return None
    if name in _INT_FIELDS:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be an integer, got '{value}' (from {source})",
                              hint="use a whole number, e.g. 3") from None
    return str(value)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}", hint="check the --config path") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}",
                          hint='strings need quotes, e.g. region = "europe-west4"') from None
    unknown = sorted(set(data) - set(_FIELD_NAMES) - {"train"})
    if unknown:
        raise ConfigError(
            f"unknown key(s) in {path}: {', '.join(unknown)}",
            hint=f"valid keys: {', '.join(_FIELD_NAMES)} and a [train] table",
        )
    return data


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    layer = {n: env[f"GEMMACTL_{n.upper()}"] for n in _FIELD_NAMES if env.get(f"GEMMACTL_{n.upper()}")}
    if "project" not in layer:
        for var in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT"):
            if env.get(var):
                layer["project"] = env[var]
                break
    return layer


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    config_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> Settings:
    """Merge the four layers and validate. `flags` holds only the flags the user actually passed."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    path = Path(config_path) if config_path else Path(cwd or os.getcwd()) / CONFIG_FILE
    toml = _read_toml(path) if (config_path or path.is_file()) else {}
    train = dict(toml.pop("train", {}) or {})
    for source, layer in ((TOML, toml), (ENV, _env_layer(env)), (FLAG, dict(flags or {}))):
        for name, value in layer.items():
            if value is None or name not in _FIELD_NAMES:
                continue
            values[name] = _coerce(name, value, source)
            sources[name] = source
    if train:
        sources["train"] = TOML
    return validate(Settings(**values, train=train, sources=sources))
