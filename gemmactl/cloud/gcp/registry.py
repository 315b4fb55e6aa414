"""ports.Registry over Artifact Registry (REST): the Docker repository and "is this image tag there?"."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from gemmactl import errors
from gemmactl.cloud import ports
from gemmactl.cloud.gcp._clients import GcpContext
from gemmactl.cloud.gcp._errors import call

LRO_TIMEOUT_S = 300
# <region>-docker.pkg.dev/<project>/<repo>/<image path>(:<tag>|@sha256:<digest>)
_IMAGE_RE = re.compile(
    r"^(?P<region>[a-z0-9-]+)-docker\.pkg\.dev/(?P<project>[^/]+)/(?P<repo>[^/]+)/"
    r"(?P<image>[^:@]+)(?::(?P<tag>[\w][\w.-]{0,127})|@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


def parse_image(image: str) -> dict[str, str | None]:
    """The parts of an Artifact Registry Docker image URI; UsageError for anything else."""
    m = _IMAGE_RE.match(image)
    if not m:
        raise errors.UsageError(
            f"not an Artifact Registry image: {image}",
            hint="expected <region>-docker.pkg.dev/<project>/<repository>/<image>:<tag>",
        )
    parts = m.groupdict()
    if not parts["tag"] and not parts["digest"]:
        parts["tag"] = "latest"
    return parts


class ArtifactRegistry:
    """Docker repositories and image lookups."""

    def __init__(self, ctx: GcpContext) -> None:
        self._ctx = ctx

    @property
    def _client(self) -> Any:
        from google.cloud import artifactregistry_v1

        return self._ctx.gapic("ARTIFACTREGISTRY", artifactregistry_v1.ArtifactRegistryClient)

    def _name(self, region: str, repository: str) -> str:
        return f"projects/{self._ctx.project}/locations/{region}/repositories/{repository}"

    @staticmethod
    def _info(repo: Any, region: str) -> ports.RepositoryInfo:
        return ports.RepositoryInfo(
            name=repo.name.rsplit("/", 1)[-1], region=region, format=type(repo).Format(repo.format_).name
        )

    def get_repository(self, region: str, repository: str) -> ports.RepositoryInfo:
        repo = call(
            f"get Artifact Registry repository {repository} in {region}",
            lambda: self._client.get_repository(name=self._name(region, repository), retry=None),
            clock=self._ctx.clock,
        )
        return self._info(repo, region)

    def create_repository(self, region: str, repository: str, *, description: str) -> ports.RepositoryInfo:
        from google.cloud import artifactregistry_v1

        what = f"create Artifact Registry repository {repository} in {region}"
        repo = artifactregistry_v1.Repository(
            format_=artifactregistry_v1.Repository.Format.DOCKER,
            description=description,
            labels={"managed-by": "gemmactl"},
        )

        def create() -> Any:
            op = self._client.create_repository(
                parent=f"projects/{self._ctx.project}/locations/{region}",
                repository=repo,
                repository_id=repository,
                retry=None,
            )
            return op.result(timeout=LRO_TIMEOUT_S)

        return self._info(call(what, create, clock=self._ctx.clock, retry=False), region)

    def image_exists(self, image: str) -> bool:
        from google.api_core import exceptions as gexc

        p = parse_image(image)
        repo = f"projects/{p['project']}/locations/{p['region']}/repositories/{p['repo']}"
        # Nested image paths (a/b) are one package id, so the slash is escaped.
        package = quote(str(p["image"]), safe="")
        try:
            if p["digest"]:
                name = f"{repo}/dockerImages/{package}@{p['digest']}"
                call(f"look up image {image}", lambda: self._client.get_docker_image(name=name, retry=None),
                     clock=self._ctx.clock)
            else:
                name = f"{repo}/packages/{package}/tags/{p['tag']}"
                call(f"look up image {image}", lambda: self._client.get_tag(name=name, retry=None),
                     clock=self._ctx.clock)
        except errors.NotFoundError as e:
            if isinstance(e.__cause__, gexc.NotFound):
                return False
            raise
        return True
