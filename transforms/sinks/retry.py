"""Bounded retries with exponential backoff and full jitter for transient sink errors.

Also the capped backoff a streaming sink waits between rounds while the sink is failing
(``failure_delay``): it retries forever, Pub/Sub keeping the backlog.
"""

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

    A streaming sink that keeps failing waits ``failure_delay(n)`` after its n-th failed round
    (capped at ``failure_max_delay_s``).

    >>> RetryPolicy(attempts=3, base_delay_s=0.5).ceilings()
    [0.5, 1.0]
    >>> [RetryPolicy(failure_max_delay_s=60).failure_delay(n) for n in (0, 1, 5, 6, 40)]
    [1.0, 2.0, 32.0, 60, 60]
    """

    attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 20.0
    failure_base_delay_s: float = 1.0
    failure_max_delay_s: float = 60.0

    def ceilings(self) -> list[float]:
        return [min(self.max_delay_s, self.base_delay_s * 2**n) for n in range(self.attempts - 1)]

    def failure_delay(self, rounds: int) -> float:
        """The wait after ``rounds + 1`` consecutive failed rounds of a streaming sink."""
        return min(self.failure_max_delay_s, self.failure_base_delay_s * 2 ** min(rounds, 30))


class RetriesExhausted(Exception):
    def __init__(self, attempts: int, last: BaseException) -> None:
        super().__init__(f"gave up after {attempts} attempts: {type(last).__name__}: {last}")
        self.attempts, self.last = attempts, last


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
