"""Probe the training step's text attention at gemma-3-4b's shapes: which kernel for Gemma 3's mask, and what it costs.

Gemma 3's text attention is causal except that a prompt's 256 image tokens see each other both ways. transformers
hands SDPA that as a materialised boolean mask (repeated K/V for its 8 query / 4 KV heads), so SDPA cannot use its
causal kernels; in the compiled step it picks cuDNN's masked kernels, ~23 ms of a ~272 ms step (forward 6.3,
backward 17.2; BENCHMARKS.md, second set). Right-padded batches with the image at one position in every row give
the mask a simple shape: every row outside the image block is causal (pads only follow real tokens), and the image
rows see every key up to the block's end. This times forward + backward of each way to compute it and compares
the outputs and gradients on the real rows with the masked call's:

- `mask`: what transformers does (boolean mask, repeated K/V; SDPA picks the backend), and that mask under each
  SDPA backend that takes one;
- `split-<backend>`: one causal call over all rows, and one non-causal call for the image rows over the keys up to
  the block's end, joined (no mask; grouped heads through `enable_gqa` where the backend takes it);
- `flex`: flex_attention with a block mask of the same function, compiled.

    python3 bench/gpu_attention.py --out $OUT/attention
    python3 bench/gpu_attention.py --out /tmp/a --device cpu --batch 2 --tokens 40 --image 16 --start 3 --dim 32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from gpu_vision import timed  # noqa: E402 -- median of synced runs after two warm-ups, as the encode probe times


def gemma3_mask(tokens: int, start: int, image: int, device):
    """(T, T) bool, True = attend: causal, plus both ways inside the image block [start, start + image)."""
    import torch

    i = torch.arange(tokens, device=device)
    causal = i[:, None] >= i[None, :]
    block = (i >= start) & (i < start + image)
    return causal | (block[:, None] & block[None, :])


def masked(q, k, v, mask, backend=None):
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)  # transformers' repeat_kv
    if backend is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with sdpa_kernel([backend]):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def split(q, k, v, start: int, end: int, backend):
    """Causal attention for all rows, then the image rows [start, end) over keys [0, end), both ways."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel([backend]):
        causal = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        block = F.scaled_dot_product_attention(q[:, :, start:end], k[:, :, :end], v[:, :, :end], enable_gqa=True)
    return torch.cat([causal[:, :, :start], block, causal[:, :, end:]], dim=2)


def flex_fn(tokens: int, start: int, end: int, batch: int, device):
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def mod(b, h, qi, ki):
        return (qi >= ki) | ((qi >= start) & (qi < end) & (ki >= start) & (ki < end))

    block = create_block_mask(mod, None, None, tokens, tokens, device=device)
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v: compiled(q, k, v, block_mask=block, enable_gqa=True)


def variants(args, device):
    from torch.nn.attention import SDPBackend

    end = args.start + args.image
    mask = gemma3_mask(args.tokens, args.start, args.image, device)
    rows = {"mask": lambda q, k, v: masked(q, k, v, mask)}
    backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}
    if device.type == "cpu":
        backends = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION}
    for name, b in backends.items():
        if name != "flash":
            rows[f"mask-{name}"] = lambda q, k, v, b=b: masked(q, k, v, mask, b)
        rows[f"split-{name}"] = lambda q, k, v, b=b: split(q, k, v, args.start, end, b)
    if device.type == "cuda":
        rows["flex"] = flex_fn(args.tokens, args.start, end, args.batch, device)
    return rows


def run(args) -> list[dict]:
    import torch

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    shape = (args.batch, args.heads, args.tokens, args.dim)
    q = torch.randn(shape, device=device, dtype=dtype, generator=g).requires_grad_()
    k, v = (torch.randn((args.batch, args.kv_heads, args.tokens, args.dim), device=device, dtype=dtype,
                        generator=g).requires_grad_() for _ in range(2))
    grad = torch.randn(shape, device=device, dtype=dtype, generator=g)
    real = slice(0, args.tokens - args.pad)  # the last `pad` rows stand for right padding: not compared
    reference = None
    out = []
    for name, fn in variants(args, device).items():
        def step(fn=fn):
            q.grad = k.grad = v.grad = None
            o = fn(q, k, v)
            o.backward(grad)
            return o
        try:
            o = step()
            seconds = timed(step, device.type, args.iters)
        except Exception as exc:  # noqa: BLE001 -- a backend that refuses these shapes is a row, not a failure
            out.append({"variant": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"})
            continue
        got = [t.detach().float() for t in (o[:, :, real], q.grad[:, :, real], k.grad, v.grad)]
        if reference is None:
            reference = got
        diff = [float((a - b).abs().max()) for a, b in zip(got, reference, strict=True)]
        out.append({"variant": name, "fwd_bwd_ms": 1e3 * seconds, "per_step_ms": 1e3 * seconds * args.layers,
                    "max_abs_diff_out_dq_dk_dv": diff})
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--tokens", type=int, default=421, help="the default run's padded micro-batch width")
    p.add_argument("--pad", type=int, default=8, help="trailing rows treated as padding (not compared)")
    p.add_argument("--image", type=int, default=256)
    p.add_argument("--start", type=int, default=6, help="first image token's position")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=34, help="per-step figure = per-layer time x layers")
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args()
    import torch

    rows = run(args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
            "args": vars(args), "date": time.strftime("%Y-%m-%d")}
    (Path(args.out) / "attention.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
