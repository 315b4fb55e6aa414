#!/usr/bin/env bash
# Reproduces the Dockerfile's install step outside Docker, from the same lock, on linux x86_64:
#   uv python 3.12.16 → venv → `uv pip sync --require-hashes trainer.lock` → the project with --no-deps,
# then imports the trainer and checks torch is the CUDA 13.0 build the Dockerfile's base matches.
# Downloads the full CUDA wheel set (~4 GB), so it is a script, not a test; run it after changing the
# lock:  bash requirements/check_install.sh [WORKDIR]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
uv="${UV:-uv}"
export UV_PYTHON_INSTALL_DIR="$work/python" UV_CACHE_DIR="$work/cache"
export UV_LINK_MODE=copy
# The image's pinned CPython; where GitHub (its download host) is unreachable, PYTHON=/path/to/python3.12
# substitutes a local 3.12 (the lock is for 3.12, so any patch release resolves the same wheels).
if [ -n "${PYTHON:-}" ]; then
  "$uv" venv --python "$PYTHON" "$work/venv"
else
  "$uv" python install 3.12.16
  "$uv" venv --python 3.12.16 "$work/venv"
fi
export VIRTUAL_ENV="$work/venv"
"$uv" pip sync --require-hashes "$here/requirements/trainer.lock"
# As in the Dockerfile: only what the image gets (trainer/ + pyproject.toml), no index, locked setuptools.
ctx="$work/context"
rm -rf "$ctx" && mkdir -p "$ctx"
cp "$here/pyproject.toml" "$ctx/" && cp -r "$here/trainer" "$ctx/trainer"
find "$ctx" -name __pycache__ -prune -exec rm -rf {} +
"$uv" pip install --no-deps --no-index --no-build-isolation "$ctx"
# From an empty directory with -P, so the check imports the installed trainer, not a checkout.
cd "$work" && "$work/venv/bin/python" -P - <<'PY'
import importlib.metadata as md
import torch, transformers, peft, bitsandbytes  # noqa: F401  (imports resolve against the lock)
import trainer.config
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert torch.version.cuda and torch.version.cuda.startswith("13.0"), torch.version.cuda
print("ok: torch", torch.__version__, "cuda", torch.version.cuda, "| transformers", transformers.__version__,
      "| peft", md.version("peft"), "| bitsandbytes", md.version("bitsandbytes"))
PY
