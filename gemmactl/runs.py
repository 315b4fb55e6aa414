"""Where a run lives in the bucket (`runs/<id>/...`), and what the job sees of staged models and datasets.

A model or dataset that `gemmactl stage-*` put in the bucket (its manifest is present) is read from the
mount (`/mnt/gcs/<org>/<model>`), at data-centre speed; anything else goes to the trainer unchanged (a hub
id, `builtin:` id or path), and the trainer fetches or generates it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from gemmactl.errors import ConfigError
from gemmactl.specs import MOUNT_PATH, run_output_dir

if TYPE_CHECKING:
    from gemmactl.cloud.ports import Storage
    from trainer.config import TrainConfig

MANIFEST = ".gemmactl-manifest.json"
BUILTIN = "builtin:"


def run_prefix(run_id: str) -> str:
    return f"runs/{run_id}/"


def config_object(run_id: str) -> str:
    return run_prefix(run_id) + "config.json"


def metrics_object(run_id: str) -> str:
    return run_prefix(run_id) + "metrics.json"


def events_object(run_id: str) -> str:
    return run_prefix(run_id) + "events.jsonl"


def run_uri(bucket: str, run_id: str) -> str:
    return f"gs://{bucket}/{run_prefix(run_id)}"


# ------------------------------------------------------------------------------- model / dataset ids


def staged_prefix(ident: str, kind: str) -> str | None:
    """The bucket prefix `stage-model` / `stage-data` uses for `ident`, or None for paths and URIs."""
    if ident.startswith(BUILTIN):
        name = ident[len(BUILTIN):]
        return f"builtin/{name}/" if kind == "model" else f"datasets/builtin/{name}/"
    if ident.startswith(("/", ".", "~", "gs://")) or ident.endswith(".jsonl") or ident.count("/") != 1:
        return None
    return f"{ident}/" if kind == "model" else f"datasets/{ident}/"


def resolve(storage: Storage, bucket: str, ident: str, kind: str, mount_path: str = MOUNT_PATH) -> str:
    """The path or id the trainer should get for a model (`kind="model"`) or dataset (`kind="dataset"`)."""
    if ident.startswith("gs://"):
        return _mounted_uri(bucket, ident, mount_path)
    prefix = staged_prefix(ident, kind)
    if prefix and storage.stat(bucket, prefix + MANIFEST) is not None:
        return f"{mount_path}/{prefix.rstrip('/')}"
    return ident


def _mounted_uri(bucket: str, uri: str, mount_path: str) -> str:
    own = f"gs://{bucket}/"
    if not uri.startswith(own):
        raise ConfigError(
            f"{uri} is not in the job's bucket {bucket}; only that bucket is mounted",
            hint=f"stage it into gs://{bucket}/ with `gemmactl stage-model` / `stage-data`",
        )
    return f"{mount_path}/{uri[len(own):].rstrip('/')}"


def for_run(config: TrainConfig, storage: Storage, bucket: str, run_id: str) -> TrainConfig:
    """The config as the job will run it: staged paths resolved, output under `runs/<id>/` on the mount."""
    return config.replace(
        model_id=resolve(storage, bucket, config.model_id, "model"),
        dataset=resolve(storage, bucket, config.dataset, "dataset"),
        output_dir=run_output_dir(run_id),
    )


# ------------------------------------------------------------------------------- config.json


def write_config(storage: Storage, bucket: str, run_id: str, config: TrainConfig) -> bool:
    """Write `runs/<id>/config.json` before anything runs; returns True when resuming an identical run.

    Reusing a run id resumes that run from its checkpoints, so it must be the same configuration.
    """
    name = config_object(run_id)
    data = config.to_dict()
    if storage.stat(bucket, name) is not None:
        existing = json.loads(storage.read_bytes(bucket, name) or b"{}")
        changed = sorted(k for k in set(existing) | set(data) if _comparable(k, existing.get(k)) != _comparable(k, data.get(k)))
        if changed:
            raise ConfigError(
                f"run '{run_id}' already exists with a different configuration ({', '.join(changed)})",
                hint="leave out --run-id for a new run, or repeat the original flags to resume it",
            )
        return True
    storage.write_bytes(bucket, name, config_json(config), content_type="application/json")
    return False


def _comparable(key: str, value: object) -> object:
    """The trainer rewrites config.json with the paths it saw (a local run sees the bucket directory, not
    /mnt/gcs), so paths compare by what they name, and output_dir is the run id itself."""
    if key == "output_dir":
        return None
    if key in ("model_id", "dataset") and isinstance(value, str) and value.startswith("/"):
        return "/".join(value.rstrip("/").split("/")[-2:])
    return value


def config_json(config: TrainConfig) -> bytes:
    return (json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n").encode()
