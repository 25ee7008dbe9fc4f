"""The console's chart data: /metrics' counters sampled into a ring, rates and latency quantiles per interval."""

from __future__ import annotations

from collections import Counter

import pytest

from mcp_guard.frontend.admin_metrics import MetricsHistory, Sample, quantile


def test_quantiles_interpolate_inside_the_bucket_they_fall_in() -> None:
    bounds = (1.0, 2.0, 4.0)
    assert quantile(0.5, bounds, [0, 10, 0, 0]) == pytest.approx(1.5)
    assert quantile(0.99, bounds, [0, 10, 0, 0]) == pytest.approx(1.99)
    assert quantile(0.5, bounds, [10, 0, 0, 10]) == pytest.approx(1.0)
    assert quantile(0.99, bounds, [0, 0, 0, 5]) == 4.0, "past the last bound: the last bound"
    assert quantile(0.5, bounds, [0, 0, 0, 0]) is None


def test_points_are_rates_and_quantiles_between_consecutive_samples() -> None:
    samples = iter(
        [
            Sample(100.0, Counter(allow=5), (0, 0, 0, 0), 0, 0),
            Sample(102.0, Counter(allow=9, deny=2), (0, 6, 0, 0), 1, 3),
            Sample(104.0, Counter(allow=9, deny=2), (0, 6, 0, 0), 0, 0),
        ]
    )
    history = MetricsHistory(lambda: next(samples), (1.0, 2.0, 4.0), keep=2)
    for _ in range(3):
        history.sample()
    first, second = history.points()
    assert first == {
        "t": 102.0,
        "calls": {"allow": 2.0, "deny": 1.0},
        "p50_ms": 1500.0,
        "p99_ms": 1990.0,
        "approvals_pending": 1,
        "audit_queue": 3,
    }
    assert second["calls"] == {"allow": 0.0, "deny": 0.0} and second["p50_ms"] is None
    assert len(history.points()) == 2
