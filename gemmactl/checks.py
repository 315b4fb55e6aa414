"""`gemmactl doctor` without the CLI: each check reads through the ports and returns ok / warn / fail rows.

A check never raises: our errors become a failed row whose fix is the error's hint (or the
command that repairs it). Cloud-only rows are skipped on the local backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from gemmactl import setup
from gemmactl.cloud import Cloud
from gemmactl.cloud.ports import SecretText
from gemmactl.errors import GemmactlError, NotFoundError, TransientError
from gemmactl.gpus import AS_OF, GPUS, image_cuda_problem, region_offers
from gemmactl.settings import Settings

OK, WARN, FAIL = "ok", "warn", "fail"
INIT = "gemmactl init"
TOKEN_FIX = "gemmactl init --hf-token-file FILE"


@dataclass(frozen=True)
class Check:
    check: str
    status: str
    detail: str
    fix: str | None = None

    def row(self) -> dict[str, str | None]:
        return asdict(self)


@dataclass
class Context:
    """What the checks share: settings, the cloud (None when it could not be reached) and the token."""

    settings: Settings
    cloud: Cloud | None
    token: SecretText | None = None
    token_source: str = ""
    token_ok: bool = False


CheckFn = Callable[[Context], Check]


def run_checks(ctx: Context) -> list[Check]:
    """All rows, in the order a newcomer would fix them."""
    local = ctx.cloud is not None and ctx.cloud.backend == "local"
    chosen = LOCAL_CHECKS if local else CLOUD_CHECKS
    if ctx.cloud is None:
        chosen = [_gpu]
    rows = [_guarded(check, ctx) for check in [*chosen, _hf_token, _model_access]]
    if local:
        rows = [replace(r, fix=r.fix.replace("gemmactl init", "gemmactl --local init")) if r.fix else r
                for r in rows]
    return rows


def _guarded(check: CheckFn, ctx: Context) -> Check:
    try:
        return check(ctx)
    except GemmactlError as e:
        name = check.__doc__ or check.__name__
        return Check(name.rstrip("."), FAIL, e.message, e.hint)


def _cloud(ctx: Context) -> Cloud:
    assert ctx.cloud is not None
    return ctx.cloud


# ------------------------------------------------------------------------------------------ cloud


def _project(ctx: Context) -> Check:
    """credentials and project."""
    info = _cloud(ctx).services.get_project()
    return Check("credentials and project", OK, f"{info.project_id} (number {info.number})")


def _apis(ctx: Context) -> Check:
    """APIs enabled."""
    enabled = _cloud(ctx).services.enabled(list(setup.REQUIRED_APIS))
    off = [api for api in setup.REQUIRED_APIS if not enabled.get(api)]
    if not off:
        return Check("APIs enabled", OK, f"all {len(setup.REQUIRED_APIS)}")
    fix = f"gcloud services enable {' '.join(off)} --project {ctx.settings.project}  (or {INIT})"
    return Check("APIs enabled", FAIL, f"disabled: {', '.join(a.split('.')[0] for a in off)}", fix)


def _service_account(ctx: Context) -> Check:
    """service account."""
    email = ctx.settings.service_account_email
    try:
        _cloud(ctx).iam.get_service_account(email)
    except NotFoundError:
        return Check("service account", FAIL, f"{email} does not exist", INIT)
    return Check("service account", OK, email)


def _bindings(ctx: Context) -> Check:
    """service account roles."""
    s, cloud = ctx.settings, _cloud(ctx)
    member = f"serviceAccount:{s.service_account_email}"
    missing = []
    for target, role, where in setup.bindings(s):
        read, _ = setup.policy_ports(cloud, s, target)
        try:
            granted = read().has(role, member)
        except NotFoundError:
            granted = False
        if not granted:
            missing.append(f"{role} on {where}")
    if missing:
        return Check("service account roles", FAIL, "missing " + "; ".join(missing), INIT)
    return Check("service account roles", OK, "objectAdmin on the bucket, secretAccessor, logWriter")


def _bucket(ctx: Context) -> Check:
    """bucket."""
    s = ctx.settings
    try:
        info = _cloud(ctx).storage.get_bucket(s.bucket_name)
    except NotFoundError:
        return Check("bucket", FAIL, f"{s.bucket_name} does not exist", INIT)
    if _cloud(ctx).backend != "local":
        setup.check_region(s, info)
        return Check("bucket", OK, f"gs://{s.bucket_name} in {info.location}")
    return Check("bucket", OK, _cloud(ctx).storage.local_path(s.bucket_name) or s.bucket_name)


def _gpu(ctx: Context) -> Check:
    """GPU in region."""
    s = ctx.settings
    gpu = GPUS[s.gpu_type]
    problem = image_cuda_problem(s.gpu_type)
    if problem:
        return Check("GPU in region", WARN, problem, "gemmactl train --gpu-type nvidia-rtx-pro-6000, or --image IMG")
    if region_offers(s.gpu_type, s.region):
        return Check("GPU in region", OK, f"{gpu.label} in {s.region}")
    regions = ", ".join(sorted(gpu.regions))
    return Check("GPU in region", WARN, f"{s.gpu_type} not known in {s.region} (table as of {AS_OF}: {regions})",
                 f"gemmactl --region {sorted(gpu.regions)[0]} ...  (or check the Cloud Run GPU docs)")


def _secret(ctx: Context) -> Check:
    """secret."""
    s = ctx.settings
    try:
        info = _cloud(ctx).secrets.get_secret(s.secret)
    except NotFoundError:
        return Check("secret", FAIL, f"{s.secret} does not exist", TOKEN_FIX)
    if not info.version_count:
        # Locally, builtin: models need no token, so an empty secret is only a warning there.
        status = WARN if _cloud(ctx).backend == "local" else FAIL
        return Check("secret", status, f"{s.secret} has no version", TOKEN_FIX)
    if ctx.token is None:
        ctx.token, ctx.token_source = _cloud(ctx).secrets.latest_value(s.secret), f"secret {s.secret}"
    return Check("secret", OK, f"{s.secret}, {info.version_count} version(s)")


CLOUD_CHECKS: list[CheckFn] = [_project, _apis, _service_account, _bindings, _bucket, _gpu, _secret]
LOCAL_CHECKS: list[CheckFn] = [_bucket, _secret]


# ------------------------------------------------------------------------------------------ hub


def _hf_token(ctx: Context) -> Check:
    """Hugging Face token."""
    from gemmactl import tokens

    if ctx.token is None:
        needed = not ctx.settings.model.startswith("builtin:")
        return Check("Hugging Face token", FAIL if needed else WARN,
                     "no token (secret, --hf-token-file or HF_TOKEN)", TOKEN_FIX)
    try:
        user = tokens.whoami(ctx.token)
    except TransientError as e:
        return Check("Hugging Face token", WARN, f"not checked: {e.message}", e.hint)
    ctx.token_ok = True
    return Check("Hugging Face token", OK, f"valid, user {user} (from {ctx.token_source})")


def _model_access(ctx: Context) -> Check:
    """model access."""
    from gemmactl import tokens

    model = ctx.settings.model
    if model.startswith("builtin:"):
        return Check("model access", OK, f"{model} is built in; no Hub access needed")
    if not ctx.token_ok:
        return Check("model access", WARN, f"{model}: not checked without a valid token", TOKEN_FIX)
    try:
        tokens.check_model_access(model, ctx.token)
    except TransientError as e:
        return Check("model access", WARN, f"not checked: {e.message}", e.hint)
    return Check("model access", OK, f"{model} can be downloaded")
