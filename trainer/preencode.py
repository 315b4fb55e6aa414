"""Encode the first epoch's images in a second process while this one imports and loads the model.

From process start to the first training work the GPU idles for ~15 s: Python imports torch and transformers, the
8.6 GB of weights stream in, and neither leaves the interpreter free for an encode thread (measured: a thread
beside the load made the load as much longer as it gained, BENCHMARKS.md seventh set). A second process has its own
interpreter. So `python -m trainer` starts `python -m trainer.preencode <dir>` as soon as its config is valid, before
its own heavy imports (trainer.__main__). The child loads only the vision tower and projector (~0.9 GB of the
checkpoint), encodes the first epoch's images in the order the steps need them (then the eval images), and writes
each chunk of prompts + features to `<dir>/chunk-NNNNN.pt`, atomically. It stops after the chunk in hand when its
stdin closes: the parent closes it once its model is loaded (`stop`), before it needs the GPU itself, or by dying.
The parent then adopts the finished chunks into its FeatureCache (`collect`); the images the child did not reach
are encoded as before (trainer.encoding).

The features are the in-process ones: the same code (FeatureCache.add), the same chunks of images, and weights
that the parent checks against its own before adopting anything (`fingerprint`: dtype, shape and two sums of every
vision tensor). Anything that goes wrong in the child costs only the speed-up: the parent logs it and encodes.
The HF token reaches the child as it reaches the parent, through the environment, never through its arguments.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

VISION_PARTS = ("vision_tower", "multi_modal_projector", "embed_vision")  # what get_image_features uses
STOP_TIMEOUT_S = 30.0  # the chunk in hand is < 1 s of GPU; a child slower than this to exit is killed
CHILD_WORKERS = 4  # DataLoader workers of the child at least (one 896 px image: ~20 ms of decode + resize)
LET_FINISH = False  # tests: `collect` waits for the child to encode everything instead of stopping it


def wanted(cfg) -> tuple[bool, str]:
    """(start a pre-encoder?, why not): only where the parent keeps a feature cache of a bf16 vision tower."""
    if cfg.preencode == "off":
        return False, "--preencode off"
    if not cfg.fast_path or cfg.lora_target != "language":
        return False, "no feature cache (plain path, or LoRA on the vision tower)"
    if cfg.quantization != "none":
        return False, "4-bit: the vision tower is quantised with the model on load"
    if cfg.preencode == "auto" and cfg.model_id.startswith("builtin:"):
        return False, "auto: the builtin demo models run on a CPU, where a second process only takes a core"
    return True, ""


class PreEncoder:
    """The parent's handle on the child: `stop()` when the GPU is needed, `collect(cache)`, `close()` always."""

    def __init__(self, proc: subprocess.Popen, folder: Path):
        self.proc, self.folder = proc, folder
        self.started = time.perf_counter()

    @classmethod
    def start(cls, cfg) -> PreEncoder | None:
        """Start the child for this run, or None when it would not help (`wanted`)."""
        if not wanted(cfg)[0] or (Path(cfg.output_dir) / "DONE").exists():
            return None
        folder = None
        try:
            folder = Path(tempfile.mkdtemp(prefix="gemmactl-preencode-", dir=_scratch_root()))
            (folder / "config.json").write_text(cfg.to_json())
            proc = subprocess.Popen([sys.executable, "-m", "trainer.preencode", str(folder)], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL)  # stdout carries the parent's events; logs: stderr
        except OSError as exc:  # no scratch space, no interpreter to start: only the speed-up is lost
            from trainer.events import log

            log(f"pre-encode: not started ({exc})")
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            return None
        return cls(proc, folder)

    def stop(self, force: bool = False) -> None:
        """Ask the child to stop after the chunk in hand (idempotent; tests' LET_FINISH defers it to `close`)."""
        if LET_FINISH and not force:
            return
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def collect(self, cache, model) -> list[str]:
        """Wait for the child, adopt its chunks into `cache` if its weights are `model`'s; the keys adopted."""
        from trainer.events import log

        self.stop()
        rc = self._wait()
        adopted: list[str] = []
        try:
            chunks = sorted(self.folder.glob("chunk-*.pt"))
            if chunks and json.loads((self.folder / "fingerprint.json").read_text()) != fingerprint(model):
                log("pre-encode: the child's vision weights differ from this process's; its features are not used")
                return []
            for path in chunks:
                adopted += _adopt(cache, path)
        except Exception as exc:  # noqa: BLE001 -- a torn or odd file: keep what was adopted, encode the rest
            log(f"pre-encode: chunks not adopted ({type(exc).__name__}: {str(exc)[:200]})")
        log(f"pre-encode: {len(adopted)} images encoded in a second process during start-up (child exit {rc}, "
            f"{time.perf_counter() - self.started:.1f} s after it started)")
        return adopted

    def close(self) -> None:
        """Stop the child (killed if it hangs) and remove its folder."""
        self.stop(force=True)
        self._wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _wait(self) -> int | None:
        try:
            return self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _scratch_root() -> str | None:
    """/dev/shm where there is one (memory, like Cloud Run's own disk), else the default temp dir."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _adopt(cache, path: Path) -> list[str]:
    import torch

    chunk = torch.load(path, weights_only=True)
    for key, entry in zip(chunk["keys"], chunk["entries"], strict=True):
        cache.adopt(key, entry)
    return chunk["keys"]


def fingerprint(model) -> dict[str, list]:
    """name -> [dtype, shape, sum, sum of squares] of every vision parameter and buffer (float64 sums)."""
    import torch

    from trainer.features import inner_model

    inner = inner_model(model)
    named = [(f"{part}.{name}", t) for part in VISION_PARTS if getattr(inner, part, None) is not None
             for name, t in [*getattr(inner, part).named_parameters(), *getattr(inner, part).named_buffers()]]
    sums = torch.stack([torch.stack([t.double().sum(), t.double().square().sum()]) for _, t in named]).tolist()
    return {name: [str(t.dtype), list(t.shape), *s] for (name, t), s in zip(named, sums, strict=True)}


# ------------------------------------------------------------------------------------------- the child
class _Child:
    """The child's state: `busy` is held while a chunk is encoded and written, `done` counts images written."""

    def __init__(self):
        self.busy, self.done = threading.Lock(), 0

    def watch_stdin(self) -> None:
        """Exit as soon as stdin closes (the parent stopped us, or died), but never in the middle of a chunk.

        The raw descriptor, not sys.stdin: a thread blocked in a buffered read holds the buffer's lock, and every
        DataLoader worker forked meanwhile closes sys.stdin on start-up (multiprocessing does) and deadlocks on it.
        """
        from trainer.events import log

        while os.read(sys.stdin.fileno(), 1 << 16):
            pass
        with self.busy:
            log(f"pre-encode: stopped by the trainer after {self.done} images")
            os._exit(0)  # the DataLoader workers notice their parent is gone and exit too


def child(folder: Path) -> int:
    """`python -m trainer.preencode DIR`: encode until done or until stdin closes."""
    from trainer.config import TrainConfig
    from trainer.events import log

    state = _Child()
    threading.Thread(target=state.watch_stdin, daemon=True).start()
    cfg = TrainConfig.from_json((folder / "config.json").read_text())
    try:
        _encode(cfg, folder, state)
    except Exception as exc:  # noqa: BLE001 -- the parent encodes whatever is missing; say why and leave
        log(f"pre-encode: failed ({type(exc).__name__}: {str(exc)[:200]})")
        return 1
    log(f"pre-encode: all {state.done} images encoded")
    return 0


def _encode(cfg, folder: Path, state: _Child) -> None:
    import torch

    from trainer.collate import build_chat_format
    from trainer.events import hf_token, log
    from trainer.features import FeatureCache

    t = time.perf_counter()
    model, processor, device = _vision_model(cfg, hf_token())
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # as trainer.run does on a CPU: the same numerics as the parent's encodes
    (folder / "fingerprint.json").write_text(json.dumps(fingerprint(model)))
    examples, chunks = _work(cfg)
    cache = FeatureCache(model, processor, build_chat_format(processor, cfg.prompt), device)
    log(f"pre-encode: vision tower ready in {time.perf_counter() - t:.1f} s; {sum(map(len, chunks))} images to go")
    # more decoding workers than the trainer's own: during start-up its workers are not running yet
    for n, chunk in enumerate(cache.loader(examples, chunks, max(cfg.num_workers, CHILD_WORKERS))):
        with state.busy:
            keys = [examples[i].image_id for i, _ in chunk]
            cache.add(keys, [prompt for _, prompt in chunk])
            entries = [{k: v.cpu() for k, v in cache.entries.pop(key).items()} for key in keys]
            torch.save({"keys": keys, "entries": entries}, folder / f".chunk-{n:05d}.tmp")
            os.replace(folder / f".chunk-{n:05d}.tmp", folder / f"chunk-{n:05d}.pt")  # whole files only
            state.done += len(keys)


def _work(cfg) -> tuple[list, list[list[int]]]:
    """(examples, chunks of indices): the first epoch's training images in the order its steps need them, in one
    chunk per step as the parent would encode them (steps already checkpointed skipped), then the eval images."""
    import math

    from trainer.batches import step_index_lists
    from trainer.checkpoint import checkpoints_root, latest_checkpoint
    from trainer.data import load_splits, select
    from trainer.events import hf_token
    from trainer.train import plan_steps

    train, evals = select(load_splits(cfg.dataset, cfg.seed, hf_token()), cfg.train_size, cfg.eval_size, cfg.seed)
    micro_per_epoch, total = plan_steps(len(train), cfg)
    found = latest_checkpoint(checkpoints_root(Path(cfg.output_dir)))
    first = found[0] if found else 0
    last = min(total, math.ceil(micro_per_epoch / cfg.gradient_accumulation_steps))
    steps = step_index_lists(len(train), cfg, first, last) if first < last else []
    seen: set[int] = set()
    chunks = []
    for step in steps:
        chunk = [i for i in dict.fromkeys(step) if i not in seen]
        seen.update(chunk)
        if chunk:
            chunks.append(chunk)
    size = cfg.batch_size * cfg.gradient_accumulation_steps
    offset = len(train)
    chunks += [list(range(offset + s, offset + min(s + size, len(evals)))) for s in range(0, len(evals), size)]
    return train + evals, chunks


def _vision_model(cfg, token):
    """(model with its vision parts loaded, processor, device). Builtin models are built whole (they are tiny);
    a checkpoint gets only its vision tensors read, the rest of the model stays on the meta device."""
    from concurrent.futures import ThreadPoolExecutor

    from transformers import AutoConfig

    from trainer.model import compute_dtype, contiguous_vision_stream, load_model_and_processor, pick_device
    from trainer.processing import load_processor

    if cfg.model_id.startswith("builtin:"):
        loaded = load_model_and_processor(cfg, token)
        return loaded.model, loaded.processor, loaded.device
    device = pick_device()
    if device.type != "cuda" and cfg.preencode != "on":
        raise RuntimeError("no GPU: nothing to overlap")
    path = _local_checkpoint(cfg.model_id, token)
    config = AutoConfig.from_pretrained(path)
    with ThreadPoolExecutor(max_workers=1) as pool:  # the tokenizer parses while the weights load, as in trainer
        processor = pool.submit(load_processor, str(path), config.model_type, token=token,
                                image_budget=cfg.image_budget)
        model = _partial_model(path, config, device, compute_dtype(device))
        contiguous_vision_stream(model)
        return model, processor.result(), device


def _local_checkpoint(model_id: str, token) -> Path:
    """The model's local directory: the id itself, or its complete snapshot in the local hub cache (the parent
    downloads; the child does not race it)."""
    if Path(model_id).is_dir():
        return Path(model_id)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model_id, token=token, local_files_only=True))


def _partial_model(path: Path, config, device, dtype):
    """The model class built with its parameters on the meta device, then only the vision parts' parameters loaded
    from the checkpoint (cast as from_pretrained casts them) and moved, with their buffers, to `device`."""
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import AutoModelForImageTextToText

    from trainer.features import inner_model

    with init_empty_weights(include_buffers=False):  # buffers (position ids) are computed, not stored: keep them
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation="sdpa")
    inner = inner_model(model)
    parts = {part: getattr(inner, part) for part in VISION_PARTS if getattr(inner, part, None) is not None}
    tensors = _vision_tensors(path, {f"{p}.{n}" for p, m in parts.items() for n, _ in m.named_parameters()}, device)
    for part, module in parts.items():
        for name, param in list(module.named_parameters()):
            value = tensors[f"{part}.{name}"]
            set_module_tensor_to_device(module, name, device, value=value.to(param.dtype))
        for name, buf in list(module.named_buffers()):
            set_module_tensor_to_device(module, name, device, value=buf)
    return model.eval()


def _vision_tensors(path: Path, wanted: set[str], device) -> dict:
    """Checkpoint tensors named `<vision part>.<rest>` (any prefix before the part: `model.` or none)."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [
        "model.safetensors"]
    found = {}
    for file in files:
        with safe_open(str(path / file), framework="pt", device=str(device)) as f:
            for key in f.keys():  # noqa: SIM118 -- safe_open is not a mapping
                name = _vision_name(key)
                if name in wanted:
                    found[name] = f.get_tensor(key)
    missing = wanted - found.keys()
    if missing:
        raise KeyError(f"{len(missing)} vision tensors not in the checkpoint, e.g. {sorted(missing)[:2]}")
    return found


def _vision_name(key: str) -> str | None:
    for part in VISION_PARTS:
        at = key.find(f"{part}.")
        if at == 0 or (at > 0 and key[at - 1] == "."):
            return key[at:]
    return None


if __name__ == "__main__":
    sys.exit(child(Path(sys.argv[1])))
