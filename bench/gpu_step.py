"""Where the fast path's training step spends its time: variants of one step timed side by side, with kernel tables.

One process builds a random-initialised model at published dimensions (bench/gpu_models.py), adds the trainer's
LoRA, encodes a micro-batch of real-shaped prompts (500x375 JPEGs through the trainer's processor and feature
cache) and times forward + backward + optimizer step for each variant, cumulatively applied in order. Each
variant's first-step loss is compared with the plain peft one (bf16 tolerance), and its steady step time, samples/s,
text-model MFU and peak memory are printed. `--profile` adds a torch.profiler kernel table per variant.

    python bench/gpu_step.py --out $OUT --variants peft,fused,nodropout --profile peft,fused
    python bench/gpu_step.py --out $OUT --variants fused,fused_compile --save-cache /tmp/cc.bin   # cold compile
    python bench/gpu_step.py --out $OUT --variants fused,fused_compile --load-cache /tmp/cc.bin   # warm start
    python bench/gpu_step.py --out $OUT --qlora --variants fused                   # NF4 base weights, LoRA on top
    python bench/gpu_step.py --tiny --device cpu --variants peft,fused,nodropout  # CPU check of the script

`--startup` instead times what precedes the first step: imports, the checkpoint load (cProfile top entries),
a raw safetensors read for comparison, and the first (cold) forward + backward.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [os.environ.get("BENCH_TRAINER_ROOT", str(ROOT)), str(ROOT), str(ROOT / "bench")]

from gpu_variants import apply_variant, lora_modules  # noqa: E402 -- after the path it is found on


def build(args):
    """(peft model, processor, batch dict on device, answer-token count)."""
    import torch
    from gpu_matrix import _write_jpeg

    from trainer.collate import answer_ids, append_answer, build_chat_format, encode_prompt, pad_batch
    from trainer.config import TrainConfig
    from trainer.features import FeatureCache
    from trainer.model import apply_lora
    from trainer.train import to_device

    device = torch.device(args.device)
    work = Path(args.work)
    if args.tiny:
        from trainer.builtin import build_model_and_processor

        model, processor = build_model_and_processor("builtin:tiny-gemma3", seed=0)
        model = model.to(device, getattr(torch, args.tiny_dtype))
    else:
        from gpu_models import SPECS, build_model, build_processor

        processor = build_processor("gemma3", work)
        model = build_model(SPECS[args.model], processor)
        if args.qlora:  # NF4 base weights, as the trainer's --quantization 4bit loads them
            from gpu_models import quantize_nf4

            quantize_nf4(model)
    cfg = TrainConfig(model_id="bench", prompt=args.prompt, lora_dropout=args.lora_dropout)
    model = apply_lora(model, cfg)
    fmt = build_chat_format(processor, cfg.prompt)
    from PIL import Image

    prompts, keys = [], []
    for i in range(args.batch):
        path = work / "img" / f"{i}.jpg"
        if not path.is_file():
            _write_jpeg((path, i))
        prompts.append(encode_prompt(processor, fmt, Image.open(path).convert("RGB")))
        keys.append(str(i))
    cache = FeatureCache(model, processor, fmt, device)
    cache.add(keys, prompts)
    rows = [append_answer(cache.prompt(k), answer_ids(processor.tokenizer, fmt, i % 37)) for i, k in enumerate(keys)]
    # as the trainer moves it: the answer rows found on the host, so no step waits for the GPU to find them
    batch = to_device(pad_batch(rows, processor.tokenizer.pad_token_id), device)
    return model, processor, batch


_ANSWER_TOKENS: dict[int, int] = {}


def step_fn(model, batch, opt, ctx):
    """One optimizer step of the fast path (answer-only loss on cached features); returns the loss tensor."""
    import torch

    from trainer.train import answer_loss_sum, answer_tokens, step_context

    if id(batch) not in _ANSWER_TOKENS:  # read once: the trainer counts on the host (no wait for the GPU)
        _ANSWER_TOKENS[id(batch)] = answer_tokens(batch)
    n = _ANSWER_TOKENS[id(batch)]
    with step_context(model, True, False), ctx():
        loss = answer_loss_sum(model, batch)
    (loss / n).backward()
    torch.nn.utils.clip_grad_norm_([p for group in opt.param_groups for p in group["params"]], 1.0)  # as trainer
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach() / n


def time_variant(model, batch, opt, ctx, steps: int, warmup: int) -> dict:
    import torch

    torch.manual_seed(0)
    t = time.perf_counter()
    first = float(step_fn(model, batch, opt, ctx))
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    first_s = time.perf_counter() - t
    for _ in range(warmup):  # B starts at zero: only losses after an update tell the variants apart
        last = float(step_fn(model, batch, opt, ctx))
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    sync()
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, issued = [], []
    for _ in range(steps):
        t = time.perf_counter()
        step_fn(model, batch, opt, ctx)
        issued.append(time.perf_counter() - t)  # the host's share: the step is queued, not yet run
        sync()
        times.append(time.perf_counter() - t)
    times.sort(), issued.sort()
    cuda = model.device.type == "cuda"
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"first_loss": first, "check_loss": last, "first_step_s": first_s, "step_s": times[len(times) // 2],
            "step_s_min": times[0], "issue_s": issued[len(issued) // 2], "peak_gib": peak,
            "reserved_gib": torch.cuda.memory_reserved() / 2**30 if cuda else None}


def rng_digest() -> str:
    """A short digest of the generator's state (CUDA's on a GPU): equal after equal numbers of random draws."""
    import torch

    state = torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.get_rng_state()
    return hashlib.sha1(state.numpy().tobytes()).hexdigest()[:12]


def rng_losses(model, batch, opt, ctx, steps: int = 4) -> list[float]:
    """Losses of `steps` steps at learning rate 0 from one seed, with LoRA B set to fixed random values (at its
    zero init dropout would not reach the loss): the weights stay put and each step draws new dropout masks, so two
    variants give the same list only if they draw the same masks (to rounding)."""
    import torch

    b_weights = [m.lora_B[k].weight for m in lora_modules(model) for k in m.lora_B]
    saved, lrs = [w.detach().clone() for w in b_weights], [g["lr"] for g in opt.param_groups]
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for w in b_weights:
            w.copy_(torch.randn(w.shape, generator=gen) * 0.02)
    for g in opt.param_groups:
        g["lr"] = 0.0
    torch.manual_seed(123)
    losses = [float(step_fn(model, batch, opt, ctx)) for _ in range(steps)]
    for g, lr in zip(opt.param_groups, lrs, strict=True):
        g["lr"] = lr
    with torch.no_grad():
        for w, w0 in zip(b_weights, saved, strict=True):
            w.copy_(w0)
    return losses


def cprofile_variant(model, batch, opt, ctx, out: Path, name: str, steps: int = 4) -> None:
    """Where the host's time goes over `steps` steps, by Python function (cProfile, sorted by own time)."""
    import cProfile
    import io
    import pstats

    import torch

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        step_fn(model, batch, opt, ctx)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(45)
    (out / f"cprofile_{name}.txt").write_text(text.getvalue())


def profile_variant(model, batch, opt, ctx, out: Path, name: str) -> dict:
    """Kernel table of two steps; CUDA time split into GEMM / attention / everything else."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if model.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(2):
            step_fn(model, batch, opt, ctx)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if model.device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=90)
    (out / f"profile_{name}.txt").write_text(table)
    split = {"gemm": 0.0, "attention": 0.0, "other": 0.0, "kernels": 0}
    for e in prof.events():
        if e.device_type.name != "CUDA":
            continue
        n = e.name.lower()
        kind = ("attention" if any(s in n for s in ("fmha", "flash", "attention", "attn")) else
                "gemm" if any(s in n for s in ("gemm", "nvjet", "xmma", "cutlass", "sm90", "splitk", "triton_tem"))
                else "other")
        split[kind] += e.device_time / 1e3 / 2  # ms per step
        split["kernels"] += 0.5
    return split


def text_flops(model, batch) -> float:
    """Useful FLOPs of one step's text part, bench/gpu_models.py convention (no vision: features are cached)."""
    from gpu_models import flop_model, flops_per_sample

    fm = flop_model(model, 0)
    mask = batch["attention_mask"]
    answer = float((batch["labels"][:, 1:] != -100).sum()) / mask.shape[0]
    return sum(flops_per_sample(fm, float(n), answer) for n in mask.sum(1).tolist())


def run_steps(args) -> list[dict]:
    import torch

    if args.load_cache and Path(args.load_cache).is_file():
        t = time.perf_counter()
        torch.compiler.load_cache_artifacts(Path(args.load_cache).read_bytes())
        print(f"loaded compile cache {args.load_cache} in {time.perf_counter() - t:.2f} s", flush=True)
    model, processor, batch = build(args)
    params = [p for p in model.parameters() if p.requires_grad]
    init = [p.detach().clone() for p in params]  # every variant starts from the same adapter and optimizer
    flops, out, state, rows = text_flops(model, batch), Path(args.out), {}, []
    out.mkdir(parents=True, exist_ok=True)
    peak = float(os.environ.get("BENCH_PEAK_TFLOPS", 798)) * 1e12
    base_loss = None
    for name in args.variants.split(","):
        ctx = apply_variant(name, model, state)
        with torch.no_grad():
            for p, p0 in zip(params, init, strict=True):
                p.copy_(p0)
        opt = torch.optim.AdamW(params, lr=1e-3, fused=args.device == "cuda" or None)
        row = {"variant": name}
        if args.rng_check:  # from the shared start, before any update: only the masks can differ
            row["rng_losses"] = rng_losses(model, batch, opt, ctx)
            row["rng_after"] = rng_digest()  # after those steps: equal between variants drawing as many numbers
        row.update(time_variant(model, batch, opt, ctx, args.steps, args.warmup))
        base_loss = row["check_loss"] if base_loss is None else base_loss
        row["loss_rel_diff"] = abs(row["check_loss"] - base_loss) / abs(base_loss)
        row["samples_per_s"] = args.batch / row["step_s"]
        row["text_mfu"] = flops / row["step_s"] / peak
        if name in args.profile.split(","):
            row["profile_ms"] = profile_variant(model, batch, opt, ctx, out, name)
        if name in args.cprofile.split(","):
            cprofile_variant(model, batch, opt, ctx, out, name)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.save_cache:
        saved = torch.compiler.save_cache_artifacts()
        if saved:
            Path(args.save_cache).write_bytes(saved[0])
            print(f"saved compile cache: {len(saved[0]) / 1e6:.1f} MB", flush=True)
    tokens = int(batch["attention_mask"].sum())
    (out / "steps.json").write_text(json.dumps({"args": vars(args), "tokens": tokens, "rows": rows}, indent=1))
    print(f"\n{args.model} micro-batch {args.batch}, {tokens} tokens, {flops / 1e12:.1f} TFLOP per step")
    print(f"{'variant':10} {'step ms':>8} {'host ms':>8} {'1st s':>7} {'samples/s':>9} {'MFU':>6} {'peak GiB':>8} "
          f"{'loss diff':>9}")
    for r in rows:
        print(f"{r['variant']:10} {r['step_s'] * 1e3:8.1f} {r['issue_s'] * 1e3:8.1f} {r['first_step_s']:7.2f} "
              f"{r['samples_per_s']:9.2f} "
              f"{r['text_mfu'] * 100:5.1f}% {r['peak_gib'] or 0:8.2f} {r['loss_rel_diff']:9.1e}  {r.get('profile_ms', '')}")
    return rows


# ------------------------------------------------------------------------------------------- start-up
def run_startup(args) -> None:
    """Save a checkpoint once, then time a fresh process's imports, load and first step."""
    import subprocess

    ckpt = Path(args.work) / f"ckpt-{args.model}"
    if not (ckpt / "config.json").is_file():
        import torch
        from gpu_models import SPECS, build_model, build_processor

        processor = build_processor("gemma3", Path(args.work))
        model = build_model(SPECS[args.model], processor)
        model.save_pretrained(ckpt)
        processor.save_pretrained(ckpt)
        del model
        torch.cuda.empty_cache()
    code = STARTUP_CHILD.replace("CKPT", str(ckpt)).replace("OUTDIR", args.out)
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


STARTUP_CHILD = r'''
import time; t0 = time.time()
import cProfile, pstats, io, json, glob
import torch; t_torch = time.time()
import transformers, peft; t_hf = time.time()
from transformers import AutoModelForImageTextToText
t_cls = time.time()
prof = cProfile.Profile(); prof.enable()
model = AutoModelForImageTextToText.from_pretrained("CKPT", dtype=torch.bfloat16, attn_implementation="sdpa",
                                                   device_map={"": 0}, low_cpu_mem_usage=True)
torch.cuda.synchronize(); prof.disable(); t_load = time.time()
s = io.StringIO(); pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(35)
open("OUTDIR/startup_load_profile.txt", "w").write(s.getvalue())
del model; torch.cuda.empty_cache()
from safetensors.torch import load_file
t = time.time(); n = 0
for f in sorted(glob.glob("CKPT/*.safetensors")):
    n += sum(v.numel() * v.element_size() for v in load_file(f, device="cuda").values())
torch.cuda.synchronize(); t_raw = time.time() - t
print(json.dumps({"import_torch_s": t_torch - t0, "import_hf_peft_s": t_hf - t_torch, "import_cls_s": t_cls - t_hf,
                  "from_pretrained_s": t_load - t_cls, "raw_safetensors_cuda_s": t_raw, "gb": n / 1e9}))
print(s.getvalue()[:6000])
'''


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    p.add_argument("--work", default="/tmp/gpu-bench")
    p.add_argument("--model", default="gemma-3-4b")
    p.add_argument("--prompt", default="list")
    p.add_argument("--batch", type=int, default=16, help="samples per forward/backward")
    p.add_argument("--qlora", action="store_true", help="NF4 base weights (bitsandbytes), LoRA on top")
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--variants", default="peft,fused,nodropout")
    p.add_argument("--profile", default="", help="comma list of variants to profile")
    p.add_argument("--rng-check", action="store_true", help="per variant, 4 losses at lr 0 (same masks?)")
    p.add_argument("--cprofile", default="", help="comma list of variants to cProfile (host time by function)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--tiny-dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--save-cache", help="write torch.compile's cache artifacts (mega-cache) here at the end")
    p.add_argument("--load-cache", help="load torch.compile cache artifacts from here first (a warm start)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--startup", action="store_true")
    args = p.parse_args()
    if args.startup:
        run_startup(args)
    else:
        run_steps(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
