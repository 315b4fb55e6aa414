"""Shared fixtures for the trainer tests: tiny models/processors built in code, image fixtures on disk."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # shared 2-core machines: one thread per process avoids OpenMP spin contention

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def tiny_gemma3():
    from trainer.builtin import build_model_and_processor

    return build_model_and_processor("builtin:tiny-gemma3")


@pytest.fixture(scope="session")
def tiny_gemma4():
    from trainer.builtin import build_model_and_processor

    return build_model_and_processor("builtin:tiny-gemma4")


def trainer_env(**extra: str) -> dict[str, str]:
    """Environment for `python -m trainer` subprocesses: repo on the path, offline, few threads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUN_ID", "CLOUD_RUN", "HF_TOKEN"))}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env
