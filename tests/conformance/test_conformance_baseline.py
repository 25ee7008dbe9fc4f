"""The conformance baseline: how a run is checked against tests/conformance/expected-failures.json.

scripts/conformance.py is a stand-alone script (standard library only), loaded here by path. The e2e tests
(tests/e2e/test_conformance*.py) run the real suite against it; these pin the matching rules with synthetic
runs, and that the committed baseline is well-formed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BASELINE = REPO / "tests" / "conformance" / "expected-failures.json"
TARGETS = ("fixture-direct", "proxy-stdio", "proxy-http")
VERSIONS = ("2025-11-25", "2026-07-28")


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("conformance_script", REPO / "scripts" / "conformance.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


conformance = _load_script()


def _run(**scenarios: tuple[str, list[str]]) -> dict[str, Any]:
    """A version result as scripts/conformance.py writes it: scenario -> (status, failing check ids)."""
    return {
        "scenarios": {
            name.replace("_", "-"): {"status": status, "failures": [{"id": c, "message": "m"} for c in checks]}
            for name, (status, checks) in scenarios.items()
        }
    }


def test_a_run_matching_its_baseline_has_nothing_to_report() -> None:
    run = _run(a=("pass", []), b=("fail", ["b1", "b2"]), tasks=("fail", ["t1"]), polling=("empty", []))
    expected = {"b/b1": "why", "b/b2": "why", "tasks": "extension", "polling": "no event store"}
    assert conformance.against_baseline(run, expected) == {"unexpected": [], "stale": []}


def test_a_failing_check_not_listed_is_unexpected() -> None:
    run = _run(a=("fail", ["a1"]), b=("fail", ["b1", "b2"]), c=("missing", []))
    diff = conformance.against_baseline(run, {"b/b1": "why"})
    assert diff == {"unexpected": ["a/a1", "b/b2", "c"], "stale": []}


def test_a_listed_check_or_scenario_that_passes_now_is_stale() -> None:
    run = _run(a=("pass", []), b=("fail", ["b1"]), c=("pass", []))
    diff = conformance.against_baseline(run, {"a/a1": "why", "b/b1": "why", "b/b9": "why", "c": "why", "gone": "why"})
    assert diff == {"unexpected": [], "stale": ["a/a1", "b/b9", "c", "gone"]}


def test_the_committed_baseline_has_a_reason_for_every_entry() -> None:
    for target in TARGETS:
        section = conformance.load_expected(BASELINE, target)
        assert sorted(section) == sorted(VERSIONS), target
        for entries in section.values():
            assert all(len(why) > 20 for why in entries.values()), entries


def test_a_baseline_entry_without_a_reason_is_a_setup_error(tmp_path: Path) -> None:
    bad = tmp_path / "expected.json"
    bad.write_text(json.dumps({"targets": {"t": {"2026-07-28": {"s/c": " "}}}}), encoding="utf-8")
    with pytest.raises(conformance.SetupError, match=r"targets\.t\.2026-07-28\.s/c needs a reason"):
        conformance.load_expected(bad, "t")
    with pytest.raises(conformance.SetupError, match=r"no section targets\.other"):
        conformance.load_expected(bad, "other")


def test_a_baseline_needs_its_target_and_the_reverse() -> None:
    for argv in (["--expected-failures", str(BASELINE)], ["--target", "proxy-stdio"]):
        with pytest.raises(SystemExit) as exit_info:
            conformance.main(argv)
        assert exit_info.value.code == 2
