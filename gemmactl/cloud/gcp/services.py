"""ports.Services over Service Usage (which APIs are on) and Resource Manager (the project number)."""

from __future__ import annotations

from typing import Any

from gemmactl import errors
from gemmactl.cloud import ports
from gemmactl.cloud.gcp._clients import GcpContext
from gemmactl.cloud.gcp._errors import call

BATCH_GET_MAX = 30  # documented limits of batchGet / batchEnable
BATCH_ENABLE_MAX = 20
ENABLE_TIMEOUT_S = 600


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class ServiceUsage:
    """The project record and its enabled APIs."""

    def __init__(self, ctx: GcpContext) -> None:
        self._ctx = ctx

    @property
    def _usage(self) -> Any:
        from google.cloud import service_usage_v1

        return self._ctx.gapic("SERVICEUSAGE", service_usage_v1.ServiceUsageClient)

    @property
    def _projects(self) -> Any:
        from google.cloud import resourcemanager_v3

        return self._ctx.gapic("CLOUDRESOURCEMANAGER", resourcemanager_v3.ProjectsClient)

    @property
    def _parent(self) -> str:
        return f"projects/{self._ctx.project}"

    def get_project(self) -> ports.ProjectInfo:
        project = call(
            f"get project {self._ctx.project}",
            lambda: self._projects.get_project(name=self._parent, retry=None),
            clock=self._ctx.clock,
        )
        # The resource name is "projects/<number>"; the id we asked with is in project_id.
        return ports.ProjectInfo(
            project_id=project.project_id or self._ctx.project, number=project.name.rsplit("/", 1)[-1]
        )

    def enabled(self, services: list[str]) -> dict[str, bool]:
        from google.cloud import service_usage_v1

        result = dict.fromkeys(services, False)
        for chunk in _chunks(list(services), BATCH_GET_MAX):
            names = [f"{self._parent}/services/{s}" for s in chunk]
            response = call(
                f"check enabled APIs of project {self._ctx.project}",
                lambda names=names: self._usage.batch_get_services(
                    request={"parent": self._parent, "names": names}, retry=None
                ),
                clock=self._ctx.clock,
            )
            for svc in response.services:
                short = svc.name.rsplit("/", 1)[-1]
                result[short] = svc.state == service_usage_v1.State.ENABLED
        return result

    def enable(self, services: list[str]) -> None:
        for chunk in _chunks(list(services), BATCH_ENABLE_MAX):
            what = f"enable {', '.join(chunk)} on project {self._ctx.project}"

            def run(chunk: list[str] = chunk) -> Any:
                op = self._usage.batch_enable_services(
                    request={"parent": self._parent, "service_ids": chunk}, retry=None
                )
                return op.result(timeout=ENABLE_TIMEOUT_S)

            response = call(what, run, clock=self._ctx.clock)
            if response.failures:
                failed = "; ".join(f"{f.service_id}: {f.error_message}" for f in response.failures)
                raise errors.CloudError(f"{what}: {failed}")
