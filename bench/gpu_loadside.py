"""Probe: can a thread of the trainer's process encode images while the model's weights load?

From process start to the first training work the GPU computes nothing during the 8.6 GB weight load (4-8 s on an
H100, page cache warm). A second process could not use that time (BENCHMARKS.md, twelfth set: ~10 s to get ready,
and two CUDA contexts time-slice the GPU, so the load's copies waited). A thread is ready at once and shares the
context, but the load holds the interpreter (the seventh set's warm-up thread made it slower by as much as it
saved), and an eager 16-image encode is ~600 launches, each of which needs the interpreter back. This times the
trainer's own loader (`trainer.model.load_model_and_processor` on a saved random gemma-3-4b) alone and with a thread
encoding 16-image chunks beside it: eager or as a replayed CUDA graph, on pixels already on the GPU or from the
trainer's DataLoader (workers decoding 500x375 JPEGs), and with a shorter interpreter switch interval. It reports
the load's wall time and how many images were encoded before it returned.

    python3 bench/gpu_loadside.py --out $OUT/loadside       # on the GPU (carry .whl and .carry)
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
import traceback
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from gpu_vision import graph_of, save_json  # noqa: E402

CHUNK = 16
VARIANTS = ("alone", "eager", "graph", "graph+loader", "eager+loader", "eager+loader+switch", "graph+loader+switch",
            "alone")


def encoder_of(inner, kind: str, example):
    """A callable encoding 16 images' pixels (on the GPU, bf16) on the current stream: eager or graph replay."""
    import torch

    def eager(px):
        return type(inner).get_image_features(inner, px, return_dict=True).pooler_output

    with torch.no_grad():
        return graph_of(eager, example) if kind == "graph" else eager


def pixel_source(kind: str, example, examples, processor, fmt, workers: int):
    """An iterator of 16-image pixel batches: one GPU tensor again and again, or the trainer's DataLoader."""
    import torch

    if "loader" not in kind:
        return iter(lambda: example, None)
    from trainer.features import _as_list, _Prompts

    chunks = [list(range(s, s + CHUNK)) for s in range(0, len(examples) - CHUNK + 1, CHUNK)]
    loader = torch.utils.data.DataLoader(_Prompts(examples, processor, fmt), batch_sampler=chunks,
                                         num_workers=workers, collate_fn=_as_list, pin_memory=True)
    return (torch.cat([p["pixel_values"].to("cuda", non_blocking=True) for _, p in chunk]).to(example.dtype)
            for chunk in loader)


def beside(load, encode, source):
    """(model, load seconds, images encoded before it returned) with a thread encoding from `source` beside it."""
    import torch

    stop, done, stream = threading.Event(), [0], torch.cuda.Stream()

    def loop():
        queued = []
        with torch.no_grad():
            while not stop.is_set():
                with torch.cuda.stream(stream):  # the loader's copies to the GPU go on the side stream too
                    pixels = next(source, None)
                    if pixels is None:
                        break
                    encode(pixels)
                    event = torch.cuda.Event(blocking=True)
                    event.record(stream)
                queued.append(event)
                while len(queued) >= 2:
                    queued.pop(0).synchronize()
                    done[0] += CHUNK

    thread = threading.Thread(target=loop, daemon=True)
    t = time.perf_counter()
    thread.start()
    model = load()
    seconds, during = time.perf_counter() - t, done[0]
    stop.set()
    thread.join()
    return model, seconds, during


def one_load(variant, load, encode, example, train_set, side, fmt, args):
    """(model, load seconds, images encoded during it) for one variant."""
    if variant == "alone":
        t = time.perf_counter()
        return load(), time.perf_counter() - t, 0
    source = pixel_source(variant, example, train_set, side.processor, fmt, args.workers)
    return beside(load, encode, source)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="/tmp/gpu-bench")
    parser.add_argument("--workers", type=int, default=2, help="the trainer's default num_workers")
    args = parser.parse_args()
    import torch
    from gpu_matrix import make_dataset, save_checkpoint_dir

    from trainer.collate import build_chat_format
    from trainer.config import TrainConfig
    from trainer.data import load_splits, select
    from trainer.features import inner_model
    from trainer.model import load_model_and_processor

    work = Path(args.work)
    ckpt = save_checkpoint_dir("gemma-3-4b", work)
    dataset = make_dataset(work / "data", 1000, 16)
    cfg = TrainConfig(model_id=str(ckpt), dataset=str(dataset))
    train_set, _ = select(load_splits(cfg.dataset, cfg.seed, None), cfg.train_size, 16, cfg.seed)

    def load():
        return load_model_and_processor(cfg, None)

    t = time.perf_counter()
    side = load()  # also warms the page cache; its vision tower does the side encodes
    first_load = time.perf_counter() - t
    inner = inner_model(side.model)
    fmt = build_chat_format(side.processor, cfg.prompt)
    size = inner.config.vision_config.image_size
    example = torch.randn(CHUNK, 3, size, size, device="cuda").to(torch.bfloat16)
    encoders = {kind: encoder_of(inner, kind, example) for kind in ("eager", "graph")}
    rates = {}
    for kind, encode in encoders.items():  # the encode alone: images per second, 8 chunks after 2 warm-ups
        with torch.no_grad():
            for _ in range(2):
                encode(example)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(8):
                encode(example)
            torch.cuda.synchronize()
        rates[kind] = 8 * CHUNK / (time.perf_counter() - t)
    rows = []
    for variant in VARIANTS:
        kind = "graph" if variant.startswith("graph") else "eager"
        switch = sys.getswitchinterval()
        if variant.endswith("switch"):
            sys.setswitchinterval(0.0005)
        try:
            loaded, seconds, during = one_load(variant, load, encoders[kind], example, train_set, side, fmt, args)
        except Exception as exc:  # a probe: one failing variant should not cost the others
            traceback.print_exc()
            rows.append({"variant": variant, "error": repr(exc)})
            continue
        finally:
            sys.setswitchinterval(switch)
        rows.append({"variant": variant, "load_s": round(seconds, 3), "images_during_load": during,
                     "encode_gpu_s_during": round(during / rates[kind], 2)})
        print(rows[-1], flush=True)
        del loaded
        gc.collect()
        torch.cuda.empty_cache()
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "first_load_s": first_load,
              "encode_images_per_s_alone": rates, "rows": rows}
    save_json(result, Path(args.out) / "loadside.json")  # prints it too


if __name__ == "__main__":
    main()
