"""Google errors → gemmactl errors (one table for every adapter), plus the retry loop around each call.

REST transports raise the HTTP *base* classes (Conflict, Forbidden, BadRequest…), never the gRPC subclasses,
so everything here keys on base classes and on the JSON error's `status` / ErrorInfo (gcp-api.md §4).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from gemmactl import errors
from gemmactl.cloud.gcp._clients import Clock

T = TypeVar("T")

_PERMISSION_RES = (
    re.compile(r"[Pp]ermission '([\w.]+)' denied"),
    re.compile(r"does not have ([a-z]+\.[\w.]+) access"),
    re.compile(r"[Pp]ermission ([a-z]+\.[a-z]+\.[\w]+) denied"),
)
_QUOTA_RE = re.compile(r"quota|rate limit|GPU.*(exceeded|limit)", re.IGNORECASE)
_QUOTA_PROJECT_RE = re.compile(r"requires a quota project", re.IGNORECASE)
_SA_MISSING_RE = re.compile(r"[Ss]ervice account .* does not exist")
# REST messages start with "POST http://host/v2/...: "; the URL adds noise, not information.
_URL_PREFIX_RE = re.compile(r"^(GET|POST|PUT|PATCH|DELETE) \S+: ")
_RETRIES = 4  # attempts for 5xx / connection failures: 1 s, 2 s, 4 s apart


def _json_error(exc: Any) -> dict[str, Any]:
    response = getattr(exc, "response", None)
    try:
        body = response.json() if response is not None else {}
    except Exception:  # an HTML 502 page, an empty body, a non-requests response
        return {}
    return body.get("error", {}) if isinstance(body, dict) and isinstance(body.get("error"), dict) else {}


def status_of(exc: BaseException) -> str | None:
    """The canonical status string ("ABORTED", "FAILED_PRECONDITION", …) of an HTTP error, when it says one."""
    grpc = getattr(exc, "grpc_status_code", None)
    if grpc is not None:
        return getattr(grpc, "name", None)
    status = _json_error(exc).get("status")
    return status if isinstance(status, str) else None


def is_etag_race(exc: BaseException) -> bool:
    """A read-modify-write lost to a concurrent writer: 409 ABORTED (Secret Manager, IAM) or 412 (GCS)."""
    from google.api_core import exceptions as gexc

    if isinstance(exc, gexc.Aborted | gexc.PreconditionFailed):
        return True
    return isinstance(exc, gexc.Conflict) and status_of(exc) == "ABORTED"


def is_sa_propagating(exc: BaseException) -> bool:
    """IAM's 400 for a service account created seconds ago that other services do not see yet."""
    from google.api_core import exceptions as gexc

    return isinstance(exc, gexc.BadRequest) and bool(_SA_MISSING_RE.search(str(getattr(exc, "message", exc))))


def _message(exc: Any) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return _URL_PREFIX_RE.sub("", text).splitlines()[0] if text else exc.__class__.__name__


def _permission(exc: Any, text: str) -> str | None:
    metadata = getattr(exc, "metadata", None) or {}
    if metadata.get("permission"):
        return metadata["permission"]
    for pattern in _PERMISSION_RES:
        if m := pattern.search(text):
            return m.group(1)
    return None


def _forbidden(exc: Any, what: str, text: str) -> errors.GemmactlError:
    if getattr(exc, "reason", None) == "SERVICE_DISABLED":
        metadata = getattr(exc, "metadata", None) or {}
        service = metadata.get("service") or "the API"
        return errors.ServiceDisabledError(
            f"{what}: {service} is not enabled on this project",
            service=service,
            activation_url=metadata.get("activationUrl"),
        )
    if _QUOTA_PROJECT_RE.search(text):
        return errors.CredentialsError(
            f"{what}: {text}",
            hint="run `gcloud auth application-default set-quota-project PROJECT` "
            "or set GOOGLE_CLOUD_QUOTA_PROJECT",
        )
    permission = _permission(exc, text)
    hint = f"grant yourself a role that includes {permission}" if permission else None
    return errors.PermissionDeniedError(f"{what}: {text}", permission=permission, hint=hint)


def translate(exc: BaseException, what: str) -> errors.GemmactlError:
    """Our error for a Google/auth/transport exception; `what` names the operation and its resource."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    if isinstance(exc, errors.GemmactlError):
        return exc
    text = _message(exc)
    if isinstance(exc, auth_exc.DefaultCredentialsError | auth_exc.RefreshError | gexc.Unauthorized):
        return errors.CredentialsError(f"{what}: credentials were rejected ({text})")
    if isinstance(exc, gexc.Forbidden):
        return _forbidden(exc, what, text)
    if isinstance(exc, gexc.NotFound):
        return errors.NotFoundError(f"{what}: not found", resource=what)
    if isinstance(exc, gexc.Conflict) and not is_etag_race(exc):
        return errors.AlreadyExistsError(f"{what}: already exists", resource=what)
    if isinstance(exc, gexc.TooManyRequests) or (isinstance(exc, gexc.ClientError) and _QUOTA_RE.search(text)):
        return errors.QuotaError(f"{what}: {text}")
    if _is_transient(exc):
        return errors.TransientError(f"{what}: the service did not answer ({text})")
    return errors.CloudError(f"{what}: {text}")


def _is_transient(exc: BaseException) -> bool:
    import requests  # google-auth's transport, so always there with the clients
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    transient = (
        gexc.ServerError, gexc.RetryError, auth_exc.TransportError, ConnectionError, TimeoutError,
        requests.ConnectionError, requests.Timeout,
    )
    return isinstance(exc, transient)


def call(what: str, fn: Callable[[], T], *, clock: Clock, retry: bool = True) -> T:
    """Run one API call; retry 5xx/connection failures (when safe to repeat), translate whatever escapes."""
    attempts = _RETRIES if retry else 1
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except errors.GemmactlError:
            raise
        except Exception as exc:
            if attempt < attempts and _is_transient(exc):
                clock.sleep(2 ** (attempt - 1))
                continue
            raise translate(exc, what) from exc
    raise AssertionError("unreachable")  # pragma: no cover
