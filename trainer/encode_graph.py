"""The encode-ahead thread's vision-tower calls, replayed as one CUDA graph each instead of ~600 launches.

The first epoch's images encode on a thread of their own while the main thread runs the baseline eval
(trainer.encoding). Both threads drive the GPU from Python, one op at a time, and every op hands the interpreter
back and forth between them: the eval's launch-bound generation ran at about half speed beside the encodes
(BENCHMARKS.md, ninth and tenth sets). Recorded once and replayed, a chunk's encode is a handful of calls, so the
thread holds the interpreter for a few of them instead of ~600.

The graph replays the very kernels the eager call runs, on the same inputs, so the features are the same bits (on
an H100: bench/gpu_vision.py's `graph_equals_eager`). It is recorded for the first full-size chunk after one eager
call of that size (the call sets up cuBLAS and cuDNN outside the capture); chunks of another size, and every chunk
after a capture that fails, run eagerly.
"""

from __future__ import annotations

import torch

from trainer.events import log

ENABLED = True  # bench A/B switch (bench/gpu_train.py --encode eagerahead)


class EncodeGraph:
    """`fn(pixels)` for one fixed pixel shape as a replayed CUDA graph, recorded on the shape's second call.

    Only the thread that owns `stream` may call it: the graph's input and output buffers are reused by every replay,
    so the caller copies the output before the next call (FeatureCache.add clones each image's features).
    """

    def __init__(self, fn):
        self.fn = fn
        self.graph: torch.cuda.CUDAGraph | None = None
        self.shape: torch.Size | None = None  # the shape seen eagerly once: the next call of that shape records
        self.failed = False
        self._in = self._out = None

    def __call__(self, pixels: torch.Tensor, stream) -> torch.Tensor:
        if self.failed or not ENABLED or stream is None:
            return self.fn(pixels)
        if self.graph is not None:
            if pixels.shape != self._in.shape:
                return self.fn(pixels)  # e.g. the epoch's last, smaller chunk
            self._in.copy_(pixels)
            self.graph.replay()
            return self._out
        if self.shape != pixels.shape:
            self.shape = pixels.shape
            return self.fn(pixels)  # the warm-up: lazy cuBLAS / cuDNN set-up happens outside a capture
        return self._record(pixels, stream)

    def _record(self, pixels: torch.Tensor, stream) -> torch.Tensor:
        graph, static_in = torch.cuda.CUDAGraph(), pixels.clone()
        try:
            with torch.cuda.stream(stream):
                # thread-local: the main thread keeps launching, allocating and synchronising meanwhile
                graph.capture_begin(capture_error_mode="thread_local")
                try:
                    static_out = self.fn(static_in)
                finally:
                    graph.capture_end()
        except RuntimeError as exc:
            self.failed = True
            log(f"encode graph: recording failed, encoding eagerly ({str(exc).splitlines()[0][:160]})")
            return self.fn(pixels)
        self.graph, self._in, self._out = graph, static_in, static_out
        graph.replay()  # a capture records without running: this chunk's features come from the first replay
        return static_out

    def release(self) -> None:
        """Drop the graph and its buffers (its memory pool goes back to the allocator)."""
        self.graph = self._in = self._out = None
