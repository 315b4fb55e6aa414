"""`gemmactl build` as a user meets it: Cloud Build on the fake cloud, --local-docker, the local backend."""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from gemmactl import builds, source
from gemmactl.cloud.ports import BuildInfo, SecretText
from gemmactl.errors import BuildFailedError
from tests.cloud.gcp.conftest import gcs_emulator, google  # noqa: F401 - fixtures: REST fake + GCS emulator
from tests.fakes.fake_jobs import BuildOutcome

PROJECT, REGION = "test-project", "europe-west4"
BUCKET = f"{PROJECT}-gemma-finetuning-{REGION}"
REPO = f"{REGION}-docker.pkg.dev/{PROJECT}/gemma-finetuning/gemma-finetune"
TOKEN = "hf_fake-build-token-not-real-42"


class FakeTime:
    """An instant clock for the build follower: sleeping only moves time forward."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def instant_time(monkeypatch) -> FakeTime:
    t = FakeTime()
    monkeypatch.setattr(builds, "SLEEP", t.sleep)
    monkeypatch.setattr(builds, "CLOCK", t.clock)
    return t


@pytest.fixture
def src(tmp_path) -> Path:
    """A small checkout: Dockerfile, pyproject, the trainer, and things .dockerignore keeps out."""
    root = tmp_path / "checkout"
    for rel, text in {
        "Dockerfile": 'FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04\nENTRYPOINT ["python", "-m", "trainer"]\n',
        ".dockerignore": "*\n!pyproject.toml\n!trainer\n**/__pycache__\n",
        "pyproject.toml": "[project]\nname = 'gemmactl'\n",
        "trainer/__main__.py": "print('train')\n",
        "gemmactl/cli.py": "# not in the image\n",
        ".venv/lib/big.py": "# never packed\n",
    }.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def cloud(fake_cloud):
    """A project after `gemmactl init`: the bucket exists, the HF token is in Secret Manager."""
    fake_cloud.storage.create_bucket(BUCKET, location=REGION.upper(), labels={})
    fake_cloud.secrets.create_secret("HF_TOKEN", labels={})
    fake_cloud.secrets.add_version("HF_TOKEN", SecretText(TOKEN))
    fake_cloud.mutations.clear()
    return fake_cloud


def image_for(src: Path) -> str:
    return f"{REPO}:{source.content_hash(src)}"


# ------------------------------------------------------------------------------- Cloud Build


def test_build_uploads_the_source_submits_streams_and_pushes(cli, cloud, src):
    res = cli("build", "--source", src)

    tag = source.content_hash(src)
    assert res.stdout.strip().endswith(f"{REPO}:{tag}")
    # The packed context sits in the staging prefix, byte for byte what was hashed.
    uploaded = cloud.storage.read_bytes(BUCKET, f"cloudbuild/source/{tag}.tgz")
    assert uploaded == source.pack(src).data
    [spec] = cloud.builds.submitted
    assert spec.images == (f"{REPO}:{tag}", f"{REPO}:latest")
    assert (spec.source_bucket, spec.source_object) == (BUCKET, f"cloudbuild/source/{tag}.tgz")
    assert spec.logs_bucket == f"gs://{BUCKET}/cloudbuild/logs"
    assert spec.region == REGION and spec.timeout_s == 3600
    [step] = spec.steps
    assert step.name == "gcr.io/cloud-builders/docker"
    assert step.args[:5] == ("build", "--tag", f"{REPO}:{tag}", "--tag", f"{REPO}:latest")
    assert step.args[-3:] == ("--file", "Dockerfile", ".")
    assert "--cache-from" in step.args
    # The log streamed through, and the pushed image now exists.
    assert "Successfully built" in res.stderr
    assert f"{REPO}:{tag}" in cloud.images
    assert cloud.mutations == ["storage.write_bytes", "builds.submit"]


def test_a_second_build_of_the_same_source_changes_nothing(cli, cloud, src):
    cli("build", "--source", src)
    before = list(cloud.mutations)

    res = cli("build", "--source", src, "--json")

    assert cloud.mutations == before
    assert len(cloud.builds.submitted) == 1
    data = json.loads(res.stdout)
    assert data["status"] == "exists" and data["image"] == image_for(src)


def test_editing_the_trainer_builds_a_new_tag_but_editing_the_cli_does_not(cli, cloud, src):
    cli("build", "--source", src)
    (src / "gemmactl" / "cli.py").write_text("# edited\n")
    cli("build", "--source", src)
    assert len(cloud.builds.submitted) == 1

    (src / "trainer" / "__main__.py").write_text("print('train v2')\n")
    cli("build", "--source", src)
    assert len(cloud.builds.submitted) == 2
    assert cloud.builds.submitted[1].images[0] == image_for(src)


def test_a_failed_build_exits_1_with_the_builds_own_error(cli, cloud, src):
    cloud.builds.script(BuildOutcome(
        status="FAILURE",
        failure_detail='Build step failure: build step 0 "gcr.io/cloud-builders/docker" failed: exit status 1',
        log=b"Step #0: #9 [build 4/7] RUN uv pip sync --require-hashes requirements/trainer.lock\n"
            b"Step #0: error: Hash mismatch for `torch==2.13.0`\n",
    ))

    res = cli("build", "--source", src, expect=1)

    assert "ended FAILURE" in res.stderr and "build step 0" in res.stderr
    assert "Hash mismatch for `torch==2.13.0`" in res.stderr
    assert "https://console.cloud.google.com/cloud-build/builds" in res.stderr  # the hint: full log
    assert "Traceback" not in res.output
    assert image_for(src) not in cloud.images


def test_a_failed_build_in_json_mode_still_shows_the_last_log_lines(cli, cloud, src):
    cloud.builds.script(BuildOutcome(status="FAILURE", failure_detail="step exited 1",
                                     log=b"Step #0: ERROR: failed to solve: [/opt/venv] missing\n"))
    res = cli("build", "--source", src, "--json", expect=1)
    assert res.stdout == ""
    assert "failed to solve: [/opt/venv] missing" in res.stderr


def test_dry_run_changes_nothing_and_says_what_it_would_build(cli, cloud, src):
    res = cli("build", "--source", src, "--dry-run", "--json")

    assert cloud.mutations == [] and cloud.builds.submitted == []
    data = json.loads(res.stdout)
    assert data["status"] == "would-build" and data["dry_run"] is True
    assert data["image"] == image_for(src) and data["via"] == "cloud-build"
    assert data["source"] == f"gs://{BUCKET}/cloudbuild/source/{source.content_hash(src)}.tgz"


def test_no_cache_rebuilds_an_existing_image_from_scratch(cli, cloud, src):
    cli("build", "--source", src)
    cli("build", "--source", src, "--no-cache")

    assert len(cloud.builds.submitted) == 2
    args = cloud.builds.submitted[1].steps[0].args
    assert "--no-cache" in args and "--pull" in args and "--cache-from" not in args
    # The source was already in the bucket: not uploaded twice.
    assert cloud.mutations.count("storage.write_bytes") == 1


def test_the_token_never_reaches_the_build(cli, cloud, src, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    res = cli("build", "--source", src)

    [spec] = cloud.builds.submitted
    assert TOKEN not in json.dumps(asdict(spec), default=str)
    assert spec.available_secrets == {} and all(not s.secret_env for s in spec.steps)
    assert not any("TOKEN" in e for s in spec.steps for e in s.env)
    assert TOKEN not in res.output
    assert cloud.secret_value_leaks(TOKEN) == []


def test_a_missing_bucket_points_at_init(cli, fake_cloud, src):
    res = cli("build", "--source", src, expect=1)
    assert "gemmactl init" in res.stderr


def test_building_outside_a_checkout_is_a_usage_error(cli, cloud, tmp_path):
    res = cli("build", "--source", tmp_path, expect=2)
    assert "--source" in res.stderr


# ------------------------------------------------------------------------------- following a build


class ScriptedBuilds:
    """A Builds port whose states and log chunks are given up front; records request times."""

    def __init__(self, states: list[str], chunks: list[bytes], clock: FakeTime) -> None:
        self.states, self.chunks, self.clock = states, chunks, clock
        self.log, self.requests = b"", []

    def get(self, region: str, build_id: str) -> BuildInfo:
        self.requests.append(("get", self.clock.now))
        if self.chunks:
            self.log += self.chunks.pop(0)
        status = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return BuildInfo(build_id, status, failure_detail="boom" if status == "FAILURE" else None)

    def read_log(self, build: BuildInfo, *, offset: int) -> bytes:
        self.requests.append(("read_log", self.clock.now))
        return self.log[offset:]


class Recorder:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.phases: list[tuple[str, str | None, str | None]] = []

    def line(self, text: str) -> None:
        self.lines.append(text)

    def phase(self, status: str, phase: str | None, step: str | None) -> None:
        self.phases.append((status, phase, step))


def test_follow_reads_at_most_one_request_per_second_and_never_repeats_a_line(instant_time):
    chunks = [b"FETCHSOURCE\nBUILD\nStep #0: #5 [build 2/7] RUN uv py", b"thon install\nStep #0: #7 [build 4/7]",
              b" COPY\nPUSH\nDONE\n"]
    port = ScriptedBuilds(["QUEUED", "WORKING", "WORKING", "SUCCESS"], chunks, instant_time)
    shown = Recorder()

    info = builds.follow_build(port, REGION, BuildInfo("b1", "QUEUED"), shown)

    assert info.status == "SUCCESS"
    times = [t for _, t in port.requests]
    assert all(b - a >= 1.0 for a, b in zip(times, times[1:], strict=False))
    assert shown.lines == ["FETCHSOURCE", "BUILD", "Step #0: #5 [build 2/7] RUN uv python install",
                           "Step #0: #7 [build 4/7] COPY", "PUSH", "DONE"]
    assert ("WORKING", "BUILD", "2/7") in shown.phases
    assert shown.phases[-1] == ("SUCCESS", "DONE", "4/7")


def test_follow_raises_with_failure_detail_and_log_tail(instant_time):
    port = ScriptedBuilds(["WORKING", "FAILURE"], [b"Step 3/9 : RUN make\n", b"make: *** Error 2"], instant_time)
    with pytest.raises(BuildFailedError) as err:
        builds.follow_build(port, REGION, BuildInfo("b2", "QUEUED"), Recorder())
    assert "b2 ended FAILURE: boom" in str(err.value)
    assert err.value.log_tail[-1] == "make: *** Error 2"  # the unterminated last line is kept


def test_classic_docker_steps_are_tracked_too():
    parser = builds.LogParser()
    parser.feed(b"Step #0: Step 3/12 : RUN uv pip sync\n")
    assert parser.step == "3/12"


def test_the_plan_is_pure_and_names_everything_from_settings():
    from gemmactl.settings import load_settings

    s = load_settings({"project": "my-proj-1", "region": "us-central1", "repository": "imgs", "image": "tr"})
    plan = builds.plan_build(s, "abcdef123456", timeout_s=5400)
    assert plan.image == "us-central1-docker.pkg.dev/my-proj-1/imgs/tr:abcdef123456"
    assert plan.latest == "us-central1-docker.pkg.dev/my-proj-1/imgs/tr:latest"
    assert plan.source_uri == "gs://my-proj-1-gemma-finetuning-us-central1/cloudbuild/source/abcdef123456.tgz"
    assert plan.spec.timeout_s == 5400 and plan.spec.region == "us-central1"
    assert "src-abcdef123456" in plan.spec.tags
    assert plan == builds.plan_build(s, "abcdef123456", timeout_s=5400)


# ------------------------------------------------------------------------------- --local-docker

FAKE_DOCKER = """#!{python}
import os, sys
log = os.environ["FAKE_DOCKER_LOG"]
args = sys.argv[1:]
data = sys.stdin.buffer.read() if args[-1:] == ["-"] else b""
with open(log, "a") as f:
    f.write(" ".join(args) + "\\n")
if data:
    open(log + ".stdin", "wb").write(data)
fail = os.environ.get("FAKE_DOCKER_FAIL", "")
if args[0] == "info" and fail == "daemon":
    print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?",
          file=sys.stderr)
    sys.exit(1)
if args[0] == fail:
    print("#6 [build 2/5] RUN false")
    print("ERROR: process did not complete successfully: exit code: 1")
    sys.exit(1)
print("#7 [build 3/5] COPY pyproject.toml ./" if args[0] == "build" else "latest: digest: sha256:abc")
"""


@pytest.fixture
def docker(tmp_path, monkeypatch) -> Path:
    """A fake `docker` on PATH that records its argv (and the context it got on stdin)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "docker"
    exe.write_text(FAKE_DOCKER.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "docker.log"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))
    return log


def test_local_docker_builds_from_the_same_context_and_pushes_both_tags(cli, cloud, src, docker):
    res = cli("build", "--source", src, "--local-docker")

    image = image_for(src)
    calls = docker.read_text().splitlines()
    assert calls[0].startswith("info")
    assert calls[1].startswith(f"build --tag {image} --tag {REPO}:latest") and calls[1].endswith("-")
    assert calls[2:] == [f"push {image}", f"push {REPO}:latest"]
    assert Path(str(docker) + ".stdin").read_bytes() == source.pack(src).data
    assert res.stdout.strip().endswith(image)
    assert cloud.builds.submitted == [] and cloud.mutations == []


def test_local_docker_without_docker_installed(cli, cloud, src, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    res = cli("build", "--source", src, "--local-docker", expect=1)
    assert "docker CLI is not installed" in res.stderr and "drop --local-docker" in res.stderr


def test_local_docker_without_a_daemon(cli, cloud, src, docker, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_FAIL", "daemon")
    res = cli("build", "--source", src, "--local-docker", expect=1)
    assert "Docker daemon is not reachable" in res.stderr and "Is the docker daemon running?" in res.stderr


def test_local_docker_build_failure_shows_dockers_error(cli, cloud, src, docker, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_FAIL", "build")
    res = cli("build", "--source", src, "--local-docker", expect=1)
    assert "docker build failed: ERROR: process did not complete successfully" in res.stderr
    assert "push" not in docker.read_text()


def test_local_docker_push_failure_hints_at_registry_auth(cli, cloud, src, docker, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_FAIL", "push")
    res = cli("build", "--source", src, "--local-docker", expect=1)
    assert f"gcloud auth configure-docker {REGION}-docker.pkg.dev" in res.stderr


def test_local_docker_skips_an_existing_image_without_touching_docker(cli, cloud, src, docker):
    cloud.images.add(image_for(src))
    cli("build", "--source", src, "--local-docker")
    assert not docker.exists()


# ------------------------------------------------------------------------------- local backend


def test_local_backend_has_nothing_to_build(cli, src, tmp_path):
    from gemmactl.cloud.local.jobs import LocalBuilds

    if not hasattr(LocalBuilds, "submit"):
        pytest.skip("LocalBuilds.submit not implemented yet (gemmactl/cloud/local/jobs.py)")
    res = cli("--local", "--local-dir", tmp_path / "state", "build", "--source", src, "--json")
    data = json.loads(res.stdout)
    assert data["status"] == "not-needed" and data["tag"] == source.content_hash(src)


# ------------------------------------------------------------------------------- Google APIs end to end

def test_build_against_googles_apis_on_loopback(cli, google, gcs_emulator, src, monkeypatch, instant_time):  # noqa: F811
    """The gcp backend end to end: GCS upload (emulator), Cloud Build create/get (REST fake), log tail
    from the logs bucket, Artifact Registry tag lookups; Cloud Build's progress is played by the sleeps."""
    from google.cloud import storage as gcs

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    monkeypatch.setattr("google.auth.default", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ADC")))
    bucket = f"{PROJECT}-gemma-finetuning-{REGION}"
    client = gcs.Client(project=PROJECT)
    if client.lookup_bucket(bucket) is None:
        client.create_bucket(bucket)
    tag = source.content_hash(src)
    package = f"projects/{PROJECT}/locations/{REGION}/repositories/gemma-finetuning/packages/gemma-finetune"
    script = [
        ("WORKING", b"FETCHSOURCE\nBUILD\nStep #0: #5 [build 2/7] RUN uv python install 3.12.16\n"),
        ("SUCCESS", b"Step #0: #9 [build 6/7] COPY trainer ./trainer\nPUSH\nDONE\n"),
    ]
    log = b""

    def cloud_build_moves(seconds: float) -> None:
        nonlocal log
        instant_time.sleep(seconds)
        if google.state.builds and script:
            [build] = google.state.builds.values()
            status, chunk = script.pop(0)
            log += chunk
            client.bucket(bucket).blob(f"cloudbuild/logs/log-{build['id']}.txt").upload_from_string(log)
            build["status"] = status
            if status == "SUCCESS":
                google.state.tags.update({f"{package}/tags/{tag}", f"{package}/tags/latest"})

    monkeypatch.setattr(builds, "SLEEP", cloud_build_moves)

    res = cli("--project", PROJECT, "build", "--source", src)

    assert res.stdout.strip().endswith(f"{REPO}:{tag}")
    assert "COPY trainer ./trainer" in res.stderr
    blob = client.bucket(bucket).get_blob(f"cloudbuild/source/{tag}.tgz")
    assert blob is not None and blob.download_as_bytes() == source.pack(src).data
    [create] = [r for r in google.requests if r.method == "POST" and r.path.endswith("/builds")]
    assert create.body["images"] == [f"{REPO}:{tag}", f"{REPO}:latest"]
    assert create.body["source"]["storageSource"] == {"bucket": bucket, "object": f"cloudbuild/source/{tag}.tgz"}
    assert create.body["logsBucket"] == f"gs://{bucket}/cloudbuild/logs"
    assert create.body["steps"][0]["name"] == "gcr.io/cloud-builders/docker"
    assert "substitutions" not in create.body and "availableSecrets" not in create.body

    # Same source again: one tag lookup, no upload, no build.
    before = len(google.requests)
    cli("--project", PROJECT, "build", "--source", src)
    again = google.requests[before:]
    assert [r.method for r in again] == ["GET"] and again[0].path.endswith(f"/tags/{tag}")
