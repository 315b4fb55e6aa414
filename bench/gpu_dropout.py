"""Probe: eager's LoRA dropout masks drawn inside a Triton kernel, and what fusing them into the adapter's first
product would save.

The compiled step keeps LoRA dropout in eager (inductor's `fallback_random`) so that its masks are eager's: ~11.5 ms
of a ~270 ms step at gemma-3-4b size (7 dropouts a layer, 34 layers), plus the dropped copy that the adapter's first
product reads and autograd keeps. torch's CUDA dropout draws its mask from curand's Philox4x32-10 with a known layout
(aten/src/ATen/native/cuda/Dropout.cu: 256-thread blocks, a grid capped at SMs x 8, VEC elements per thread and
iteration, one curand_uniform4 per 4 elements, counter = generator offset / 4 + iteration), and Triton's `tl.philox`
is the same generator. So this checks, on the GPU:

1. `masks`: a Triton kernel's keep mask against `torch.native_dropout`'s, bit for bit, at the step's shapes and a few
   odd ones, and the generator offset each call consumes;
2. `fused`: one layer's seven LoRA inputs (16 x 421 rows; 2560 x 5, 2048, 10240 features), forward + backward of
   `dropout(x) @ A^T` as eager runs it against one Triton kernel that draws the mask, multiplies and takes the
   product (keeping 4 mask bits per Philox draw for the backward), with the results' largest differences.

    python3 bench/gpu_dropout.py --out $OUT/dropout
    TRITON_INTERPRET=1 python3 bench/gpu_dropout.py --out /tmp/d --device cpu --rows 64   # the kernels' logic on CPU
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import triton
import triton.language as tl

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from gpu_vision import timed  # noqa: E402 -- median of synced runs after two warm-ups

TWO_M32 = 2.3283064365386963e-10  # curand's CURAND_2POW32_INV (rounds to exactly 2^-32 as a float)
FEATURES = [2560, 2560, 2560, 2048, 2560, 2560, 10240]  # q, k, v, o, gate, up, down inputs at gemma-3-4b dims


@triton.jit
def _uniform_keep(r, p_keep):
    """curand's _curand_uniform (x * 2^-32 + 2^-33; the product is exact, so FMA or not rounds once) < keep."""
    return (r.to(tl.float32) * 2.3283064365386963e-10 + 1.1641532182693481e-10) < p_keep


@triton.jit
def _draw(seed, off4, group, G, VEC: tl.constexpr):
    """The four Philox outputs torch's vectorised dropout kernel uses for 4-element group `group` (int64)."""
    chunk = group // (VEC // 4)
    ctr = off4 + (chunk // G) * (VEC // 4) + group % (VEC // 4)
    tid = (chunk % G).to(tl.uint32)
    zero = tl.zeros_like(tid)
    return tl.philox(seed, (ctr & 0xFFFFFFFF).to(tl.uint32), (ctr >> 32).to(tl.uint32), tid, zero)


@triton.jit
def _keep_kernel(out_ptr, seed, off4, n, G, p_keep, VEC: tl.constexpr, BLOCK: tl.constexpr):
    """keep[e] for e < n, one 4-element group per lane-quad (the reference for the fused kernel)."""
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    r0, r1, r2, r3 = _draw(seed, off4, e // 4, G, VEC)
    j = e % 4
    r = tl.where(j == 0, r0, tl.where(j == 1, r1, tl.where(j == 2, r2, r3)))
    tl.store(out_ptr + e, _uniform_keep(r, p_keep).to(tl.int8), mask=e < n)


@triton.jit
def _lora_a_fwd(x_ptr, a_ptr, h_ptr, nib_ptr, seed, off4, M, G, p_keep, scale, K: tl.constexpr,
                R: tl.constexpr, VEC: tl.constexpr, BM: tl.constexpr, BQ: tl.constexpr):
    """h = dropout(x) @ A^T for a row block; nib[m, q] = keep bits of x[m, 4q:4q+4] (bit j: element 4q+j).

    x is read as four strided tiles, one per Philox output word, so each draw serves four elements without
    shuffling registers; the four partial products sum to the whole product.
    """
    rows = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    live = rows < M
    rr = tl.arange(0, R)
    acc = tl.zeros((BM, R), tl.float32)
    for q0 in range(0, K // 4, BQ):
        q = q0 + tl.arange(0, BQ)
        words = _draw(seed, off4, rows[:, None] * (K // 4) + q[None, :], G, VEC)
        nib = tl.zeros((BM, BQ), tl.uint8)
        for j in tl.static_range(4):
            keep = _uniform_keep(words[j], p_keep)
            x = tl.load(x_ptr + rows[:, None] * K + 4 * q[None, :] + j, mask=live[:, None], other=0.0)
            dropped = (x.to(tl.float32) * keep.to(tl.float32) * scale).to(x.dtype)
            a = tl.load(a_ptr + rr[None, :] * K + 4 * q[:, None] + j)
            acc = tl.dot(dropped, a, acc)
            nib = nib | (keep.to(tl.uint8) << j)
        tl.store(nib_ptr + rows[:, None] * (K // 4) + q[None, :], nib, mask=live[:, None])
    tl.store(h_ptr + rows[:, None] * R + rr[None, :], acc.to(h_ptr.dtype.element_ty), mask=live[:, None])


# ----------------------------------------------------------------------------------------------- host side
def dropout_grid(n: int, device) -> int:
    """Threads in torch's dropout launch: 256 a block, blocks capped at SMs x (max threads per SM / 256)."""
    props = torch.cuda.get_device_properties(device) if device.type == "cuda" else None
    cap = props.multi_processor_count * (props.max_threads_per_multi_processor // 256) if props else 1056
    return min(cap, (n + 255) // 256) * 256


def offset_increment(n: int, threads: int) -> int:
    """What one dropout call of n elements adds to the generator's Philox offset (UNROLL 4)."""
    return ((n - 1) // (threads * 4) + 1) * 4


def keep_probability(p: float) -> tuple[float, float]:
    """(keep, scale) as torch's kernel holds them: float(1 - p) and float(1.0 / that float), computed in double."""
    keep = np.float32(1.0 - p)
    return float(keep), float(np.float32(1.0 / np.float64(keep)))


def generator_state(device) -> tuple[int, int]:
    """(seed, philox offset) of the device's default generator."""
    state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    if state is None:
        return 42, 0
    seed, offset = state.view(torch.int64).tolist()
    return seed, offset


def triton_keep(n: int, seed: int, offset: int, p: float, vec: int, device) -> torch.Tensor:
    out = torch.empty(n, dtype=torch.int8, device=device)
    keep, _ = keep_probability(p)
    block = 1024
    _keep_kernel[(triton.cdiv(n, block),)](out, seed, offset // 4, n, dropout_grid(n, device), keep, VEC=vec,
                                           BLOCK=block)
    return out.bool()


def fused_forward(x: torch.Tensor, a: torch.Tensor, p: float, seed: int, offset: int, vec: int = 8,
                  bm: int = 64, bq: int = 16, warps: int = 4):
    m, k = x.shape
    r = a.shape[0]
    h = torch.empty(m, r, dtype=x.dtype, device=x.device)
    nib = torch.empty(m, k // 4, dtype=torch.uint8, device=x.device)
    keep, scale = keep_probability(p)
    _lora_a_fwd[(triton.cdiv(m, bm),)](x, a, h, nib, seed, offset // 4, m, dropout_grid(m * k, x.device), keep,
                                       scale, K=k, R=r, VEC=vec, BM=bm, BQ=bq, num_warps=warps)
    return h, nib


def unpack(nib: torch.Tensor) -> torch.Tensor:
    """(M, K/4) nibbles -> (M, K) keep as 0/1 uint8."""
    bits = (nib.unsqueeze(-1) >> torch.arange(4, device=nib.device, dtype=torch.uint8)) & 1
    return bits.reshape(nib.shape[0], -1)


def fused_backward(x, a, nib, dh, scale: float):
    """(dA, dx) of h = dropout(x) @ A^T from the kept bits: what the fused op's backward computes."""
    keep = unpack(nib)
    dropped = (x.float() * keep * scale).to(x.dtype)
    da = dh.t() @ dropped
    dx = ((dh @ a).float() * keep * scale).to(x.dtype)
    return da, dx


# ----------------------------------------------------------------------------------------------- checks
def check_masks(device, args) -> list[dict]:
    """Triton's keep mask against torch.native_dropout's, for VEC 8 and 4, at several sizes."""
    rows = []
    torch.manual_seed(1234)
    for shape in [(args.rows, 2560), (args.rows, 2048), (args.rows, 10240), (3, 1000), (8, 8)]:
        x = torch.randn(shape, device=device, dtype=torch.bfloat16)
        for _ in range(3):  # a few draws in, so the offset is not 0
            torch.native_dropout(x, args.p, True)
        seed, before = generator_state(device)
        out, mask = torch.native_dropout(x, args.p, True)
        _, after = generator_state(device)
        n = x.numel()
        row = {"shape": list(shape), "seed": seed, "offset": before, "consumed": after - before,
               "predicted": offset_increment(n, dropout_grid(n, device)), "kept": float(mask.float().mean())}
        for vec in (8, 4):
            mine = triton_keep(n, seed, before, args.p, vec, device).view(shape)
            row[f"vec{vec}_mismatches"] = int((mine != mask).sum())
        keep, scale = keep_probability(args.p)
        row["values_equal"] = bool(torch.equal(out, (x.float() * mask * scale).to(x.dtype)))
        rows.append(row)
        print(row, flush=True)
    return rows


def check_fused(device, args) -> list[dict]:
    """One layer's seven LoRA inputs: eager vs fused forward + backward, times and largest differences."""
    torch.manual_seed(0)
    m, r = args.rows, 16
    xs = [torch.randn(m, k, device=device, dtype=torch.bfloat16) for k in FEATURES]
    as_ = [torch.randn(r, k, device=device, dtype=torch.bfloat16) * 0.02 for k in FEATURES]
    dhs = [torch.randn(m, r, device=device, dtype=torch.bfloat16) for _ in FEATURES]
    keep, scale = keep_probability(args.p)

    def eager():
        outs = []
        for x, a, dh in zip(xs, as_, dhs):
            dropped, mask = torch.native_dropout(x, args.p, True)
            h = dropped @ a.t()
            da = dh.t() @ dropped
            dx = torch.ops.aten.native_dropout_backward(dh @ a, mask, scale)
            outs.append((h, da, dx))
        return outs

    backward = torch.compile(fused_backward, dynamic=False) if device.type == "cuda" else fused_backward

    def fused():
        outs = []
        for x, a, dh in zip(xs, as_, dhs):
            seed, offset = generator_state(device)
            torch.cuda.set_rng_state(torch.tensor([seed, offset + offset_increment(x.numel(), dropout_grid(
                x.numel(), device))], dtype=torch.int64).view(torch.uint8), device) if device.type == "cuda" else None
            h, nib = fused_forward(x, a, args.p, seed, offset, bm=args.bm, bq=args.bq)
            da, dx = backward(x, a, nib, dh, scale)
            outs.append((h, da, dx))
        return outs

    state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    ref = eager()
    after_eager = generator_state(device)
    if state is not None:
        torch.cuda.set_rng_state(state, device)
    got = fused()
    after_fused = generator_state(device)
    rows = [{"check": "generator after one layer", "eager": after_eager, "fused": after_fused,
             "equal": after_eager == after_fused}]
    for k, (e, f) in zip(FEATURES, zip(ref, got)):
        rows.append({"features": k, **{name: float((a.float() - b.float()).abs().max() / a.float().abs().max())
                                       for name, a, b in zip(("h", "dA", "dx"), e, f)}})
    if device.type == "cuda":
        fwd_e = timed(lambda: [torch.native_dropout(x, args.p, True)[0] @ a.t() for x, a in zip(xs, as_)],
                      "cuda", args.iters)
        fwd_f = timed(lambda: [fused_forward(x, a, args.p, 42, 0, bm=args.bm, bq=args.bq) for x, a in zip(xs, as_)],
                      "cuda", args.iters)
        both_e = timed(eager, "cuda", args.iters)
        both_f = timed(fused, "cuda", args.iters)
        for bm, bq, warps in [(64, 16, 4), (128, 16, 4), (64, 32, 4), (128, 32, 8), (32, 16, 4), (128, 64, 8)]:
            try:
                ms = timed(lambda: [fused_forward(x, a, args.p, 42, 0, bm=bm, bq=bq, warps=warps)
                                    for x, a in zip(xs, as_)], "cuda", args.iters) * 1e3
            except Exception as exc:  # noqa: BLE001 -- a config that does not compile is a row, not a stop
                ms = repr(exc)[:200]
            rows.append({"fused_fwd_config": [bm, bq, warps], "ms_per_layer": ms})
        rows.append({"ms_per_layer": {"eager_fwd": fwd_e * 1e3, "fused_fwd": fwd_f * 1e3,
                                      "eager_fwd_bwd": both_e * 1e3, "fused_fwd_bwd": both_f * 1e3},
                     "ms_per_step_34_layers": {"fwd_saved": (fwd_e - fwd_f) * 34e3,
                                               "fwd_bwd_saved": (both_e - both_f) * 34e3}})
    for row in rows:
        print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, default=16 * 421)
    parser.add_argument("--p", type=float, default=0.05)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--bm", type=int, default=64)
    parser.add_argument("--bq", type=int, default=16)
    parser.add_argument("--skip", default="", help="comma list of masks,fused")
    args = parser.parse_args()
    device = torch.device(args.device)
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "triton": triton.__version__}
    if "masks" not in args.skip and device.type == "cuda":
        result["masks"] = check_masks(device, args)
    if "fused" not in args.skip:
        result["fused"] = check_fused(device, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_dropout.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
