"""`.gemmactl-manifest.json`: written last, so its presence means the staged copy is complete."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gemmactl.cloud.ports import Storage
from gemmactl.errors import NotFoundError

MANIFEST = ".gemmactl-manifest.json"
FORMAT = 1
# Object metadata that lets a later run trust an object without re-reading it.
SHA256_KEY = "gemmactl-sha256"
GIT_OID_KEY = "gemmactl-git-oid"


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    repo: str
    kind: str
    revision: str
    files: dict[str, FileEntry]
    staged_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.files.values())

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "format": FORMAT, "repo": self.repo, "kind": self.kind, "revision": self.revision,
            "staged_at": self.staged_at, "total_bytes": self.total_bytes,
            "files": {p: {"size": e.size, "sha256": e.sha256} for p, e in sorted(self.files.items())},
        }  # fmt: skip
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        data = json.loads(text)
        files = {p: FileEntry(int(v["size"]), str(v["sha256"])) for p, v in data["files"].items()}
        return cls(data["repo"], data["kind"], data["revision"], files, data.get("staged_at", ""))


def read(storage: Storage, bucket: str, prefix: str) -> Manifest | None:
    """The manifest under `prefix`, or None when absent or unreadable (then the copy is not complete)."""
    try:
        return Manifest.from_json(storage.read_bytes(bucket, prefix + MANIFEST))
    except NotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None


def write(storage: Storage, bucket: str, prefix: str, manifest: Manifest) -> None:
    storage.write_bytes(bucket, prefix + MANIFEST, manifest.to_json().encode(), content_type="application/json")


def still_complete(storage: Storage, bucket: str, prefix: str, manifest: Manifest) -> bool:
    """One listing: every manifest file is still there with its size (someone may have deleted some)."""
    sizes = {o.name.removeprefix(prefix): o.size for o in storage.list(bucket, prefix)}
    return all(sizes.get(path) == entry.size for path, entry in manifest.files.items())
