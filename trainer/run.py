"""One training run, start to finish: data -> model -> baseline eval -> LoRA training -> final eval -> outputs.

A compiled step (static shapes) compiles at the start of the baseline eval, beside the eval images' encode
(`_compile_ahead`), so the training phase starts with it compiled.

Linear sections, each timed. Re-running the same output dir is safe: a finished run (DONE present) exits at once,
an interrupted one resumes from its newest complete checkpoint and reuses the recorded baseline.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from functools import partial
from pathlib import Path

import torch

from trainer.batches import prepare_batches
from trainer.checkpoint import checkpoints_root, latest_checkpoint
from trainer.collate import TrainSamples, answer_ids, build_chat_format, pad_batch
from trainer.config import TrainConfig
from trainer.data import load_splits, select
from trainer.encoding import above_the_encodes, choose_encode_ahead, encode_during_baseline
from trainer.evaluate import evaluate
from trainer.events import EventSink, hf_token, log
from trainer.features import frozen_vision, new_cache
from trainer.labels import LABELS
from trainer.memory import MemoryPlan, eval_batch_size, plan_memory
from trainer.model import (
    apply_lora,
    choose_gradient_checkpointing,
    enable_gradient_checkpointing,
    load_model_and_processor,
    merge_adapter,
    pick_device,
)
from trainer.outputs import already_done, headline, write_json, write_outputs
from trainer.train import (
    StepPlan,
    TrainState,
    answer_loss_sum,
    build_optimizer,
    checkpoint_writer,
    gpu_memory_gib,
    load_state,
    plain_loss_sum,
    plan_steps,
    set_seed,
    step_context,
    train,
)


def run(cfg: TrainConfig, sink: EventSink) -> int:
    """Execute the run described by a validated config; returns the process exit code (0)."""
    with above_the_encodes(pick_device()):  # the encode threads' kernels give way to the steps' and the evals'
        return _run(cfg, sink)


def _run(cfg: TrainConfig, sink: EventSink) -> int:
    out = Path(cfg.output_dir)
    if (out / "DONE").exists():
        return already_done(out, sink)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg.to_dict())
    token = hf_token()
    set_seed(cfg.seed)

    # ---------------------------------------------------------------- data
    t = time.perf_counter()
    train_set, eval_set = select(load_splits(cfg.dataset, cfg.seed, token), cfg.train_size, cfg.eval_size, cfg.seed)
    timings["data_s"] = time.perf_counter() - t
    log(f"data: {len(train_set)} train / {len(eval_set)} eval images from {cfg.dataset}")

    # ---------------------------------------------------------------- model
    t = time.perf_counter()
    loaded = load_model_and_processor(cfg, token)
    if loaded.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # CPU runs are the tiny demo/tests; on a shared 2-core box OpenMP threads spin against each other
        # (measured: the README demo takes 19 s on 1 thread, 96 s on 2 under load). OMP_NUM_THREADS overrides.
        torch.set_num_threads(1)
    fmt = build_chat_format(loaded.processor, cfg.prompt)
    model = apply_lora(loaded.model, cfg)
    samples = TrainSamples(train_set, loaded.processor, fmt)
    timings["model_load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    plan, plan_event, memory = _plan(cfg, model, loaded, fmt, samples, train_set, eval_set)
    timings["plan_s"] = time.perf_counter() - t

    # ---------------------------------------------------------------- resume
    _, total = plan_steps(len(train_set), cfg)
    opt, sched = build_optimizer(model, cfg, total)
    state = TrainState()
    found = latest_checkpoint(checkpoints_root(out))
    if found:
        state = load_state(found[1], model, opt, sched)
    attempt = _attempt()
    log(f"attempt {attempt}: " + (f"resuming from {found[1]}" if found else "starting fresh"))
    sink.emit("start", run_id=os.environ.get("RUN_ID") or None, attempt=attempt, model_id=cfg.model_id,
              dataset=cfg.dataset, train_size=len(train_set), eval_size=len(eval_set), total_steps=total,
              resumed_from_step=found[0] if found else None)
    sink.emit("memory_plan", **plan_event)  # why this micro-batch and checkpointing (after "start": the contract)

    # ---------------------------------------------------------------- baseline (adapters off = the base model)
    # the training step compiles first, beside the eval images' encode: inside this phase when the baseline is
    # measured (the compile is hidden in the eval's image work), a phase of its own when it was recorded earlier
    t = time.perf_counter()
    recorded = _recorded_baseline(out, cfg, eval_set)
    if plan.compile_cache is not None and plan.shape is not None:
        plan = _compile_ahead(cfg, model, loaded, train_set, eval_set, plan, memory, eval_images=recorded is None)
        if recorded is not None:
            timings["compile_s"] = time.perf_counter() - t
            t = time.perf_counter()
    early = encode_during_baseline(plan, loaded.device)  # the first epoch's images encode in the eval's GPU idle time
    prepared = (prepare_batches(samples, train_set, loaded.processor, cfg, plan, state.step, total, loaded.device,
                                encode_now=True) if early else None)
    try:
        baseline = recorded or _baseline(out, cfg, model, loaded, fmt, eval_set, sink, plan)
    except BaseException:
        if prepared:
            prepared[1].close()
        raise
    timings["baseline_eval_s"] = time.perf_counter() - t
    during_baseline = prepared[1].encoder.images if prepared else 0
    if early:
        log(f"encode ahead: {during_baseline} of the first epoch's images encoded during the baseline eval")

    # ---------------------------------------------------------------- train
    # the last checkpoint lands beside the adapter's save and the final eval (seconds through a bucket's mount)
    with checkpoint_writer(cfg, sink).landing() as writes:
        t = time.perf_counter()
        if not found:  # a resumed run keeps the RNG state restored from its checkpoint: same dropout masks
            set_seed(cfg.seed)
        state = train(model, loaded.processor, samples, cfg, state, opt, sched, total, loaded.device, sink, plan,
                      train_set, prepared, writes)
        timings["train_s"] = time.perf_counter() - t
        if plan.cache is not None:
            sink.emit("image_cache", images=plan.cache.encoded, train_images=len(train_set), gib=plan.cache.gib(),
                      offload=plan.cache.offload, during_baseline=during_baseline)
        model.save_pretrained(out / "adapter")
        loaded.processor.save_pretrained(out / "adapter")

        # ------------------------------------------------------------ final eval
        t = time.perf_counter()
        final = _evaluate_modes(model, loaded, fmt, eval_set, cfg, "final", sink, plan)
        timings["final_eval_s"] = time.perf_counter() - t
    peak = gpu_memory_gib()

    # ---------------------------------------------------------------- merge (bf16 base, fresh load)
    if cfg.merge:
        t = time.perf_counter()
        del model, loaded, opt, sched  # the optimizer holds the adapter params: drop it too before reloading
        _free_gpu()
        merge_adapter(cfg, str(out / "adapter"), str(out / "merged"), token)
        timings["merge_s"] = time.perf_counter() - t

    # ---------------------------------------------------------------- outputs
    timings["total_s"] = time.perf_counter() - t_start
    write_outputs(out, cfg, baseline, final, state, timings, peak)
    primary = cfg.eval_modes[0]
    sink.emit("done", metrics_path=str(out / "metrics.json"), baseline=headline(baseline["reports"][primary]),
              final=headline(final["reports"][primary]), elapsed_s=timings["total_s"])
    (out / "DONE").write_text(json.dumps({"finished": True, "elapsed_s": timings["total_s"]}) + "\n")
    return 0


def _plan(cfg: TrainConfig, model, loaded, fmt, samples, train_set, eval_set) -> tuple[StepPlan, dict, MemoryPlan | None]:
    """Feature cache, loss and micro-batch / checkpointing plan for this model on this GPU, its event, and the
    measured memory plan (None on the plain path)."""
    if not cfg.fast_path:  # the plain reference path: configured micro-batches, full forward every step
        checkpointing, why = choose_gradient_checkpointing(cfg, model, samples[0]["input_ids"].shape[1])
        if checkpointing:
            enable_gradient_checkpointing(model)
        log(f"gradient checkpointing {'on' if checkpointing else 'off'} ({why})")
        event = dict(micro_batch=cfg.batch_size, accumulation=cfg.gradient_accumulation_steps,
                     checkpointing=checkpointing, why=f"plain path; {why}", feature_cache=False)
        return StepPlan(cfg.batch_size, plain_loss_sum), event, None
    cache = new_cache(cfg, model, loaded, fmt, len(train_set) + len(eval_set)) if frozen_vision(cfg) else None
    if cache is not None:
        probe = lambda m: next(cache.train_batches(train_set, [list(range(m))], 0))  # noqa: E731
    else:
        probe = lambda m: pad_batch([samples[i] for i in range(m)], loaded.processor.tokenizer.pad_token_id)  # noqa: E731
    context = partial(step_context, model, cache is not None, True)
    memory = plan_memory(cfg, model, probe, answer_loss_sum, loaded.device, lambda: enable_gradient_checkpointing(model),
                         context=context, disable_checkpointing=model.gradient_checkpointing_disable)
    log(f"micro-batch {memory.micro_batch} x {memory.accumulation}, gradient checkpointing "
        f"{'on' if memory.checkpointing else 'off'}: {memory.why}")
    static = cache is not None and model.config.model_type == "gemma3"  # Gemma 4 prompt lengths vary by image
    mode, compile_why, path = _compile_choice(cfg, model, loaded.device, memory.checkpointing, len(train_set), static)
    compiled = mode is not None
    log(f"torch.compile {'on' if compiled else 'off'}: {compile_why}")
    shape = _compiled_shape(cache, loaded, fmt, train_set, memory.micro_batch) if compiled else None
    ahead, ahead_why = (choose_encode_ahead(model, memory, loaded.device, memory.micro_batch, cfg.image_budget)
                        if cache is not None else (False, "no feature cache"))
    log(f"encode ahead {'on' if ahead else 'off'}: {ahead_why}")
    plan = StepPlan(memory.micro_batch, answer_loss_sum, cache, fused=True, compile_cache=path,
                    compile_mode=mode, shape=shape, encode_ahead=ahead)
    return plan, {**memory.event(), "feature_cache": cache is not None, "fused": True, "compile": compiled,
                  "compile_mode": mode, "compile_why": compile_why, "encode_ahead": ahead,
                  "encode_ahead_why": ahead_why}, memory


def _compiled_shape(cache, loaded, fmt, train_set, micro_batch: int) -> tuple[int, int] | None:
    """(rows, tokens) of every compiled micro-batch: the planned size, and the prompt plus the longest answer.

    Static shapes compile in ~29 s where dynamic ones took 114 s (BENCHMARKS.md); the padding costs a few tokens
    of ~420. Gemma 3 prompts all have the first one's length (a fixed 256 image tokens); a longer sample would
    still pad to its own length (and compile again).
    """
    if cache is None:
        return None
    prompt = cache.prompts(train_set[:1], 1, 0)[0]["input_ids"].shape[1]  # usually cached by the memory probes
    answer = max(len(answer_ids(loaded.processor.tokenizer, fmt, label)) for label in range(len(LABELS)))
    return micro_batch, prompt + answer


def _compile_choice(cfg: TrainConfig, model, device, checkpointing: bool, n_train: int, static: bool):
    """(compile mode or None, why, cache file) for the fast path; a chosen compile starts from its cache file if
    there. A file that does not load (another torch, torn) counts as absent and auto decides again: a warm start
    was assumed, and an autotuned compile cold costs minutes."""
    from trainer.compiling import MODES, cache_path, choose_compile, load_cache

    paths = {mode: cache_path(cfg, model, device, mode) for mode in MODES}
    warm = {mode for mode, path in paths.items() if path.is_file()}
    _, total = plan_steps(n_train, cfg)
    while True:
        mode, why = choose_compile(cfg, device, checkpointing, static, total,
                                   cfg.batch_size * cfg.gradient_accumulation_steps, warm)
        if mode is None or mode not in warm:
            return mode, why, paths.get(mode)
        if load_cache(paths[mode]):
            return mode, why + "; compiled artifacts loaded from the cache", paths[mode]
        if cfg.compile != "auto":
            return mode, why, paths[mode]
        warm.discard(mode)


def _compile_ahead(cfg: TrainConfig, model, loaded, train_set, eval_set, plan: StepPlan, memory: MemoryPlan,
                   eval_images: bool) -> StepPlan:
    """Compile the training step before the baseline eval, the eval images encoding beside it (`eval_images`).

    The compile is host work (tracing, loading the cached kernels: ~5 s warm on an H100), the eval images' encode
    loader and GPU work (~9 s for 370 images, decoded in workers). Side by side they took 10-11 s, where the
    first training step used to compile for 5-7 s with the GPU idle (BENCHMARKS.md, eighteenth set). A stand-in
    micro-batch of the compiled shape, made of one training sample, compiles what every step runs (static shapes:
    one graph).
    """
    from trainer.train import compile_ahead

    batches = plan.cache.train_batches(train_set, [[0] * plan.shape[0]], 0, shape=plan.shape)
    batch = next(batches)
    batches.close()
    encoder = _eval_encoder(cfg, model, loaded, eval_set, plan, memory) if eval_images else None
    with encoder or contextlib.nullcontext():
        plan = compile_ahead(model, batch, plan, loaded.device)
        if encoder is not None:
            encoder.ensure([ex.image_id for ex in eval_set])
    return plan


def _eval_encoder(cfg: TrainConfig, model, loaded, eval_set, plan: StepPlan, memory: MemoryPlan):
    """The eval images' encoder (on a thread and stream of its own), in the chunks the eval would encode them in,
    or None when one chunk does not fit beside the step's memory (the eval then encodes them itself)."""
    from trainer.encoding import fits_beside_step

    chunk = min(size for size, _ in _eval_sizes(cfg, model, loaded.device, len(eval_set)).values())
    if loaded.device.type == "cuda" and not fits_beside_step(model, memory, chunk, cfg.image_budget)[0]:
        log(f"the eval images encode after the compile: {chunk} of them do not fit beside the step's memory")
        return None
    index = list(range(len(eval_set)))
    return plan.cache.encoder(eval_set, [index[s:s + chunk] for s in range(0, len(index), chunk)], cfg.num_workers,
                              ahead=True, what="eval images, beside the compile")


def _eval_sizes(cfg: TrainConfig, model, device, n: int) -> dict[str, tuple[int, str]]:
    """{eval mode: (prompts per pass, why)}; the eval images are encoded in chunks of the smallest."""
    return {mode: eval_batch_size(cfg, model, device, mode, n) for mode in cfg.eval_modes}


def _evaluate_modes(model, loaded, fmt, eval_set, cfg: TrainConfig, phase: str, sink: EventSink,
                    plan: StepPlan) -> dict:
    """{"reports": {mode: REPORT}, "rows": [prediction rows]} for every configured eval mode."""
    reports, rows = {}, []
    sizes = _eval_sizes(cfg, model, loaded.device, len(eval_set))
    for mode, (size, why) in sizes.items():
        if size != cfg.eval_batch_size:
            log(f"{mode} eval batch {size}: {why}")
    encode = min(size for size, _ in sizes.values())
    prompts = plan.cache.prompts(eval_set, encode, cfg.num_workers) if plan.cache is not None else None
    with _merged_for_eval(model, cfg, loaded.device, phase):
        for mode in cfg.eval_modes:
            report, mode_rows = _evaluate_mode(model, loaded, fmt, eval_set, cfg, phase, mode, sizes[mode][0],
                                               prompts, sink)
            reports[mode] = report
            rows += [{"phase": phase, **row} for row in mode_rows]
    return {"reports": reports, "rows": rows}


@contextlib.contextmanager
def _merged_for_eval(model, cfg: TrainConfig, device, phase: str):
    """The final eval on a GPU runs with the adapter merged into the bf16 weights (then unmerged).

    That is the model `--merge` ships, and decoding is launch-bound: a merged layer is one kernel instead of
    the adapter's four. Not for 4-bit bases (merging into NF4 loses the update) or the plain reference path.
    """
    merge = phase == "final" and cfg.fast_path and cfg.quantization == "none" and device.type == "cuda"
    if merge:
        model.merge_adapter()
    try:
        yield
    finally:
        if merge:
            model.unmerge_adapter()


def _evaluate_mode(model, loaded, fmt, eval_set, cfg: TrainConfig, phase: str, mode: str, batch_size: int,
                   prompts, sink: EventSink) -> tuple[dict, list[dict]]:
    def progress(done: int, total: int) -> None:
        sink.emit("eval_progress", phase=phase, mode=mode, done=done, total=total)

    report, rows = evaluate(model, loaded.processor, fmt, eval_set, mode, batch_size=batch_size,
                            max_new_tokens=cfg.max_new_tokens, device=loaded.device, progress=progress,
                            prompts=prompts, fast=cfg.fast_path)
    sink.emit("eval", phase=phase, mode=mode, **headline(report), n=report["n"],
              unknown_rate=report["unknown_rate"], accuracy_ci95=report["accuracy_ci95"])
    return report, rows


def _recorded_baseline(out: Path, cfg, eval_set) -> dict | None:
    """The baseline this run already measured and recorded (same eval set, same modes), or None."""
    path = checkpoints_root(out) / "baseline.json"
    if path.is_file():
        recorded = json.loads(path.read_text())
        if recorded.get("image_ids") == [ex.image_id for ex in eval_set] and set(recorded["reports"]) == set(cfg.eval_modes):
            log("baseline already recorded; not recomputed")
            return recorded
    return None


def _baseline(out: Path, cfg, model, loaded, fmt, eval_set, sink, plan: StepPlan) -> dict:
    """Measure the baseline (adapters off) and record it for a retried task."""
    with model.disable_adapter():
        baseline = _evaluate_modes(model, loaded, fmt, eval_set, cfg, "baseline", sink, plan)
    write_json(checkpoints_root(out) / "baseline.json", {**baseline, "image_ids": [ex.image_id for ex in eval_set]})
    return baseline


def _attempt() -> int:
    """Cloud Run's retry counter (0 on the first try); anything unparsable counts as 0 rather than failing."""
    value = os.environ.get("CLOUD_RUN_TASK_ATTEMPT", "0")
    return int(value) if value.strip().isdigit() else 0


def _free_gpu() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
