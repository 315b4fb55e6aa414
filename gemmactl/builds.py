"""Image builds: the pure Cloud Build spec for the trainer image, and following a build to its end.

`plan_build` is pure (settings + content tag → BuildPlan). `follow_build` polls `builds.get` and
`builds.read_log(offset)` through a pacer (at most one request per second, sleep and clock
injectable), hands each new log line and the current phase/step to a display, and raises
BuildFailedError with Cloud Build's own failure detail and the last log lines when the build fails.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gemmactl.cloud.ports import BuildInfo, Builds, BuildSpec, BuildStep
from gemmactl.errors import BuildFailedError
from gemmactl.settings import Settings

SOURCE_PREFIX = "cloudbuild/source"
LOGS_PREFIX = "cloudbuild/logs"
DOCKER_BUILDER = "gcr.io/cloud-builders/docker"
# torch + the CUDA 13 wheels are ~10 GB of layers: a fast machine and a roomy disk, an hour at most.
MACHINE_TYPE = "E2_HIGHCPU_8"
DISK_SIZE_GB = 200
DEFAULT_TIMEOUT_S = 3600
TAIL_LINES = 15
# The pacer's time source (module attributes so CLI tests can make waiting instant).
SLEEP: Callable[[float], None] = time.sleep
CLOCK: Callable[[], float] = time.monotonic


@dataclass(frozen=True)
class BuildPlan:
    """What `gemmactl build` will do: where the source goes and what gets pushed."""

    tag: str
    image: str  # <region>-docker.pkg.dev/<project>/<repo>/<image>:<tag>
    latest: str  # the same repository, :latest
    bucket: str
    source_object: str  # cloudbuild/source/<tag>.tgz
    spec: BuildSpec

    @property
    def source_uri(self) -> str:
        return f"gs://{self.bucket}/{self.source_object}"


def docker_build_args(image: str, latest: str, *, no_cache: bool, context: str = ".") -> tuple[str, ...]:
    """`docker build` arguments shared by Cloud Build and --local-docker."""
    cache = ("--no-cache", "--pull") if no_cache else (
        # BuildKit reads layer cache from the last pushed image when it carries inline cache
        # metadata; a missing :latest (first build) is a warning, not an error.
        "--cache-from", latest, "--build-arg", "BUILDKIT_INLINE_CACHE=1",
    )
    labels = ("--label", f"org.opencontainers.image.version={image.rsplit(':', 1)[1]}")
    return ("build", "--tag", image, "--tag", latest, *cache, *labels, "--file", "Dockerfile", context)


def plan_build(settings: Settings, tag: str, *, no_cache: bool = False,
               timeout_s: int = DEFAULT_TIMEOUT_S) -> BuildPlan:
    """The Cloud Build for the image `tag` (pure: no I/O). No secrets, no substitutions."""
    repo = settings.image_repo
    image, latest = f"{repo}:{tag}", f"{repo}:latest"
    bucket = settings.bucket_name
    source_object = f"{SOURCE_PREFIX}/{tag}.tgz"
    step = BuildStep(
        name=DOCKER_BUILDER,
        args=docker_build_args(image, latest, no_cache=no_cache),
        env=("DOCKER_BUILDKIT=1",),
    )
    spec = BuildSpec(
        region=settings.region,
        steps=(step,),
        images=(image, latest),  # Cloud Build pushes these after the step succeeds
        source_bucket=bucket,
        source_object=source_object,
        logs_bucket=f"gs://{bucket}/{LOGS_PREFIX}",
        timeout_s=timeout_s,
        machine_type=MACHINE_TYPE,
        disk_size_gb=DISK_SIZE_GB,
        tags=("gemmactl", f"src-{tag}"),
    )
    return BuildPlan(tag, image, latest, bucket, source_object, spec)


# ------------------------------------------------------------------------------- following


class BuildDisplay(Protocol):
    """Where a followed build reports: log lines as they arrive, and the current phase/step."""

    def line(self, text: str) -> None: ...

    def phase(self, status: str, phase: str | None, step: str | None) -> None: ...


class Pacer:
    """Spaces requests at least `interval` seconds apart (Cloud Build/GCS reads: ≤ 1 request/s)."""

    def __init__(self, interval: float = 1.0, *, sleep: Callable[[float], None] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        # Defaults are looked up at construction so tests can swap the module's SLEEP/CLOCK.
        self.interval, self.sleep, self.clock = interval, sleep or SLEEP, clock or CLOCK
        self._last: float | None = None

    def wait(self) -> None:
        if self._last is not None:
            delay = self._last + self.interval - self.clock()
            if delay > 0:
                self.sleep(delay)
        self._last = self.clock()


# Cloud Build prints these phase markers on lines of their own; the docker step's lines are
# prefixed "Step #0:" and carry BuildKit's "#8 [build 3/9] RUN ..." or classic "Step 3/9 : RUN ...".
_PHASES = ("FETCHSOURCE", "BUILD", "PUSH", "DONE")
_STEP_RE = re.compile(r"\[(?:[\w-]+ )?(\d+/\d+)\]|\bStep (\d+/\d+) :")


class LogParser:
    """Splits raw log bytes into lines and tracks the Cloud Build phase and the Dockerfile step."""

    def __init__(self, tail: int = TAIL_LINES) -> None:
        self._partial = b""
        self.tail: deque[str] = deque(maxlen=tail)
        self.phase: str | None = None
        self.step: str | None = None

    def feed(self, data: bytes, *, final: bool = False) -> list[str]:
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        if final and self._partial:
            complete, self._partial = [*complete, self._partial], b""
        lines = [raw.decode("utf-8", "replace").rstrip("\r") for raw in complete]
        for text in lines:
            self._track(text)
        return lines

    def _track(self, text: str) -> None:
        self.tail.append(text)
        if text.strip() in _PHASES:
            self.phase = text.strip()
        m = _STEP_RE.search(text)
        if m:
            self.step = m.group(1) or m.group(2)


def follow_build(builds: Builds, region: str, build: BuildInfo, display: BuildDisplay, *,
                 pacer: Pacer | None = None, tail: int = TAIL_LINES) -> BuildInfo:
    """Stream a build's log until it ends; return it on SUCCESS, else raise BuildFailedError."""
    pacer = pacer or Pacer()
    parser = LogParser(tail)
    offset, info = 0, build
    while True:
        pacer.wait()
        info = builds.get(region, build.id)
        pacer.wait()
        # Read after get: once a build is terminal, this read returns the whole rest of its log.
        offset += _show(builds.read_log(info, offset=offset), parser, display, final=info.done)
        display.phase(info.status, parser.phase, parser.step)
        if info.done:
            break
    if info.status != "SUCCESS":
        raise build_failed(info, list(parser.tail))
    return info


def _show(chunk: bytes, parser: LogParser, display: BuildDisplay, *, final: bool) -> int:
    for text in parser.feed(chunk, final=final):
        display.line(text)
    return len(chunk)


def build_failed(info: BuildInfo, tail: list[str]) -> BuildFailedError:
    """One line with the build's own failure detail; the last log lines ride along as `log_tail`."""
    detail = info.failure_detail or {"TIMEOUT": "the build ran past its timeout",
                                     "CANCELLED": "the build was cancelled"}.get(info.status, "")
    message = f"Cloud Build {info.id} ended {info.status}" + (f": {detail}" if detail else "")
    hint = f"full log: {info.log_url}" if info.log_url else "see the build in the Cloud Build console"
    return _with_tail(BuildFailedError(message, hint=hint), tail)


def _with_tail(error: BuildFailedError, tail: list[str]) -> BuildFailedError:
    # Kept off the message (one line + hint is the house style); the CLI prints them when the live
    # log was not already on screen, and other callers (staging via Cloud Build) render them too.
    error.log_tail = list(tail)  # type: ignore[attr-defined]
    return error


# ------------------------------------------------------------------------------- --local-docker


def _docker(docker: str, args: list[str], display: BuildDisplay, parser: LogParser, *,
            stdin: bytes | None = None) -> int:
    """Run one docker command, streaming its merged output lines to the display."""
    import subprocess

    with subprocess.Popen([docker, *args], stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        if stdin is not None:
            _feed_stdin(proc, stdin)
        assert proc.stdout is not None
        for raw in proc.stdout:
            for text in parser.feed(raw):
                display.line(text)
                display.phase("WORKING", parser.phase, parser.step)
        return proc.wait()


def _feed_stdin(proc, data: bytes) -> None:
    """Write the context from a thread, so docker's output never blocks on a full pipe meanwhile."""
    import threading

    def feed() -> None:
        try:
            proc.stdin.write(data)
        except BrokenPipeError:  # docker exited early; its output says why
            pass
        finally:
            proc.stdin.close()

    threading.Thread(target=feed, daemon=True).start()


def find_docker() -> str:
    """The docker CLI on PATH, with a daemon that answers; BuildFailedError saying which is missing."""
    import shutil
    import subprocess

    docker = shutil.which("docker")
    if docker is None:
        raise BuildFailedError("the docker CLI is not installed (or not on PATH)",
                               hint="install Docker, or drop --local-docker to build with Cloud Build")
    probe = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["no answer"])[-1]
        raise BuildFailedError(f"the Docker daemon is not reachable: {reason}",
                               hint="start Docker (or drop --local-docker to build with Cloud Build)")
    return docker


def docker_build_and_push(plan: BuildPlan, context: bytes, display: BuildDisplay, *, no_cache: bool,
                          tail: int = TAIL_LINES) -> None:
    """`docker build -` with the packed context on stdin (the very bytes Cloud Build would get),
    then push both tags. Raises BuildFailedError with docker's last lines."""
    docker = find_docker()
    parser = LogParser(tail)
    build_args = list(docker_build_args(plan.image, plan.latest, no_cache=no_cache, context="-"))
    parser.phase = "BUILD"
    if _docker(docker, build_args, display, parser, stdin=context) != 0:
        raise _local_failed("docker build", parser, hint="fix the Dockerfile step above and rerun")
    parser.phase = "PUSH"
    for ref in (plan.image, plan.latest):
        if _docker(docker, ["push", ref], display, parser) != 0:
            registry = plan.image.split("/", 1)[0]
            raise _local_failed(f"docker push {ref}", parser,
                                hint=f"run `gcloud auth configure-docker {registry}` and retry")
    parser.phase = "DONE"
    display.phase("SUCCESS", parser.phase, parser.step)


def _local_failed(what: str, parser: LogParser, *, hint: str) -> BuildFailedError:
    last = next((line for line in reversed(parser.tail) if line.strip()), "")
    return _with_tail(BuildFailedError(f"{what} failed" + (f": {last.strip()}" if last else ""), hint=hint),
                      list(parser.tail))
