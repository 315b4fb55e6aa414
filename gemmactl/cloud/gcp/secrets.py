"""ports.Secrets over Secret Manager (REST). Secret values exist only inside SecretText and request payloads."""

from __future__ import annotations

from typing import Any

from gemmactl import errors
from gemmactl.cloud import ports
from gemmactl.cloud.gcp import _policy
from gemmactl.cloud.gcp._clients import GcpContext
from gemmactl.cloud.gcp._errors import call, status_of


def _crc32c(data: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.value(data))


class SecretManagerSecrets:
    """Secrets, their versions and IAM policies, in the settings' project."""

    def __init__(self, ctx: GcpContext) -> None:
        self._ctx = ctx

    @property
    def _client(self) -> Any:
        from google.cloud import secretmanager_v1

        return self._ctx.gapic("SECRETMANAGER", secretmanager_v1.SecretManagerServiceClient)

    def _name(self, secret: str) -> str:
        return f"projects/{self._ctx.project}/secrets/{secret}"

    def _call(self, what: str, fn: Any, *, retry: bool = True) -> Any:
        return call(what, fn, clock=self._ctx.clock, retry=retry)

    def get_secret(self, secret: str) -> ports.SecretInfo:
        name = self._name(secret)
        self._call(f"get secret {secret}", lambda: self._client.get_secret(name=name, retry=None))
        versions = self._call(
            f"list versions of secret {secret}",
            lambda: self._client.list_secret_versions(
                request={"parent": name, "filter": "state:ENABLED", "page_size": 100}, retry=None
            ),
        )
        # One page is plenty: we only need "has a version" and a rough count.
        return ports.SecretInfo(name=secret, version_count=len(list(versions.versions)))

    def create_secret(self, secret: str, *, labels: dict[str, str]) -> ports.SecretInfo:
        self._call(
            f"create secret {secret}",
            lambda: self._client.create_secret(
                request={
                    "parent": f"projects/{self._ctx.project}",
                    "secret_id": secret,
                    "secret": {"replication": {"automatic": {}}, "labels": dict(labels)},
                },
                retry=None,
            ),
        )
        return ports.SecretInfo(name=secret, version_count=0)

    def latest_value(self, secret: str) -> ports.SecretText | None:
        from google.api_core import exceptions as gexc

        name = f"{self._name(secret)}/versions/latest"
        try:
            response = self._call(
                f"read secret {secret}", lambda: self._client.access_secret_version(name=name, retry=None)
            )
        except errors.GemmactlError as e:
            cause = e.__cause__
            # NotFound: no secret or no version; FAILED_PRECONDITION: the latest version is disabled.
            if isinstance(cause, gexc.NotFound) or status_of(cause) == "FAILED_PRECONDITION":
                return None
            raise
        data = bytes(response.payload.data)
        if "data_crc32c" in response.payload and response.payload.data_crc32c != _crc32c(data):
            raise errors.IntegrityError(f"secret {secret}: the value failed its CRC32C check")
        return ports.SecretText(data.decode("utf-8"))

    def add_version(self, secret: str, value: ports.SecretText) -> str:
        if not value:
            raise errors.UsageError(f"refusing to store an empty value in secret {secret}")
        data = value.reveal().encode("utf-8")
        version = self._call(
            f"add a version to secret {secret}",
            lambda: self._client.add_secret_version(
                request={"parent": self._name(secret), "payload": {"data": data, "data_crc32c": _crc32c(data)}},
                retry=None,
            ),
            retry=False,  # a retried POST could store the value twice
        )
        return version.name.rsplit("/", 1)[-1]

    def get_policy(self, secret: str) -> ports.Policy:
        pb = self._call(
            f"read IAM policy of secret {secret}",
            lambda: self._client.get_iam_policy(
                request={"resource": self._name(secret), "options": {"requested_policy_version": 3}},
                retry=None,
            ),
        )
        return _policy.from_pb(pb)

    def set_policy(self, secret: str, policy: ports.Policy) -> ports.Policy:
        def write(p: ports.Policy) -> ports.Policy:
            pb = self._client.set_iam_policy(
                request={"resource": self._name(secret), "policy": _policy.to_pb(p)}, retry=None
            )
            return _policy.from_pb(pb)

        return _policy.set_with_retry(
            f"set IAM policy of secret {secret}",
            policy,
            read=lambda: self.get_policy(secret),
            write=write,
            clock=self._ctx.clock,
        )
