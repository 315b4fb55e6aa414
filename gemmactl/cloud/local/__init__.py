"""The embedded local backend: a directory is the bucket, a 0600 file the secret, a subprocess the job.

Everything lives under `settings.local_root` (`--local-dir`, GEMMACTL_LOCAL_DIR, or the user data dir).
Nothing is created until a port method writes, so `doctor` and `--dry-run` leave no trace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gemmactl.cloud import Cloud
from gemmactl.cloud.local.admin import LocalIam, LocalRegistry, LocalSecrets, LocalServices, LocalState
from gemmactl.cloud.local.jobs import LocalBuilds, LocalJobs, LocalLogs
from gemmactl.cloud.local.storage import LocalStorage

if TYPE_CHECKING:
    from gemmactl.settings import Settings

LOCAL_PROJECT = "local"


def make_local_cloud(settings: Settings) -> Cloud:
    """All ports over `settings.local_root`; the project is "local" unless one is configured."""
    root = settings.local_root
    project = settings.project or LOCAL_PROJECT
    state = LocalState(root)
    return Cloud(
        backend="local",
        project=project,
        storage=LocalStorage(root, state),
        secrets=LocalSecrets(root, state),
        registry=LocalRegistry(state, project),
        iam=LocalIam(state, project),
        services=LocalServices(project),
        jobs=LocalJobs(root, settings),
        logs=LocalLogs(root, settings),
        builds=LocalBuilds(root, settings),
    )
