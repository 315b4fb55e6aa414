"""The image's build context: the source tree minus `.dockerignore`, packed as a deterministic tar.gz.

The same bytes feed Cloud Build (uploaded to the bucket) and `docker build -` (piped on stdin), so
both builders see exactly one context, and its sha256 names the image: same source, same tag, and
`gemmactl build` can skip a build whose image already exists.

`.dockerignore` follows Docker's rules (moby/patternmatcher), not git's: every pattern is relative to
the context root (`*.md` matches only top-level files; use `**/*.md` for any depth), `**` spans
directories, `!` re-includes, the last matching pattern wins, and a pattern naming a directory
excludes everything below it. We get that by anchoring each pattern at the root and handing it to
pathspec's gitwildmatch engine, which then behaves exactly like Docker's matcher.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from gemmactl.errors import UsageError

DOCKERFILE = "Dockerfile"
DOCKERIGNORE = ".dockerignore"
# Docker always sends these two, even when .dockerignore lists them (the daemon needs them).
ALWAYS_SENT = frozenset({DOCKERFILE, DOCKERIGNORE})
# A context this big means .dockerignore forgot something (a venv, model weights, a dataset).
MAX_CONTEXT_BYTES = 256 * 1024 * 1024
TAG_LENGTH = 12
_GLOB_CHARS = frozenset("*?[\\")


@dataclass(frozen=True)
class SourceArchive:
    """The packed context: gzip bytes, the sha256 of the (uncompressed) tar, and what went in."""

    data: bytes
    sha256: str
    files: tuple[str, ...]
    tar_size: int

    @property
    def tag(self) -> str:
        """The image tag: the first 12 hex digits of the content hash."""
        return self.sha256[:TAG_LENGTH]


# ------------------------------------------------------------------------------- .dockerignore


def _clean(pattern: str) -> str:
    """Docker's filepath.Clean of a pattern, minus the leading slash (patterns are root-relative)."""
    cleaned = os.path.normpath(pattern.replace("\\", "/")) if pattern else ""
    return "" if cleaned == "." else cleaned.lstrip("/")


def parse_dockerignore(text: str) -> list[str]:
    """`.dockerignore` lines as anchored gitwildmatch patterns (`!` kept first), comments dropped."""
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        body = _clean(line[1:].strip() if negate else line)
        if body:
            patterns.append(("!/" if negate else "/") + body)
    return patterns


class IgnoreRules:
    """Which context paths `.dockerignore` excludes."""

    def __init__(self, patterns: list[str]) -> None:
        import pathspec  # light, but only `build` and `train` need it

        self.patterns = patterns
        self._spec = pathspec.PathSpec.from_lines("gitwildmatch", patterns)
        # Literal directory prefixes of the `!` patterns: an excluded directory on the way to one
        # of them must still be walked, as Docker does.
        self._reincluded = [_literal_prefix(p[2:]) for p in patterns if p.startswith("!")]

    @classmethod
    def load(cls, root: Path) -> IgnoreRules:
        path = root / DOCKERIGNORE
        return cls(parse_dockerignore(path.read_text(encoding="utf-8")) if path.is_file() else [])

    def excluded(self, rel: str) -> bool:
        return rel not in ALWAYS_SENT and self._spec.match_file(rel)

    def prune(self, rel_dir: str) -> bool:
        """Whether a whole directory can be skipped without walking it."""
        if not self._spec.match_file(rel_dir + "/"):
            return False
        return not any(prefix is None or _related(prefix, rel_dir) for prefix in self._reincluded)


def _literal_prefix(pattern: str) -> str | None:
    """The leading directories of a pattern before any glob; None when it starts with one."""
    parts = []
    for part in PurePosixPath(pattern).parts:
        if _GLOB_CHARS & set(part):
            break
        parts.append(part)
    return "/".join(parts) if parts else None


def _related(prefix: str, rel_dir: str) -> bool:
    return prefix == rel_dir or prefix.startswith(rel_dir + "/") or rel_dir.startswith(prefix + "/")


# ------------------------------------------------------------------------------- walking


def find_root(start: str | Path | None = None) -> Path:
    """The nearest directory at or above `start` (default: cwd) holding a Dockerfile and pyproject.toml."""
    here = Path(start or os.getcwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / DOCKERFILE).is_file() and (candidate / "pyproject.toml").is_file():
            return candidate
    raise UsageError(
        f"no Dockerfile + pyproject.toml at or above {here}",
        hint="run `gemmactl build` inside the gemmactl source checkout, or pass --source DIR",
    )


def context_files(root: Path, rules: IgnoreRules | None = None) -> list[str]:
    """Every path Docker would send, relative, '/'-separated and sorted (files and symlinks only)."""
    root = Path(root)
    if not (root / DOCKERFILE).is_file():
        raise UsageError(f"{root} has no {DOCKERFILE}", hint="pass the directory that holds the Dockerfile")
    rules = rules or IgnoreRules.load(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        base = "" if rel_dir == "." else rel_dir + "/"
        keep = []
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                filenames.append(d)  # a symlinked directory travels as a link, never followed
            elif not rules.prune(base + d):
                keep.append(d)
        dirnames[:] = keep
        found.extend(base + f for f in filenames if not rules.excluded(base + f))
    return sorted(found)


# ------------------------------------------------------------------------------- packing


class _HashingWriter:
    """A write-only stream that hashes what passes through and forwards it (or drops it)."""

    def __init__(self, sink: BinaryIO | None) -> None:
        self.sha = hashlib.sha256()
        self.size = 0
        self.sink = sink

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > MAX_CONTEXT_BYTES:
            raise UsageError(
                f"the build context is over {MAX_CONTEXT_BYTES // 2**20} MiB",
                hint=f"exclude large paths (venvs, weights, datasets) in {DOCKERIGNORE}",
            )
        self.sha.update(data)
        if self.sink is not None:
            self.sink.write(data)
        return len(data)


def _tarinfo(root: Path, rel: str) -> tuple[tarfile.TarInfo, Any]:
    """A header with everything that varies between machines zeroed: times, owners, umask."""
    path = root / rel
    st = path.lstat()
    info = tarfile.TarInfo(rel)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    if stat.S_ISLNK(st.st_mode):
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, os.readlink(path), 0o777
        return info, None
    if not stat.S_ISREG(st.st_mode):
        return info, False  # sockets, fifos, devices: Docker refuses them too; we skip them
    info.size = st.st_size
    info.mode = 0o755 if st.st_mode & 0o111 else 0o644
    return info, path


def _write_tar(root: Path, files: list[str], sink: _HashingWriter) -> None:
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for rel in files:
            info, path = _tarinfo(root, rel)
            if path is False:
                continue
            if path is None:
                tar.addfile(info)
                continue
            with open(path, "rb") as f:
                tar.addfile(info, f)


def pack(root: str | Path) -> SourceArchive:
    """The context as deterministic tar.gz bytes: same files and contents → same bytes and hash."""
    root = Path(root)
    files = context_files(root)
    buffer = io.BytesIO()
    # filename="" and mtime=0 keep the gzip header free of the temp name and the clock.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=6) as gz:
        sink = _HashingWriter(gz)  # type: ignore[arg-type]
        _write_tar(root, files, sink)
    return SourceArchive(buffer.getvalue(), sink.sha.hexdigest(), tuple(files), sink.size)


def content_hash(root: str | Path) -> str:
    """sha256 of the packed (uncompressed) context, first 12 hex digits: the image tag.

    The tar is hashed rather than the gzip so the tag does not depend on the zlib version.
    """
    root = Path(root)
    sink = _HashingWriter(None)
    _write_tar(root, context_files(root), sink)
    return sink.sha.hexdigest()[:TAG_LENGTH]
