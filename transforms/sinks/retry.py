"""Bounded retries with exponential backoff and full jitter for transient sink errors."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; the n-th wait is uniform in [0, min(max_delay, base * 2**n)].

    >>> RetryPolicy(attempts=3, base_delay_s=0.5).ceilings()
    [0.5, 1.0]
    """

    attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 20.0

    def ceilings(self) -> list[float]:
        return [min(self.max_delay_s, self.base_delay_s * 2**n) for n in range(self.attempts - 1)]


class RetriesExhausted(Exception):
    def __init__(self, attempts: int, last: BaseException) -> None:
        super().__init__(f"gave up after {attempts} attempts: {type(last).__name__}: {last}")
        self.last = last


def call_with_retries(
    fn: Callable[[], T],
    is_transient: Callable[[BaseException], bool],
    policy: RetryPolicy,
    on_retry: Callable[[BaseException], None] = lambda exc: None,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> T:
    """Run ``fn``; retry transient errors per ``policy``; re-raise permanent ones at once.

    >>> calls = []
    >>> def flaky():
    ...     calls.append(1)
    ...     if len(calls) < 3:
    ...         raise TimeoutError("slow")
    ...     return "ok"
    >>> call_with_retries(flaky, lambda e: isinstance(e, TimeoutError), RetryPolicy(), sleep=lambda s: None)
    'ok'
    """
    rng = rng or random.Random()
    ceilings = policy.ceilings()
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == policy.attempts - 1:
                raise RetriesExhausted(policy.attempts, exc) from exc
            on_retry(exc)
            sleep(rng.uniform(0, ceilings[attempt]))
    raise AssertionError("unreachable")
