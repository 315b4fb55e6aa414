"""Hugging Face → bucket staging: streamed, verified, resumable (see `stage-model` / `stage-data`).

Public API: `prepared(...)` yields the plan and its byte source; `stage.execute` copies; `cloudbuild`
runs the same copy server-side. Bucket prefixes: `<org>/<model>/`, `datasets/<org>/<name>/`,
`builtin/<name>/`, `datasets/builtin/<name>/`, each completed by `.gemmactl-manifest.json`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gemmactl.cloud import Cloud
from gemmactl.cloud.ports import SecretText
from gemmactl.staging.copy import Source
from gemmactl.staging.hub import DATASET, MODEL
from gemmactl.staging.retry import RetryPolicy
from gemmactl.staging.stage import (
    Plan,
    Result,
    check_source_id,
    complete_manifest,
    execute,
    is_builtin,
    make_plan,
    resolve_token,
    snapshot_of,
    target_prefix,
)


@dataclass(frozen=True)
class Request:
    source_id: str  # "org/name" or "builtin:name"
    kind: str  # MODEL | DATASET
    revision: str | None = None
    force: bool = False
    workers: int = 8


@contextmanager
def prepared(cloud: Cloud, bucket: str, request: Request, token: SecretText | None,
             policy: RetryPolicy | None = None, *, check_access: bool = True) -> Iterator[tuple[Plan, Source]]:
    """The plan (read-only) and where its bytes come from; built-ins are generated into a temp dir."""
    if is_builtin(request.source_id):
        with _builtin(cloud, bucket, request) as prepared_builtin:
            yield prepared_builtin
        return
    yield _hub(cloud, bucket, request, token, policy or RetryPolicy(), check_access)


def _hub(cloud: Cloud, bucket: str, request: Request, token: SecretText | None, policy: RetryPolicy,
         check_access: bool) -> tuple[Plan, Source]:
    from gemmactl.staging import hub, retry

    check_source_id(request.source_id, request.kind)
    prefix = target_prefix(request.source_id, request.kind)
    if hub.is_commit_sha(request.revision) and not request.force:
        # A pinned, already complete copy needs no hub at all (jobs and offline laptops).
        found = complete_manifest(cloud, bucket, prefix, request.source_id, request.revision)
        if found is not None:
            snapshot = snapshot_of(found)
            return make_plan(cloud, bucket, snapshot, force=False, workers=request.workers), hub.HubSource(snapshot)
    snapshot = retry.call(policy, lambda: hub.resolve(request.source_id, request.kind, request.revision, token),
                          f"reading {request.source_id} from the hub")
    plan = make_plan(cloud, bucket, snapshot, force=request.force, workers=request.workers)
    if plan.to_copy and check_access:
        retry.call(policy, lambda: hub.check_access(snapshot, token), f"checking access to {request.source_id}")
    return plan, hub.HubSource(snapshot, token)


@contextmanager
def _builtin(cloud: Cloud, bucket: str, request: Request) -> Iterator[tuple[Plan, Source]]:
    from gemmactl.staging import builtin

    name = builtin.check_builtin(request.source_id, request.kind)
    repo, prefix = f"builtin:{name}", target_prefix(request.source_id, request.kind)
    found = None if request.force else complete_manifest(cloud, bucket, prefix, repo, None)
    if found is not None:  # generating takes seconds of torch: skip it when the copy is complete
        snapshot = snapshot_of(found)
        yield make_plan(cloud, bucket, snapshot, force=False, workers=request.workers), builtin.DirSource(Path("."))
        return
    with tempfile.TemporaryDirectory(prefix="gemmactl-builtin-") as tmp:
        root = Path(tmp) / name
        builtin.generate(name, root)
        snapshot = builtin.snapshot_dir(name, root)
        yield make_plan(cloud, bucket, snapshot, force=request.force, workers=request.workers), builtin.DirSource(root)


__all__ = ["DATASET", "MODEL", "Plan", "Request", "Result", "RetryPolicy", "execute", "prepared", "resolve_token",
           "target_prefix"]
