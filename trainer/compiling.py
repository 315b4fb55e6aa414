"""When to torch.compile the training step, and the compiled artifacts kept across processes.

Compiling the decoder layers (trainer.fused) takes the gemma-3-4b fast-path step from ~400 to ~280 ms on an H100,
but a cold compile costs tens of seconds at start-up, so it pays only on runs with enough steps; a warm start from
the cache file costs a few seconds and always pays. The numbers behind COLD_COMPILE_S and STEP_SAVING are in
BENCHMARKS.md ("GPU training, compiled step").

The cache is torch's "mega-cache": one file of inductor graphs, autograd graphs and Triton kernels, written next to
the runs (`<output_dir>/../.compile-cache/<key>.bin`, i.e. in the bucket on Cloud Run), so a retried task and every
later run of the same model on the same GPU and torch start warm. The key covers what the compiled code depends on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

COLD_COMPILE_S = 27.0  # cold compile of gemma-3-4b's decoder layers, static shapes, H100 (BENCHMARKS.md)
STEP_SAVING = 0.28  # fraction of the eager fused step that compilation saves: 388 -> 277-280 ms (same section)
EAGER_STEP_S_PER_SAMPLE = 0.024  # eager fused step per sample at gemma-3-4b dims (388 ms / 16)


def cache_path(cfg, model, device: torch.device) -> Path:
    """Where this model's compiled artifacts live: keyed by torch, GPU, model dims and the LoRA recipe."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    text = model.config.get_text_config().to_dict()
    key = json.dumps([torch.__version__, gpu, sorted((k, str(v)) for k, v in text.items()), cfg.lora_r,
                      cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target], sort_keys=True)
    return Path(cfg.output_dir).resolve().parent / ".compile-cache" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.bin"


def choose_compile(cfg, device: torch.device, checkpointing: bool, static: bool, total_steps: int,
                   samples_per_step: int, path: Path) -> tuple[bool, str]:
    """(compile?, why) for this run; `--compile on/off` decides alone.

    `static`: every micro-batch can be padded to one shape (Gemma 3 with cached image features), so one compile
    serves the whole run; otherwise auto does not compile.
    """
    if cfg.compile != "auto":
        return cfg.compile == "on", f"--compile {cfg.compile}"
    if device.type != "cuda":
        return False, "CPU: compiling costs more than it saves on the tiny models run here"
    if not cfg.fast_path or cfg.quantization != "none" or checkpointing or not static:
        return False, "auto compiles only Gemma 3's bf16 fast path without gradient checkpointing"
    if path.is_file():
        return True, f"a compile cache from an earlier run is there ({path.name}): warm start"
    saving = total_steps * samples_per_step * EAGER_STEP_S_PER_SAMPLE * STEP_SAVING
    if saving > COLD_COMPILE_S:
        return True, f"{total_steps} steps save ~{saving:.0f} s, more than a ~{COLD_COMPILE_S:.0f} s cold compile"
    return False, (f"{total_steps} steps would save ~{saving:.0f} s, less than a ~{COLD_COMPILE_S:.0f} s cold "
                   f"compile (--compile on forces it; later runs start warm)")


def load_cache(path: Path) -> bool:
    """Load compiled artifacts from `path` if there; a stale or torn file is only a colder start."""
    if not path.is_file():
        return False
    try:
        torch.compiler.load_cache_artifacts(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 -- any failure here only costs compile time
        print(f"compile cache {path} not loaded ({type(exc).__name__}: {exc}); compiling cold", flush=True)
        return False
    return True


def save_cache(path: Path) -> int:
    """Write every artifact compiled or loaded so far to `path` (atomically); bytes written."""
    saved = torch.compiler.save_cache_artifacts()
    if not saved:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(saved[0])
    tmp.replace(path)
    return len(saved[0])
