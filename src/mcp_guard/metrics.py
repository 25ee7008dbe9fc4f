"""Prometheus text exposition (format 0.0.4), written by hand, and the one histogram the hot path uses.

Why by hand rather than ``prometheus_client``: recording must cost next to nothing on the call path,
and everything that records runs on one event loop. So a counter is a plain ``dict`` entry bumped in
place and a histogram a ``list`` of bucket counts — no locks, no label objects, no formatting until
``/metrics`` is scraped (``prometheus_client`` takes a lock in ``labels()`` and another in ``inc()``).
The text format is small and stable; the tests check what this module writes with a strict parser,
``promtool check metrics`` and a real Prometheus server scraping a real proxy.

How a scrape is written::

    page = Page()
    page.counter("mcp_guard_calls_total", "Tool calls.", ("server", "tool"), {("rec", "echo"): 3})
    page.histogram("mcp_guard_call_duration_seconds", "…", ("server",), histogram)
    body = page.text()

Label values are escaped here (a tool name may hold quotes, backslashes or newlines); keeping the
*number* of label values bounded is the caller's job (see :mod:`mcp_guard.pipeline.observe`).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence

__all__ = ["CONTENT_TYPE", "Histogram", "Page", "escape_label", "format_value"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LabelValues = tuple[str, ...]


def escape_label(value: str) -> str:
    """A label value as the text format writes it between double quotes."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value: integers without a decimal point, ``NaN``/``+Inf``/``-Inf`` spelt as Prometheus does."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    v = float(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


class Histogram:
    """Observations in fixed buckets, one series per label-value tuple.

    A series is one ``list``: the count of each bucket (not cumulative; the last one is ``+Inf``), then
    the sum of the observed values. :meth:`observe` is a ``bisect`` and two additions; the cumulative
    ``_bucket`` lines are made at scrape time.
    """

    __slots__ = ("_n", "bounds", "series")

    def __init__(self, bounds: Sequence[float]) -> None:
        ordered = tuple(sorted(float(b) for b in bounds))
        if not ordered or len(set(ordered)) != len(ordered) or not all(math.isfinite(b) for b in ordered):
            raise ValueError("histogram bounds must be distinct finite numbers")
        self.bounds = ordered
        self._n = len(ordered) + 1  # the buckets, +Inf included
        self.series: dict[LabelValues, list[float]] = {}

    def series_for(self, key: LabelValues) -> list[float]:
        """``key``'s series, made empty if new: ``[count of each bucket…, +Inf count, sum]``. A hot path may
        keep it and update it in place as :meth:`observe` does."""
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = [0.0] * (self._n + 1)
        return series

    def observe(self, key: LabelValues, value: float) -> None:
        series = self.series.get(key) or self.series_for(key)
        series[bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value ("le")
        series[-1] += value

    def add(self, key: LabelValues, buckets: Sequence[float], total: float) -> None:
        """Add bucket counts (not cumulative, ``+Inf`` last) and their sum, kept elsewhere, to ``key``'s series."""
        if len(buckets) != self._n:
            raise ValueError(f"{len(buckets)} bucket counts for {self._n} buckets")
        series = self.series_for(key)
        for i, n in enumerate(buckets):
            series[i] += n
        series[-1] += total

    def count(self, key: LabelValues) -> int:
        """How many values were observed for ``key`` (0 if none)."""
        series = self.series.get(key)
        return int(sum(series[:-1])) if series is not None else 0


class Page:
    """One scrape's text, family by family, in the order they are added."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def _head(self, name: str, kind: str, help: str) -> None:
        self._lines.append(f"# HELP {name} {_escape_help(help)}")
        self._lines.append(f"# TYPE {name} {kind}")

    def _sample(self, name: str, labels: Sequence[str], values: LabelValues, value: float) -> None:
        if len(labels) != len(values):
            raise ValueError(f"{name}: {len(values)} label values for labels {tuple(labels)}")
        if labels:
            pairs = ",".join(f'{k}="{escape_label(v)}"' for k, v in zip(labels, values, strict=True))
            self._lines.append(f"{name}{{{pairs}}} {format_value(value)}")
        else:
            self._lines.append(f"{name} {format_value(value)}")

    def _family(
        self, kind: str, name: str, help: str, labels: Sequence[str], samples: Mapping[LabelValues, float]
    ) -> None:
        self._head(name, kind, help)
        for values in sorted(samples):
            self._sample(name, labels, values, samples[values])

    def counter(self, name: str, help: str, labels: Sequence[str], samples: Mapping[LabelValues, float]) -> None:
        """A counter family; ``name`` ends in ``_total`` (the text format names the family with it)."""
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r} must end in _total")
        self._family("counter", name, help, labels, samples)

    def gauge(self, name: str, help: str, labels: Sequence[str], samples: Mapping[LabelValues, float]) -> None:
        self._family("gauge", name, help, labels, samples)

    def histogram(self, name: str, help: str, labels: Sequence[str], histogram: Histogram) -> None:
        """``name_bucket{…,le=…}`` (cumulative), ``name_sum`` and ``name_count`` for every series."""
        self._head(name, "histogram", help)
        bounds = [format_value(b) for b in histogram.bounds] + ["+Inf"]
        for values in sorted(histogram.series):
            series = histogram.series[values]
            running = 0
            for le, n in zip(bounds, series[:-1], strict=True):
                running += int(n)
                self._sample(f"{name}_bucket", (*labels, "le"), (*values, le), running)
            self._sample(f"{name}_sum", labels, values, float(series[-1]))
            self._sample(f"{name}_count", labels, values, running)

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"
