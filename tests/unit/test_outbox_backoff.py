"""The outbox's retry schedule: exponential backoff with full jitter, capped (pure)."""

from __future__ import annotations

import datetime as dt
import random

from hypothesis import given
from hypothesis import strategies as st

from review.outbox import DeliveryPolicy


@given(attempts=st.integers(0, 40), base=st.floats(0.1, 30), cap=st.floats(1, 3600),
       seed=st.integers(0, 2**32))
def test_backoff_is_uniform_below_the_doubling_cap(attempts: int, base: float, cap: float,
                                                   seed: int) -> None:
    policy = DeliveryPolicy(base_delay=dt.timedelta(seconds=base),
                            max_delay=dt.timedelta(seconds=cap))
    delay = policy.backoff(attempts, random.Random(seed)).total_seconds()
    assert 0 <= delay <= min(cap, base * 2**attempts) + 1e-6
    assert policy.backoff(attempts, random.Random(seed)).total_seconds() == delay  # seeded


def test_backoff_spreads_retries_instead_of_synchronising_them() -> None:
    policy = DeliveryPolicy(base_delay=dt.timedelta(seconds=2), max_delay=dt.timedelta(minutes=30))
    rng = random.Random(11)
    delays = [policy.backoff(5, rng).total_seconds() for _ in range(200)]
    assert max(delays) <= 64 and len(set(delays)) == 200
    # full jitter: spread over the whole window, not bunched at its top
    assert min(delays) < 16 and max(delays) > 48
