"""When to torch.compile the training step, in which mode, and the compiled artifacts kept across processes.

Compiling the decoder layers (trainer.fused) takes the gemma-3-4b fast-path step from ~400 to ~270 ms on an H100
("plain"), and to ~250 ms with every GEMM autotuned against inductor's Triton templates ("autotuned"). A cold
compile costs ~29 s plain and ~5 min autotuned; a warm start from the cache file costs seconds either way. So auto
weighs each mode's saving over this run's steps against its cost: the default 1000-image x 3 run (~22-26 s saved)
compiles only warm, the full 3,680-image split x 3 also cold (plain), and autotuning cold pays on no usual run:
`--compile on` does it once, and every later run of that model on that GPU starts from its cache. The numbers are
in BENCHMARKS.md ("GPU training, compiled step and eval batches"; the sixteenth set for the autotuned mode).

With static shapes the step compiles before training, on a stand-in batch, beside the eval images' encode
(trainer.run._compile_ahead, trainer.train.compile_ahead): the compile is host work, the encode GPU work. Where
shapes vary, the first step compiles.

The cache is torch's "mega-cache": one file of inductor graphs, autograd graphs and Triton kernels, written next to
the runs (`<output_dir>/../.compile-cache/<key>.bin`, i.e. in the bucket on Cloud Run), so a retried task and every
later run of the same model on the same GPU and torch start warm. The key covers what the compiled code depends on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class CompileMode:
    """What compiling the decoder layers one way costs and saves (gemma-3-4b, H100: BENCHMARKS.md)."""

    cold_s: float  # compiling with no cache file
    warm_s: float  # starting from the cache file: tracing and loading
    saving: float  # fraction of the eager step's time saved


MODES = {  # trainer.fused.COMPILE_OPTIONS's modes; on a tie the first is taken
    "autotuned": CompileMode(cold_s=320.0, warm_s=7.0, saving=0.32),  # 268 -> 251 ms a step over plain
    "plain": CompileMode(cold_s=29.0, warm_s=7.0, saving=0.28),  # eager 37.7 -> 52.2 samples/s steady
}
EAGER_S_PER_SAMPLE = 0.0265  # eager fast-path training time per sample at gemma-3-4b dims (37.7 samples/s)


def cache_path(cfg, model, device: torch.device, mode: str) -> Path:
    """Where this model's compiled artifacts live: keyed by torch, GPU, model dims, the LoRA recipe and the mode."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    text = model.config.get_text_config().to_dict()
    key = json.dumps([torch.__version__, gpu, sorted((k, str(v)) for k, v in text.items()), cfg.lora_r,
                      cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target, mode], sort_keys=True)
    return Path(cfg.output_dir).resolve().parent / ".compile-cache" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.bin"


def choose_compile(cfg, device: torch.device, checkpointing: bool, static: bool, total_steps: int,
                   samples_per_step: int, warm: set[str]) -> tuple[str | None, str]:
    """(the MODES mode to compile in, or None; why) for this run; `--compile on/off` decides alone.

    `static`: every micro-batch can be padded to one shape (Gemma 3 with cached image features), so one compile
    serves the whole run; otherwise auto does not compile. `warm`: the modes whose cache file is there. Auto takes
    the mode whose saving over this run's steps most exceeds what compiling it costs. `--compile on` autotunes only
    where auto could: elsewhere shapes may vary (each new one compiles again) or the GEMMs are 4-bit, unmeasured.
    """
    measured = cfg.fast_path and cfg.quantization == "none" and not checkpointing and static
    if cfg.compile == "on":
        mode = "autotuned" if measured and device.type == "cuda" else "plain"
        return mode, f"--compile on ({mode})"
    if cfg.compile == "off":
        return None, "--compile off"
    if device.type != "cuda":
        return None, "CPU: compiling costs more than it saves on the tiny models run here"
    if not measured:
        return None, "auto compiles only Gemma 3's bf16 fast path without gradient checkpointing"
    eager = total_steps * samples_per_step * EAGER_S_PER_SAMPLE
    cost = {name: m.warm_s if name in warm else m.cold_s for name, m in MODES.items()}
    best = max(MODES, key=lambda name: eager * MODES[name].saving - cost[name])
    saving = eager * MODES[best].saving
    start = f"a {'warm start from the cache' if best in warm else 'cold compile'} (~{cost[best]:.0f} s)"
    if saving > cost[best]:
        return best, f"{best}: {total_steps} steps save ~{saving:.0f} s, more than {start}"
    return None, f"{total_steps} steps would save ~{saving:.0f} s, less than {start}; --compile on forces it"


def load_cache(path: Path) -> bool:
    """Load compiled artifacts from `path` if there; a stale or torn file is only a colder start."""
    if not path.is_file():
        return False
    from trainer.events import log

    try:  # torch returns None for a file it cannot use (a torn write, another torch) and raises on worse
        loaded = torch.compiler.load_cache_artifacts(path.read_bytes()) is not None
    except Exception as exc:  # noqa: BLE001 -- any failure here only costs compile time
        loaded, why = False, f"{type(exc).__name__}: {exc}"
    else:
        why = "unreadable or from another torch"
    if not loaded:
        log(f"compile cache {path} not loaded ({why}); compiling cold")
    else:
        _LOADED.add(path)
    return loaded


_LOADED: set[Path] = set()  # cache files loaded in this process: torch's loaded artifacts are process-wide too


def save_cache(path: Path) -> int:
    """Write every artifact compiled or loaded so far to `path` (atomically); bytes written."""
    saved = torch.compiler.save_cache_artifacts()
    if not saved:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # runs sharing a bucket may write the same key at once
    tmp.write_bytes(saved[0])
    tmp.replace(path)
    return len(saved[0])


def compiled_new_artifacts(path: Path) -> bool:
    """False only if `path` was loaded and every graph this process compiled came from a cache: nothing to add.

    torch counts cache hits and misses; with no hit counted at all (counters renamed in another torch) the answer
    is True, so a cache is never left unwritten by mistake.
    """
    from torch._dynamo.utils import counters

    if path not in _LOADED:  # hits may come from torch's own disk cache (a local machine), not from this file
        return True
    hits = counters["aot_autograd"]["autograd_cache_hit"] + counters["inductor"]["fxgraph_cache_hit"]
    new = sum(counters[group][name] for group, name in (
        ("aot_autograd", "autograd_cache_miss"), ("aot_autograd", "autograd_cache_bypass"),
        ("inductor", "fxgraph_cache_miss"), ("inductor", "fxgraph_cache_bypass")))
    return new > 0 or hits == 0


class SkippedChoices(logging.Filter):
    """Keeps inductor's reports of autotune choices it drops out of the job's log, and counts them.

    The autotuned compile builds ~20 Triton configs per GEMM shape. On an H100 some need more shared memory than
    the GPU has (256 KiB against 227); they fail to build and inductor drops them, but logs each at ERROR level with
    a traceback: 62 of the 81 lines of a cold run's log, though nothing failed (BENCHMARKS.md, seventeenth set).
    """

    LOGGER = "torch._inductor.select_algorithm"
    MARKERS = ("Ignoring this choice", "for benchmark choice")  # the messages of a choice dropped, not of a failure

    def __init__(self):
        super().__init__()
        self.reports = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if any(marker in str(record.msg) for marker in self.MARKERS):
            self.reports += 1
            return False
        return True


@contextmanager
def quiet_autotune() -> Iterator[SkippedChoices]:
    """Inside: inductor's reports of dropped autotune choices are counted, not logged, and its autotune's
    deprecation warning (its own use of TypedStorage, nothing the user can act on) is not shown."""
    skipped, logger = SkippedChoices(), logging.getLogger(SkippedChoices.LOGGER)
    logger.addFilter(skipped)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)
            yield skipped
    finally:
        logger.removeFilter(skipped)


@contextmanager
def compiling(mode: str, what: str) -> Iterator[None]:
    """The block in which `what` first runs the decoder layers compiled in `mode`: it says so, and how long it took,
    logs every minute meanwhile (an autotuned compile takes ~5 min cold), and says in one line what inductor's
    autotune dropped (`quiet_autotune`)."""
    from trainer.events import heartbeat, log

    log(f"{what}: compiling the decoder layers, {mode} (~{MODES[mode].cold_s:.0f} s cold, seconds from a cache file)")
    t = time.perf_counter()
    with heartbeat(f"{what}: still compiling"), quiet_autotune() as skipped:
        yield
    log(f"{what} compiled and queued in {time.perf_counter() - t:.1f} s")
    if skipped.reports:
        log(f"autotune: inductor dropped the Triton configs this GPU cannot build or run and kept the rest "
            f"({skipped.reports} reports of it kept out of this log)")


def compile_failed(exc: Exception) -> None:
    """Say that compiling failed and the run goes on without it (no C compiler for Triton's launcher, an op
    inductor does not support): the run only loses the speed-up."""
    from trainer.events import log

    first_line = (str(exc).strip().splitlines() or [""])[0][:200]
    log(f"torch.compile failed ({type(exc).__name__}: {first_line}); training on without it")
