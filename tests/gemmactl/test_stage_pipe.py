"""The read-ahead pipe: download overlaps upload, memory stays bounded, errors reach the uploader."""

from __future__ import annotations

import threading

import pytest

from gemmactl.staging.pipe import read_ahead


def test_chunks_arrive_in_order_and_the_producer_never_runs_more_than_the_limit_ahead():
    buffered = []
    consumed = 0
    lock = threading.Lock()

    def produce(sink):
        for i in range(50):
            sink(bytes([i]) * 10)
            with lock:
                buffered.append(10 * (i + 1) - consumed)

    out = []
    for chunk in read_ahead(produce, limit=30, name="t"):
        out.append(chunk)
        with lock:
            consumed += len(chunk)
    assert out == [bytes([i]) * 10 for i in range(50)]
    assert max(buffered) <= 30 + 10  # the limit, plus the one chunk that crossed it


def test_a_producer_error_is_raised_in_the_consumer_after_the_good_chunks():
    def produce(sink):
        sink(b"ok")
        raise ValueError("hub reset")

    got = []
    with pytest.raises(ValueError, match="hub reset"):
        for chunk in read_ahead(produce, limit=10, name="t"):
            got.append(chunk)
    assert got == [b"ok"]


def test_a_failing_consumer_stops_the_producer_instead_of_leaking_a_blocked_thread():
    stopped = threading.Event()

    def produce(sink):
        try:
            while True:
                sink(b"x" * 100)
        finally:
            stopped.set()

    with pytest.raises(RuntimeError):
        for _ in read_ahead(produce, limit=100, name="t"):
            raise RuntimeError("upload failed")
    assert stopped.wait(5)
