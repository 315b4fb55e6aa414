"""The Google Cloud backend: every port over the google-cloud-* clients (REST transport, lazy imports).

Importing this package imports no Google library; each client is built on first use. Endpoints follow
gcloud's `CLOUDSDK_API_ENDPOINT_OVERRIDES_<API>` and `STORAGE_EMULATOR_HOST`; a loopback override means
anonymous credentials (how the adapter tests talk to local fakes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gemmactl.cloud.gcp._clients import Clock, GcpContext, resolve_project

if TYPE_CHECKING:
    from gemmactl.cloud import Cloud
    from gemmactl.settings import Settings


def make_gcp_cloud(settings: Settings, *, clock: Clock | None = None) -> Cloud:
    """The ports bound to the settings' project (or the one Application Default Credentials name)."""
    from gemmactl.cloud import Cloud
    from gemmactl.cloud.gcp.builds import CloudBuilds
    from gemmactl.cloud.gcp.iam import GoogleIam
    from gemmactl.cloud.gcp.jobs import CloudRunJobs
    from gemmactl.cloud.gcp.logs import CloudLogging
    from gemmactl.cloud.gcp.registry import ArtifactRegistry
    from gemmactl.cloud.gcp.secrets import SecretManagerSecrets
    from gemmactl.cloud.gcp.services import ServiceUsage
    from gemmactl.cloud.gcp.storage import GcsStorage

    ctx = GcpContext(project=resolve_project(settings.project), clock=clock or Clock())
    storage = GcsStorage(ctx)
    return Cloud(
        backend="gcp",
        project=ctx.project,
        storage=storage,
        secrets=SecretManagerSecrets(ctx),
        registry=ArtifactRegistry(ctx),
        iam=GoogleIam(ctx),
        services=ServiceUsage(ctx),
        jobs=CloudRunJobs(ctx),
        logs=CloudLogging(ctx),
        builds=CloudBuilds(ctx, storage),
    )


__all__ = ["Clock", "make_gcp_cloud"]
