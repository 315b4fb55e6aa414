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
   `dropout(x) @ A^T` as eager runs it against Triton kernels that draw the mask, multiply and take the product
   (keeping 4 mask bits per Philox draw for the backward's two kernels), with the results' largest differences;
   the kernels' tile shapes; a kernel that only draws (the floor under any such fusion); and dropout from
   inductor's own RNG (the recipe change the owner was asked about), alone and with the product.

Found (BENCHMARKS.md, thirteenth set): the masks are eager's bit for bit, but the draws themselves are most of what
eager's dropout costs, so the fused kernels were slower than eager, and inductor's RNG (one draw per element) more so.

    python3 bench/gpu_dropout.py --out $OUT/dropout
    TRITON_INTERPRET=1 python3 bench/gpu_dropout.py --out /tmp/d --device cpu --rows 64   # runs through on CPU;
    # the interpreter's bf16 is not faithful, so check the kernels' logic there in fp32
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

FEATURES = [2560, 2560, 2560, 2048, 2560, 2560, 10240]  # q, k, v, o, gate, up, down inputs at gemma-3-4b dims


@triton.jit
def _uniform_keep(r, p_keep):
    """curand's _curand_uniform < keep: x * CURAND_2POW32_INV (exactly 2^-32 as a float) + 2^-33; the product is
    exact, so FMA or not, the sum rounds once."""
    return (r.to(tl.float32) * 2.3283064365386963e-10 + 1.1641532182693481e-10) < p_keep


@triton.jit
def _draw(seed, off4, group, G: tl.constexpr, VEC: tl.constexpr):
    """The four Philox outputs torch's vectorised dropout kernel uses for 4-element group `group` (int32 index)."""
    chunk = group // (VEC // 4)
    ctr = ((chunk // G) * (VEC // 4) + group % (VEC // 4)).to(tl.int64) + off4
    tid = (chunk % G).to(tl.uint32)
    zero = tl.zeros_like(tid)
    return tl.philox(seed, (ctr & 0xFFFFFFFF).to(tl.uint32), (ctr >> 32).to(tl.uint32), tid, zero)


@triton.jit
def _keep_kernel(out_ptr, seed, off4, n, G: tl.constexpr, p_keep, VEC: tl.constexpr, BLOCK: tl.constexpr):
    """keep[e] for e < n, one draw per element (each draw's word e % 4): simple and slow, the reference that is
    compared with torch's mask."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # int32: the host keeps n under 2^31
    r0, r1, r2, r3 = _draw(seed, off4, e // 4, G, VEC)
    j = e % 4
    r = tl.where(j == 0, r0, tl.where(j == 1, r1, tl.where(j == 2, r2, r3)))
    tl.store(out_ptr + e, _uniform_keep(r, p_keep).to(tl.int8), mask=e < n)


@triton.jit
def _spread(k0, k1, k2, k3, BM: tl.constexpr, BK: tl.constexpr):
    """Four (BM, BK/4) planes, plane j holding element 4q+j of group q, as one (BM, BK) tile in element order."""
    return tl.reshape(tl.join(tl.join(k0, k2), tl.join(k1, k3)), (BM, BK))


@triton.jit
def _kept(nib_ptr, rows, q, live, K: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):
    """keep (float 0/1) of x[rows, 4q:4q+4] from the stored nibbles, in element order."""
    nib = tl.load(nib_ptr + rows[:, None] * (K // 4) + q[None, :], mask=live[:, None], other=0)
    return _spread((nib & 1).to(tl.float32), ((nib >> 1) & 1).to(tl.float32), ((nib >> 2) & 1).to(tl.float32),
                   ((nib >> 3) & 1).to(tl.float32), BM, BK)


@triton.jit
def _nibbles(seed, off4, rows, q, p_keep, G: tl.constexpr, VEC: tl.constexpr, K: tl.constexpr):
    """The keep bits of x[rows, 4q:4q+4] as drawn by torch's dropout (bit j: element 4q+j), and the four planes."""
    w0, w1, w2, w3 = _draw(seed, off4, rows[:, None] * (K // 4) + q[None, :], G, VEC)
    k0, k1 = _uniform_keep(w0, p_keep), _uniform_keep(w1, p_keep)
    k2, k3 = _uniform_keep(w2, p_keep), _uniform_keep(w3, p_keep)
    nib = k0.to(tl.uint8) | (k1.to(tl.uint8) << 1) | (k2.to(tl.uint8) << 2) | (k3.to(tl.uint8) << 3)
    return nib, k0, k1, k2, k3


@triton.jit
def _philox_only(nib_ptr, seed, off4, M, G: tl.constexpr, p_keep, K: tl.constexpr, VEC: tl.constexpr,
                 BM: tl.constexpr, BK: tl.constexpr):
    """Only the draws and the nibbles: the floor under any kernel that draws the mask itself."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    q = tl.program_id(1) * (BK // 4) + tl.arange(0, BK // 4)
    nib, _, _, _, _ = _nibbles(seed, off4, rows, q, p_keep, G, VEC, K)
    tl.store(nib_ptr + rows[:, None] * (K // 4) + q[None, :], nib, mask=(rows < M)[:, None])


@triton.jit
def _lora_a_fwd(x_ptr, a_ptr, h_ptr, nib_ptr, seed, off4, M, G: tl.constexpr, p_keep, scale, K: tl.constexpr,
                R: tl.constexpr, VEC: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):
    """h = dropout(x) @ A^T for a row block; nib[m, q] = keep bits of x[m, 4q:4q+4] (bit j: element 4q+j).

    Each Philox draw serves four elements: the draws are made per 4-element group and spread to element order.
    """
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    live = rows < M
    rr = tl.arange(0, R)
    acc = tl.zeros((BM, R), tl.float32)
    for k0 in range(0, K, BK):
        cols = k0 + tl.arange(0, BK)
        q = k0 // 4 + tl.arange(0, BK // 4)
        nib, k_0, k_1, k_2, k_3 = _nibbles(seed, off4, rows, q, p_keep, G, VEC, K)
        tl.store(nib_ptr + rows[:, None] * (K // 4) + q[None, :], nib, mask=live[:, None])
        keep = _spread(k_0.to(tl.float32), k_1.to(tl.float32), k_2.to(tl.float32), k_3.to(tl.float32), BM, BK)
        x = tl.load(x_ptr + rows[:, None] * K + cols[None, :], mask=live[:, None], other=0.0)
        dropped = (x.to(tl.float32) * keep * scale).to(x.dtype)
        a = tl.load(a_ptr + rr[None, :] * K + cols[:, None])
        acc = tl.dot(dropped, a, acc)
    tl.store(h_ptr + rows[:, None] * R + rr[None, :], acc.to(h_ptr.dtype.element_ty), mask=live[:, None])


@triton.jit
def _lora_dx(dh_ptr, a_ptr, nib_ptr, dx_ptr, M, scale, K: tl.constexpr, R: tl.constexpr, BM: tl.constexpr,
             BK: tl.constexpr):
    """dx = dropout_backward(dh @ A): the product rounded as eager's mm output, then masked and scaled."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BK + tl.arange(0, BK)
    live = rows < M
    rr = tl.arange(0, R)
    dh = tl.load(dh_ptr + rows[:, None] * R + rr[None, :], mask=live[:, None], other=0.0)
    a = tl.load(a_ptr + rr[:, None] * K + cols[None, :])
    prod = tl.dot(dh, a).to(dh.dtype)
    q = tl.program_id(1) * (BK // 4) + tl.arange(0, BK // 4)
    dx = (prod.to(tl.float32) * _kept(nib_ptr, rows, q, live, K, BM, BK) * scale).to(dh.dtype)
    tl.store(dx_ptr + rows[:, None] * K + cols[None, :], dx, mask=live[:, None])


@triton.jit
def _lora_da(dh_ptr, x_ptr, nib_ptr, part_ptr, M, scale, K: tl.constexpr, R: tl.constexpr, BM: tl.constexpr,
             BK: tl.constexpr, ROWS: tl.constexpr):
    """Partial dA over rows [s*ROWS, (s+1)*ROWS): dh^T @ dropout(x), the dropped x rebuilt from the kept bits."""
    cols = tl.program_id(0) * BK + tl.arange(0, BK)
    q = tl.program_id(0) * (BK // 4) + tl.arange(0, BK // 4)
    split = tl.program_id(1)
    rr = tl.arange(0, R)
    acc = tl.zeros((R, BK), tl.float32)
    for m0 in range(0, ROWS, BM):
        rows = split * ROWS + m0 + tl.arange(0, BM)
        live = rows < M
        dht = tl.load(dh_ptr + rows[None, :] * R + rr[:, None], mask=live[None, :], other=0.0)
        x = tl.load(x_ptr + rows[:, None] * K + cols[None, :], mask=live[:, None], other=0.0)
        dropped = (x.to(tl.float32) * _kept(nib_ptr, rows, q, live, K, BM, BK) * scale).to(x.dtype)
        acc = tl.dot(dht, dropped, acc)
    tl.store(part_ptr + split * R * K + rr[:, None] * K + cols[None, :], acc)


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
    """The keep mask of n elements that eager's dropout would draw at (seed, offset), with VEC elements a thread."""
    assert n < 2**31
    out = torch.empty(n, dtype=torch.int8, device=device)
    keep, _ = keep_probability(p)
    block = 1024
    _keep_kernel[(triton.cdiv(n, block),)](out, seed, offset // 4, n, dropout_grid(n, device), keep, VEC=vec,
                                           BLOCK=block)
    return out.bool()


CONFIG = {"fwd": (16, 64, 4), "dx": (64, 128, 4), "da": (64, 64, 16, 4)}  # (BM, BK, warps), dA: + row splits


def fused_forward(x: torch.Tensor, a: torch.Tensor, p: float, seed: int, offset: int, vec: int = 8, cfg=None):
    """(h, nibbles): h = dropout(x) @ A^T with the mask eager would draw at (seed, offset), and its keep bits."""
    bm, bk, warps = cfg or CONFIG["fwd"]
    m, k = x.shape
    assert m * k < 2**31
    r = a.shape[0]
    h = torch.empty(m, r, dtype=x.dtype, device=x.device)
    nib = torch.empty(m, k // 4, dtype=torch.uint8, device=x.device)
    keep, scale = keep_probability(p)
    _lora_a_fwd[(triton.cdiv(m, bm),)](x, a, h, nib, seed, offset // 4, m, dropout_grid(m * k, x.device), keep,
                                       scale, K=k, R=r, VEC=vec, BM=bm, BK=bk, num_warps=warps)
    return h, nib


def philox_only(x: torch.Tensor, p: float, cfg) -> torch.Tensor:
    """Only the draws for x's mask, stored as nibbles (the floor under any kernel that draws it)."""
    bm, bk, warps = cfg
    m, k = x.shape
    nib = torch.empty(m, k // 4, dtype=torch.uint8, device=x.device)
    _philox_only[(triton.cdiv(m, bm), k // bk)](nib, 42, 0, m, dropout_grid(m * k, x.device), keep_probability(p)[0],
                                                K=k, VEC=8, BM=bm, BK=bk, num_warps=warps)
    return nib


def fused_backward(x, a, nib, dh, scale: float, cfg_dx=None, cfg_da=None):
    """(dA, dx) of h = dropout(x) @ A^T from the kept bits: what the fused op's backward computes."""
    m, k = x.shape
    r = a.shape[0]
    bm, bk, warps = cfg_dx or CONFIG["dx"]
    dx = torch.empty_like(x)
    _lora_dx[(triton.cdiv(m, bm), k // bk)](dh, a, nib, dx, m, scale, K=k, R=r, BM=bm, BK=bk, num_warps=warps)
    bm, bk, splits, warps = cfg_da or CONFIG["da"]
    rows = triton.cdiv(triton.cdiv(m, splits), bm) * bm
    part = torch.empty(triton.cdiv(m, rows), r, k, dtype=torch.float32, device=x.device)
    _lora_da[(k // bk, part.shape[0])](dh, x, nib, part, m, scale, K=k, R=r, BM=bm, BK=bk, ROWS=rows,
                                         num_warps=warps)
    return part.sum(0).to(x.dtype), dx


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


def inductor_dropout(xs, as_, args) -> dict:
    """What the recipe change would run: dropout from inductor's own RNG (tl.rand: one Philox draw per element),
    compiled alone and with the adapter's product, against the same shapes. Masks differ from eager's."""
    import torch._inductor.config as inductor_config
    import torch.nn.functional as F

    inductor_config.fallback_random = False
    drop = torch.compile(lambda xs: [F.dropout(x, args.p, True) for x in xs], dynamic=False)
    drop_mm = torch.compile(lambda xs, as_: [F.dropout(x, args.p, True) @ a.t()
                                             for x, a in zip(xs, as_, strict=True)], dynamic=False)
    return {"inductor_dropout_only_ms": timed(lambda: drop(xs), "cuda", args.iters) * 1e3,
            "inductor_dropout_mm_ms": timed(lambda: drop_mm(xs, as_), "cuda", args.iters) * 1e3,
            "kept": float(torch.stack([(d != 0).float().mean() for d in drop(xs)]).mean())}


class Layer:
    """One layer's seven LoRA inputs x, bf16 adapters A (r 16) and output gradients dh, on the device."""

    def __init__(self, device, args):
        torch.manual_seed(0)
        m, r = args.rows, 16
        self.xs = [torch.randn(m, k, device=device, dtype=torch.bfloat16) for k in FEATURES]
        self.as_ = [torch.randn(r, k, device=device, dtype=torch.bfloat16) * 0.02 for k in FEATURES]
        self.dhs = [torch.randn(m, r, device=device, dtype=torch.bfloat16) for _ in FEATURES]
        self.p, self.scale, self.device = args.p, keep_probability(args.p)[1], device

    def triples(self):
        return zip(self.xs, self.as_, self.dhs, strict=True)

    def eager(self) -> list[tuple]:
        """(h, dA, dx) per input as the eager step computes them (dropout, mm; mm, mm, dropout backward)."""
        outs = []
        for x, a, dh in self.triples():
            dropped, mask = torch.native_dropout(x, self.p, True)
            dx = torch.ops.aten.native_dropout_backward(dh @ a, mask, self.scale)
            outs.append((dropped @ a.t(), dh.t() @ dropped, dx))
        return outs

    def fused(self) -> list[tuple]:
        """The same from the Triton kernels, the generator advanced by what each eager dropout would consume."""
        outs = []
        for x, a, dh in self.triples():
            seed, offset = generator_state(self.device)
            if self.device.type == "cuda":
                step = offset_increment(x.numel(), dropout_grid(x.numel(), self.device))
                torch.cuda.set_rng_state(torch.tensor([seed, offset + step]).view(torch.uint8), self.device)
            h, nib = fused_forward(x, a, self.p, seed, offset)
            outs.append((h, *fused_backward(x, a, nib, dh, self.scale)))
        return outs


def compare(layer: Layer) -> list[dict]:
    """The generator state after one layer both ways, and each output's largest difference (relative to max)."""
    state = torch.cuda.get_rng_state(layer.device) if layer.device.type == "cuda" else None
    ref, after_eager = layer.eager(), generator_state(layer.device)
    if state is not None:
        torch.cuda.set_rng_state(state, layer.device)
    got, after_fused = layer.fused(), generator_state(layer.device)
    rows = [{"check": "generator after one layer", "eager": after_eager, "fused": after_fused,
             "equal": after_eager == after_fused}]
    for k, e, f in zip(FEATURES, ref, got, strict=True):
        rows.append({"features": k, **{name: float((a.float() - b.float()).abs().max() / a.float().abs().max())
                                       for name, a, b in zip(("h", "dA", "dx"), e, f, strict=True)}})
    return rows


def times(layer: Layer, args) -> list[dict]:
    """ms per layer (7 inputs): eager and fused forward, backward and both; the parts alone; the Philox floor."""
    xs, as_, it = layer.xs, layer.as_, args.iters
    nibs = [fused_forward(x, a, args.p, 42, 0)[1] for x, a in zip(xs, as_, strict=True)]
    masks = [x > 0 for x in xs]
    ms = {"eager_fwd": timed(lambda: [torch.native_dropout(x, args.p, True)[0] @ a.t()
                                      for x, a in zip(xs, as_, strict=True)], "cuda", it),
          "fused_fwd": timed(lambda: [fused_forward(x, a, args.p, 42, 0) for x, a in zip(xs, as_, strict=True)],
                             "cuda", it),
          "eager_bwd": timed(lambda: [(dh.t() @ x, torch.ops.aten.native_dropout_backward(dh @ a, mask, layer.scale))
                                      for (x, a, dh), mask in zip(layer.triples(), masks, strict=True)], "cuda", it),
          "fused_bwd": timed(lambda: [fused_backward(x, a, n, dh, layer.scale)
                                      for (x, a, dh), n in zip(layer.triples(), nibs, strict=True)], "cuda", it),
          "eager_fwd_bwd": timed(layer.eager, "cuda", it), "fused_fwd_bwd": timed(layer.fused, "cuda", it),
          "eager_dropout_only": timed(lambda: [torch.native_dropout(x, args.p, True) for x in xs], "cuda", it),
          "eager_mm_only": timed(lambda: [x @ a.t() for x, a in zip(xs, as_, strict=True)], "cuda", it)}
    rows = [{"ms_per_layer": {k: v * 1e3 for k, v in ms.items()},
             "ms_per_step_34_layers_saved": {part: (ms[f"eager_{part}"] - ms[f"fused_{part}"]) * 34e3
                                             for part in ("fwd", "bwd", "fwd_bwd")}}]
    for cfg in [(16, 128, 4), (32, 128, 4), (64, 64, 4), (32, 256, 8)]:
        rows.append({"philox_only": list(cfg), "ms_per_layer": timed(
            lambda cfg=cfg: [philox_only(x, args.p, cfg) for x in xs], "cuda", it) * 1e3})
    return rows + sweep(layer, nibs, args)


SWEEPS = {"fwd": [(16, 64, 4), (16, 64, 2), (32, 64, 4), (16, 128, 4), (16, 32, 2)],
          "dx": [(64, 128, 4), (32, 64, 4), (16, 128, 4), (64, 256, 8)],
          "da": [(64, 64, 16, 4), (32, 64, 16, 4), (64, 64, 32, 4), (64, 128, 32, 8)]}


def sweep(layer: Layer, nibs, args) -> list[dict]:
    """ms per layer of each fused kernel under a few tile shapes (BM, BK[, row splits], warps)."""
    def run(part, cfg):
        if part == "fwd":
            return [fused_forward(x, a, args.p, 42, 0, cfg=cfg) for x, a in zip(layer.xs, layer.as_, strict=True)]
        key = "cfg_dx" if part == "dx" else "cfg_da"
        return [fused_backward(x, a, n, dh, layer.scale, **{key: cfg})
                for (x, a, dh), n in zip(layer.triples(), nibs, strict=True)]

    rows = []
    for part, configs in SWEEPS.items():
        for cfg in configs:
            try:
                ms = timed(lambda part=part, cfg=cfg: run(part, cfg), "cuda", args.iters) * 1e3
            except Exception as exc:  # noqa: BLE001 -- a config that does not compile is a row, not a stop
                ms = repr(exc)[:200]
            rows.append({"sweep": part, "config": list(cfg), "ms_per_layer": ms})
    return rows


def check_fused(device, args) -> list[dict]:
    """One layer's seven LoRA inputs: eager vs fused, differences and (on the GPU) times; inductor's own RNG."""
    layer = Layer(device, args)
    rows = report(compare(layer))
    if device.type == "cuda":  # printed as each part ends: the timings take ~30 s
        rows += report(times(layer, args)) + report([inductor_dropout(layer.xs, layer.as_, args)])
    return rows


def report(rows: list[dict]) -> list[dict]:
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
