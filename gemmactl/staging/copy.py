"""The copy engine: stream files from a source into the bucket, verified, in parallel, resumable.

Each file goes source → sha256 (and git sha1) → `storage.open_writer`, one bounded chunk at a time.
The digest is checked before the writer's context exits, so a mismatch aborts that upload and nothing
lands under the file's final name. Objects carry their hash as metadata, which is how a later run
skips them without reading them back.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Protocol

from gemmactl.cloud.ports import ObjectInfo, Storage
from gemmactl.errors import GemmactlError, IntegrityError, NotFoundError, PermissionDeniedError
from gemmactl.staging.hub import RemoteFile, Retryable
from gemmactl.staging.manifest import GIT_OID_KEY, SHA256_KEY
from gemmactl.staging.pipe import read_ahead
from gemmactl.staging.retry import RetryPolicy

# Plain git blobs are small (the hub forces big files into LFS/xet) and their sha256 is unknown up
# front: buffering them lets us verify *and* label them before the upload starts.
SMALL_FILE_BYTES = 64 * 1024 * 1024
# Errors every other file would hit too: stop the pool instead of failing N times.
_FATAL = (PermissionDeniedError, NotFoundError)
# How far a file's download may run ahead of its upload: one Cloud Storage upload chunk, so the next
# chunk downloads while the previous one uploads (memory: workers × (writer chunk + this)).
READ_AHEAD_BYTES = 16 * 1024 * 1024


class Source(Protocol):
    def read(self, file: RemoteFile, offset: int = 0) -> Iterator[bytes]:
        """The file's bytes from `offset`; raises hub.Retryable on transient failures."""
        ...


class Progress(Protocol):
    def start(self, files: int, total_bytes: int, skipped_bytes: int) -> None: ...

    def file_started(self, path: str, size: int) -> None: ...

    def advance(self, path: str, nbytes: int) -> None: ...

    def file_done(self, path: str, *, skipped: bool) -> None: ...

    def note(self, message: str) -> None: ...

    def stop(self) -> None: ...


class NullProgress:
    """Progress that shows nothing (library use, tests)."""

    def start(self, files: int, total_bytes: int, skipped_bytes: int) -> None: ...
    def file_started(self, path: str, size: int) -> None: ...
    def advance(self, path: str, nbytes: int) -> None: ...
    def file_done(self, path: str, *, skipped: bool) -> None: ...
    def note(self, message: str) -> None: ...
    def stop(self) -> None: ...


class Cancelled(Exception):
    """Raised inside a worker to abandon its upload (Ctrl-C, or a fatal error elsewhere)."""


@dataclass(frozen=True)
class Target:
    storage: Storage
    bucket: str
    prefix: str  # ends with "/"

    def name(self, file: RemoteFile) -> str:
        return self.prefix + file.path


@dataclass
class CopyReport:
    sha256: dict[str, str] = field(default_factory=dict)  # path -> verified sha256, copied or skipped
    copied: list[RemoteFile] = field(default_factory=list)
    skipped: list[RemoteFile] = field(default_factory=list)
    failed: list[tuple[RemoteFile, GemmactlError]] = field(default_factory=list)


# ------------------------------------------------------------------------------- planning


def verified_sha256(existing: ObjectInfo | None, file: RemoteFile) -> str | None:
    """The object's sha256 if it already holds exactly `file` (size + hash metadata), else None."""
    if existing is None or existing.size != file.size:
        return None
    meta = existing.metadata or {}
    sha = meta.get(SHA256_KEY)
    if file.sha256:
        return sha if sha == file.sha256 else None
    if file.git_oid and meta.get(GIT_OID_KEY) == file.git_oid:
        return sha
    return None


def already_there(target: Target, files: tuple[RemoteFile, ...], workers: int) -> dict[str, str]:
    """path -> sha256 for every file already verified in the bucket (stat calls in parallel)."""
    def check(f: RemoteFile) -> tuple[str, str | None]:
        return f.path, verified_sha256(target.storage.stat(target.bucket, target.name(f)), f)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return {path: sha for path, sha in pool.map(check, files) if sha}


# ------------------------------------------------------------------------------- copying


@dataclass
class _Digest:
    file: RemoteFile
    sha: object = field(default_factory=hashlib.sha256)
    git: object | None = None

    def __post_init__(self) -> None:
        if self.file.git_oid:
            self.git = hashlib.sha1(b"blob %d\0" % self.file.size, usedforsecurity=False)

    def update(self, chunk: bytes) -> None:
        self.sha.update(chunk)
        if self.git is not None:
            self.git.update(chunk)

    def verify(self) -> str:
        got = self.sha.hexdigest()
        if self.file.sha256 and got != self.file.sha256:
            raise _mismatch(self.file, "sha256", self.file.sha256, got)
        if self.git is not None and self.git.hexdigest() != self.file.git_oid:
            raise _mismatch(self.file, "git sha1", self.file.git_oid or "", self.git.hexdigest())
        return got


def _mismatch(file: RemoteFile, algo: str, expected: str, got: str) -> IntegrityError:
    return IntegrityError(
        f"{file.path}: {algo} mismatch (expected {expected[:12]}…, got {got[:12]}…); nothing was written under its name",
        hint="re-run to retry (verified files are kept); a repeat means the hub or a proxy corrupts this file",
    )


@dataclass
class Copier:
    target: Target
    source: Source
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    progress: Progress = field(default_factory=NullProgress)
    cancel: threading.Event = field(default_factory=threading.Event)

    def copy(self, file: RemoteFile) -> str:
        """Copy one file, verified; returns its sha256."""
        self.progress.file_started(file.path, file.size)
        if file.sha256 is None and file.size <= SMALL_FILE_BYTES:
            return self._copy_buffered(file)
        return self._copy_streamed(file)

    def _copy_streamed(self, file: RemoteFile) -> str:
        digest = _Digest(file)
        metadata = {SHA256_KEY: file.sha256} if file.sha256 else {GIT_OID_KEY: file.git_oid or ""}
        with self.target.storage.open_writer(self.target.bucket, self.target.name(file), metadata=metadata) as w:
            for chunk in read_ahead(lambda sink: self._pump(file, sink), READ_AHEAD_BYTES, f"fetch {file.path}"):
                w.write(chunk)
                digest.update(chunk)
            return digest.verify()  # inside the writer: a mismatch discards the upload

    def _copy_buffered(self, file: RemoteFile) -> str:
        digest, buffer = _Digest(file), bytearray()
        self._pump(file, lambda chunk: (buffer.extend(chunk), digest.update(chunk)))
        sha = digest.verify()
        metadata = {SHA256_KEY: sha, GIT_OID_KEY: file.git_oid or ""}
        with self.target.storage.open_writer(self.target.bucket, self.target.name(file), metadata=metadata) as w:
            w.write(bytes(buffer))
        return sha

    def _pump(self, file: RemoteFile, sink: Callable[[bytes], object]) -> None:
        """Feed the file's bytes to `sink` once, resuming at the current offset after transient errors."""
        offset = attempt = 0
        while True:
            try:
                for chunk in self.source.read(file, offset):
                    if self.cancel.is_set():
                        raise Cancelled()
                    if offset + len(chunk) > file.size:
                        raise IntegrityError(f"{file.path}: the hub sent more than the {file.size} bytes it listed")
                    sink(chunk)
                    offset += len(chunk)
                    attempt = 0  # progress was made: a long file may survive many resets
                    self.progress.advance(file.path, len(chunk))
                if offset < file.size:
                    raise Retryable(f"stream ended at byte {offset} of {file.size}")
                return
            except Retryable as e:
                attempt += 1
                self.progress.note(f"{file.path}: {e}; retrying from byte {offset}")
                self.policy.wait(attempt, e, f"downloading {file.path}")
                if self.cancel.is_set():
                    raise Cancelled() from None


def copy_all(copier: Copier, files: list[RemoteFile], workers: int) -> CopyReport:
    """Copy `files` with `workers` threads, largest first; failures are collected, not raised."""
    report = CopyReport()
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="stage")
    futures = {pool.submit(copier.copy, f): f for f in sorted(files, key=lambda f: -f.size)}
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
            for future in done:
                _collect(copier, report, futures[future], future)
    except BaseException:
        copier.cancel.set()  # Ctrl-C: workers abandon their uploads at the next chunk
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return report


def _collect(copier: Copier, report: CopyReport, file: RemoteFile, future: object) -> None:
    try:
        sha = future.result()  # type: ignore[attr-defined]
    except Cancelled:
        return
    except GemmactlError as e:
        report.failed.append((file, e))
        copier.progress.note(f"[red]failed[/red] {file.path}: {e.message}")
        if isinstance(e, _FATAL):
            copier.cancel.set()
        return
    report.sha256[file.path] = sha
    report.copied.append(file)
    copier.progress.file_done(file.path, skipped=False)
