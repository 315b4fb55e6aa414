"""Side by side: the headline figures of several gpu_train.py results (e.g. two trainer checkouts on one machine).

    python3 bench/compare.py $OUT/new/results.json $OUT/old/results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FIELDS = ("train_samples_per_s", "steady_samples_per_s", "mfu", "first_step_s", "train_s", "peak_train_gib",
          "final_loss")


def rows(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    return data["results"] if isinstance(data, dict) and "results" in data else data


def describe(r: dict) -> dict:
    plan = r.get("events", {}).get("memory_plan", {})
    walls = [w for w in r.get("step_ms", []) if isinstance(w, int | float)]
    return {**{k: r.get(k) for k in FIELDS}, "timeline": r.get("train_timeline"), "host_split": r.get("host_split"),
            "eval": {k: round(v["images_per_s"], 1) for k, v in r.get("eval", {}).items()},
            "first_walls_ms": walls[:6], "snapshot_ms": r.get("snapshot_ms"), "encode_ahead": plan.get("encode_ahead"),
            "encode_ahead_why": plan.get("encode_ahead_why"), "compile_why": plan.get("compile_why")}


def main() -> int:
    for arg in sys.argv[1:]:
        for r in rows(Path(arg)):
            print(arg, r.get("model"), r.get("mode"))
            print(json.dumps(describe(r), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
