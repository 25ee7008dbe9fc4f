"""The markdown summary of ``python -m bench`` judges the rows against issue #19's targets.

A synthetic report (no process started, nothing timed): each target is met by a row just inside it and
missed by a row just outside it on any one of its measures.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest


@pytest.fixture(scope="module")
def summary(bench_module: Callable[[str], ModuleType]) -> Any:
    return bench_module("__main__").markdown


def _report(*, p50: float, p99: float, calls_per_s: float, http_p99: float, cpu_us: float | None) -> dict[str, Any]:
    throughput: dict[str, Any] = {
        "clients": 32,
        "era": "legacy",
        "calls_per_s": calls_per_s,
        "median_ms": 5.0,
        "p99_ms": http_p99,
        "errors": 0,
    }
    if cpu_us is not None:
        throughput["proxy_cpu_us_per_call"] = cpu_us
    latency = {
        "path": "stdio → stdio, policy default",
        "added_median_ms": p50,
        "added_p99_ms": p99,
        "direct_median_ms": 0.2,
        "proxy_median_ms": 0.2 + p50,
        "proxy_cpu_us_per_call": 300.0,
    }
    machine = {"nproc": 2, "cpu": "test", "mem_gb": 4, "python": "3.11", "platform": "linux"}
    return {
        "machine": machine,
        "when": "now",
        "quick": False,
        "latency": {"rows": [latency]},
        "throughput": {"rows": [throughput]},
    }


def _rows(md: str) -> tuple[str, str]:
    stdio = next(line for line in md.splitlines() if line.startswith("| added latency, stdio"))
    http = next(line for line in md.splitlines() if line.startswith("| HTTP front, 32 clients"))
    return stdio, http


def test_rows_inside_the_targets_are_met(summary: Any) -> None:
    stdio, http = _rows(summary(_report(p50=0.5, p99=2.0, calls_per_s=2500, http_p99=29.9, cpu_us=400)))
    assert stdio.endswith("p50 ≤ 0.5 ms, p99 ≤ 2 ms: met |")
    assert "proxy CPU 400 µs/call" in http
    assert http.endswith("≥ 2,500/s, p99 < 30 ms, ≤ 400 µs proxy CPU/call (one worker): met |")


@pytest.mark.parametrize(
    ("field", "value"),
    [("p50", 0.51), ("p99", 2.1)],
)
def test_the_stdio_target_is_missed_on_either_percentile(summary: Any, field: str, value: float) -> None:
    measures: dict[str, Any] = {"p50": 0.4, "p99": 1.0, "calls_per_s": 3000, "http_p99": 10, "cpu_us": 300}
    stdio, _ = _rows(summary(_report(**{**measures, field: value})))
    assert stdio.endswith(": **not met** |")


@pytest.mark.parametrize(
    ("field", "value"),
    [("calls_per_s", 2499), ("http_p99", 30.0), ("cpu_us", 401), ("cpu_us", None)],
)
def test_the_http_target_is_missed_on_any_measure(summary: Any, field: str, value: float | None) -> None:
    measures: dict[str, Any] = {"p50": 0.4, "p99": 1.0, "calls_per_s": 3000, "http_p99": 10, "cpu_us": 300}
    _, http = _rows(summary(_report(**{**measures, field: value})))
    assert http.endswith(": **not met** |")
