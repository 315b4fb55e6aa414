"""ports.Iam: service accounts over the IAM REST API (the Python IAM admin client is gRPC-only) and the
project IAM policy over Resource Manager v3 (REST)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from gemmactl.cloud import ports
from gemmactl.cloud.gcp import _policy
from gemmactl.cloud.gcp._clients import GcpContext
from gemmactl.cloud.gcp._errors import call

HTTP_TIMEOUT_S = 60


def _raise_for_status(response: Any) -> Any:
    """The JSON body, or the api-core exception a generated client would have raised for this response."""
    from google.api_core import exceptions as gexc

    if response.status_code >= 400:
        raise gexc.from_http_response(response)
    return response.json()


def _sa_info(data: dict[str, Any]) -> ports.ServiceAccountInfo:
    email = data["email"]
    return ports.ServiceAccountInfo(
        email=email, account_id=email.split("@", 1)[0], display_name=data.get("displayName", "")
    )


class GoogleIam:
    """Service accounts and the project-level IAM policy."""

    def __init__(self, ctx: GcpContext) -> None:
        self._ctx = ctx

    @property
    def _session(self) -> Any:
        return self._ctx.session("IAM")

    @property
    def _projects(self) -> Any:
        from google.cloud import resourcemanager_v3

        return self._ctx.gapic("CLOUDRESOURCEMANAGER", resourcemanager_v3.ProjectsClient)

    def _url(self, suffix: str = "") -> str:
        return f"{self._ctx.base_url('IAM')}/v1/projects/{self._ctx.project}/serviceAccounts{suffix}"

    def get_service_account(self, email: str) -> ports.ServiceAccountInfo:
        url = self._url(f"/{quote(email, safe='@')}")
        data = call(
            f"get service account {email}",
            lambda: _raise_for_status(self._session.get(url, timeout=HTTP_TIMEOUT_S)),
            clock=self._ctx.clock,
        )
        return _sa_info(data)

    def create_service_account(
        self, account_id: str, *, display_name: str, description: str
    ) -> ports.ServiceAccountInfo:
        body = {
            "accountId": account_id,
            "serviceAccount": {"displayName": display_name, "description": description},
        }
        data = call(
            f"create service account {account_id}",
            lambda: _raise_for_status(self._session.post(self._url(), json=body, timeout=HTTP_TIMEOUT_S)),
            clock=self._ctx.clock,
        )
        return _sa_info(data)

    def get_project_policy(self) -> ports.Policy:
        resource = f"projects/{self._ctx.project}"
        pb = call(
            f"read IAM policy of project {self._ctx.project}",
            lambda: self._projects.get_iam_policy(
                request={"resource": resource, "options": {"requested_policy_version": 3}}, retry=None
            ),
            clock=self._ctx.clock,
        )
        return _policy.from_pb(pb)

    def set_project_policy(self, policy: ports.Policy) -> ports.Policy:
        resource = f"projects/{self._ctx.project}"

        def write(p: ports.Policy) -> ports.Policy:
            pb = self._projects.set_iam_policy(request={"resource": resource, "policy": _policy.to_pb(p)}, retry=None)
            return _policy.from_pb(pb)

        return _policy.set_with_retry(
            f"set IAM policy of project {self._ctx.project}",
            policy,
            read=self.get_project_policy,
            write=write,
            clock=self._ctx.clock,
        )
