"""Local backend's Jobs, Logs and Builds (placeholder: the job-lifecycle issue fills it)."""

from __future__ import annotations


class LocalJobs:
    def __init__(self, root, settings) -> None:
        self.root, self.settings = root, settings


class LocalLogs:
    def __init__(self, root, settings) -> None:
        self.root, self.settings = root, settings


class LocalBuilds:
    def __init__(self, root, settings) -> None:
        self.root, self.settings = root, settings
