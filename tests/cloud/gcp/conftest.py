"""Fixtures for the adapter tests: the REST fake and the gcp-storage-emulator on 127.0.0.1, and a gcp Cloud
pointed at them through gcloud's endpoint-override variables (so anonymous credentials, never ADC)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from gemmactl.cloud.gcp import Clock, make_gcp_cloud
from gemmactl.settings import Settings
from tests.fakes.gcp_rest import FakeGoogle
from tests.fakes.gcs_emulator import running_emulator

PROJECT = "test-project"
PROJECT_NUMBER = "123456789012"  # FakeGoogle's default; the emulator reports it on buckets too


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """gcp-storage-emulator (in memory) as a subprocess; its URL once it answers."""
    with running_emulator(PROJECT_NUMBER) as url:
        yield url


@pytest.fixture
def google(monkeypatch) -> Iterator[FakeGoogle]:
    """The REST fake, with every CLOUDSDK_API_ENDPOINT_OVERRIDES_* pointing at it."""
    fake = FakeGoogle(project=PROJECT, number=PROJECT_NUMBER)
    fake.start()
    for name, value in fake.overrides().items():
        monkeypatch.setenv(name, value)
    yield fake
    fake.stop()


@dataclass
class FakeTime:
    """Sleeps take no time but are recorded, and move the clock on."""

    now: float = 0.0
    slept: list[float] = field(default_factory=list)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


@pytest.fixture
def cloud(google, gcs_emulator, clock, monkeypatch):
    """make_gcp_cloud for test-project, every API on 127.0.0.1."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)

    def no_adc(*args, **kwargs):
        raise AssertionError("google.auth.default() must not be called with loopback overrides")

    monkeypatch.setattr("google.auth.default", no_adc)
    return make_gcp_cloud(
        Settings(project=PROJECT, region="europe-west4"), clock=Clock(sleep=clock.sleep, monotonic=clock.monotonic)
    )
