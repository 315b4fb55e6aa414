"""The behaviour behind tests/fakes/gcp_rest.py: per-service state and handlers, answering in Google's JSON
shapes (LROs as gcp-api.md §5.4 shows them, errors as `{"error": {code, message, status, details}}`)."""

from __future__ import annotations

import base64
import copy
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

_T = "type.googleapis.com/"
_SEG = r"[^/:]+"


class ApiError(Exception):
    """A Google JSON error; `reason` adds a google.rpc.ErrorInfo detail."""

    def __init__(self, code: int, status: str, message: str, *, reason: str | None = None,
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message
        self.reason, self.metadata = reason, metadata or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "status": self.status}
        if self.reason:
            error["details"] = [{"@type": f"{_T}google.rpc.ErrorInfo", "reason": self.reason,
                                 "domain": "googleapis.com", "metadata": self.metadata}]
        return {"error": error}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def not_found(what: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", f"Resource '{what}' was not found")


def exists(what: str) -> ApiError:
    return ApiError(409, "ALREADY_EXISTS", f"Resource '{what}' already exists.")


@dataclass
class GoogleState:
    project: str
    number: str
    jobs: dict[str, dict] = field(default_factory=dict)
    executions: dict[str, dict] = field(default_factory=dict)
    operations: dict[str, dict] = field(default_factory=dict)
    secrets: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, list[dict]] = field(default_factory=dict)
    policies: dict[str, dict] = field(default_factory=dict)
    service_accounts: dict[str, dict] = field(default_factory=dict)
    repositories: dict[str, dict] = field(default_factory=dict)
    tags: set[str] = field(default_factory=set)
    services: dict[str, bool] = field(default_factory=dict)
    builds: dict[str, dict] = field(default_factory=dict)
    log_entries: list[dict] = field(default_factory=list)
    log_next_page_token: str | None = None
    # Set to a Condition dict to make the next deploys end with a failed terminal condition.
    job_terminal_condition: dict | None = None
    counter: itertools.count = field(default_factory=lambda: itertools.count(1))

    def lro(self, parent: str, *, response: dict | None = None, metadata: dict | None = None,
            done: bool = True) -> dict:
        name = f"{parent}/operations/op-{next(self.counter)}"
        op: dict[str, Any] = {"name": name, "done": done}
        if metadata is not None:
            op["metadata"] = metadata
        if done and response is not None:
            op["response"] = response
        self.operations[name] = op
        return op

    def etag(self) -> str:
        return base64.b64encode(f"etag-{next(self.counter)}".encode()).decode()


Handler = Callable[[re.Match[str], dict[str, Any], Any], Any]


# ------------------------------------------------------------------------------------ Cloud Run v2

def _run_put_job(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    name = f"projects/{m['p']}/locations/{m['r']}/jobs/{m['j']}"
    old = s.jobs.get(name)
    if old is None and q.get("allowMissing") != "true":
        raise not_found(name)
    job = {**copy.deepcopy(body), "name": name, "generation": str(int(old["generation"]) + 1) if old else "1",
           "createTime": old["createTime"] if old else now(), "launchStage": "BETA"}
    cond = s.job_terminal_condition or {"type": "Ready", "state": "CONDITION_SUCCEEDED"}
    job["terminalCondition"] = cond
    s.jobs[name] = job
    typed = {"@type": f"{_T}google.cloud.run.v2.Job", **job}
    return s.lro(f"projects/{m['p']}/locations/{m['r']}", response=typed, metadata=typed)


def _run_get_job(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    name = f"projects/{m['p']}/locations/{m['r']}/jobs/{m['j']}"
    if name not in s.jobs:
        raise not_found(name)
    return s.jobs[name]


def _run_job(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    job_name = f"projects/{m['p']}/locations/{m['r']}/jobs/{m['j']}"
    job = s.jobs.get(job_name)
    if job is None:
        raise not_found(job_name)
    short = f"{m['j']}-{next(s.counter):05d}"
    template = copy.deepcopy(job["template"]["template"])
    for override in ((body or {}).get("overrides") or {}).get("containerOverrides", []):
        for c in template["containers"]:
            if c.get("name") == override.get("name"):
                c["args"] = override.get("args", c.get("args", []))
                env = {e["name"]: e for e in c.get("env", [])} | {e["name"]: e for e in override.get("env", [])}
                c["env"] = list(env.values())
    execution = {
        "name": f"{job_name}/executions/{short}", "job": m["j"], "createTime": now(), "taskCount": 1,
        "template": template, "labels": job.get("labels", {}),
        "conditions": [{"type": "Completed", "state": "CONDITION_PENDING"}],
        "logUri": f"https://console.cloud.google.com/run/jobs/executions/details/{m['r']}/{short}",
    }
    s.executions[execution["name"]] = execution
    job["latestCreatedExecution"] = {"name": execution["name"]}
    return s.lro(f"projects/{m['p']}/locations/{m['r']}", done=False,
                 metadata={"@type": f"{_T}google.cloud.run.v2.Execution", **execution})


def _execution(s: GoogleState, m: re.Match[str]) -> dict:
    name = f"projects/{m['p']}/locations/{m['r']}/jobs/{m['j']}/executions/{m['e']}"
    if name not in s.executions:
        raise not_found(name)
    return s.executions[name]


def _run_get_execution(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    return _execution(s, m)


def _run_list_executions(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    prefix = f"projects/{m['p']}/locations/{m['r']}/jobs/{m['j']}/executions/"
    found = [e for n, e in s.executions.items() if n.startswith(prefix)]
    found.sort(key=lambda e: e["createTime"], reverse=True)
    return {"executions": found[: int(q.get("pageSize", 100))]}


def _run_cancel(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    execution = _execution(s, m)
    execution.update(cancelledCount=1, runningCount=0, completionTime=now(), conditions=[
        {"type": "Completed", "state": "CONDITION_FAILED", "executionReason": "CANCELLED",
         "message": "The execution was cancelled."}])
    typed = {"@type": f"{_T}google.cloud.run.v2.Execution", **execution}
    return s.lro(f"projects/{m['p']}/locations/{m['r']}", metadata=typed, response=typed)


def _get_operation(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    name = m.group(0).split("/", 2)[2]
    if name not in s.operations:
        raise not_found(name)
    return s.operations[name]


# ------------------------------------------------------------------------------------ Secret Manager

def _sm_create(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    name = f"projects/{m['p']}/secrets/{q['secretId']}"
    if name in s.secrets:
        raise exists(name)
    s.secrets[name] = {**(body or {}), "name": name, "createTime": now()}
    s.versions[name] = []
    return s.secrets[name]


def _secret(s: GoogleState, m: re.Match[str]) -> str:
    name = f"projects/{m['p']}/secrets/{m['s']}"
    if name not in s.secrets:
        raise not_found(name)
    return name


def _sm_get(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    return s.secrets[_secret(s, m)]


def _sm_add_version(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    name = _secret(s, m)
    version = {"name": f"{name}/versions/{len(s.versions[name]) + 1}", "state": "ENABLED",
               "createTime": now(), "payload": body["payload"]}
    s.versions[name].append(version)
    return {k: v for k, v in version.items() if k != "payload"}


def _sm_list_versions(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    versions = [{k: v for k, v in x.items() if k != "payload"} for x in s.versions[_secret(s, m)]]
    return {"versions": versions[::-1], "totalSize": len(versions)}


def _sm_access(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    name = f"projects/{m['p']}/secrets/{m['s']}"
    enabled = [v for v in s.versions.get(name, []) if v["state"] == "ENABLED"]
    if not enabled:
        raise ApiError(404, "NOT_FOUND", f"Secret [{name}] not found or has no versions.")
    return {"name": enabled[-1]["name"], "payload": enabled[-1]["payload"]}


# ------------------------------------------------------------------------------------ IAM policies

def _get_policy(s: GoogleState, resource: str) -> dict:
    return s.policies.setdefault(resource, {"version": 1, "etag": s.etag()})


def _set_policy(s: GoogleState, resource: str, body: Any) -> Any:
    policy = copy.deepcopy(body["policy"])
    current = _get_policy(s, resource)
    if policy.get("etag") and policy["etag"] != current["etag"]:
        raise ApiError(409, "ABORTED", "There were concurrent policy changes. Please retry the whole "
                                       "read-modify-write with exponential backoff.")
    policy["etag"] = s.etag()
    s.policies[resource] = policy
    return policy


def _policy_routes(s: GoogleState, prefix: str, resource: Callable[[re.Match[str]], str]) -> list:
    return [
        ("GET", prefix + ":getIamPolicy", lambda m, q, b: _get_policy(s, resource(m))),
        ("POST", prefix + ":getIamPolicy", lambda m, q, b: _get_policy(s, resource(m))),
        ("POST", prefix + ":setIamPolicy", lambda m, q, b: _set_policy(s, resource(m), b)),
    ]


# ------------------------------------------------------------------------------------ IAM + Resource Manager

def _iam_create_sa(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    email = f"{body['accountId']}@{m['p']}.iam.gserviceaccount.com"
    if email in s.service_accounts:
        raise ApiError(409, "ALREADY_EXISTS", f"Service account {body['accountId']} already exists within project "
                                              f"projects/{m['p']}.")
    sa = {"name": f"projects/{m['p']}/serviceAccounts/{email}", "projectId": m["p"], "email": email,
          "uniqueId": str(100000 + next(s.counter)), **body.get("serviceAccount", {})}
    s.service_accounts[email] = sa
    return sa


def _iam_get_sa(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    if m["e"] not in s.service_accounts:
        raise not_found(f"projects/{m['p']}/serviceAccounts/{m['e']}")
    return s.service_accounts[m["e"]]


def _crm_get_project(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    if m["p"] != s.project:
        raise ApiError(403, "PERMISSION_DENIED", f"Permission 'resourcemanager.projects.get' denied on "
                                                 f"resource '//cloudresourcemanager.googleapis.com/projects/{m['p']}'")
    return {"name": f"projects/{s.number}", "projectId": s.project, "state": "ACTIVE", "displayName": s.project}


# ------------------------------------------------------------------------------------ Service Usage

def _su_batch_get(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    names = q.get("names", [])
    names = [names] if isinstance(names, str) else names
    return {"services": [{"name": n, "parent": f"projects/{s.number}", "config": {"name": n.rsplit("/", 1)[-1]},
                          "state": "ENABLED" if s.services.get(n.rsplit("/", 1)[-1]) else "DISABLED"}
                         for n in names]}


def _su_batch_enable(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    enabled = []
    for sid in body["serviceIds"]:
        s.services[sid] = True
        enabled.append({"name": f"projects/{s.number}/services/{sid}", "state": "ENABLED"})
    return s.lro("operations", metadata={"@type": f"{_T}google.api.serviceusage.v1.OperationMetadata"},
                 response={"@type": f"{_T}google.api.serviceusage.v1.BatchEnableServicesResponse",
                           "services": enabled})


# ------------------------------------------------------------------------------------ Artifact Registry

def _ar_create(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    name = f"projects/{m['p']}/locations/{m['r']}/repositories/{q['repositoryId']}"
    if name in s.repositories:
        raise exists(name)
    s.repositories[name] = {**body, "name": name, "createTime": now()}
    return s.lro(f"projects/{m['p']}/locations/{m['r']}",
                 metadata={"@type": f"{_T}google.devtools.artifactregistry.v1.OperationMetadata"},
                 response={"@type": f"{_T}google.devtools.artifactregistry.v1.Repository", **s.repositories[name]})


def _ar_get(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    name = m.group(0).split("/", 2)[2]
    if name not in s.repositories and name not in s.tags:
        raise not_found(name)
    return s.repositories.get(name) or {"name": name}


# ------------------------------------------------------------------------------------ Logging + Cloud Build

def _log_list(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    out: dict[str, Any] = {"entries": s.log_entries[: body.get("pageSize", 1000)]}
    if s.log_next_page_token:
        out["nextPageToken"] = s.log_next_page_token
    return out


def _cb_region(m: re.Match[str], q: dict[str, Any]) -> str:
    """The region from the path, or from `parent`/`name` when the client chose the /v1/projects/P/builds form."""
    if m.groupdict().get("r"):
        return m["r"]
    found = re.search(r"/locations/([^/]+)", q.get("parent") or q.get("name") or "")
    return found.group(1) if found else "global"


def _cb_create(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    build_id = f"b{next(s.counter):04d}-0000-4000-8000-000000000000"
    region = _cb_region(m, q)
    name = f"projects/{m['p']}/locations/{region}/builds/{build_id}"
    build = {**copy.deepcopy(body), "id": build_id, "name": name, "projectId": m["p"], "status": "QUEUED",
             "createTime": now(), "logUrl": f"https://console.cloud.google.com/cloud-build/builds;region="
                                            f"{region}/{build_id}?project={s.number}"}
    s.builds[build_id] = build
    return s.lro(f"projects/{m['p']}/locations/{region}", done=False, metadata={
        "@type": f"{_T}google.devtools.cloudbuild.v1.BuildOperationMetadata", "build": build})


def _cb_get(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    if m["b"] not in s.builds:
        raise not_found(m.group(0))
    return s.builds[m["b"]]


def _cb_cancel(s: GoogleState, m: re.Match[str], q: dict[str, Any], body: Any) -> Any:
    build = _cb_get(s, m, q, body)
    build.update(status="CANCELLED", finishTime=now())
    return build


# ------------------------------------------------------------------------------------ routing

def routes(s: GoogleState) -> list[tuple[str, re.Pattern[str], Handler]]:
    """(method, full-path regex, handler) for every endpoint the adapters call."""
    loc = rf"projects/(?P<p>{_SEG})/locations/(?P<r>{_SEG})"
    job = rf"/v2/{loc}/jobs/(?P<j>{_SEG})"
    execution = rf"{job}/executions/(?P<e>{_SEG})"
    secret = rf"/v1/projects/(?P<p>{_SEG})/secrets/(?P<s>{_SEG})"
    h = lambda f: lambda m, q, b: f(s, m, q, b)  # noqa: E731 - bind the state once
    table = [
        ("PATCH", job, h(_run_put_job)), ("GET", job, h(_run_get_job)), ("POST", job + ":run", h(_run_job)),
        ("GET", execution, h(_run_get_execution)), ("GET", job + "/executions", h(_run_list_executions)),
        ("POST", execution + ":cancel", h(_run_cancel)),
        ("GET", rf"/v[123]/{loc}/operations/{_SEG}", h(_get_operation)),
        ("GET", rf"/v1/operations/{_SEG}", h(_get_operation)),
        ("POST", rf"/v1/projects/(?P<p>{_SEG})/secrets", h(_sm_create)), ("GET", secret, h(_sm_get)),
        ("POST", secret + ":addVersion", h(_sm_add_version)), ("GET", secret + "/versions", h(_sm_list_versions)),
        ("GET", secret + "/versions/latest:access", h(_sm_access)),
        ("POST", rf"/v1/projects/(?P<p>{_SEG})/serviceAccounts", h(_iam_create_sa)),
        ("GET", rf"/v1/projects/(?P<p>{_SEG})/serviceAccounts/(?P<e>{_SEG})", h(_iam_get_sa)),
        ("GET", rf"/v3/projects/(?P<p>{_SEG})", h(_crm_get_project)),
        ("GET", rf"/v1/projects/(?P<p>{_SEG})/services:batchGet", h(_su_batch_get)),
        ("POST", rf"/v1/projects/(?P<p>{_SEG})/services:batchEnable", h(_su_batch_enable)),
        ("POST", rf"/v1/{loc}/repositories", h(_ar_create)),
        ("GET", rf"/v1/{loc}/repositories/{_SEG}(/packages/.+/tags/{_SEG}|/dockerImages/.+)?", h(_ar_get)),
        ("POST", r"/v2/entries:list", h(_log_list)),
        ("POST", rf"/v1/{loc}/builds", h(_cb_create)), ("GET", rf"/v1/{loc}/builds/(?P<b>{_SEG})", h(_cb_get)),
        ("POST", rf"/v1/{loc}/builds/(?P<b>{_SEG}):cancel", h(_cb_cancel)),
        # The client library prefers Cloud Build's first HTTP binding, with parent/name as query parameters.
        ("POST", rf"/v1/projects/(?P<p>{_SEG})/builds", h(_cb_create)),
        ("GET", rf"/v1/projects/(?P<p>{_SEG})/builds/(?P<b>{_SEG})", h(_cb_get)),
        ("POST", rf"/v1/projects/(?P<p>{_SEG})/builds/(?P<b>{_SEG}):cancel", h(_cb_cancel)),
    ]
    table += _policy_routes(s, secret, lambda m: f"projects/{m['p']}/secrets/{m['s']}")
    table += _policy_routes(s, rf"/v3/projects/(?P<p>{_SEG})", lambda m: f"projects/{m['p']}")
    return [(method, re.compile(pattern), handler) for method, pattern, handler in table]
