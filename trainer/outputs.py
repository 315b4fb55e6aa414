"""What a run writes besides its checkpoints: config.json, metrics.json, predictions.jsonl, and the "done" event
of a run that had already finished. Every file is written whole (temp file + rename): `gemmactl results` and a
retried task never see half of one."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from trainer.events import EventSink, log


def write_outputs(out: Path, cfg, baseline: dict, final: dict, state, timings: dict, peak) -> None:
    primary = cfg.eval_modes[0]
    b, f = baseline["reports"][primary], final["reports"][primary]
    metrics = {
        "baseline": b, "final": f,
        "delta": {"accuracy": f["accuracy"] - b["accuracy"], "macro_f1": f["macro_f1"] - b["macro_f1"]},
        "config": cfg.to_dict(), "versions": versions(), "timings": timings, "peak_memory_gib": peak,
        "train_loss": state.losses, "eval_mode": cfg.eval_mode,
    }
    if len(cfg.eval_modes) > 1:
        metrics["baseline_by_mode"], metrics["final_by_mode"] = baseline["reports"], final["reports"]
    with (out / "predictions.jsonl.tmp").open("w") as fh:
        for row in baseline["rows"] + final["rows"]:
            fh.write(json.dumps(row) + "\n")
    os.replace(out / "predictions.jsonl.tmp", out / "predictions.jsonl")
    write_json(out / "metrics.json", metrics)


def already_done(out: Path, sink: EventSink) -> int:
    log(f"{out} already has DONE: the run finished earlier; nothing to do")
    metrics = json.loads((out / "metrics.json").read_text())
    sink.emit("done", metrics_path=str(out / "metrics.json"), baseline=headline(metrics["baseline"]),
              final=headline(metrics["final"]), elapsed_s=metrics["timings"].get("total_s"), already_done=True)
    return 0


def headline(report: dict) -> dict:
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}


def versions() -> dict:
    import peft
    import transformers

    cuda = torch.cuda.is_available()
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "cuda": torch.version.cuda if cuda else None,
            "gpu": torch.cuda.get_device_name(0) if cuda else None}


def write_json(path: Path, data) -> None:
    """Write via a temp file + rename so readers (gemmactl results) never see half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
