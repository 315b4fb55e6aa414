"""The Hugging Face side of staging: resolve a revision, list files with hashes, stream file bytes.

huggingface_hub is imported lazily (inside functions) so `gemmactl --help` stays fast. Every hub
error is translated into gemmactl.errors here; the token is sent as a header and never echoed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gemmactl.cloud.ports import SecretText
from gemmactl.errors import (
    GatedRepoError,
    GemmactlError,
    NotFoundError,
    PermissionDeniedError,
)

MODEL, DATASET = "model", "dataset"
CHUNK = 1024 * 1024  # bytes per read: bounded memory per worker
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a snapshot: its size and whichever hash the hub vouches for."""

    path: str
    size: int
    sha256: str | None = None  # LFS / xet files (and built-ins): the content sha256
    git_oid: str | None = None  # plain git blobs: sha1 of "blob <size>\\0" + content


@dataclass(frozen=True)
class Snapshot:
    """A repo pinned to one commit, with its files."""

    repo: str
    kind: str
    revision: str  # the commit sha
    files: tuple[RemoteFile, ...]
    gated: bool = False

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


class Retryable(Exception):
    """A fetch failed in a way worth retrying (429, 5xx, reset); `retry_after` in seconds if the server said."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def is_commit_sha(revision: str | None) -> bool:
    return bool(revision and _SHA_RE.match(revision))


def endpoint() -> str:
    """HF_ENDPOINT read now (huggingface_hub reads it once at import)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _token_arg(token: SecretText | None) -> str | bool:
    # False, not None: never fall back silently to a token cached by `hf auth login` in tests.
    return token.reveal() if token else False


# ------------------------------------------------------------------------------- metadata


def resolve(repo: str, kind: str, revision: str | None, token: SecretText | None) -> Snapshot:
    """Pin `revision` (default: main) to a commit sha and list every file with size and hash."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint(), token=_token_arg(token))
    with translate_errors(repo, kind, revision, token):
        info = (api.model_info if kind == MODEL else api.dataset_info)(repo, revision=revision)
        entries = api.list_repo_tree(repo, repo_type=kind, revision=info.sha, recursive=True)
        files = tuple(sorted((_remote_file(e) for e in entries if hasattr(e, "size")), key=lambda f: f.path))
    return Snapshot(repo=repo, kind=kind, revision=info.sha, files=files, gated=bool(info.gated))


def _remote_file(entry: Any) -> RemoteFile:
    lfs = entry.lfs
    if lfs is not None:
        return RemoteFile(entry.path, int(entry.size), sha256=lfs.sha256)
    return RemoteFile(entry.path, int(entry.size), git_oid=entry.blob_id)


def file_url(snapshot: Snapshot, path: str) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(snapshot.repo, path, repo_type=snapshot.kind, revision=snapshot.revision, endpoint=endpoint())


def check_access(snapshot: Snapshot, token: SecretText | None) -> None:
    """HEAD one file: gated repos list their files freely and refuse only the bytes."""
    if not snapshot.files:
        return
    from huggingface_hub.utils import get_session, hf_raise_for_status

    smallest = min(snapshot.files, key=lambda f: f.size)
    with translate_errors(snapshot.repo, snapshot.kind, snapshot.revision, token):
        response = get_session().head(file_url(snapshot, smallest.path), headers=_headers(token),
                                      follow_redirects=False, timeout=30)
        hf_raise_for_status(response)


def _headers(token: SecretText | None, offset: int = 0) -> dict[str, str]:
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers(token=_token_arg(token))
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return headers


# ------------------------------------------------------------------------------- bytes


@dataclass(frozen=True)
class HubSource:
    """Streams snapshot files from the hub, resuming at a byte offset with a Range request."""

    snapshot: Snapshot
    token: SecretText | None = None
    timeout_s: float = 60.0

    def read(self, file: RemoteFile, offset: int = 0) -> Iterator[bytes]:
        import httpx
        from huggingface_hub.utils import get_session, hf_raise_for_status

        url = file_url(self.snapshot, file.path)
        timeout = httpx.Timeout(self.timeout_s, connect=15.0)
        try:
            with get_session().stream("GET", url, headers=_headers(self.token, offset), timeout=timeout,
                                      follow_redirects=True) as response:
                _raise_retryable(response)
                with translate_errors(self.snapshot.repo, self.snapshot.kind, self.snapshot.revision, self.token):
                    hf_raise_for_status(response)
                skip = offset if (offset and response.status_code == 200) else 0  # server ignored Range
                for chunk in response.iter_bytes():  # as received: a reset loses no buffered bytes
                    if skip:
                        chunk, skip = chunk[skip:], max(0, skip - len(chunk))
                    if chunk:
                        yield chunk
        except httpx.TransportError as e:  # resets, timeouts, refused connections
            raise Retryable(f"{type(e).__name__}") from None


def _raise_retryable(response: Any) -> None:
    status = response.status_code
    if status == 429 or status >= 500:
        raise Retryable(f"HTTP {status}", retry_after=parse_retry_after(response.headers.get("Retry-After")))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from datetime import UTC, datetime
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------- errors


class translate_errors:  # noqa: N801 - used like a function: `with translate_errors(...)`
    """Turns huggingface_hub / httpx errors into our one-line errors (never quoting the token)."""

    def __init__(self, repo: str, kind: str, revision: str | None, token: SecretText | None) -> None:
        self.repo, self.kind, self.revision, self.token = repo, kind, revision, token

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type | None, e: BaseException | None, tb: Any) -> bool:
        if e is None or isinstance(e, (GemmactlError, Retryable)):
            return False
        mapped = _map_error(e, self)
        if mapped is None:
            return False
        raise mapped from None


def _map_error(e: BaseException, ctx: translate_errors) -> BaseException | None:
    import httpx
    from huggingface_hub import errors as hf

    page = f"{endpoint()}/{'datasets/' if ctx.kind == DATASET else ''}{ctx.repo}"
    if isinstance(e, hf.GatedRepoError):
        return _gated(ctx, page)
    if isinstance(e, hf.RevisionNotFoundError):
        return NotFoundError(f"revision '{ctx.revision}' not found in {ctx.kind} {ctx.repo}",
                             resource=ctx.repo, hint=f"see the branches and commits at {page}")
    if isinstance(e, hf.RepositoryNotFoundError):
        return NotFoundError(f"{ctx.kind} repo {ctx.repo} not found, or the token lacks access to it",
                             resource=ctx.repo, hint=_access_hint(ctx))
    if isinstance(e, hf.HfHubHTTPError):
        return _http_error(e, ctx, page)
    if isinstance(e, httpx.TransportError):
        return Retryable(f"cannot reach the Hugging Face Hub at {endpoint()} ({type(e).__name__})")
    return None


def _gated(ctx: translate_errors, page: str) -> GatedRepoError:
    if not ctx.token:
        return GatedRepoError(f"{ctx.repo} is gated and no Hugging Face token was given",
                              hint=f"accept the licence at {page}, then pass --hf-token-file or set HF_TOKEN")
    return GatedRepoError(f"{ctx.repo} is gated: accept the licence at {page}",
                          hint="the token's account has not been granted access yet (token lacks access)")


def _access_hint(ctx: translate_errors) -> str:
    if ctx.token:
        return "check the spelling; for a private repo the token lacks access (it needs read permission)"
    return "check the spelling; for a private repo pass --hf-token-file or set HF_TOKEN"


def _http_error(e: Any, ctx: translate_errors, page: str) -> BaseException:
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    if status == 401:
        return PermissionDeniedError("the Hugging Face token was rejected (401)",
                                     hint="create a new read token at https://huggingface.co/settings/tokens")
    if status == 403:
        return PermissionDeniedError(f"the Hugging Face token lacks access to {ctx.repo}",
                                     hint=f"grant it read access (fine-grained tokens need {page} listed)")
    if status == 429 or (status or 0) >= 500:
        return Retryable(f"HTTP {status}", retry_after=parse_retry_after(response.headers.get("Retry-After")))
    return GemmactlError(f"the Hugging Face Hub answered HTTP {status} for {ctx.repo}")
