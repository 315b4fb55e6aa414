"""ports.Storage over google-cloud-storage (JSON API; STORAGE_EMULATOR_HOST honoured by the library)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gemmactl import errors
from gemmactl.cloud import ports
from gemmactl.cloud.gcp import _policy
from gemmactl.cloud.gcp._clients import GcpContext
from gemmactl.cloud.gcp._errors import call, translate

# Resumable uploads go in chunks of this size (a multiple of 256 KiB); each chunk is one request.
CHUNK_SIZE = 16 * 1024 * 1024


def _bucket_info(b: Any) -> ports.BucketInfo:
    iam = b.iam_configuration
    return ports.BucketInfo(
        name=b.name,
        location=(b.location or "").upper(),
        uniform_access=bool(iam.uniform_bucket_level_access_enabled),
        public_access_prevention=iam.public_access_prevention or "inherited",
        project_number=str(b.project_number) if b.project_number else None,
    )


def _object_info(blob: Any) -> ports.ObjectInfo:
    return ports.ObjectInfo(
        name=blob.name,
        size=int(blob.size or 0),
        updated=blob.updated,
        md5_hash=blob.md5_hash,
        metadata=dict(blob.metadata or {}),
        generation=blob.generation,
    )


class _Writer:
    """Passes bytes to the resumable upload, translating errors as they happen."""

    def __init__(self, writer: Any, what: str) -> None:
        self._writer, self._what = writer, what

    def write(self, data: bytes) -> int:
        try:
            return self._writer.write(data)
        except Exception as exc:
            raise translate(exc, self._what) from exc


class GcsStorage:
    """Buckets, their IAM policies and objects."""

    def __init__(self, ctx: GcpContext) -> None:
        self._ctx = ctx

    @property
    def _client(self) -> Any:
        return self._ctx.storage()

    def _call(self, what: str, fn: Any, *, retry: bool = True) -> Any:
        return call(what, fn, clock=self._ctx.clock, retry=retry)

    # ---------------------------------------------------------------- buckets

    def get_bucket(self, bucket: str) -> ports.BucketInfo:
        from google.api_core import exceptions as gexc

        try:
            return _bucket_info(self._client.get_bucket(bucket))
        except gexc.Forbidden:
            # A 403 on a bucket we asked for by name means the name belongs to another project.
            raise errors.PermissionDeniedError(
                f"bucket gs://{bucket} exists but belongs to someone else (or you cannot read it)",
                permission="storage.buckets.get",
                hint="choose another name with --bucket",
            ) from None
        except Exception as exc:
            raise translate(exc, f"get bucket gs://{bucket}") from exc

    def create_bucket(self, bucket: str, *, location: str, labels: dict[str, str]) -> ports.BucketInfo:
        from google.api_core import exceptions as gexc

        b = self._client.bucket(bucket)
        b.iam_configuration.uniform_bucket_level_access_enabled = True
        b.iam_configuration.public_access_prevention = "enforced"
        b.labels = dict(labels)
        try:
            created = self._client.create_bucket(b, location=location)
        except gexc.Conflict:
            self.get_bucket(bucket)  # raises PermissionDeniedError when the name is someone else's
            raise errors.AlreadyExistsError(
                f"bucket gs://{bucket} already exists", resource=f"gs://{bucket}"
            ) from None
        except Exception as exc:
            raise translate(exc, f"create bucket gs://{bucket} in {location}") from exc
        return _bucket_info(created)

    def _raw_policy(self, bucket: str) -> ports.Policy:
        policy = self._client.bucket(bucket).get_iam_policy(requested_policy_version=3)
        return _policy.from_api(policy.to_api_repr())

    def get_bucket_policy(self, bucket: str) -> ports.Policy:
        return self._call(f"read IAM policy of gs://{bucket}", lambda: self._raw_policy(bucket))

    def set_bucket_policy(self, bucket: str, policy: ports.Policy) -> ports.Policy:
        from google.api_core.iam import Policy

        def write(p: ports.Policy) -> ports.Policy:
            written = self._client.bucket(bucket).set_iam_policy(Policy.from_api_repr(_policy.to_api(p)))
            return _policy.from_api(written.to_api_repr())

        return _policy.set_with_retry(
            f"set IAM policy of gs://{bucket}",
            policy,
            read=lambda: self.get_bucket_policy(bucket),
            write=write,
            clock=self._ctx.clock,
        )

    # ---------------------------------------------------------------- objects

    def stat(self, bucket: str, name: str) -> ports.ObjectInfo | None:
        blob = self._call(f"stat gs://{bucket}/{name}", lambda: self._client.bucket(bucket).get_blob(name))
        return _object_info(blob) if blob is not None else None

    def list(self, bucket: str, prefix: str = "") -> Iterator[ports.ObjectInfo]:
        what = f"list gs://{bucket}/{prefix}"
        try:
            for blob in self._client.list_blobs(bucket, prefix=prefix or None):
                yield _object_info(blob)
        except errors.GemmactlError:
            raise
        except Exception as exc:
            raise translate(exc, what) from exc

    def read_bytes(self, bucket: str, name: str, *, start: int = 0) -> bytes:
        from google.api_core import exceptions as gexc

        blob = self._client.bucket(bucket).blob(name)
        try:
            return self._call(
                f"read gs://{bucket}/{name}", lambda: blob.download_as_bytes(start=start or None)
            )
        except errors.GemmactlError as e:
            # 416: `start` is at (or past) the end, the normal "no new bytes" answer when tailing a log.
            if isinstance(e.__cause__, gexc.RequestRangeNotSatisfiable):
                return b""
            raise

    def write_bytes(
        self, bucket: str, name: str, data: bytes, *, content_type: str | None = None
    ) -> ports.ObjectInfo:
        blob = self._client.bucket(bucket).blob(name)
        self._call(
            f"write gs://{bucket}/{name}",
            lambda: blob.upload_from_string(data, content_type=content_type or "application/octet-stream"),
        )
        return _object_info(blob)

    @contextmanager
    def open_writer(
        self, bucket: str, name: str, *, metadata: dict[str, str] | None = None
    ) -> Iterator[ports.ObjectWriter]:
        """A resumable upload: GCS commits the object only when the final chunk arrives on a clean exit."""
        from google.cloud.storage.fileio import BlobWriter

        what = f"upload gs://{bucket}/{name}"
        blob = self._client.bucket(bucket).blob(name, chunk_size=CHUNK_SIZE)
        blob.metadata = dict(metadata or {})
        writer = BlobWriter(blob, chunk_size=CHUNK_SIZE, ignore_flush=True)
        try:
            yield _Writer(writer, what)
        except BaseException:
            self._abandon(writer)
            raise
        self._call(what, writer.close, retry=False)

    @staticmethod
    def _abandon(writer: Any) -> None:
        # Best effort: an unfinished session is never visible and expires after a week anyway.
        with contextlib.suppress(Exception):
            writer.terminate()  # DELETE of the session URI discards the partial upload

    def delete(self, bucket: str, name: str) -> None:
        self._call(f"delete gs://{bucket}/{name}", lambda: self._client.bucket(bucket).delete_blob(name))

    def local_path(self, bucket: str) -> str | None:
        return None
