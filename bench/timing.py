"""The timing protocol every comparison in `bench` shares."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def interleaved(a: Callable[[], Any], b: Callable[[], Any], rounds: int, inner: int) -> tuple[float, float]:
    """Median seconds per call of `a` and of `b`, timed in alternating order."""
    times: dict[str, list[float]] = {"a": [], "b": []}
    for r in range(rounds):
        for key, fn in ((("a", a), ("b", b)) if r % 2 == 0 else (("b", b), ("a", a))):
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            times[key].append((time.perf_counter() - start) / inner)
    return statistics.median(times["a"]), statistics.median(times["b"])
