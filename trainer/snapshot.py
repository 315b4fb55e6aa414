"""What a checkpoint holds, taken between two steps and written while training goes on.

A checkpoint is the adapter weights plus the optimizer, scheduler and RNG state: everything an exact resume needs
(tests/trainer/test_resume_exact.py). For gemma-3-4b that is ~360 MB (30M adapter numbers, twice as many Adam
moments), every `--save-steps` steps; through the bucket's FUSE mount the write takes seconds, and a compiled step
takes 0.3 s. So the trainer queues copies of the state into pinned host memory between steps (the GPU makes them
in stream order, after the step's update and before the next one's; the host does not wait) and a background
thread waits for them, then writes through trainer.checkpoint (step dir, then the COMPLETE marker). The next
checkpoint waits for it, and so does the end of training (in trainer.run, the end of the final eval, so the last
write lands beside the eval); a failed write is raised there. (Copied one by one into pageable memory, the ~1,000
tensors made the host wait ~1,000 times: measured 0.5-1.5 s per checkpoint.) A task killed mid-write leaves no
marker: resume uses the previous checkpoint, as before. The host buffers are pinned before the first step
(`reserve_host_memory`): pinned at the first checkpoint, they made its snapshot 276-583 ms instead of ~100
(BENCHMARKS.md, nineteenth set).
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from trainer.checkpoint import save_checkpoint

ADAPTER = "adapter"
WEIGHTS = "adapter_model.safetensors"
STATE = "trainer_state.pt"


def _to_host(value):
    """A copy of every tensor in a (nested) state dict in host memory; the rest is copied as is.

    The tensors of each device and dtype are joined into one flat buffer where they are (one kernel) and copied to
    one host buffer (pinned when it comes from the GPU, asynchronously: valid once the stream reaches the copy,
    `snapshot`'s "ready" event); the state dict gets views of it. One buffer, the same size at every checkpoint,
    comes from the pinned-memory cache after the first: a snapshot cost the training thread 65-125 ms on an H100 at
    gemma-3-4b size, the first one 250-730 ms (BENCHMARKS.md, sixth set).
    """
    views: dict[int, torch.Tensor] = {}
    for device, dtype, group in _groups(value):
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        host = torch.empty(flat.shape, dtype=dtype, pin_memory=device.type == "cuda")
        host.copy_(flat, non_blocking=device.type == "cuda")
        for t, view in zip(group, host.split([t.numel() for t in group]), strict=True):
            views[id(t)] = view.view(t.shape)
    return _replaced(value, views)


def _groups(value) -> list[tuple[torch.device, torch.dtype, list[torch.Tensor]]]:
    """The distinct tensors of a (nested) state, by (device, dtype): one flat host buffer each (`_to_host`)."""
    tensors = [t for t in _leaves(value) if isinstance(t, torch.Tensor)]
    return [(device, dtype, list({id(t): t for t in tensors if t.device == device and t.dtype == dtype}.values()))
            for device, dtype in dict.fromkeys((t.device, t.dtype) for t in tensors)]


def host_buffers(model, opt) -> list[tuple[torch.device, torch.dtype, int]]:
    """(device, dtype, elements) of each host buffer a snapshot will take, known before the first step: the adapter,
    the step's unread loss, and AdamW's two moments (three with amsgrad) and step counts, which the optimizer only
    creates at its first step (on the parameter's device when fused or capturable, else on the CPU, in fp32)."""
    from peft import get_peft_model_state_dict

    buffers = [(device, dtype, sum(t.numel() for t in group))
               for device, dtype, group in _groups(get_peft_model_state_dict(model))]
    params = [p for group in opt.param_groups for p in group["params"]]
    if not isinstance(opt, torch.optim.Adam | torch.optim.AdamW) or not params:
        return buffers
    moments = 3 if opt.defaults.get("amsgrad") else 2
    on_device = bool(opt.defaults.get("fused") or opt.defaults.get("capturable"))
    sizes: dict[tuple[torch.device, torch.dtype], int] = {}
    for p in params:
        sizes[(p.device, p.dtype)] = sizes.get((p.device, p.dtype), 0) + moments * p.numel()
        step = (p.device if on_device else torch.device("cpu"), torch.float32)
        sizes[step] = sizes.get(step, 0) + 1
    loss = (params[0].device, torch.float32)
    return buffers + [(device, dtype, n) for (device, dtype), n in sizes.items()] + [(*loss, 1)]


def reserve_host_memory(model, opt) -> None:
    """Pin the first snapshot's host buffers now, when the GPU has nothing queued behind the host.

    Pinning ~384 MiB at the first checkpoint made its snapshot take 276-583 ms of the training thread on H100s,
    against ~60-120 ms once pinned (BENCHMARKS.md, nineteenth set). Freed at once, the buffers stay in torch's
    pinned-memory cache (sized in powers of two), from which every snapshot's buffers then come.
    """
    held = [torch.empty(n, dtype=dtype, pin_memory=True)  # all at once: two of a size need two blocks
            for device, dtype, n in host_buffers(model, opt) if device.type == "cuda"]
    del held


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _replaced(value, views: dict[int, torch.Tensor]):
    if isinstance(value, torch.Tensor):
        return views[id(value)]
    if isinstance(value, dict):
        return {k: _replaced(v, views) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_replaced(v, views) for v in value)
    return copy.deepcopy(value)


def snapshot(model, opt, sched, step: int, losses: list[dict]) -> dict:
    """The checkpoint's contents, copied off the training state (which the next step changes).

    `losses` may end with device tensors (steps whose loss the host has not read yet: reading it would make the
    host wait for the GPU); they are copied with the rest and read by the writer (`write_snapshot`).
    """
    from peft import get_peft_model_state_dict

    config = copy.deepcopy(model.peft_config[model.active_adapter])
    config.inference_mode = True  # as peft's save_pretrained writes it
    snap = {
        "adapter": _to_host(get_peft_model_state_dict(model)),
        "config": config,
        "trainer": {"step": step, "losses": _to_host(list(losses)), "optimizer": _to_host(opt.state_dict()),
                    "scheduler": _to_host(sched.state_dict()), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    }
    if torch.cuda.is_available():
        # blocking: the writer thread sleeps until the copies land rather than spin a core (trainer.features._record)
        snap["ready"] = torch.cuda.Event(blocking=True)
        snap["ready"].record()  # after the copies above, in the same stream
    return snap


def write_snapshot(out_dir: Path, snap: dict) -> None:
    """The adapter as peft saves it (safetensors + adapter_config.json) and the trainer state beside it."""
    from safetensors.torch import save_file

    if snap.get("ready") is not None:
        snap["ready"].synchronize()  # the queued device-to-host copies have landed
    trainer = {**snap["trainer"], "losses": _read_losses(snap["trainer"]["losses"])}
    (out_dir / ADAPTER).mkdir(parents=True, exist_ok=True)
    # views of one buffer: safetensors refuses tensors that share memory, so each gets its own copy
    save_file({k: v.clone() for k, v in snap["adapter"].items()}, str(out_dir / ADAPTER / WEIGHTS),
              metadata={"format": "pt"})
    snap["config"].save_pretrained(str(out_dir / ADAPTER))
    torch.save(trainer, out_dir / STATE)


def _read_losses(losses: list[dict]) -> list[dict]:
    """Losses as floats; a checkpoint of a step whose loss is not finite is not written (training stops there)."""
    out = [{**row, "loss": float(row["loss"])} for row in losses]
    bad = next((row for row in out if not math.isfinite(row["loss"])), None)
    if bad is not None:
        raise FloatingPointError(f"loss is {bad['loss']} at step {bad['step']}: checkpoint not written")
    return out


def load_snapshot(ckpt: Path, model, opt, sched) -> tuple[int, list[dict]]:
    """Restore adapter, optimizer, scheduler and RNG from a checkpoint; (step, losses so far)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(ckpt / ADAPTER / WEIGHTS)))
    saved = torch.load(ckpt / STATE, map_location="cpu", weights_only=False)
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    if saved["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    return saved["step"], saved["losses"]


class BackgroundCheckpoints:
    """One checkpoint write at a time, in a thread; `done(step, path)` runs on the caller's thread when it lands."""

    def __init__(self, root: Path, keep: int, done: Callable[[int, Path], None]):
        self.root, self.keep, self.done = root, keep, done
        self._thread: threading.Thread | None = None
        self._result: tuple[int, Path] | BaseException | None = None

    def save(self, step: int, snap: dict) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(step, snap), name=f"checkpoint-{step}",
                                        daemon=True)
        self._thread.start()

    def _write(self, step: int, snap: dict) -> None:
        try:
            self._result = step, save_checkpoint(self.root, step, lambda d: write_snapshot(d, snap), self.keep)
        except BaseException as exc:  # noqa: BLE001 -- handed to the training thread, raised there
            self._result = exc

    @contextlib.contextmanager
    def landing(self):
        """Writes may go on inside; on leaving, the pending one has landed. Its error is raised, unless another is
        already on its way out (the write still lands first, for the retry)."""
        try:
            yield self
        except BaseException:
            self.wait(quiet=True)
            raise
        self.wait()

    def wait(self, quiet: bool = False) -> None:
        """Block until the pending write is complete; raise its error (unless `quiet`), or report it done."""
        if self._thread is None:
            return
        self._thread.join()
        self._thread, result, self._result = None, self._result, None
        if not isinstance(result, BaseException):
            self.done(*result)
        elif not quiet:
            raise result
