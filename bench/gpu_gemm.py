"""Probe: would one GEMM over concatenated frozen weights beat q/k/v (and gate/up) as separate GEMMs?

The compiled step runs each LoRA module's frozen projection as its own GEMM: q, k and v read the same input, as do
gate and up, and their input gradients are summed. Concatenating the frozen weights once would make one GEMM of each
group in the forward and one in the backward (the sum inside its K loop). This times both forms at the default
run's shapes (16 x 421 tokens, gemma-3-4b dims), forward and input gradient, per layer and for the step's 34 layers,
with the largest difference between the two results (rounding: the sums run in another order).

    python3 bench/gpu_gemm.py --out $OUT/gemm          # on the GPU
    python3 bench/gpu_gemm.py --out /tmp/g --device cpu --tokens 64 --iters 2
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from gpu_vision import save_json, timed  # noqa: E402

GROUPS = {"qkv": (2560, [2048, 1024, 1024]), "gate_up": (2560, [10240, 10240])}  # in, outs (gemma-3-4b)
LAYERS = 34


def group_row(name: str, hidden: int, outs: list[int], args) -> dict:
    """Separate vs fused GEMMs for one group: forward (x @ W^T) and input gradient (sum of g_i @ W_i)."""
    import torch

    gen = torch.Generator(device=args.device).manual_seed(0)

    def rand(*shape):
        return (torch.randn(*shape, generator=gen, device=args.device) * 0.02).to(torch.bfloat16)

    x, weights = rand(args.tokens, hidden), [rand(n, hidden) for n in outs]
    grads = [rand(args.tokens, n) for n in outs]
    fused_w, fused_g = torch.cat(weights), torch.cat(grads, dim=1)

    def fwd_separate():
        return [x @ w.t() for w in weights]

    def fwd_fused():
        return x @ fused_w.t()

    def bwd_separate():
        out = grads[0] @ weights[0]
        for g, w in zip(grads[1:], weights[1:], strict=True):
            out = out + g @ w
        return out

    def bwd_fused():
        return torch.cat(grads, dim=1) @ fused_w  # the split's backward hands the fused GEMM one gradient buffer

    diff_f = (torch.cat(fwd_separate(), dim=1).float() - fwd_fused().float()).abs().max().item()
    diff_b = (bwd_separate().float() - (fused_g @ fused_w).float()).abs().max().item()
    row = {"group": name, "tokens": args.tokens, "max_abs_diff_fwd": diff_f, "max_abs_diff_bwd": diff_b}
    for key, fn in (("fwd_separate", fwd_separate), ("fwd_fused", fwd_fused), ("bwd_separate", bwd_separate),
                    ("bwd_fused", bwd_fused)):
        row[f"{key}_ms"] = round(1e3 * timed(fn, args.device, args.iters), 4)
    saved = row["fwd_separate_ms"] + row["bwd_separate_ms"] - row["fwd_fused_ms"] - row["bwd_fused_ms"]
    row["saved_ms_per_layer"] = round(saved, 4)
    row["saved_ms_per_step"] = round(saved * LAYERS, 2)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    p.add_argument("--tokens", type=int, default=16 * 421)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = p.parse_args()
    import torch

    result = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
              "rows": [group_row(name, hidden, outs, args) for name, (hidden, outs) in GROUPS.items()]}
    save_json(result, Path(args.out) / "gemm.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
