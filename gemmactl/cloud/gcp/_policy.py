"""IAM policies: Google's JSON form ↔ ports.Policy, and the read-modify-write loop every resource shares.

Conditional bindings and fields we do not model (auditConfigs, …) ride along in `Policy.extra`, so a
set never drops what someone else configured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gemmactl import errors
from gemmactl.cloud import ports
from gemmactl.cloud.gcp._clients import Clock
from gemmactl.cloud.gcp._errors import is_etag_race, is_sa_propagating, translate

_CONDITIONAL = "conditionalBindings"
_ETAG_ATTEMPTS = 5
SA_PROPAGATION_S = 90.0  # a new service account can be unknown to other services for ~60 s


def from_api(data: dict[str, Any]) -> ports.Policy:
    """ports.Policy from the JSON form (`bindings`, `etag`, `version`, …)."""
    plain, conditional = [], []
    for b in data.get("bindings", []) or []:
        if b.get("condition"):
            conditional.append(dict(b, members=sorted(b.get("members", []))))
        else:
            plain.append(ports.Binding(b["role"], frozenset(b.get("members", []))))
    extra = {k: v for k, v in data.items() if k not in ("bindings", "etag", "version")}
    if conditional:
        extra[_CONDITIONAL] = conditional
    return ports.Policy(
        bindings=tuple(plain), etag=data.get("etag") or None, version=int(data.get("version") or 1), extra=extra
    )


def to_api(policy: ports.Policy) -> dict[str, Any]:
    """The JSON form Google expects back, etag included, unknown fields untouched."""
    extra = dict(policy.extra)
    conditional = extra.pop(_CONDITIONAL, [])
    bindings = [{"role": b.role, "members": sorted(b.members)} for b in policy.bindings if b.members]
    # Version 3 is required as soon as any binding has a condition and harmless without one.
    data: dict[str, Any] = {**extra, "version": 3}
    data["bindings"] = bindings + list(conditional)
    if policy.etag:
        data["etag"] = policy.etag
    return data


def from_pb(pb: Any) -> ports.Policy:
    """ports.Policy from a google.iam.v1 Policy message (Secret Manager, Resource Manager)."""
    from google.protobuf import json_format

    return from_api(json_format.MessageToDict(pb))


def to_pb(policy: ports.Policy) -> Any:
    from google.iam.v1 import policy_pb2
    from google.protobuf import json_format

    return json_format.ParseDict(to_api(policy), policy_pb2.Policy(), ignore_unknown_fields=True)


def merged(fresh: ports.Policy, wanted: ports.Policy) -> ports.Policy:
    """`fresh` plus every member `wanted` grants: gemmactl only ever adds bindings."""
    for b in wanted.bindings:
        for member in sorted(b.members):
            fresh = fresh.with_member(b.role, member)
    return fresh


def set_with_retry(
    what: str,
    policy: ports.Policy,
    *,
    read: Callable[[], ports.Policy],
    write: Callable[[ports.Policy], ports.Policy],
    clock: Clock,
) -> ports.Policy:
    """Write `policy`; on an etag race re-read and re-apply our additions; wait out SA propagation."""
    deadline = clock.monotonic() + SA_PROPAGATION_S
    attempt, delay = 0, 2.0
    while True:
        try:
            return write(policy)
        except errors.GemmactlError:
            raise
        except Exception as exc:
            if is_etag_race(exc) and attempt < _ETAG_ATTEMPTS:
                attempt += 1
                policy = merged(read(), policy)
                continue
            if is_sa_propagating(exc) and clock.monotonic() < deadline:
                clock.sleep(delay)
                delay = min(delay * 2, 15.0)
                continue
            raise translate(exc, what) from exc
