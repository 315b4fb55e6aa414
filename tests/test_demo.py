"""The README's `make demo`, end to end on the local backend: fine-tuning must beat the baseline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_readme_demo_fine_tunes_and_beats_the_baseline(tmp_path):
    env = {**os.environ, "GEMMACTL_LOCAL_DIR": str(tmp_path / "state"), "COLUMNS": "200"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    demo = subprocess.run(
        ["bash", str(REPO / "scripts" / "demo.sh")], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=900,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "baseline vs fine-tuned" in demo.stdout
    assert "succeeded" in demo.stderr

    summary = subprocess.run(
        ["gemmactl", "--local", "results", "--json", "--no-plots"], cwd=tmp_path, env=env,
        capture_output=True, text=True, check=True,
    )
    results = json.loads(summary.stdout)
    baseline, final = results["baseline"], results["final"]
    assert final["accuracy"] >= baseline["accuracy"] + 0.3, (baseline, final)
    assert final["macro_f1"] > baseline["macro_f1"]
