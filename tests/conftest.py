"""Fixtures every test shares: an isolated environment, the in-memory fake cloud and a CLI runner."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from gemmactl import cloud as cloud_seam

_VARS_TO_CLEAR = (
    "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "GOOGLE_APPLICATION_CREDENTIALS", "HF_TOKEN",
    "HF_ENDPOINT", "STORAGE_EMULATOR_HOST", "GEMMACTL_DEBUG",
)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch) -> None:
    """No real credentials, config files or user state leak into a test."""
    import os

    for name in list(os.environ):
        if name.startswith(("GEMMACTL_", "CLOUDSDK_API_ENDPOINT_OVERRIDES_")) or name in _VARS_TO_CLEAR:
            monkeypatch.delenv(name, raising=False)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("HF_HOME", str(home / ".cache" / "huggingface"))
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture
def fake_cloud() -> Iterator[object]:
    """The in-memory fake backend, installed behind `gemmactl.cloud.get_cloud`."""
    from tests.fakes.fake_cloud import FakeCloud

    fake = FakeCloud(project="test-project")
    with cloud_seam.use_cloud(fake.for_settings):
        yield fake


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def cli():
    """Run `gemmactl ARGS` in-process; returns exit code, stdout and stderr separately."""
    from typer.testing import CliRunner

    from gemmactl.cli.app import app

    def run(*args: str, input: str | None = None, expect: int | None = 0, env: dict | None = None) -> CliResult:
        # A wide terminal so table cells are not folded mid-name in assertions.
        env = {"COLUMNS": "250", **(env or {})}
        result = CliRunner().invoke(app, [str(a) for a in args], input=input, env=env, catch_exceptions=False)
        res = CliResult(result.exit_code, result.stdout, result.stderr)
        if expect is not None:
            assert res.exit_code == expect, f"exit {res.exit_code} != {expect}\n{res.output}"
        return res

    return run


@pytest.fixture
def fake_hub_min(monkeypatch):
    """A minimal fake Hugging Face Hub (whoami + gated auth-check) behind HF_ENDPOINT."""
    from tests.fakes.fake_hub_min import FakeHubMin

    hub = FakeHubMin().start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    yield hub
    hub.stop()


@pytest.fixture
def no_sleep(monkeypatch) -> list[float]:
    """Make init's retry waits instant; returns the waits it asked for."""
    from gemmactl import setup

    waits: list[float] = []
    monkeypatch.setattr(setup, "sleep", waits.append)
    return waits
