"""Where the training loop waits for the GPU: every host-device synchronisation after the first step, by call site.

A step that synchronises (`.item()`, a boolean-mask index, a `nonzero`, a blocking copy) drains the GPU's queue:
the GPU then idles while the host prepares and launches the next kernels. This runs `trainer.run.run` on the
built-in tiny Gemma 3 (the same code path as real sizes: feature cache, answer-only loss, fused LoRA) on CUDA with
`torch.cuda.set_sync_debug_mode("warn")` from the end of the first optimizer step to the end of training, and
counts the synchronising call sites (the innermost frames in trainer/, transformers/ and peft/).

    python bench/sync_audit.py --out $OUT                      # on the GPU; writes $OUT/sync_audit.json
    python bench/sync_audit.py --out $OUT --compile on         # the compiled step
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

OURS = ("/trainer/", "/transformers/", "/peft/")


def _site() -> str:
    """The innermost frames of ours / transformers / peft on the current stack, as 'file:line fn' lines."""
    frames = [f for f in traceback.extract_stack()[:-3] if any(s in f.filename for s in OURS)]
    return " <- ".join(f"{f.filename.split('site-packages/')[-1].split('/main/')[-1]}:{f.lineno} {f.name}"
                       for f in reversed(frames[-3:]))


class _Quiet:
    """An event sink that drops the trainer's events (this script reports only the sync sites)."""

    def emit(self, event: str, **fields) -> None:
        pass


def audit(args) -> dict:
    import torch
    from gpu_matrix import make_dataset

    import trainer.run as run_mod
    import trainer.train as train_mod
    from trainer.config import TrainConfig

    work = Path(args.work)
    make_dataset(work / "pets", args.train_size, 8)
    sites: collections.Counter = collections.Counter()
    real_step, real_train, state = train_mod._optimizer_step, run_mod.train, {"steps": 0}

    def record(message, category, *rest, **kw):
        if "synchroniz" in str(message).lower():
            sites[_site()] += 1

    def step(*a, **k):
        out = real_step(*a, **k)
        state["steps"] += 1
        if state["steps"] == 1 and torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("warn")
        return out

    def train(*a, **k):
        try:
            return real_train(*a, **k)
        finally:
            if torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode("default")

    warnings.showwarning = record
    warnings.simplefilter("always")
    train_mod._optimizer_step, run_mod.train = step, train
    cfg = TrainConfig(model_id="builtin:tiny-gemma3", dataset=str(work / "pets"), output_dir=str(work / "run"),
                      train_size=args.train_size, eval_size=8, num_epochs=2, eval_mode="constrained",
                      compile=args.compile, save_steps=args.save_steps).validate()
    shutil.rmtree(cfg.output_dir, ignore_errors=True)

    run_mod.run(cfg, _Quiet())
    steps = state["steps"] - 1
    return {"steps_audited": steps, "compile": args.compile, "save_steps": args.save_steps,
            "sites": [{"count": n, "per_step": round(n / max(1, steps), 2), "site": s} for s, n in sites.most_common()]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    p.add_argument("--work", default="/tmp/sync-audit")
    p.add_argument("--train-size", type=int, default=96)
    p.add_argument("--compile", default="off", choices=("off", "on"))
    p.add_argument("--save-steps", type=int, default=4)
    args = p.parse_args()
    result = audit(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"sync_audit_{args.compile}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
