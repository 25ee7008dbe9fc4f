"""A strict reader of the Prometheus text format (0.0.4) for the tests: what a scrape must look like.

It refuses anything Prometheus' own parser would refuse or warn about, and a little more: a sample
before its family's ``# TYPE``, a family declared twice, a duplicate series, a malformed label set or
value, a counter not named ``*_total``, histogram buckets that are not cumulative or whose ``+Inf``
bucket differs from ``_count``. ``promtool check metrics`` and a real Prometheus server check the same
text in tests/e2e/test_metrics_e2e.py.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = ["Family", "parse", "value_of"]

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_VALUE = r"(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|NaN|[+-]Inf)"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{((?:{_LABEL})(?:,{_LABEL})*)?\}})? ({_VALUE})$")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_HELP = re.compile(rf"^# HELP ({_NAME}) (.*)$")
_TYPE = re.compile(rf"^# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)$")
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

Labels = tuple[tuple[str, str], ...]


@dataclass
class Family:
    name: str
    kind: str
    help: str | None = None
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)  # (sample name, labels) -> value


def _labels(text: str | None) -> Labels:
    if not text:
        return ()
    pairs = [(k, re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m.group(0)], v)) for k, v in _PAIR.findall(text)]
    names = [k for k, _ in pairs]
    assert len(set(names)) == len(names), f"duplicate label in {{{text}}}"
    return tuple(sorted(pairs))


def _family_of(sample: str, families: dict[str, Family]) -> Family:
    if sample in families and families[sample].kind != "histogram":
        return families[sample]
    for suffix in ("_bucket", "_sum", "_count"):
        base = sample.removesuffix(suffix)
        if base != sample and base in families and families[base].kind == "histogram":
            return families[base]
    raise AssertionError(f"sample {sample} has no # TYPE before it")


def parse(text: str) -> dict[str, Family]:
    """Every family of a scrape; raises AssertionError naming the first line that is wrong."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, Family] = {}
    helps: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        where = f"line {n}: {line!r}"
        if not line:
            raise AssertionError(f"{where}: empty line")
        if line.startswith("#"):
            if m := _HELP.match(line):
                assert m.group(1) not in helps, f"{where}: second HELP"
                helps[m.group(1)] = m.group(2)
            elif m := _TYPE.match(line):
                assert m.group(1) not in families, f"{where}: second TYPE"
                families[m.group(1)] = Family(m.group(1), m.group(2), helps.get(m.group(1)))
            else:
                raise AssertionError(f"{where}: not a HELP or TYPE line")
            continue
        m = _SAMPLE.match(line)
        assert m, f"{where}: not a sample line"
        name, labels, value = m.group(1), _labels(m.group(2)), float(m.group(3))
        family = _family_of(name, families)
        key = (name, labels)
        assert key not in family.samples, f"{where}: duplicate series"
        family.samples[key] = value
    for family in families.values():
        assert family.help, f"{family.name}: no HELP"
        if family.kind == "counter":
            assert family.name.endswith("_total"), f"counter {family.name} must end in _total"
            assert all(v >= 0 for v in family.samples.values()), f"{family.name}: negative counter"
        if family.kind == "histogram":
            _check_histogram(family)
    return families


def _check_histogram(family: Family) -> None:
    series: dict[Labels, list[tuple[float, float]]] = {}
    for (name, labels), value in family.samples.items():
        if name.endswith("_bucket"):
            le = dict(labels)["le"]
            rest = tuple(p for p in labels if p[0] != "le")
            series.setdefault(rest, []).append((math.inf if le == "+Inf" else float(le), value))
    for labels, buckets in series.items():
        buckets.sort()
        counts = [c for _, c in buckets]
        assert counts == sorted(counts), f"{family.name}{labels}: buckets are not cumulative"
        assert buckets[-1][0] == math.inf, f"{family.name}{labels}: no +Inf bucket"
        assert family.samples[(family.name + "_count", labels)] == counts[-1], f"{family.name}{labels}: +Inf != count"
        assert (family.name + "_sum", labels) in family.samples, f"{family.name}{labels}: no _sum"


def value_of(families: dict[str, Family], sample: str, **labels: str) -> float | None:
    """The value of one series (labels given exactly), or None when the scrape has no such series."""
    family = _family_of(sample, families)
    return family.samples.get((sample, tuple(sorted(labels.items()))))
