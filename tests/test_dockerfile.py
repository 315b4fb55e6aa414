"""The trainer image, checked without Docker: the Dockerfile's rules, hadolint, and the lock against pyproject.

Docker cannot run here, so this checks what decides whether the image is right: the Dockerfile parsed by
BuildKit's own parser (the `dockerfile` package) and linted (hadolint), the lock pinning exactly what
pyproject pins, and the context carrying every file the Dockerfile copies. The full install from the lock
is reproduced by `requirements/check_install.sh` (downloads ~4 GB of CUDA wheels, so not a test); the
resolver check below needs PyPI and runs only with RUN_PYPI_TESTS=1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gemmactl import source

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
LOCK = REPO / "requirements" / "trainer.lock"
dockerfile = pytest.importorskip("dockerfile", reason="pip install 'gemmactl[dev]' (BuildKit's parser)")


def instructions() -> list:
    return list(dockerfile.parse_file(str(DOCKERFILE)))


def stages() -> list[list]:
    """Instructions grouped by FROM."""
    groups: list[list] = []
    for cmd in instructions():
        if cmd.cmd == "FROM":
            groups.append([])
        groups[-1].append(cmd)
    return groups


def stage_names() -> set[str]:
    names = set()
    for cmd in instructions():
        if cmd.cmd == "FROM" and len(cmd.value) == 3 and cmd.value[1].upper() == "AS":
            names.add(cmd.value[2])
    return names


def assert_pinned(image: str) -> None:
    name, _, tag = image.partition(":")
    assert "@sha256:" in image or (tag and tag != "latest" and re.search(r"\d", tag)), (
        f"{image} is not pinned to a version"
    )


def locked() -> dict[str, str]:
    return {m.group(1).lower(): m.group(2)
            for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)", LOCK.read_text(), re.M)}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ------------------------------------------------------------------------------- Dockerfile rules


def test_every_base_image_is_pinned_by_version():
    names = stage_names()
    images = [c.value[0] for c in instructions() if c.cmd == "FROM"]
    images += [f.split("=", 1)[1] for c in instructions() if c.cmd == "COPY" for f in c.flags
               if f.startswith("--from=")]
    external = [i for i in images if i not in names]
    assert external
    for image in external:
        assert_pinned(image)


def test_the_base_is_a_blackwell_capable_cuda_runtime_matching_torchs_cuda():
    final_base = stages()[-1][0].value[0]
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-runtime-ubuntu24\.04", final_base)
    assert m, final_base
    base_cuda = (int(m.group(1)), int(m.group(2)))
    assert base_cuda >= (12, 8), "Blackwell (sm_120) needs CUDA >= 12.8"
    # PyPI's torch wheel brings its CUDA through cuda-toolkit / nvidia-*; the base must be that major.minor.
    toolkit = locked()["cuda-toolkit"]
    assert tuple(int(x) for x in toolkit.split(".")[:2]) == base_cuda


def test_the_runtime_user_is_not_root_and_is_set_before_the_entrypoint():
    final = stages()[-1]
    users = [(i, c.value[0]) for i, c in enumerate(final) if c.cmd == "USER"]
    entry = next(i for i, c in enumerate(final) if c.cmd == "ENTRYPOINT")
    assert users, "the final stage never switches away from root"
    last_index, last_user = users[-1]
    assert last_index < entry
    assert last_user.split(":")[0] not in ("root", "0")


def test_the_entrypoint_is_exactly_python_m_trainer():
    [entry] = [c for c in instructions() if c.cmd == "ENTRYPOINT"]
    assert entry.json and list(entry.value) == ["python", "-m", "trainer"]


def test_the_runtime_has_a_c_compiler_for_triton_and_installs_it_as_root():
    # torch.compile's Triton builds its CUDA launcher with `cc` at run time (trainer/compiling.py)
    final = stages()[-1]
    runs = [(i, " ".join(c.value)) for i, c in enumerate(final) if c.cmd == "RUN"]
    user = next(i for i, c in enumerate(final) if c.cmd == "USER")
    installs = [i for i, cmd in runs if "apt-get install" in cmd and " gcc " in f"{cmd} " and "libc6-dev" in cmd]
    assert installs and installs[0] < user
    assert any("rm -rf /var/lib/apt/lists" in cmd for i, cmd in runs if i == installs[0])


def final_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for c in stages()[-1]:
        if c.cmd == "ENV":
            env.update(zip(c.value[::2], c.value[1::2], strict=True))
    return env


def test_runtime_environment():
    env = final_env()
    assert env["PYTHONUNBUFFERED"] == "1"
    home = env["HF_HOME"]
    # Not the in-memory /tmp, not the shared bucket mount (a token file would live under HF_HOME).
    assert home.startswith("/") and not home.startswith(("/tmp", "/mnt/gcs"))
    assert "/opt/venv/bin" in env["PATH"]


def test_no_token_or_secret_in_args_env_or_commands():
    for c in instructions():
        text = c.original.upper()
        if c.cmd in ("ARG", "ENV", "LABEL"):
            assert not re.search(r"TOKEN|SECRET|PASSWORD|API_KEY", text), c.original
        assert "HF_TOKEN" not in text and "HUGGING_FACE_HUB_TOKEN" not in text, c.original
        assert "--mount=type=secret" not in c.original


def test_dependencies_install_only_from_the_hashed_lock_and_the_project_without_deps():
    runs = " ".join(c.original for c in instructions() if c.cmd == "RUN")
    assert "--require-hashes requirements/trainer.lock" in runs
    assert re.search(r"uv pip install --no-deps --no-index --no-build-isolation \.", runs)
    assert "pip install torch" not in runs  # no unpinned side installs


def test_every_file_the_dockerfile_copies_is_in_the_build_context():
    sent = set(source.context_files(REPO))
    copied = [c.value[:-1] for c in instructions()
              if c.cmd == "COPY" and not any(f.startswith("--from=") for f in c.flags)]
    for sources in copied:
        for src in sources:
            src = src.rstrip("/")
            assert src in sent or any(f.startswith(src + "/") for f in sent), f"{src} is excluded by .dockerignore"


def test_hadolint_passes():
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("hadolint not installed (pip install 'gemmactl[dev]')")
    res = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


# ------------------------------------------------------------------------------- the lock


def pyproject_requirements(*groups: str) -> list[str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    reqs = list(data["project"]["dependencies"]) if "base" in groups else []
    for g in groups:
        if g != "base":
            reqs += data["project"]["optional-dependencies"][g]
    return reqs


def test_every_exact_pin_of_the_trainer_and_gpu_extras_is_locked_at_that_version():
    lock = locked()
    for req in pyproject_requirements("trainer", "gpu"):
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*==\s*([^\s;,]+)", req.strip())
        if m:
            name, version = canonical(m.group(1)), m.group(2)
            assert lock.get(name) == version, f"{name}: pyproject {version}, lock {lock.get(name)}"


def test_every_requirement_of_the_image_is_satisfied_by_the_lock():
    from packaging.requirements import Requirement

    lock = locked()
    for text in pyproject_requirements("base", "trainer", "gpu"):
        req = Requirement(text)
        name = canonical(req.name)
        assert name in lock, f"{name} missing from the lock"
        assert req.specifier.contains(lock[name], prereleases=True), f"{name}=={lock[name]} vs {req.specifier}"


def test_every_locked_requirement_carries_hashes():
    blocks = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text().split("\n", 2)[2])
    for block in blocks:
        if block.strip():
            assert "--hash=sha256:" in block, block.splitlines()[0]


def test_the_lock_targets_the_images_platform_and_cuda_torch():
    header = LOCK.read_text().splitlines()[1]
    for flag in ("--extra trainer", "--extra gpu", "--python-version 3.12", "x86_64-manylinux_2_28",
                 "--generate-hashes", "requirements/build.in"):
        assert flag in header
    lock = locked()
    assert lock["torch"] == "2.13.0" and "nvidia-cuda-runtime" in lock
    assert {"setuptools", "wheel"} <= set(lock)  # the project builds with --no-build-isolation


@pytest.mark.skipif(os.environ.get("RUN_PYPI_TESTS") != "1", reason="needs PyPI; set RUN_PYPI_TESTS=1")
def test_the_lock_resolves_as_a_whole_for_the_image_platform(tmp_path):
    """uv resolves the hashed lock for linux x86_64 / CPython 3.12 without downloading the wheels."""
    uv = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv is None:
        pytest.skip("uv not installed")
    out = tmp_path / "again.lock"
    shutil.copy(LOCK, out)  # uv keeps the pins already in the output file: a fresh lock must equal it
    cmd = [uv, "pip", "compile", "pyproject.toml", "requirements/build.in", "--extra", "trainer",
           "--extra", "gpu", "--python-version", "3.12", "--python-platform", "x86_64-manylinux_2_28",
           "--generate-hashes", "--quiet", "--no-header", "-o", str(out)]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    body = LOCK.read_text().split("\n", 2)[2]
    assert out.read_text() == body, "requirements/trainer.lock is stale: regenerate it (command in its header)"

