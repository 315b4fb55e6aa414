"""The one seam to the cloud: `get_cloud(settings)` returns the backend's port objects.

Commands call `gemmactl.cloud.get_cloud(settings)` and nothing else; tests swap the backend with
`use_cloud(fake)`. Backends are imported lazily so `gemmactl --help` never imports Google libraries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gemmactl.cloud.ports import Builds, Iam, Jobs, Logs, Registry, Secrets, Services, Storage
    from gemmactl.settings import Settings


@dataclass
class Cloud:
    """The ports of one backend, bound to one project."""

    backend: str  # "gcp" | "local" | "fake"
    project: str
    storage: Storage
    secrets: Secrets
    registry: Registry
    iam: Iam
    services: Services
    jobs: Jobs
    logs: Logs
    builds: Builds


_override: Callable[[Settings], Cloud] | None = None


def get_cloud(settings: Settings) -> Cloud:
    """The backend named by `settings.backend` (or the test override)."""
    if _override is not None:
        return _override(settings)
    if settings.backend == "local":
        from gemmactl.cloud.local import make_local_cloud

        return make_local_cloud(settings)
    from gemmactl.cloud.gcp import make_gcp_cloud

    return make_gcp_cloud(settings)


@contextmanager
def use_cloud(factory: Callable[[Settings], Cloud]) -> Iterator[None]:
    """Route every `get_cloud` call to `factory` (tests and embedding)."""
    global _override
    previous, _override = _override, factory
    try:
        yield
    finally:
        _override = previous
