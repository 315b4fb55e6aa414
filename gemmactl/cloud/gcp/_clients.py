"""Client construction: endpoint overrides, credentials, project and the retry clock, shared by every adapter.

Google libraries are imported inside functions only, so importing this module costs nothing at CLI start-up.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from gemmactl.errors import ConfigError, CredentialsError

# gcloud's override names (CLOUDSDK_API_ENDPOINT_OVERRIDES_<API>) and the public endpoints behind them.
DEFAULT_ENDPOINTS = {
    "RUN": "https://run.googleapis.com",
    "SECRETMANAGER": "https://secretmanager.googleapis.com",
    "ARTIFACTREGISTRY": "https://artifactregistry.googleapis.com",
    "CLOUDBUILD": "https://cloudbuild.googleapis.com",
    "LOGGING": "https://logging.googleapis.com",
    "SERVICEUSAGE": "https://serviceusage.googleapis.com",
    "IAM": "https://iam.googleapis.com",
    "CLOUDRESOURCEMANAGER": "https://cloudresourcemanager.googleapis.com",
}
_ADC_HINT = "run `gcloud auth application-default login` (and `gcloud config set project ID`)"


def endpoint_override(api: str, env: Mapping[str, str] | None = None) -> str | None:
    """The override for `api` in the form the Python clients want: gcloud's URL minus one trailing slash."""
    env = os.environ if env is None else env
    if api == "STORAGE":
        value = env.get("STORAGE_EMULATOR_HOST")
    else:
        value = env.get(f"CLOUDSDK_API_ENDPOINT_OVERRIDES_{api}")
    if not value:
        return None
    value = value.strip()
    # gcloud insists on the trailing slash; the clients would then send `//v2/...` paths.
    return value[:-1] if value.endswith("/") else value


def is_loopback(url: str | None) -> bool:
    """Whether `url` points at this machine (a test fake or an emulator)."""
    if not url:
        return False
    host = urlparse(url if "://" in url else f"http://{url}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Clock:
    """Sleep and time, injectable so retry loops run instantly in tests."""

    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic


def _user_agent() -> str:
    from gemmactl import __version__

    return f"gemmactl/{__version__}"


@dataclass
class GcpContext:
    """One project's clients, built on first use and cached (each client owns an HTTP session)."""

    project: str
    clock: Clock = field(default_factory=Clock)
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    _credentials: Any = None
    _cache: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- credentials

    def credentials(self, api: str) -> Any:
        """Anonymous for a loopback override (never touching ADC), else Application Default Credentials."""
        if is_loopback(endpoint_override(api, self.env)):
            from google.auth.credentials import AnonymousCredentials

            return AnonymousCredentials()
        if self._credentials is None:
            self._credentials, _ = adc()
        return self._credentials

    def quota_project(self) -> str | None:
        return self.env.get("GOOGLE_CLOUD_QUOTA_PROJECT") or None

    def client_options(self, api: str) -> Any:
        from google.api_core.client_options import ClientOptions

        options = ClientOptions(api_endpoint=endpoint_override(api, self.env))
        if not is_loopback(endpoint_override(api, self.env)):
            options.quota_project_id = self.quota_project()
        return options

    def client_info(self) -> Any:
        from google.api_core.gapic_v1.client_info import ClientInfo

        return ClientInfo(user_agent=_user_agent())

    def cached(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    # ---------------------------------------------------------------- GAPIC clients (REST transport)

    def gapic(self, api: str, client_class: Any) -> Any:
        """A generated client over REST with the override, credentials and quota project applied."""
        return self.cached(
            f"{api}:{client_class.__name__}",
            lambda: client_class(
                credentials=self.credentials(api),
                transport="rest",
                client_options=self.client_options(api),
                client_info=self.client_info(),
            ),
        )

    def storage(self) -> Any:
        def build() -> Any:
            from google.cloud import storage

            # With STORAGE_EMULATOR_HOST set the library routes there and goes anonymous by itself.
            if endpoint_override("STORAGE", self.env):
                return storage.Client(project=self.project, client_info=self.client_info())
            # The quota project, if any, already rides on the ADC credentials (see adc()).
            return storage.Client(
                project=self.project, credentials=self.credentials("STORAGE"), client_info=self.client_info()
            )

        return self.cached("storage", build)

    def logging(self) -> Any:
        def build() -> Any:
            from google.cloud import logging as gcl

            options = {}
            if endpoint := endpoint_override("LOGGING", self.env):
                options["api_endpoint"] = endpoint
            # The handwritten client can speak HTTP; its GAPIC sibling is gRPC-only.
            return gcl.Client(
                project=self.project,
                credentials=self.credentials("LOGGING"),
                _use_grpc=False,
                client_options=options or None,
                client_info=self.client_info(),
            )

        return self.cached("logging", build)

    def session(self, api: str) -> Any:
        """An authorized requests session for APIs without a REST client here (IAM admin is gRPC-only)."""

        def build() -> Any:
            from google.auth.transport.requests import AuthorizedSession

            s = AuthorizedSession(self.credentials(api))
            s.headers["User-Agent"] = _user_agent()
            if (q := self.quota_project()) and not is_loopback(endpoint_override(api, self.env)):
                s.headers["x-goog-user-project"] = q
            return s

        return self.cached(f"session:{api}", build)

    def base_url(self, api: str) -> str:
        return endpoint_override(api, self.env) or DEFAULT_ENDPOINTS[api]


def adc() -> tuple[Any, str | None]:
    """Application Default Credentials (+ the project they name); CredentialsError when there are none."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, project = google.auth.default(
            scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
    except DefaultCredentialsError:
        raise CredentialsError(
            "no Google Cloud credentials found (Application Default Credentials)", hint=_ADC_HINT
        ) from None
    quota = os.environ.get("GOOGLE_CLOUD_QUOTA_PROJECT")
    if quota and hasattr(credentials, "with_quota_project"):
        # Some credential types cannot carry one; the clients then send it from client_options.
        with contextlib.suppress(NotImplementedError):
            credentials = credentials.with_quota_project(quota)
    return credentials, project


def resolve_project(explicit: str | None) -> str:
    """The settings' project, else the one Application Default Credentials name."""
    if explicit:
        return explicit
    _, project = adc()
    if not project:
        raise ConfigError(
            "no Google Cloud project is set and the credentials name none",
            hint="pass --project ID, set GOOGLE_CLOUD_PROJECT, or `gcloud config set project ID`",
        )
    return project
