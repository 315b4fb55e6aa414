"""Staging orchestration: which prefix, what is already there, copy the rest, write the manifest last."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gemmactl import tokens
from gemmactl.cloud import Cloud
from gemmactl.cloud.ports import SecretText
from gemmactl.errors import GemmactlError, NotFoundError, PermissionDeniedError, UsageError
from gemmactl.staging import manifest as manifests
from gemmactl.staging.copy import Copier, Progress, Source, Target, already_there, copy_all
from gemmactl.staging.hub import DATASET, MODEL, RemoteFile, Snapshot
from gemmactl.staging.manifest import Manifest
from gemmactl.staging.retry import RetryPolicy

BUILTIN = "builtin:"


def is_builtin(source_id: str) -> bool:
    return source_id.startswith(BUILTIN)


_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_source_id(source_id: str, kind: str) -> None:
    """ORG/NAME (the bucket layout needs both parts) or a builtin id; caught before any request."""
    if is_builtin(source_id) or (_REPO_ID.match(source_id) and ".." not in source_id):
        return
    example = "timm/oxford-iiit-pet" if kind == DATASET else "google/gemma-3-4b-it"
    raise UsageError(f"invalid {kind} id '{source_id}': expected ORG/NAME", hint=f"e.g. {example}")


def target_prefix(source_id: str, kind: str) -> str:
    """Where a repo lands in the bucket: `<org>/<model>/`, `datasets/<org>/<name>/`, `builtin/<name>/`…"""
    path = f"builtin/{source_id.removeprefix(BUILTIN)}" if is_builtin(source_id) else source_id
    return f"datasets/{path}/" if kind == DATASET else f"{path}/"


@dataclass(frozen=True)
class Plan:
    """What a run would do; `--dry-run` prints it and stops."""

    snapshot: Snapshot
    bucket: str
    prefix: str
    present: dict[str, str]  # path -> sha256 of files already verified in the bucket
    complete: bool  # the manifest is there for this very revision

    @property
    def to_copy(self) -> list[RemoteFile]:
        return [] if self.complete else [f for f in self.snapshot.files if f.path not in self.present]

    @property
    def copy_bytes(self) -> int:
        return sum(f.size for f in self.to_copy)


@dataclass
class Result:
    plan: Plan
    copied: list[RemoteFile] = field(default_factory=list)
    skipped: list[RemoteFile] = field(default_factory=list)
    elapsed_s: float = 0.0

    def summary(self, location: str) -> dict[str, Any]:
        p = self.plan
        return {
            "repo": p.snapshot.repo, "kind": p.snapshot.kind, "revision": p.snapshot.revision,
            "bucket": p.bucket, "prefix": p.prefix, "location": location,
            "copied_files": len(self.copied), "copied_bytes": sum(f.size for f in self.copied),
            "skipped_files": len(self.skipped), "skipped_bytes": sum(f.size for f in self.skipped),
            "total_bytes": p.snapshot.total_bytes, "elapsed_s": round(self.elapsed_s, 3),
            "manifest": p.prefix + manifests.MANIFEST,
        }  # fmt: skip


def complete_manifest(cloud: Cloud, bucket: str, prefix: str, repo: str, revision: str | None) -> Manifest | None:
    """The manifest if the copy under `prefix` is complete (for `revision`, when given)."""
    found = manifests.read(cloud.storage, bucket, prefix)
    if found is None or found.repo != repo or (revision and found.revision != revision):
        return None
    return found if manifests.still_complete(cloud.storage, bucket, prefix, found) else None


def snapshot_of(found: Manifest) -> Snapshot:
    files = tuple(RemoteFile(p, e.size, sha256=e.sha256) for p, e in sorted(found.files.items()))
    return Snapshot(found.repo, found.kind, found.revision, files)


def make_plan(cloud: Cloud, bucket: str, snapshot: Snapshot, *, force: bool, workers: int) -> Plan:
    """Read-only: the manifest and one stat per file decide what is left to copy."""
    prefix = target_prefix(snapshot.repo, snapshot.kind)
    if force:
        return Plan(snapshot, bucket, prefix, {}, complete=False)
    found = complete_manifest(cloud, bucket, prefix, snapshot.repo, snapshot.revision)
    if found is not None and set(found.files) == {f.path for f in snapshot.files}:
        present = {p: e.sha256 for p, e in found.files.items()}
        return Plan(snapshot, bucket, prefix, present, complete=True)
    present = already_there(Target(cloud.storage, bucket, prefix), snapshot.files, workers)
    return Plan(snapshot, bucket, prefix, present, complete=False)


def execute(cloud: Cloud, plan: Plan, source: Source, *, workers: int, progress: Progress,
            policy: RetryPolicy | None = None) -> Result:
    """Copy what the plan says, then write the manifest (only if every file is verified)."""
    started = time.monotonic()
    to_copy = {f.path for f in plan.to_copy}
    skipped = [f for f in plan.snapshot.files if f.path not in to_copy]
    result = Result(plan, skipped=skipped)
    if plan.complete:
        return result
    target = Target(cloud.storage, plan.bucket, plan.prefix)
    _drop_stale_manifest(cloud, plan)
    progress.start(len(plan.snapshot.files), plan.snapshot.total_bytes, sum(f.size for f in skipped))
    copier = Copier(target, source, policy or RetryPolicy(), progress)
    try:
        report = copy_all(copier, plan.to_copy, workers)
    finally:
        progress.stop()
    result.copied, result.elapsed_s = report.copied, time.monotonic() - started
    if report.failed:
        raise _failure(report.failed, len(plan.to_copy))
    shas = {**plan.present, **report.sha256}
    files = {f.path: manifests.FileEntry(f.size, shas[f.path]) for f in plan.snapshot.files}
    manifests.write(cloud.storage, plan.bucket, plan.prefix,
                    Manifest(plan.snapshot.repo, plan.snapshot.kind, plan.snapshot.revision, files))
    result.elapsed_s = time.monotonic() - started
    return result


def _drop_stale_manifest(cloud: Cloud, plan: Plan) -> None:
    # Files are about to change under an old manifest: it must stop claiming "complete" first.
    if cloud.storage.stat(plan.bucket, plan.prefix + manifests.MANIFEST) is not None:
        cloud.storage.delete(plan.bucket, plan.prefix + manifests.MANIFEST)


def _failure(failed: list[tuple[RemoteFile, GemmactlError]], attempted: int) -> GemmactlError:
    file, first = failed[0]
    if len(failed) == 1:
        return first
    first.message = f"{len(failed)} of {attempted} files failed; first: {first.message}"
    return first


# ------------------------------------------------------------------------------- token


def resolve_token(token_file: Path | None, env: dict[str, str], cloud: Cloud | None, secret: str) -> SecretText | None:
    """--hf-token-file, else $HF_TOKEN, else the configured secret; stripped, never shown."""
    token = tokens.read_token(token_file, env=env)
    if token is not None:
        return token
    if cloud is None:
        return None
    try:
        return cloud.secrets.latest_value(secret) or None
    except (NotFoundError, PermissionDeniedError):
        return None  # public repos need no token; gated ones fail later with a clear hint


__all__ = ["BUILTIN", "DATASET", "MODEL", "Plan", "Result", "execute", "make_plan", "resolve_token"]
