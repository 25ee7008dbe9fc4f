"""bench_timeline.py's arithmetic: marks cut into calls at each line taken, and the median and p90 time between
consecutive points over the calls that share the most common sequence."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def timeline(bench_module: Callable[[str], ModuleType]) -> ModuleType:
    return bench_module("bench_timeline")


def _call(start: int, steps: list[tuple[str, int]]) -> list[tuple[str, int]]:
    marks, t = [("line taken >", start)], start
    for point, after in steps:
        t += after
        marks.append((point, t))
    return marks


def test_marks_are_cut_at_each_line_taken_and_the_unfinished_call_dropped(timeline: ModuleType) -> None:
    marks = [("audit row <", 5), *_call(10, [("a", 1_000)]), *_call(2_000, [("a", 3_000)]), ("line taken >", 9_000)]
    assert [[point for point, _ in call] for call in timeline.calls_of(marks)] == [["line taken >", "a"]] * 2


def test_each_point_is_timed_from_the_point_before_over_the_most_common_sequence(timeline: ModuleType) -> None:
    common = [_call(i * 100_000, [("a", 1_000 * (i + 1)), ("b", 4_000)]) for i in range(10)]
    odd = _call(5_000_000, [("a", 1_000), ("c", 99_000_000)])  # a call that took another way: not in the table
    report = timeline.segments([*common, odd])
    assert report["calls"] == 11 and report["calls_in_table"] == 10
    rows = {row["point"]: row for row in report["points"]}
    assert list(rows) == ["line taken >", "a", "b"]
    assert rows["a"]["median_us"] == 5.5 and rows["a"]["p90_us"] == 10.0  # 1..10 µs
    assert rows["b"]["median_us"] == 4.0 and rows["line taken >"]["median_us"] == 0.0
