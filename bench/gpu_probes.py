"""Probes the GPU benchmark adds to a trainer run: step profiles, step wall times, the training-phase timeline,
start-up and first-step cProfiles and the compiled kernels' autotune cache states (bench/gpu_train.py;
bench/README.md says how to read them)."""

from __future__ import annotations

import time
from pathlib import Path


def stop_startup_profile_at_first_step(profile, out: Path) -> None:
    """Write the start-up cProfile (process start -> first optimizer step begins), cumulative and own time."""

    import trainer.train as train_mod

    real, done = train_mod._optimizer_step, []

    def first(*a, **k):
        if done:  # a flag, not unwrapping: other probes may have wrapped this one since
            return real(*a, **k)
        done.append(True)
        profile.disable()
        write_profile(profile, out / "startup_profile.txt", cumulative=70, own=30)
        return real(*a, **k)

    train_mod._optimizer_step = first


def profile_steps(marks: dict, starts: list[int], out: Path) -> None:
    """torch.profiler over optimizer steps s and s+1 for each s in `starts` (1-based): wall vs GPU kernel time.

    What the GPU was busy with and for how long against the steps' wall time: the difference is host work the
    GPU waited for (batch preparation, syncs, launches). The CPU-side table is written to $OUT.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    import trainer.train as train_mod

    real, state = train_mod._optimizer_step, {"n": 0, "prof": None}
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])

    def profiled(*a, **k):
        state["n"] += 1
        n = state["n"]
        if n in starts:
            sync()
            state["prof"], state["t"] = profile(activities=acts), time.time()
            state["prof"].__enter__()
        result = real(*a, **k)
        if state["prof"] is not None and n - 1 in starts:
            sync()
            wall = time.time() - state["t"]
            prof, state["prof"] = state["prof"], None
            prof.__exit__(None, None, None)
            kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
            busy = sum(e.device_time for e in kernels) / 1e3
            marks.setdefault("step_profiles", []).append(
                {"steps": [n - 1, n], "wall_ms": 1e3 * wall / 2, "gpu_kernel_ms": busy / 2,
                 "kernels_per_step": len(kernels) / 2})
            out.mkdir(parents=True, exist_ok=True)
            (out / f"profile_steps_{n - 1}.txt").write_text(
                prof.key_averages().table(sort_by="cpu_time_total", row_limit=45, max_name_column_width=80))
        return result

    train_mod._optimizer_step = profiled


def train_timeline(events: list[dict], marks: dict) -> dict:
    """Where the training phase's wall time went: first step, steps of the first epoch (which encode the images)
    and of the later ones, checkpoint writes, and what is left before and after the steps."""
    steps = [e for e in events if e["event"] == "step"]
    if not steps:
        return {}
    t0, gaps, ckpt = marks["train_start"], {}, 0.0
    prev = t0
    for e in events:  # the last checkpoint may land after training, beside the final eval: not counted here
        if not t0 <= e["t"] <= marks["train_end"] or e["event"] not in ("step", "checkpoint"):
            continue
        if e["event"] == "checkpoint":
            ckpt += e["t"] - prev
        else:
            epoch = "first_step" if e is steps[0] else ("epoch1" if e["epoch"] <= 1 else "later")
            gaps[epoch] = gaps.get(epoch, 0.0) + e["t"] - prev
        prev = e["t"]
    counts = {"epoch1": sum(1 for e in steps[1:] if e["epoch"] <= 1), "later": sum(1 for e in steps if e["epoch"] > 1)}
    return {**{f"{k}_s": round(v, 2) for k, v in gaps.items()}, "checkpoints_s": round(ckpt, 2),
            "after_last_step_s": round(marks["train_end"] - prev, 2),
            **{f"{k}_ms_per_step": round(1e3 * gaps.get(k, 0) / n, 1) for k, n in counts.items() if n}}


def step_walls(events: list[dict], marks: dict) -> list:
    """Wall ms between consecutive step events (the first from the start of training); "C" marks a checkpoint."""
    out, prev = [], marks.get("train_start")
    for e in events:
        if prev is None or e["t"] < marks.get("train_start", 0) or e["event"] not in ("step", "checkpoint"):
            continue
        if e["event"] == "checkpoint":
            out.append("C")
            continue
        out.append(round(1e3 * (e["t"] - prev)))
        prev = e["t"]
    return out


def host_split(marks: dict) -> None:
    """Per step, the host's time issuing the step (`_optimizer_step` returns once its kernels are queued) and
    waiting for the GPU (reading the previous step's loss in `_Reporter.flush`). A host that waits is ahead of the
    GPU, which is then the limit; one that never waits is the limit itself (summary: `host_split_summary`)."""
    import trainer.train as train_mod

    rec = marks.setdefault("host_split", {"issue": [], "wait": []})
    real_step, real_flush = train_mod._optimizer_step, train_mod._Reporter.flush

    def step(*a, **k):
        t = time.perf_counter()
        result = real_step(*a, **k)
        rec["issue"].append(time.perf_counter() - t)
        return result

    def flush(self):
        t, pending = time.perf_counter(), bool(self.pending)
        real_flush(self)
        if pending:
            rec["wait"].append(time.perf_counter() - t)

    train_mod._optimizer_step, train_mod._Reporter.flush = step, flush


def host_split_summary(marks: dict) -> dict:
    """Median ms per step over the last two thirds of the steps (the first epoch encodes images)."""
    import statistics

    rec = marks.get("host_split") or {}
    out = {}
    for key in ("issue", "wait"):
        values = rec.get(key) or []
        tail = values[len(values) // 3:]
        if tail:
            out[f"{key}_ms"] = round(1e3 * statistics.median(tail), 1)
    return out


def time_snapshots(marks: dict) -> None:
    """Host milliseconds of each checkpoint's snapshot (the training thread's share of a checkpoint) and of
    pinning their host memory before the first step (`reserve_ms`)."""
    import trainer.train as train_mod

    def timed(real, key):
        def run(*a, **k):
            t = time.perf_counter()
            out = real(*a, **k)
            marks.setdefault(key, []).append(round(1e3 * (time.perf_counter() - t), 1))
            return out
        return run

    train_mod.snapshot = timed(train_mod.snapshot, "snapshot_ms")
    if hasattr(train_mod, "reserve_host_memory"):  # an older trainer checkout (BENCH_TRAINER_ROOT) may lack it
        train_mod.reserve_host_memory = timed(train_mod.reserve_host_memory, "reserve_ms")


COMPILING = (("trainer.train", "compile_ahead"), ("trainer.guard", "first_compiled_step"),  # where the step compiles
             ("trainer.train", "_first_compiled_step"))  # (an older trainer's first step)


def _wrap_compiling(wrap) -> None:
    """Replace each of the trainer's COMPILING functions with `wrap(real)`: the step compiles ahead (static
    shapes, before the baseline eval) or, where shapes vary, in the first step."""
    import importlib

    for module_name, name in COMPILING:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # an older trainer checkout (BENCH_TRAINER_ROOT) may lack one
            continue
        if hasattr(module, name):
            setattr(module, name, wrap(getattr(module, name)))


def profile_first_step(out: Path) -> None:
    """cProfile of the step's compile (ahead of training, or the first step's), written to
    `out`/first_step_profile.txt: where its seconds go."""
    import cProfile

    def wrap(real):
        def profiled(*a, **k):
            prof = cProfile.Profile()
            prof.enable()
            try:
                return real(*a, **k)
            finally:
                prof.disable()
                write_profile(prof, out / "first_step_profile.txt", cumulative=60, own=40)
        return profiled

    _wrap_compiling(wrap)


def write_profile(profile, path: Path, cumulative: int, own: int) -> None:
    """A cProfile's top functions by cumulative and by own time, as text."""
    import io
    import pstats

    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text)
    stats.sort_stats("cumulative").print_stats(cumulative)
    stats.sort_stats("tottime").print_stats(own)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.getvalue())
    stats.dump_stats(path.with_suffix(".prof"))  # the raw stats: callers and callees, read with pstats


def probe_benchmarks(marks: dict) -> None:
    """After the step's compile, every Triton kernel inductor has loaded and what its autotune cache said ("hit", "miss":
    benchmarked on its first run, "only 1 config"), and torch's count of kernel benchmarks. A warm start from the
    compile cache should have no misses; the sixth set's first-step cProfile counted 17 benchmarks.

    Read-only (gc walk after the step): patching the autotuner's methods broke the compile (their attributes
    differ between torch versions), and the trainer then runs on eagerly.
    """
    def wrap(real):
        def probed(*a, **k):
            result = real(*a, **k)
            try:
                marks["autotuned_kernels"] = _autotune_states()
            except Exception as exc:  # noqa: BLE001 -- a probe never fails the run
                marks["autotuned_kernels"] = [{"probe_error": f"{type(exc).__name__}: {exc}"}]
            return result
        return probed

    _wrap_compiling(wrap)


def _is_autotuner(obj, cls) -> bool:
    try:
        return isinstance(obj, cls)
    except ReferenceError:  # a dead weakref proxy
        return False


def _autotune_states() -> list[dict]:
    import gc
    import warnings

    from torch._dynamo.utils import compilation_time_metrics
    from torch._inductor.runtime.triton_heuristics import CachingAutotuner

    rows = []
    with warnings.catch_warnings():  # isinstance on some module-level objects warns of their deprecation
        warnings.simplefilter("ignore")
        found = [obj for obj in gc.get_objects() if _is_autotuner(obj, CachingAutotuner)]
    for obj in found:
        info = getattr(obj, "autotune_cache_info", None) or {}
        rows.append({"kernel": (getattr(obj, "inductor_meta", None) or {}).get("kernel_name"),
                     "state": info.get("autotune_cache_state"), "num_configs": info.get("num_configs"),
                     "launchers": len(getattr(obj, "launchers", None) or [])})
    bench = compilation_time_metrics.get("CachingAutotuner.benchmark_all_configs") or []
    rows.append({"benchmark_all_configs_calls": len(bench), "seconds": sum(bench)})
    return rows


def synthetic_encode_source() -> None:
    """bench only: the encode-ahead thread's chunks all reuse one decoded image, pinned on the host, with no
    DataLoader workers and no pin-memory thread. The features are wrong (one image for all); what it isolates is
    whether the baseline eval's generation loses its time beside the encodes to the loader (it did not)."""
    from trainer.encoding import Encoder
    from trainer.features import FeatureCache, _Prompts

    def encoder(self, examples, index_batches, num_workers, generator=None, ahead=False):
        chunks = self._uncached_chunks(examples, index_batches)
        if not chunks:
            return Encoder(self, examples, None, threaded=False)
        _, one = _Prompts(examples, self.processor, self.fmt)[chunks[0][0]]
        one = {k: v.pin_memory() for k, v in one.items()}
        return Encoder(self, examples, [[(i, one) for i in chunk] for chunk in chunks], threaded=ahead)

    FeatureCache.encoder = encoder


def check_cache(marks: dict, chunks_checked: int = 12) -> None:
    """After training, encode some of the first epoch's chunks again, in line, and compare them with the features
    the run cached (`cache_check`: images compared, how many differ, the largest difference): a feature cached
    wrong (a race between the encode-ahead thread and the steps) shows here."""

    import trainer.features as features_mod
    import trainer.run as run_mod

    chunks, real_encoder, real_train = [], features_mod.FeatureCache.encoder, run_mod.train

    def encoder(self, examples, index_batches, *a, **k):
        if k.get("what", "encode ahead") == "encode ahead":
            chunks.append(self._uncached_chunks(examples, index_batches))
        return real_encoder(self, examples, index_batches, *a, **k)

    def train(*a, **k):
        state = real_train(*a, **k)
        cache, examples = a[10].cache, a[11]
        picked = [c for c in (chunks[-1] if chunks else [])]
        picked = picked[:chunks_checked // 2] + picked[-chunks_checked // 2:]
        fresh = features_mod.FeatureCache(cache.model, cache.processor, cache.fmt, cache.device)
        worst, bad, n = 0.0, 0, 0
        for chunk in picked:
            subset = [examples[i] for i in chunk]
            loader = fresh._loader(subset, [list(range(len(subset)))], 2)
            for items in loader:
                fresh.add([subset[i].image_id for i, _ in items], [p for _, p in items])
            for ex in subset:
                a_, b_ = cache.entries[ex.image_id]["pixel_values"], fresh.entries[ex.image_id]["pixel_values"]
                diff = (a_.float() - b_.float()).abs().max().item()
                worst, bad, n = max(worst, diff), bad + (diff > 0), n + 1
        marks["cache_check"] = {"images": n, "differ": bad, "max_abs_diff": worst}
        return state

    features_mod.FeatureCache.encoder = encoder
    run_mod.train = train
