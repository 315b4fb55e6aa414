"""GPU benchmark of the trainer's default recipe at real model sizes: speed, MFU, memory, start-up, eval.

Each configuration (model x mode) runs `trainer.run.run` - the same code `python -m trainer` runs: data pipeline,
collate, LoRA, checkpointing choice, training loop, checkpoints, both eval modes - in its own process, on
random-initialised models at the published dimensions (bench/gpu_models.py), the real Gemma 3 tokenizer, and
500x375 JPEGs decoded and resized by the trainer's own pipeline. Only model loading is swapped: the model is built
from its config on the GPU (no 55 GB checkpoints needed), except with --from-disk, where gemma-3-4b is first saved
as an ordinary checkpoint and then loaded by the trainer's own loader (the start-up target is about that path).

    python bench/gpu_train.py --out $OUT --matrix gemma-3-4b:lora,gemma-3-4b:qlora --from-disk     # on the GPU
    python bench/gpu_train.py --out /tmp/b --tiny --device cpu                                       # CPU check

Writes $OUT/results.json (every figure, per configuration) and prints a table last. See bench/README.md for the
FLOP convention behind MFU (bench/gpu_models.py: flops_per_sample).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

PROCESS_START = time.time()  # fallback if psutil is missing; set before any heavy import
if os.environ.get("BENCH_STARTUP_PROFILE") and "--one" in sys.argv:  # cProfile from here to the first step
    import cProfile

    STARTUP_PROFILE = cProfile.Profile()
    STARTUP_PROFILE.enable()
ROOT = Path(__file__).resolve().parents[1]
# BENCH_TRAINER_ROOT: benchmark a trainer checkout other than this one (e.g. a candidate carried to the device)
sys.path[:0] = [os.environ.get("BENCH_TRAINER_ROOT", str(ROOT)), str(ROOT), str(ROOT / "bench")]

from gpu_learning import accuracy, adapter_norms, dynamo_counters, grad_probe, record_compile_checks  # noqa: E402
from gpu_matrix import environment, measure_peak_tflops, print_table, run_matrix  # noqa: E402
from gpu_probes import (  # noqa: E402
    check_cache,
    host_split,
    host_split_summary,
    probe_benchmarks,
    profile_first_step,
    profile_steps,
    step_walls,
    stop_startup_profile_at_first_step,
    synthetic_encode_source,
    time_snapshots,
    train_timeline,
)

DEFAULT_MATRIX = ("gemma-3-4b:lora,gemma-3-4b:qlora,gemma-4-E4B:lora,gemma-4-E4B:qlora,gemma-3-12b:lora,"
                  "gemma-3-27b:qlora,gemma-4-31B:qlora,gemma-3-27b:lora")
REFERENCE = {"train_sps": {"qlora": 0.92, "lora": 1.11}, "peak_gib": {"qlora": 4.25, "lora": 9.18},
             "eval_generate_ips": {"qlora": 2.14, "lora": 3.27}, "first_step_s": 75.0}


def process_start() -> float:
    try:
        import psutil

        return psutil.Process().create_time()
    except ImportError:
        return PROCESS_START


# ------------------------------------------------------------------------------------------- one config
class TimedSink:
    """Keeps every trainer event with its wall time; prints nothing (the table at the end is the output)."""

    def __init__(self):
        self.events: list[dict] = []

    def emit(self, event: str, **fields) -> None:
        self.events.append({"event": event, "t": time.time(), **fields})


def _install_hooks(args, spec, work: Path, marks: dict) -> None:
    """Swap model loading (from config, unless --model-dir), capture the model, time every train / evaluate."""
    import trainer.run as run_mod

    load = run_mod.load_model_and_processor
    if spec is not None and not args.model_dir:
        load = _from_config_loader(spec, work, marks)
    real_lora, real_train, real_eval = run_mod.apply_lora, run_mod.train, run_mod.evaluate

    def capture_load(*a, **k):
        marks["loaded"] = load(*a, **k)
        return marks["loaded"]

    def capture_lora(*a, **k):
        marks["peft_model"] = real_lora(*a, **k)
        return marks["peft_model"]

    def timed_train(*a, **k):
        marks["train_start"] = time.time()
        _reset_peak()
        try:
            return real_train(*a, **k)
        finally:
            marks["train_end"] = time.time()
            marks["train_peak_gib"] = _peak()

    def timed_eval(model, processor, fmt, examples, mode, **k):
        t = time.time()
        out = real_eval(model, processor, fmt, examples, mode, **k)
        phase = "final" if "train_end" in marks else "baseline"
        marks.setdefault("evals", []).append({"phase": phase, "mode": mode, "n": len(examples),
                                              "seconds": time.time() - t})
        return out

    real_phase = run_mod._evaluate_modes

    def timed_phase(*a, **k):
        t = time.time()
        out = real_phase(*a, **k)
        marks.setdefault("phases", []).append({"phase": a[5], "seconds": time.time() - t})
        return out

    real_compile = getattr(run_mod, "_compile_ahead", None)

    def timed_compile(*a, **k):
        """Beside the eval images' encode, part of the baseline phase (as trainer.run times it); alone, its own."""
        t = time.time()
        out = real_compile(*a, **k)
        marks.setdefault("phases", []).append({"phase": "baseline" if k.get("eval_images") else "compile",
                                               "seconds": time.time() - t, "part": "compile_ahead"})
        return out

    run_mod._evaluate_modes = timed_phase
    if real_compile is not None:  # an older trainer checkout (BENCH_TRAINER_ROOT) compiles at its first step
        run_mod._compile_ahead = timed_compile
    run_mod.load_model_and_processor, run_mod.apply_lora = capture_load, capture_lora
    run_mod.train, run_mod.evaluate = timed_train, timed_eval


def _from_config_loader(spec, work: Path, marks: dict):
    import torch
    from gpu_models import build_model, build_processor, quantize_nf4

    from trainer.model import Loaded

    def load(cfg, token, quantize=None):
        t = time.time()
        processor = build_processor(spec.family, work)
        model = build_model(spec, processor)
        _trainer_load_hooks(model)
        if cfg.quantization == "4bit":
            quantize_nf4(model)
        torch.cuda.reset_peak_memory_stats()  # the build held bf16 weights briefly; a 4-bit load would not
        marks["model_build_s"] = time.time() - t
        return Loaded(model, processor, spec.family, torch.device("cuda"))

    return load


def _trainer_load_hooks(model) -> None:
    """What the trainer's own loader adds to a loaded model (a trainer checkout without them: nothing)."""
    try:
        from trainer.model import contiguous_vision_stream
    except ImportError:
        return
    contiguous_vision_stream(model)


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def run_one(args) -> dict:
    """Run the trainer on one configuration in this process and return its figures."""
    t_proc = process_start()
    name, mode = args.one.split(":")
    from gpu_models import SPECS

    spec = None if args.tiny else SPECS[name]
    work = Path(args.work)
    from trainer.config import TrainConfig
    from trainer.run import run

    marks: dict = {}
    _install_hooks(args, spec, work, marks)
    _generate_full_length(marks)
    if globals().get("STARTUP_PROFILE"):
        stop_startup_profile_at_first_step(STARTUP_PROFILE, Path(args.out) / args.one.replace(":", "-"))
    host_split(marks)
    time_snapshots(marks)
    if args.probe_benchmarks:
        probe_benchmarks(marks)
    if args.first_step_profile:
        profile_first_step(Path(args.out) / args.one.replace(":", "-"))
    if args.encode == "inline":  # the first epoch's images encoded between steps, as before trainer.encoding
        import trainer.run as run_mod

        run_mod.choose_encode_ahead = lambda *a, **k: (False, "bench: --encode inline")
    if args.encode == "spinwait":  # the encode-ahead thread spin-waits on its events (default CUDA events)
        import trainer.features

        trainer.features.BLOCKING_EVENTS = False
    if args.encode_source != "loader":
        synthetic_encode_source()
    if os.environ.get("BENCH_SWITCH_INTERVAL_MS"):  # how long a thread waiting for the interpreter waits at most
        sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL_MS"]) / 1e3)
    if os.environ.get("BENCH_CHECK_CACHE"):
        check_cache(marks)
    record_compile_checks(marks)
    if os.environ.get("BENCH_GRAD_PROBE"):  # where the first steps' gradients live; a huge one is stepped again
        grad_probe(marks)
    if os.environ.get("BENCH_SAME_PRIORITY"):  # the steps' and evals' stream no higher than the encode threads'
        import contextlib

        import trainer.run as run_mod

        run_mod.above_the_encodes = lambda device: contextlib.nullcontext()
    if args.encode == "nobaseline":  # the first epoch's encodes start with training, not before the baseline eval
        import trainer.encoding

        trainer.encoding.DURING_BASELINE = False
    if args.profile_steps:
        profile_steps(marks, [int(s) for s in args.profile_steps.split(",")], Path(args.out) / args.one.replace(":", "-"))
    model_id = f"builtin:{name}" if args.tiny else (args.model_dir or f"bench:{name}")
    cfg = TrainConfig(model_id=model_id, dataset=str(work / "pets"), output_dir=str(work / f"run-{name}-{mode}"),
                      train_size=args.train_size, eval_size=args.eval_size, num_epochs=args.epochs,
                      quantization="4bit" if mode == "qlora" else "none", max_new_tokens=args.max_new_tokens,
                      **json.loads(args.overrides)).validate()
    shutil.rmtree(cfg.output_dir, ignore_errors=True)  # a finished run dir would make the trainer exit at once
    sink = TimedSink()
    marks["run_entry"] = time.time()  # process start -> here: interpreter, imports, hooks
    run(cfg, sink)
    return summarise(cfg, sink.events, marks, t_proc, name, mode)


def _generate_full_length(marks: dict) -> None:
    """Generation eval always produces --max-new-tokens tokens (min_new_tokens = max_new_tokens).

    A trained model answers in a few tokens and random weights may run to the cap; the reference's figures are for
    32 generated tokens per image, so the benchmark pins the length (the trainer does not). The pin is a keyword of
    `generate` itself: transformers 5 rebuilds the config it is given, so a GenerationConfig subclass (the first
    version of this hook) was silently dropped, and trained models stopped after 2-7 ids.
    """
    import transformers

    real = transformers.GenerationMixin.generate

    def counted(self, *args, **kwargs):  # new tokens per row, from the ids (decoded text hides special tokens)
        kwargs["min_new_tokens"] = kwargs["generation_config"].max_new_tokens
        out = real(self, *args, **kwargs)
        marks.setdefault("new_tokens", []).append(out.shape[-1] - kwargs["input_ids"].shape[-1])
        return out

    transformers.GenerationMixin.generate = counted


def summarise(cfg, events: list[dict], marks: dict, t_proc: float, name: str, mode: str) -> dict:
    """Turn the event log and timing marks into the benchmark's figures."""
    from gpu_models import mfu, sequence_shapes

    steps = [e for e in events if e["event"] == "step"]
    start = next(e for e in events if e["event"] == "start")
    samples = start["train_size"] * cfg.num_epochs if cfg.max_steps is None else None  # the images actually found
    train_s = marks["train_end"] - marks["train_start"]
    samples = samples or steps[-1]["step"] * cfg.batch_size * cfg.gradient_accumulation_steps
    # the whole baseline phase: both eval modes and the eval images' decode + encode that only the eval needs
    baseline_eval_s = sum(p["seconds"] for p in marks.get("phases", []) if p["phase"] == "baseline")
    shapes = sequence_shapes(cfg, marks)
    result = {
        "model": name, "mode": mode, "train_samples": samples, "train_s": train_s,
        "train_samples_per_s": samples / train_s,
        "steady_samples_per_s": _steady(steps),
        "tokens_per_sample": shapes["tokens"], "train_tokens_per_s": samples * shapes["tokens"] / train_s,
        "first_step_s": steps[0]["t"] - t_proc - baseline_eval_s,
        "first_step_incl_baseline_s": steps[0]["t"] - t_proc,
        "first_step_minus_eval_calls_s": steps[0]["t"] - t_proc - sum(  # the 2026-11-22 convention (first calls)
            e["seconds"] for e in marks.get("evals", []) if e["phase"] == "baseline"),
        "model_build_s": marks.get("model_build_s"),
        "peak_train_gib": marks.get("train_peak_gib"), "peak_gib": _peak(),
        "eval": {f"{e['phase']}_{e['mode']}": {"images_per_s": e["n"] / e["seconds"], "n": e["n"]}
                 for e in marks.get("evals", [])},
        "eval_phases": marks.get("phases", []),
        "start_event_s": next(e["t"] for e in events if e["event"] == "start") - t_proc,
        "run_entry_s": marks["run_entry"] - t_proc,
        "step_profiles": marks.get("step_profiles"),
        "trainer_timings": _run_timings(cfg),
        "generated_tokens": _generated_tokens(cfg, marks),
        "generated_ids_per_call": marks.get("new_tokens"),
        "events": _notable(events),
        "train_timeline": train_timeline(events, marks),
        "step_ms": step_walls(events, marks),
        "host_split": host_split_summary(marks),
        "snapshot_ms": marks.get("snapshot_ms"),
        "reserve_ms": marks.get("reserve_ms"),
        "autotuned_kernels": marks.get("autotuned_kernels"),
        "final_loss": steps[-1]["loss"],
        "step_losses": [round(e["loss"], 4) for e in steps],
        "step_grad_norms": [round(e["grad_norm"], 4) for e in steps if e.get("grad_norm") is not None],
        "cache_check": marks.get("cache_check"),
        "grad_probe": marks.get("grad_probe"),
        "compile_checks": marks.get("compile_checks"),
        "first_step_again": marks.get("first_step_again"),
        "compile_check_s": marks.get("compile_check_s"),
        "kernel_configs": marks.get("kernel_configs"),
        "config_swaps": marks.get("config_swaps"),
        "forced_configs": marks.get("forced_configs"),
        "accuracy": accuracy(cfg),
        "adapter_norms": adapter_norms(cfg),
        "dynamo": dynamo_counters(),
        "config": cfg.to_dict(),
    }
    result |= mfu(marks, shapes, events, samples, train_s)
    return result


def _run_timings(cfg) -> dict:
    """The trainer's own section timings from metrics.json (data, model load, evals, train)."""
    path = Path(cfg.output_dir) / "metrics.json"
    return json.loads(path.read_text()).get("timings", {}) if path.is_file() else {}


def _generated_tokens(cfg, marks: dict) -> dict:
    """Mean tokens generated per image in each generate pass (random weights may stop early or run to the cap)."""
    path = Path(cfg.output_dir) / "predictions.jsonl"
    if not path.is_file():
        return {}
    tok = marks["loaded"].processor.tokenizer
    lengths: dict[str, list[int]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["mode"] == "generate":
            lengths.setdefault(row["phase"], []).append(len(tok.encode(row["output"], add_special_tokens=False)) + 1)
    return {phase: sum(v) / len(v) for phase, v in lengths.items()}


def _steady(steps: list[dict]) -> float | None:
    """Median samples/s of the steps after the first quarter (warm-up, compilation and caching excluded)."""
    rates = sorted(s["samples_per_s"] for s in steps[len(steps) // 4:] if s.get("samples_per_s"))
    return rates[len(rates) // 2] if rates else None


def _notable(events: list[dict]) -> dict:
    """Trainer events that explain its choices (batch size, checkpointing, caching), for the record."""
    keep = {"plan", "autotune", "memory_plan", "image_cache", "gradient_checkpointing"}
    return {e["event"]: {k: v for k, v in e.items() if k not in ("t", "event")} for e in events if e["event"] in keep}


def image_bytecode(roots: list[str], prefix: str = "/tmp/bench-pycache") -> dict:
    """Compile every module under `roots` to bytecode, as the image's build does (UV_COMPILE_BYTECODE=1), into
    `prefix` (PYTHONPYCACHEPREFIX, inherited by the configurations' processes): the device's environment sets
    PYTHONDONTWRITEBYTECODE=1 and ships no bytecode for most modules, so each of its processes compiled ~2,000 of
    them from source on the way to the first step, which no process of the image does."""
    import subprocess

    os.environ.setdefault("PYTHONPYCACHEPREFIX", prefix)
    t = time.perf_counter()
    dirs = [r for r in dict.fromkeys(roots) if r and Path(r).is_dir()]
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", *dirs], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {"bytecode_prefix": os.environ["PYTHONPYCACHEPREFIX"], "bytecode_compile_s": time.perf_counter() - t}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "bench-out"), help="results.json goes here")
    parser.add_argument("--work", default="/tmp/gpu-bench", help="scratch: dataset, checkpoints, run dirs")
    parser.add_argument("--matrix", default=DEFAULT_MATRIX, help="comma list of MODEL:lora|qlora")
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--eval-size", type=int, default=64)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max-new-tokens", type=int, default=32, help="the reference's eval generated 32")
    parser.add_argument("--overrides", default="{}", help="JSON of extra TrainConfig fields")
    parser.add_argument("--budget-s", type=float, default=540, help="stop starting configurations after this")
    parser.add_argument("--min-left-s", type=float, default=60)
    parser.add_argument("--from-disk", action="store_true", help="gemma-3-4b: save, then load via the trainer")
    parser.add_argument("--tiny", action="store_true", help="builtin tiny models (CPU check of this script)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--profile-steps", default="", help="comma list of steps s: profile steps s and s+1")
    parser.add_argument("--first-step-profile", action="store_true", help="cProfile the first (compiling) step")
    parser.add_argument("--probe-benchmarks", action="store_true",
                        help="after the first step, each Triton kernel's autotune cache state (a warm start should miss none)")
    parser.add_argument("--encode-source", default="loader", choices=("loader", "pinned"),
                        help="pinned: the encode-ahead thread gets one pinned image over and over, no loader "
                             "(wrong features: for timing the baseline's generation beside the encodes only)")
    parser.add_argument("--encode", default="auto", choices=("auto", "inline", "nobaseline", "spinwait"),
                        help="inline: no encode-ahead thread; "
                             "nobaseline: the encode-ahead thread starts with training, not before the baseline; "
                             "spinwait: the thread spin-waits on its encodes' events (default CUDA events)")
    parser.add_argument("--image-bytecode", action="store_true",
                        help="compile all modules to bytecode first, as the image is built (start-up figures)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if args.one:
        Path(args.result).write_text(json.dumps(run_one(args), indent=1, default=str))
        return 0
    if args.tiny and args.matrix == DEFAULT_MATRIX:
        args.matrix = "tiny-gemma3:lora,tiny-gemma4:lora"
    env = environment()
    if args.image_bytecode:
        import site

        env.update(image_bytecode([*site.getsitepackages(), *sys.path[1:], str(ROOT / "trainer")]))
    if args.device == "cuda":
        env["peak_bf16_tflops"] = measure_peak_tflops()
        os.environ["BENCH_PEAK_TFLOPS"] = str(env["peak_bf16_tflops"])
    results = run_matrix(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"environment": env, "reference": REFERENCE, "args": vars(args),
                                                  "results": results}, indent=1, default=str))
    with (out / "logs.txt").open("w") as fh:  # the device returns only $OUT: keep each child's last lines
        for log in sorted(Path(args.work).glob("log-*.txt")):
            fh.write(f"==== {log.name}\n" + "\n".join(log.read_text().splitlines()[-80:]) + "\n")
    print(json.dumps(env))
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
