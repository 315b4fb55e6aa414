"""Fixtures for the staging tests (a fake hub, a local bucket, recorded retry sleeps); no tests here."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.fakes.fake_hub import FakeHub

TOKEN = "hf_SuperSecretToken0123456789"
LOCAL_BUCKET = "local-gemma-finetuning-europe-west4"


def model_files(n_shards: int = 3, shard_bytes: int = 300_000) -> dict[str, bytes]:
    """A small model repo: plain git files plus LFS shards, one in a subfolder."""
    rng = __import__("random").Random(42)
    files = {"config.json": b'{"model_type": "gemma3"}', "tokenizer_config.json": b'{"a": 1}' * 20,
             "README.md": b"# tiny\n"}
    for i in range(n_shards):
        files[f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"] = rng.randbytes(shard_bytes + i)
    files["processor/preprocessor_config.json"] = b'{"size": 32}'
    return files


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def hub(monkeypatch):
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        yield fake


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Retry waits, recorded instead of slept (tests stay instant)."""
    recorded: list[float] = []
    monkeypatch.setattr("gemmactl.staging.retry.SLEEP", recorded.append)
    return recorded


@pytest.fixture
def local(tmp_path) -> tuple[list[str], Path]:
    """(global CLI args, bucket dir) of a local backend whose bucket exists."""
    from gemmactl.cloud.local import make_local_cloud
    from gemmactl.settings import load_settings

    root = tmp_path / "local"
    settings = load_settings({"backend": "local", "local_dir": str(root)}, env={})
    make_local_cloud(settings).storage.create_bucket(LOCAL_BUCKET, location="europe-west4", labels={})
    return ["--local", "--local-dir", str(root)], root / "buckets" / LOCAL_BUCKET


def bucket_files(bucket_dir: Path, prefix: str) -> dict[str, bytes]:
    base = bucket_dir / prefix
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def mtimes(bucket_dir: Path) -> dict[str, int]:
    return {str(p): os.stat(p).st_mtime_ns for p in bucket_dir.rglob("*") if p.is_file()}
