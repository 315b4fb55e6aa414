# The trainer image: `python -m trainer ARGS` on a Cloud Run job with one NVIDIA RTX PRO 6000 (Blackwell).
#
# Build it with `gemmactl build` (Cloud Build, no local Docker) or `gemmactl build --local-docker`.
# Both send the same context: the files .dockerignore lets through (trainer/, pyproject.toml and the
# lock), packed deterministically; the sha256 of that context is the image tag.
#
# CUDA: the PyPI torch 2.13.0 Linux wheel is built for CUDA 13.0 (its METADATA requires
# cuda-toolkit==13.0.3.0 and the nvidia-*-cu13 wheels, which carry the CUDA libraries themselves), so
# the base is the matching CUDA 13.0 runtime. CUDA >= 12.8 is what Blackwell (sm_120) needs; CUDA 13
# needs an NVIDIA driver >= 580 on the host.
#
# No token ever enters this image: no ARG, ENV or file carries one. Jobs get HF_TOKEN at run time as a
# Secret Manager env var; models are read from the bucket mount, so the build needs no Hub access.

# ----------------------------------------------------------------------------- build: venv from the lock
FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04 AS build

# uv, pinned, from its official image (the uv docs' recommended way to put it in a Dockerfile).
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv

# A pinned, relocatable CPython from uv (python-build-standalone) instead of apt's moving python3.12;
# bytecode compiled now because the venv is read-only for the non-root user at run time.
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1 \
    UV_LINK_MODE=copy
RUN uv python install 3.12.16 && uv venv --python 3.12.16 /opt/venv
ENV VIRTUAL_ENV=/opt/venv

WORKDIR /src
# Dependencies first, alone in their layer: source edits do not reinstall 10 GB of CUDA wheels.
# `pip sync --require-hashes` installs exactly the lock (the same == pins as pyproject's trainer and
# gpu extras, plus setuptools/wheel to build the project) and refuses any file whose hash differs.
COPY requirements/trainer.lock requirements/trainer.lock
RUN uv pip sync --require-hashes requirements/trainer.lock

# The project itself: no dependencies (all locked above), no index, built with the locked setuptools.
COPY pyproject.toml ./
COPY trainer ./trainer
# -P (safe path): the import check must see the installed package, not ./trainer in this directory.
RUN uv pip install --no-deps --no-index --no-build-isolation . \
    && /opt/venv/bin/python -P -c "import trainer.config"

# ----------------------------------------------------------------------------- runtime
FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04

# A C compiler: torch.compile's Triton builds a small CUDA launcher with `cc` the first time it runs a kernel
# (trainer/compiling.py; without one the trainer trains on eagerly, only slower). Not pinned to a version:
# Ubuntu's security updates replace these versions in the archive, and a pin would break the next build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# Not uid 1000: ubuntu:24.04 already has a user `ubuntu` there.
RUN groupadd --gid 10001 trainer \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/trainer --shell /usr/sbin/nologin trainer

COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv

# HF_HOME: never /tmp (on Cloud Run /tmp is RAM shared with the 80 GiB of the task) and never the
# bucket mount (HF_HOME is where a token file would live, and the bucket is shared storage). The job
# reads staged models straight from /mnt/gcs/<org>/<model>, so this home only holds small Hub
# metadata. It is plain ENV: a job (or the trainer) overrides it, or points HF_HUB_CACHE at
# /mnt/gcs/.cache/huggingface/hub to keep un-staged downloads in the bucket across retries.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/home/trainer/.cache/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1 \
    MPLBACKEND=Agg

# Numeric, so runtimes that enforce runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/trainer
RUN mkdir -p "$HF_HOME"

ENTRYPOINT ["python", "-m", "trainer"]
