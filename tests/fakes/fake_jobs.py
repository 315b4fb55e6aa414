"""In-memory fakes of the Jobs, Logs and Builds ports (placeholder: the job-lifecycle issue fills it)."""

from __future__ import annotations


class FakeJobs:
    def __init__(self, cloud) -> None:
        self.cloud = cloud


class FakeLogs:
    def __init__(self, cloud) -> None:
        self.cloud = cloud


class FakeBuilds:
    def __init__(self, cloud) -> None:
        self.cloud = cloud
