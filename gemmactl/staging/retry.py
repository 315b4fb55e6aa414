"""Retries with exponential backoff and jitter, honouring the server's Retry-After; sleep is injectable."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from gemmactl.errors import TransientError
from gemmactl.staging.hub import Retryable

T = TypeVar("T")
MAX_RETRY_AFTER_S = 300.0  # a hub asking for more than five minutes is better reported than waited on
SLEEP: Callable[[float], None] = time.sleep  # the default wait; tests swap it for a recorder


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8  # per call, or per file without progress: a stalled stream counts, a moving one resets
    base_s: float = 0.5
    max_s: float = 30.0
    sleep: Callable[[float], None] | None = field(default=None, compare=False)  # None: module-level SLEEP

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_S)
        backoff = min(self.max_s, self.base_s * 2 ** (attempt - 1))
        return backoff * (0.5 + random.random() / 2)  # jitter: parallel workers must not retry in lockstep

    def wait(self, attempt: int, error: Retryable, what: str) -> None:
        """Sleep before retry `attempt + 1`, or raise TransientError when the attempts are spent."""
        if attempt >= self.attempts:
            raise TransientError(f"{what} failed after {attempt} attempts ({error})")
        (self.sleep or SLEEP)(self.delay(attempt, error.retry_after))


def call(policy: RetryPolicy, fn: Callable[[], T], what: str) -> T:
    """`fn()` retried on Retryable."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Retryable as e:
            policy.wait(attempt, e, what)
