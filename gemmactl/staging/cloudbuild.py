"""`--via cloud-build`: the same staging copy, run server-side by Cloud Build (no laptop bandwidth).

The build unpacks this gemmactl (its Python sources, uploaded to the bucket), installs it and runs
`gemmactl stage-model|stage-data ... --via local` there. The Hugging Face token reaches the step only
through `availableSecrets` → `secretEnv: HF_TOKEN`; it is never a substitution, an arg or in the spec.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import shlex
import tarfile
from collections.abc import Callable
from pathlib import Path

from gemmactl.cloud import Cloud
from gemmactl.cloud.ports import BuildInfo, BuildSpec, BuildStep
from gemmactl.settings import Settings
from gemmactl.staging.hub import MODEL, Snapshot

BUILDER_IMAGE = "python:3.12-slim"
SOURCE_PREFIX = "cloudbuild/staging-source/"
TIMEOUT_S = 6 * 3600  # a 62 GB model at a conservative 50 MB/s is ~21 min; leave room for slow hubs
WORKERS = 16
_PACKAGE = Path(__file__).resolve().parents[1]  # the gemmactl package directory


def pack_source() -> tuple[bytes, str]:
    """A deterministic tar.gz of the gemmactl package plus a minimal pyproject; (bytes, 12-hex digest)."""
    files = {f"gemmactl/{p.relative_to(_PACKAGE).as_posix()}": p.read_bytes()
             for p in sorted(_PACKAGE.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}
    files["pyproject.toml"] = _pyproject().encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    import gzip

    packed = gzip.compress(raw.getvalue(), mtime=0)
    return packed, hashlib.sha256(packed).hexdigest()[:12]


def _pyproject() -> str:
    # The installed distribution's base requirements (extras excluded: no torch on the build worker).
    requires = [r for r in (importlib.metadata.requires("gemmactl") or []) if "extra ==" not in r]
    deps = ",\n".join(f'  "{r}"' for r in requires)
    return (
        '[build-system]\nrequires = ["setuptools>=75"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "gemmactl"\nversion = "{importlib.metadata.version("gemmactl")}"\n'
        f'requires-python = ">=3.11"\ndependencies = [\n{deps}\n]\n\n'
        '[project.scripts]\ngemmactl = "gemmactl.cli.app:main"\n\n'
        '[tool.setuptools.packages.find]\ninclude = ["gemmactl*"]\n'
    )


def build_spec(settings: Settings, snapshot: Snapshot, source_object: str, *, with_token: bool) -> BuildSpec:
    """Pure: the Cloud Build that stages `snapshot` (pinned to its commit) into the bucket."""
    command = "stage-model" if snapshot.kind == MODEL else "stage-data"
    stage = ["gemmactl", command, snapshot.repo, "--revision", snapshot.revision, "--via", "local",
             "--workers", str(WORKERS)]
    script = "pip install --quiet --no-cache-dir --root-user-action=ignore . && " + shlex.join(stage)
    env = (f"GEMMACTL_PROJECT={settings.require_project()}", f"GEMMACTL_REGION={settings.region}",
           f"GEMMACTL_BUCKET={settings.bucket_name}", f"GEMMACTL_SECRET={settings.secret}")
    step = BuildStep(name=BUILDER_IMAGE, entrypoint="bash", args=("-c", script), env=env,
                     secret_env=("HF_TOKEN",) if with_token else ())
    secret = f"projects/{settings.require_project()}/secrets/{settings.secret}/versions/latest"
    return BuildSpec(
        region=settings.region, steps=(step,), source_bucket=settings.bucket_name, source_object=source_object,
        logs_bucket=f"gs://{settings.bucket_name}/cloudbuild/logs", timeout_s=TIMEOUT_S, machine_type="E2_HIGHCPU_8",
        available_secrets={"HF_TOKEN": secret} if with_token else {},
        service_account=settings.service_account_email, tags=("gemmactl", "stage"),
    )  # fmt: skip


def upload_source(cloud: Cloud, bucket: str) -> str:
    data, digest = pack_source()
    name = f"{SOURCE_PREFIX}{digest}.tgz"
    if cloud.storage.stat(bucket, name) is None:
        cloud.storage.write_bytes(bucket, name, data, content_type="application/gzip")
    return name


def secret_has_value(cloud: Cloud, secret: str) -> bool:
    """Whether the configured secret exists with a version (public repos can stage without one)."""
    from gemmactl.errors import NotFoundError, PermissionDeniedError

    try:
        return cloud.secrets.get_secret(secret).version_count > 0
    except (NotFoundError, PermissionDeniedError):
        return False


class _Lines:
    """builds.BuildDisplay that passes log lines on and ignores phases (staging has one step)."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.line = emit

    def phase(self, status: str, phase: str | None, step: str | None) -> None:
        pass


def run_build(cloud: Cloud, spec: BuildSpec, emit: Callable[[str], None]) -> BuildInfo:
    """Submit, stream the log through `emit` until the build ends, fail with the build's own error."""
    from gemmactl.builds import follow_build

    info = cloud.builds.submit(spec)
    emit(f"Cloud Build {info.id} started" + (f": {info.log_url}" if info.log_url else ""))
    return follow_build(cloud.builds, spec.region, info, _Lines(emit))
