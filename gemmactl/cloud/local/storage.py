"""Local Storage: a bucket is the directory `<root>/buckets/<bucket>/`, an object a file under it.

The bucket directory is exactly what a local job sees as /mnt/gcs, so nothing else lives in it:
object metadata (md5, user metadata) and bucket metadata sit beside it under `<root>/meta/`.
Writes go to a temp file in the destination directory and `os.replace` onto the final name, so a
reader never sees a partial object and a failed upload leaves nothing behind.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from gemmactl.cloud.local.admin import LocalState
from gemmactl.cloud.ports import BucketInfo, ObjectInfo, Policy
from gemmactl.errors import AlreadyExistsError, CloudError, NotFoundError

_TMP_PREFIX = ".gemmactl-tmp-"


class LocalStorage:
    """ports.Storage over the local filesystem."""

    def __init__(self, root: Path, state: LocalState) -> None:
        self.root, self.state = root, state

    # ------------------------------------------------------------------ paths

    def _dir(self, bucket: str) -> Path:
        return self.root / "buckets" / bucket

    def _existing(self, bucket: str) -> Path:
        path = self._dir(bucket)
        if not path.is_dir():
            raise NotFoundError(f"local bucket {bucket} not found ({path})", resource=bucket,
                                hint="run `gemmactl --local init`")
        return path

    def _object(self, bucket: str, name: str) -> Path:
        parts = PurePosixPath(name).parts
        if not name or name.startswith("/") or ".." in parts or any(p.startswith(_TMP_PREFIX) for p in parts):
            raise CloudError(f"invalid object name '{name}'")
        return self._existing(bucket).joinpath(*parts)

    def _meta(self, bucket: str, name: str) -> Path:
        return self.root / "meta" / "objects" / bucket / f"{name}.json"

    # ------------------------------------------------------------------ buckets

    def get_bucket(self, bucket: str) -> BucketInfo:
        self._existing(bucket)
        meta = self.state.load().get("buckets", {}).get(bucket, {})
        return BucketInfo(name=bucket, location=meta.get("location", "LOCAL"))

    def create_bucket(self, bucket: str, *, location: str, labels: dict[str, str]) -> BucketInfo:
        path = self._dir(bucket)
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            raise AlreadyExistsError(f"local bucket {bucket} already exists", resource=bucket) from None
        with self.state.edit() as data:
            data.setdefault("buckets", {})[bucket] = {"location": location.upper(), "labels": labels}
        return BucketInfo(name=bucket, location=location.upper())

    def get_bucket_policy(self, bucket: str) -> Policy:
        self._existing(bucket)
        return self.state.get_policy(f"bucket/{bucket}")

    def set_bucket_policy(self, bucket: str, policy: Policy) -> Policy:
        self._existing(bucket)
        return self.state.set_policy(f"bucket/{bucket}", policy)

    def local_path(self, bucket: str) -> str | None:
        return str(self._dir(bucket))

    # ------------------------------------------------------------------ objects

    def stat(self, bucket: str, name: str) -> ObjectInfo | None:
        path = self._object(bucket, name)
        if not path.is_file():
            return None
        return self._info(bucket, name, path)

    def _info(self, bucket: str, name: str, path: Path) -> ObjectInfo:
        st = path.stat()
        meta = _read_json(self._meta(bucket, name))
        # A sidecar from an older write of the same name is stale once the file changed.
        if meta.get("mtime_ns") != st.st_mtime_ns:
            meta = {}
        updated = datetime.fromtimestamp(st.st_mtime, UTC)
        return ObjectInfo(name, st.st_size, updated, meta.get("md5"), meta.get("metadata", {}), st.st_mtime_ns)

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self._existing(bucket)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for filename in sorted(filenames):
                if filename.startswith(_TMP_PREFIX):
                    continue
                path = Path(dirpath) / filename
                name = path.relative_to(base).as_posix()
                if name.startswith(prefix):
                    yield self._info(bucket, name, path)

    def read_bytes(self, bucket: str, name: str, *, start: int = 0) -> bytes:
        path = self._object(bucket, name)
        try:
            with path.open("rb") as f:
                f.seek(start)
                return f.read()
        except (FileNotFoundError, IsADirectoryError):
            raise NotFoundError(f"{name} not found in local bucket {bucket}", resource=name) from None

    def write_bytes(self, bucket: str, name: str, data: bytes, *, content_type: str | None = None) -> ObjectInfo:
        with self.open_writer(bucket, name) as writer:
            writer.write(data)
        info = self.stat(bucket, name)
        assert info is not None
        return info

    @contextmanager
    def open_writer(self, bucket: str, name: str, *, metadata: dict[str, str] | None = None):
        path = self._object(bucket, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        writer = _HashingWriter(os.fdopen(fd, "wb"))
        try:
            yield writer
            writer.file.close()
            os.replace(tmp, path)
        except BaseException:
            writer.file.close()
            Path(tmp).unlink(missing_ok=True)
            raise
        self._write_meta(bucket, name, path, writer.md5(), metadata or {})

    def _write_meta(self, bucket: str, name: str, path: Path, md5: str, metadata: dict[str, str]) -> None:
        meta_path = self._meta(bucket, name)
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        record = {"md5": md5, "metadata": metadata, "mtime_ns": path.stat().st_mtime_ns}
        meta_path.write_text(json.dumps(record))

    def delete(self, bucket: str, name: str) -> None:
        path = self._object(bucket, name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise NotFoundError(f"{name} not found in local bucket {bucket}", resource=name) from None
        self._meta(bucket, name).unlink(missing_ok=True)


class _HashingWriter:
    """Writes through to the temp file and keeps the md5 GCS would report (base64)."""

    def __init__(self, file) -> None:
        self.file = file
        self._md5 = hashlib.md5()

    def write(self, data: bytes) -> int:
        self._md5.update(data)
        return self.file.write(data)

    def md5(self) -> str:
        return base64.b64encode(self._md5.digest()).decode()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
