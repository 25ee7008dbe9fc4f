"""Line coverage of a bundle's policies by its tests (``policy test --coverage``), from regorus.

regorus records, while coverage is enabled, which lines of each module held an expression that was
evaluated (``Engine.get_coverage_report_as_json``: per file, ``covered`` and ``not_covered`` line
numbers; lines without an expression are neither). The report keeps the policy files only — a test
file covers itself — and the percentage is covered / (covered + not covered), per file and over all,
like ``opa test --coverage``. ``--threshold N`` compares the total with N.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CoverageReport", "FileCoverage", "coverage_from_regorus", "format_coverage"]


@dataclass(frozen=True, slots=True)
class FileCoverage:
    file: str  # relative to the bundle root
    covered: tuple[int, ...]
    not_covered: tuple[int, ...]

    @property
    def percent(self) -> float:
        lines = len(self.covered) + len(self.not_covered)
        return 100.0 if lines == 0 else 100.0 * len(self.covered) / lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "coverage": round(self.percent, 2),
            "covered": list(self.covered),
            "not_covered": list(self.not_covered),
        }


@dataclass(frozen=True, slots=True)
class CoverageReport:
    files: tuple[FileCoverage, ...]

    @property
    def percent(self) -> float:
        covered = sum(len(f.covered) for f in self.files)
        lines = covered + sum(len(f.not_covered) for f in self.files)
        return 100.0 if lines == 0 else 100.0 * covered / lines

    def to_dict(self) -> dict[str, Any]:
        return {"coverage": round(self.percent, 2), "files": [f.to_dict() for f in self.files]}


def coverage_from_regorus(raw: str, policies: Mapping[str, str]) -> CoverageReport:
    """The report from regorus's JSON; ``policies`` maps the path each policy module was added under to
    its bundle-relative name (modules not in it — the tests — are left out). A policy file regorus did
    not report (nothing in it was reachable) counts as covering nothing it has."""
    doc = json.loads(raw)
    seen: dict[str, FileCoverage] = {}
    for entry in doc.get("files") or []:
        rel = policies.get(str(entry.get("path")))
        if rel is None:
            continue
        covered = sorted({int(n) for n in entry.get("covered") or []})
        missed = sorted({int(n) for n in entry.get("not_covered") or []} - set(covered))
        seen[rel] = FileCoverage(rel, tuple(covered), tuple(missed))
    files = [seen.get(rel, FileCoverage(rel, (), ())) for rel in sorted(policies.values())]
    return CoverageReport(tuple(files))


def _ranges(lines: tuple[int, ...]) -> str:
    """(3, 4, 5, 9) → ``3-5, 9``."""
    out: list[str] = []
    start = prev = None
    for n in (*lines, None):
        if n is not None and prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = n
    return ", ".join(out)


def format_coverage(report: CoverageReport) -> str:
    """One line per policy file (percentage, and the lines no test reached), then the total."""
    width = max((len(f.file) for f in report.files), default=0)
    lines = ["coverage:"]
    for f in report.files:
        line = f"  {f.file.ljust(width)}  {f.percent:6.2f}%"
        if f.not_covered:
            line += f"  not covered: {_ranges(f.not_covered)}"
        lines.append(line)
    lines.append(f"  {'total'.ljust(width)}  {report.percent:6.2f}%")
    return "\n".join(lines)
