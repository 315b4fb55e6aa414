"""Probe SigLIP's attention at its awkward head size: is 72 dims zero-padded to 80, 96 or 128 faster?

The frozen tower's attention is ~43 % of an encode (cuDNN, ~356 TFLOP/s at head_dim 72; BENCHMARKS.md, eleventh
set). Zero columns added to q and k leave every score q.k unchanged, and zero columns added to v only add output
columns to drop again, so attention over padded heads with the softmax scale kept at 72 ** -0.5 is the same
function; only the kernel (and its rounding) changes. This times the forward (the encode runs under no_grad) at
the encode's shape for each SDPA backend and padded size, and the largest difference from the unpadded cuDNN call.

    python3 bench/gpu_headdim.py --out $OUT/headdim
    python3 bench/gpu_headdim.py --out /tmp/h --device cpu --batch 2 --heads 2 --tokens 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from gpu_vision import save_json, timed  # noqa: E402 -- the encode probe's timing (median of synced runs)


def padded_sdpa(q, k, v, width: int, backend=None):
    """Attention over heads zero-padded from q's head size to `width`, scale kept at the real size's."""
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    dim = q.shape[-1]
    if width > dim:
        q, k, v = (F.pad(t, (0, width - dim)) for t in (q, k, v))
    if backend is None:
        out = F.scaled_dot_product_attention(q, k, v, scale=dim ** -0.5)
    else:
        with sdpa_kernel([backend]):
            out = F.scaled_dot_product_attention(q, k, v, scale=dim ** -0.5)
    return out[..., :dim]


def backends(device: str) -> dict:
    from torch.nn.attention import SDPBackend

    if device == "cpu":
        return {"default": None, "math": SDPBackend.MATH}
    names = ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION")
    return {"default": None} | {n.split("_")[0].lower(): getattr(SDPBackend, n) for n in names}


def run(args) -> dict:
    import torch

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    gen = torch.Generator(device=args.device).manual_seed(0)
    shape = (args.batch, args.heads, args.tokens, args.dim)
    q, k, v = (torch.randn(shape, generator=gen, device=args.device, dtype=dtype) for _ in range(3))
    with torch.no_grad():
        reference = padded_sdpa(q, k, v, args.dim, backends(args.device).get("cudnn"))
        rows = [one(q, k, v, width, name, backend, reference, args) for width in args.widths
                for name, backend in backends(args.device).items()]
    flops = 4 * args.batch * args.heads * args.tokens ** 2 * args.dim  # the real head size's FLOPs
    for r in rows:
        if "ms" in r:
            r["tflops_real"] = round(flops / r["ms"] / 1e9, 1)
    return {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
            "shape": list(shape), "rows": rows}


def one(q, k, v, width: int, name: str, backend, reference, args) -> dict:
    row = {"width": width, "backend": name}
    try:
        out = padded_sdpa(q, k, v, width, backend)
        s = timed(lambda: padded_sdpa(q, k, v, width, backend), args.device, args.iters)
    except RuntimeError as exc:  # a backend that does not take this head size: a row that says so
        return row | {"error": str(exc).splitlines()[0][:160]}
    diff = (out.float() - reference.float()).abs().max().item()
    return row | {"ms": round(1e3 * s, 3), "max_abs_diff": diff, "bitwise_equal": bool(torch_equal(out, reference))}


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench-out")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--batch", type=int, default=16, help="images per encode (the trainer's chunk)")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--tokens", type=int, default=4096, help="patches per image at 896 px")
    p.add_argument("--dim", type=int, default=72)
    p.add_argument("--widths", default="72,80,96,128", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--iters", type=int, default=10)
    args = p.parse_args()
    save_json(run(args), Path(args.out) / "headdim.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
