"""The benchmark's pure helpers (the benchmark itself runs in `make bench`, never here)."""

from __future__ import annotations

import os

from bench.load import percentile
from bench.run import children, cpu_seconds, rss_mb


def test_percentile() -> None:
    values = sorted(float(v) for v in range(1, 101))
    assert percentile(values, 0.5) in (50.0, 51.0)
    assert percentile(values, 0.0) == 1.0 and percentile(values, 1.0) == 100.0
    assert percentile([], 0.5) != percentile([], 0.5)  # NaN for no samples


def test_proc_readers_see_this_process() -> None:
    me = os.getpid()
    busy = sum(i * i for i in range(200_000))
    assert busy > 0
    assert cpu_seconds([me]) > 0
    assert cpu_seconds([2**22 + 12345]) == 0  # a pid that does not exist counts nothing
    assert rss_mb([me]) > 1
    assert children(2**22 + 12345) == []
