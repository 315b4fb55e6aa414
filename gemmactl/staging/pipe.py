"""A byte-bounded hand-off from a downloading thread to the uploading one.

The Cloud Storage writer blocks while it uploads each 16 MiB chunk; fed directly, a file's download
stalls meanwhile, so download and upload alternate instead of overlapping. With a pipe, a producer
thread keeps reading ahead by up to `limit` bytes, and memory stays bounded.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator


class Abandoned(Exception):
    """The consumer went away (its upload failed or was cancelled): the producer stops."""


class BytePipe:
    """Chunks in, chunks out, at most `limit` bytes buffered; an error from the producer re-raises downstream."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._cond = threading.Condition()
        self._closed = self._abandoned = False
        self._error: BaseException | None = None

    def put(self, chunk: bytes) -> None:
        with self._cond:
            while self._size >= self._limit and not self._abandoned:
                self._cond.wait()
            if self._abandoned:
                raise Abandoned()
            self._chunks.append(chunk)
            self._size += len(chunk)
            self._cond.notify_all()

    def close(self, error: BaseException | None = None) -> None:
        with self._cond:
            self._closed, self._error = True, error
            self._cond.notify_all()

    def abandon(self) -> None:
        with self._cond:
            self._abandoned = True
            self._cond.notify_all()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            with self._cond:
                while not self._chunks and not self._closed:
                    self._cond.wait()
                if not self._chunks:
                    if self._error is not None:
                        raise self._error
                    return
                chunk = self._chunks.popleft()
                self._size -= len(chunk)
                self._cond.notify_all()
            yield chunk


def read_ahead(produce: Callable[[Callable[[bytes], None]], None], limit: int, name: str) -> Iterator[bytes]:
    """Run `produce(sink)` in a thread and yield what it sinks, up to `limit` bytes ahead of the consumer."""
    pipe = BytePipe(limit)

    def run() -> None:
        try:
            produce(pipe.put)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            pipe.close(e)
        else:
            pipe.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield from pipe
    finally:
        pipe.abandon()
        thread.join()
