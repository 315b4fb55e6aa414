"""Our own exceptions: the only ones the CLI layer catches and turns into one line plus a hint.

Adapters translate Google, Hugging Face and OS errors into these at the seam, so commands and tests
never see a `google.api_core` exception. Messages never contain secret values.
"""

from __future__ import annotations


class GemmactlError(Exception):
    """Base class: a one-line message, an optional hint (the next command to run) and an exit code."""

    exit_code = 1
    default_hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message


class UsageError(GemmactlError):
    """Bad flags or input values, caught before any API call."""

    exit_code = 2


class ConfigError(UsageError):
    """An invalid setting (gemmactl.toml, GEMMACTL_* env or flag) or training configuration."""


class CredentialsError(GemmactlError):
    """No usable Google credentials or project."""

    default_hint = "run `gcloud auth application-default login` (and `gcloud config set project ID`)"


class NotFoundError(GemmactlError):
    """A resource that should exist does not."""

    def __init__(self, message: str, *, resource: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.resource = resource


class AlreadyExistsError(GemmactlError):
    """Create conflicted with an existing resource (HTTP 409)."""

    def __init__(self, message: str, *, resource: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.resource = resource


class PermissionDeniedError(GemmactlError):
    """The caller lacks a permission; `permission` names it when Google says which."""

    def __init__(self, message: str, *, permission: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.permission = permission


class ServiceDisabledError(GemmactlError):
    """A Google API is not enabled on the project (yet)."""

    def __init__(self, message: str, *, service: str, activation_url: str | None = None) -> None:
        hint = f"run `gemmactl init` or `gcloud services enable {service}`"
        if activation_url:
            hint += f" ({activation_url})"
        super().__init__(message, hint=hint)
        self.service = service
        self.activation_url = activation_url


class QuotaError(GemmactlError):
    """A quota or rate limit was hit (HTTP 429 or a quota violation)."""

    default_hint = "check quotas at https://console.cloud.google.com/iam-admin/quotas or try another region"


class TransientError(GemmactlError):
    """A 5xx / connection failure that outlived our retries."""

    default_hint = "try again in a minute; GEMMACTL_DEBUG=1 shows the underlying error"


class CloudError(GemmactlError):
    """Any other API error, with the server's message."""


class RegionMismatchError(GemmactlError):
    """The bucket and the job are in different regions (Cloud Storage volumes need them aligned)."""


class IntegrityError(GemmactlError):
    """Data did not match its checksum or manifest."""


class GatedRepoError(PermissionDeniedError):
    """A Hugging Face repo needs its licence accepted, or the token lacks access."""


class JobFailedError(GemmactlError):
    """A Cloud Run execution (or local run) ended in failure."""

    def __init__(self, message: str, *, execution: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.execution = execution


class BuildFailedError(GemmactlError):
    """A Cloud Build (or local Docker) build failed."""


class AbortedError(GemmactlError):
    """The user declined a confirmation, or no TTY was there to ask."""
