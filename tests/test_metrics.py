"""The hand-written Prometheus text exposition: what it writes parses strictly, values and labels round-trip."""

from __future__ import annotations

import math

import pytest

from mcp_guard.metrics import CONTENT_TYPE, Histogram, Page, escape_label, format_value
from prom_text import parse, value_of


def test_counters_gauges_and_labels_round_trip_through_a_strict_parser() -> None:
    page = Page()
    hostile = 'we"ird\\name\nwith newline'
    page.counter("x_calls_total", "Calls.\nTwo lines \\ here.", ("server", "tool"), {("a", "b"): 3, ("a", hostile): 1})
    page.gauge("x_up", "Up.", (), {(): 1})
    page.gauge("x_ratio", "A float.", ("k",), {("v",): 0.25})
    families = parse(page.text())

    assert families["x_calls_total"].kind == "counter" and families["x_up"].kind == "gauge"
    assert value_of(families, "x_calls_total", server="a", tool="b") == 3
    assert value_of(families, "x_calls_total", server="a", tool=hostile) == 1  # escaped, read back intact
    assert value_of(families, "x_up") == 1
    assert value_of(families, "x_ratio", k="v") == 0.25
    assert families["x_calls_total"].help == "Calls.\\nTwo lines \\\\ here."  # HELP escapes, one line


def test_a_histogram_is_cumulative_with_inf_count_and_sum() -> None:
    h = Histogram((0.1, 0.5, 1.0))
    for v in (0.05, 0.1, 0.3, 0.7, 2.0, 2.0):
        h.observe(("rec",), v)
    h.observe(("other",), 0.2)
    page = Page()
    page.histogram("x_seconds", "Durations.", ("server",), h)
    families = parse(page.text())

    def bucket(le: str) -> float | None:
        return value_of(families, "x_seconds_bucket", server="rec", le=le)

    assert [bucket(le) for le in ("0.1", "0.5", "1.0", "+Inf")] == [2, 3, 4, 6]  # 0.1 falls in le="0.1"
    assert value_of(families, "x_seconds_count", server="rec") == 6 == h.count(("rec",))
    assert value_of(families, "x_seconds_sum", server="rec") == pytest.approx(5.15)
    assert value_of(families, "x_seconds_count", server="other") == 1
    assert h.count(("nobody",)) == 0


def test_values_are_spelt_as_prometheus_reads_them() -> None:
    assert [format_value(v) for v in (3, 0.5, math.nan, math.inf, -math.inf, 1e-05)] == [
        "3",
        "0.5",
        "NaN",
        "+Inf",
        "-Inf",
        "1e-05",
    ]
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


def test_misuse_is_refused() -> None:
    page = Page()
    with pytest.raises(ValueError, match="_total"):
        page.counter("x_calls", "no suffix", (), {(): 1})
    with pytest.raises(ValueError, match="label values"):
        page.gauge("x_g", "arity", ("a", "b"), {("only-one",): 1})
    for bad in ((), (1.0, 1.0), (0.1, math.inf)):
        with pytest.raises(ValueError):
            Histogram(bad)


def test_the_strict_parser_refuses_what_prometheus_refuses() -> None:
    """A check of the checker: each of these must fail, or the tests above prove nothing."""
    bad = [
        "x_total 1\n",  # no TYPE
        '# HELP x_total h\n# TYPE x_total counter\nx_total{a="1"} 1\nx_total{a="1"} 2\n',  # duplicate series
        "# HELP x h\n# TYPE x counter\nx 1\n",  # counter without _total
        "# HELP x h\n# TYPE x gauge\nx{a=unquoted} 1\n",
        "# HELP x h\n# TYPE x gauge\nx 1",  # no final newline
        "# HELP x h\n# TYPE x gauge\nx one\n",
        '# HELP h h\n# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
        '# HELP h h\n# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 1\n',
    ]
    for text in bad:
        with pytest.raises(AssertionError):
            parse(text)
