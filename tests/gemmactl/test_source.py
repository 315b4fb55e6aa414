"""The build context: `.dockerignore` as Docker reads it, and a tar.gz whose hash depends only on content."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from gemmactl import source
from gemmactl.errors import UsageError

REPO = Path(__file__).resolve().parents[2]


def make_tree(root: Path, files: dict[str, str], dockerignore: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text("FROM python:3.12.16-slim\n")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if dockerignore is not None:
        (root / ".dockerignore").write_text(dockerignore)
    return root


def members(archive: source.SourceArchive) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(archive.data), mode="r:gz") as tar:
        return tar.getmembers()


# ------------------------------------------------------------------------------- .dockerignore


def test_patterns_are_anchored_at_the_root_like_docker(tmp_path):
    root = make_tree(tmp_path, {"NOTES.md": "", "docs/guide.md": "", "a/x.pyc": "", "b/c/y.pyc": ""},
                     "*.md\n**/*.pyc\n")
    files = source.context_files(root)
    assert "NOTES.md" not in files
    assert "docs/guide.md" in files  # `*.md` is top level only in Docker, unlike git
    assert "a/x.pyc" not in files and "b/c/y.pyc" not in files  # `**` spans directories


def test_negation_reincludes_a_file_inside_an_excluded_directory(tmp_path):
    root = make_tree(tmp_path, {"data/big.bin": "x", "data/keep/labels.txt": "y", "data/other.txt": ""},
                     "# comment\n\ndata\n!data/keep/labels.txt\n")
    files = source.context_files(root)
    assert "data/keep/labels.txt" in files
    assert "data/big.bin" not in files and "data/other.txt" not in files


def test_last_matching_pattern_wins(tmp_path):
    root = make_tree(tmp_path, {"a.txt": "", "b.txt": ""}, "*.txt\n!b.txt\n")
    assert source.context_files(root) == [".dockerignore", "Dockerfile", "b.txt", "pyproject.toml"]
    root2 = make_tree(tmp_path.parent / (tmp_path.name + "-2"), {"a.txt": "", "b.txt": ""}, "!b.txt\n*.txt\n")
    assert source.context_files(root2) == [".dockerignore", "Dockerfile", "pyproject.toml"]


def test_leading_and_trailing_slashes_are_cleaned_as_docker_does(tmp_path):
    root = make_tree(tmp_path, {"build/out.o": "", "src/build/keep.c": ""}, "/build/\n./src/../tmp\n")
    files = source.context_files(root)
    assert "build/out.o" not in files
    assert "src/build/keep.c" in files


def test_dockerfile_and_dockerignore_are_always_sent(tmp_path):
    root = make_tree(tmp_path, {"x.py": ""}, "*\n")
    assert source.context_files(root) == [".dockerignore", "Dockerfile"]


def test_an_allow_list_with_star_keeps_only_what_is_reincluded(tmp_path):
    root = make_tree(tmp_path, {"trainer/a.py": "", "trainer/__pycache__/a.pyc": "", "gemmactl/b.py": "",
                                ".venv/lib/c.py": ""},
                     "*\n!trainer\n!pyproject.toml\n**/__pycache__\n")
    assert source.context_files(root) == [".dockerignore", "Dockerfile", "pyproject.toml", "trainer/a.py"]


def test_excluded_directories_are_not_walked(tmp_path, monkeypatch):
    root = make_tree(tmp_path, {".venv/lib/x.py": "", "src/a.py": ""}, ".venv\n")
    walked = []
    real_walk = os.walk

    def spy(top, *a, **kw):
        for dirpath, dirnames, filenames in real_walk(top, *a, **kw):
            walked.append(Path(dirpath).relative_to(root).as_posix())
            yield dirpath, dirnames, filenames

    monkeypatch.setattr(source.os, "walk", spy)
    source.context_files(root)
    assert not any(d.startswith(".venv") for d in walked)


# ------------------------------------------------------------------------------- packing


def test_packing_twice_gives_identical_bytes_and_the_hash_is_the_tag(tmp_path):
    root = make_tree(tmp_path, {"trainer/a.py": "print(1)\n"})
    first, second = source.pack(root), source.pack(root)
    assert first.data == second.data
    assert first.tag == second.tag == source.content_hash(root)
    assert len(first.tag) == 12 and int(first.tag, 16) >= 0


def test_hash_ignores_mtimes_owners_and_creation_order(tmp_path):
    a = make_tree(tmp_path / "a", {"trainer/x.py": "1", "trainer/y.py": "2"})
    b = make_tree(tmp_path / "b", {"trainer/y.py": "2", "trainer/x.py": "1"})
    os.utime(b / "trainer" / "x.py", (1_000_000, 1_000_000))
    (b / "trainer" / "y.py").chmod(0o600)  # umask differences do not matter, only the exec bit
    assert source.content_hash(a) == source.content_hash(b)
    assert source.pack(a).data == source.pack(b).data


def test_hash_changes_with_content_and_exec_bit_but_not_with_ignored_files(tmp_path):
    root = make_tree(tmp_path, {"trainer/x.py": "1"}, "notes/\n")
    before = source.content_hash(root)
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("ignored")
    assert source.content_hash(root) == before
    (root / "trainer" / "x.py").chmod(0o755)
    after_chmod = source.content_hash(root)
    assert after_chmod != before
    (root / "trainer" / "x.py").write_text("2")
    assert source.content_hash(root) != after_chmod


def test_archive_headers_carry_no_machine_details(tmp_path):
    root = make_tree(tmp_path, {"trainer/run.sh": "#!/bin/sh\n", "trainer/a.py": ""})
    (root / "trainer" / "run.sh").chmod(0o775)
    archive = source.pack(root)
    infos = members(archive)
    assert [m.name for m in infos] == sorted(m.name for m in infos)
    assert all((m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "") for m in infos)
    modes = {m.name: m.mode for m in infos}
    assert modes["trainer/run.sh"] == 0o755 and modes["trainer/a.py"] == 0o644
    header = gzip.GzipFile(fileobj=io.BytesIO(archive.data))
    header.read()
    assert header.mtime == 0


def test_symlinks_travel_as_links(tmp_path):
    root = make_tree(tmp_path, {"trainer/real.py": "x"})
    (root / "trainer" / "alias.py").symlink_to("real.py")
    (root / "linkdir").symlink_to("trainer")
    by_name = {m.name: m for m in members(source.pack(root))}
    assert by_name["trainer/alias.py"].issym() and by_name["trainer/alias.py"].linkname == "real.py"
    assert by_name["linkdir"].issym()


def test_an_oversized_context_is_refused_with_a_hint(tmp_path, monkeypatch):
    root = make_tree(tmp_path, {"weights.bin": "x" * 50_000})
    monkeypatch.setattr(source, "MAX_CONTEXT_BYTES", 10_000)
    with pytest.raises(UsageError) as err:
        source.pack(root)
    assert ".dockerignore" in (err.value.hint or "")


# ------------------------------------------------------------------------------- finding the root


def test_find_root_walks_up_to_the_checkout(tmp_path):
    root = make_tree(tmp_path / "repo", {"trainer/deep/x.py": ""})
    assert source.find_root(root / "trainer" / "deep") == root.resolve()


def test_find_root_outside_a_checkout_says_what_to_do(tmp_path):
    with pytest.raises(UsageError) as err:
        source.find_root(tmp_path)
    assert "--source" in (err.value.hint or "")


# ------------------------------------------------------------------------------- this repository


def test_the_repository_context_is_the_trainer_and_its_lock_only():
    files = source.context_files(REPO)
    assert {"Dockerfile", ".dockerignore", "pyproject.toml", "requirements/trainer.lock"} <= set(files)
    assert "trainer/__main__.py" in files and "trainer/config.py" in files
    # The CLI, tests, venv, git, caches and local state stay out, so CLI edits never rebuild the image.
    forbidden = ("gemmactl/", "tests/", ".venv/", ".git/", "bench/", ".gemmactl-local/", "scripts/")
    assert not [f for f in files if f.startswith(forbidden) or "__pycache__" in f or f.endswith(".pyc")]
