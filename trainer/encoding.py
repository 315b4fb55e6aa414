"""Encode the first epoch's images ahead of the steps that need them, on a thread and a CUDA stream of their own.

With the vision tower frozen, each image is encoded once, for the first batch that needs it (trainer.features): in
the default run that is the whole first epoch, 16 images (~220 ms of GPU) a step. Encoded in line, between steps,
the encodes wait for the host whenever it falls behind. On a thread with its own stream they run as far ahead as
the GPU allows (at most LEAD chunks queued), in the order the batches need them, and the training stream waits
(on the GPU, through an event) only for the images of the batch at hand. On a GPU they start before the baseline
eval's passes, whose generation leaves the GPU idle part of the time (`encode_during_baseline`). The step
compiles before any of them starts (trainer.run._compile_ahead): encoding beside a first step's compile had made
it three times slower (BENCHMARKS.md, sixth and eighth sets), so they used to pause for it.

The same Encoder encodes the eval images beside the compile ahead of training (trainer.run._compile_ahead).

The training thread's own GPU work runs on a stream of higher priority than the encoders' (`above_the_encodes`,
entered by trainer.run): the steps go first and the encodes fill the GPU time they leave.

The features are the ones the in-line path computes: the same chunks of images, through the same code (the image
side is never patched by the training step's block, trainer.fused), and an encode draws no random numbers, so
the steps' dropout masks do not depend on when it runs (tests/trainer/test_encode_ahead.py).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque

import torch

JOIN_TIMEOUT_S = 60.0  # a chunk takes well under a second; a thread stuck longer is left behind (daemon)
LEAD = 2  # chunks queued on the GPU at most: the step's kernels (and any host sync) wait behind no more than these
DURING_BASELINE = True  # on a GPU, the first epoch's encodes start before the baseline eval: `encode_during_baseline`


class Encoder:
    """Puts the images named by `loader`'s chunks into `cache`, in order: on a thread (`threaded`) or on demand.

    Use as a context manager; `ensure(keys)` returns once those images are cached and the current CUDA stream is
    ordered after their encode. A failed encode (a bad image, a prompt whose image tokens do not match) is raised
    by the next `ensure`.
    """

    def __init__(self, cache, examples, loader, threaded: bool, what: str = "encode ahead"):
        self.cache, self.examples, self.threaded, self.what = cache, examples, threaded, what
        self._chunks = iter(loader) if loader is not None else iter(())  # its workers started with it, on this thread
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._done = loader is None
        self._stop = False
        self._thread: threading.Thread | None = None
        self._threads = torch.get_num_threads()  # per thread under OpenMP: the encode must match in-line numerics
        self.images = 0  # encoded by this encoder so far

    def __enter__(self) -> Encoder:
        return self.start()

    def start(self) -> Encoder:
        """Start the thread (when threaded), once: an encoder started early is entered again by training."""
        if self.threaded and not self._done and self._thread is None and not self._stop:
            stream = torch.cuda.Stream(device=self.cache.device) if self.cache.device.type == "cuda" else None
            self._thread = threading.Thread(target=self._run, args=(stream,), name="encode-ahead", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ensure(self, keys: list[str]) -> None:
        """Block until every key is cached; order the current stream after their encodes."""
        if self.threaded:
            with self._cond:
                self._cond.wait_for(lambda: self._error is not None or self._done or self._cached(keys))
            if self._error is not None:
                raise self._error
        else:
            while not self._cached(keys) and self._encode_next(None):
                pass
        if not self._cached(keys):
            missing = [k for k in keys if k not in self.cache]
            raise RuntimeError(f"images {missing[:3]} were never encoded (no chunk named them)")
        self.cache.wait_ready(keys)

    def close(self) -> None:
        """Stop after the chunk in hand and wait for the thread (the training loop ended or failed)."""
        self._stop = True
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT_S)
            self._thread = None

    def _cached(self, keys: list[str]) -> bool:
        return all(key in self.cache for key in keys)

    def _run(self, stream) -> None:
        """The thread: encode chunk after chunk, never more than LEAD of them queued on the GPU.

        Unbounded, the thread queued the whole first epoch's encodes (~16 s of GPU) in seconds, and the first
        step, whose compile makes the host wait for the GPU, waited behind all of them (measured: 17 s, not 5).
        """
        from trainer.events import log

        torch.set_num_threads(self._threads)
        started, queued = time.perf_counter(), deque()
        try:
            while not self._stop and self._encode_next(stream, queued):
                with self._cond:
                    self._cond.notify_all()
                while len(queued) >= LEAD:
                    queued.popleft().synchronize()  # the GIL is released while it waits
            for event in queued:
                event.synchronize()
            # this thread's own count: the cache's also grows with the eval images the baseline encodes meanwhile
            log(f"{self.what}: {self.images} images encoded in {time.perf_counter() - started:.1f} s")
        except BaseException as exc:  # noqa: BLE001 -- handed to the training thread, raised by ensure()
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _encode_next(self, stream, queued: deque | None = None) -> bool:
        """Encode the next chunk's images that are not cached yet; False when there are no chunks left."""
        chunk = next(self._chunks, None)
        if chunk is None:
            self._done = True
            return False
        fresh = [(i, prompt) for i, prompt in chunk if self.examples[i].image_id not in self.cache]
        if fresh:
            ready = self.cache.add([self.examples[i].image_id for i, _ in fresh], [p for _, p in fresh], stream=stream)
            self.images += len(fresh)
            if ready is not None and queued is not None:
                queued.append(ready)
        return True


@contextlib.contextmanager
def above_the_encodes(device: torch.device):
    """Inside, this thread's GPU work (the model's load, the evals, the steps) runs on a CUDA stream of higher
    priority than the encode threads' (which keep the default, the lowest): when both have kernels waiting, the
    GPU schedules this thread's first, and the encodes fill what they leave over.

    Measured on an H100 (BENCHMARKS.md, nineteenth set): at equal priority the encodes ran far ahead and a step
    beside them took 1.4-2.6 s; at higher priority ~0.62 s, the encodes trailing just ahead of the steps. The
    training phase took 1.6-2.3 s less (strict train 47.9 and 48.1 samples/s against 46.8 and 46.4, same machine).
    The encodes' results do not change (the same kernels, later), nor does what the steps compute.
    """
    if device.type != "cuda":
        yield
        return
    stream = torch.cuda.Stream(device=device, priority=-1)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        yield
    torch.cuda.current_stream(device).wait_stream(stream)


def encode_bytes(model, images: int, image_budget: int | None = None) -> int:
    """A generous estimate of the GPU memory one encode of `images` images works in (pixels + activations)."""
    vision = model.config.vision_config
    if getattr(vision, "image_size", None) and getattr(vision, "patch_size", None):
        patches = (vision.image_size // vision.patch_size) ** 2  # SigLIP: 4,096 at 896 px
    else:  # Gemma 4: the token budget x the pooling window
        patches = (image_budget or 280) * getattr(vision, "pooling_kernel_size", 3) ** 2
    activations = patches * (vision.intermediate_size + 4 * vision.hidden_size) * 2
    pixels = patches * 3 * getattr(vision, "patch_size", 16) ** 2 * (4 + 2)  # fp32 in, bf16 copy
    return 2 * images * (activations + pixels)


def fits_beside_step(model, memory, images: int, image_budget: int | None) -> tuple[bool, float, float]:
    """(does an encode of `images` images fit beside the planned step's peak?, the encode's GiB, the step's GiB)."""
    need = encode_bytes(model, images, image_budget) / 2**30
    peak = memory.fixed_gib + memory.micro_batch * memory.per_sample_gib
    return peak + need <= memory.budget_gib, need, peak


def choose_encode_ahead(model, memory, device: torch.device, images: int, image_budget: int | None) -> tuple[bool, str]:
    """(encode ahead?, why): on a GPU only if one encode fits beside the planned step's peak."""
    if device.type != "cuda":
        return True, "CPU: the encode of the next images overlaps the step's Python"
    fits, need, peak = fits_beside_step(model, memory, images, image_budget)
    if fits:
        return True, f"an encode of {images} images (~{need:.1f} GiB) fits beside the step's {peak:.1f} GiB"
    return False, (f"an encode of {images} images (~{need:.1f} GiB) does not fit beside the step's {peak:.1f} GiB "
                   f"in {memory.budget_gib:.0f} GiB: images are encoded between steps")


def encode_during_baseline(plan, device: torch.device) -> bool:
    """Start encoding the first epoch's images before the baseline eval (trainer.run) rather than at training?

    On a GPU, when they are encoded ahead anyway: the encodes get the GPU time the eval leaves over (its kernels
    keep an H100 ~75 % busy at 185 prompts: BENCHMARKS.md, fourteenth set). Not free: measured on H100s (ninth and
    tenth sets), the eval's generation ran at about half speed beside them and the baseline grew by 8-11 s for
    12-15 s of encodes taken out of training; baseline + training got 2-5 s shorter, depending on the machine. The
    slowdown is the two sharing the GPU: a high-priority stream for the eval, a green context for the encodes, packed
    loader transfers, the encodes as one CUDA graph each and no loader at all made no difference (measured, dropped).
    Since the step compiles ahead, in the window where these encodes used to start, the early start measured about
    even (baseline + training within ~1 s either way, eighteenth set). On a CPU they would only compete for the cores.
    """
    return DURING_BASELINE and device.type == "cuda" and plan.cache is not None and plan.encode_ahead

