"""The shipped example result rule (policies/examples/results) with the default bundle: its Rego tests, and the
default bundle's, pass on the embedded engine and on a real OPA; the combined bundle turns the result policy
on; the default bundle alone does not. (The example is driven end to end by tests/e2e/test_result_policy_e2e.py.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_guard.pipeline.result_policy import ResultUse
from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.policy.runner import run_tests_embedded

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "policy"))  # the shared OPA-binary lookup
from opa_support import opa_binary

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "policies" / "rego"
EXAMPLE = REPO / "policies" / "examples" / "results"


def combined(tmp: Path) -> Path:
    root = tmp / "bundle"
    shutil.copytree(DEFAULT, root)
    for f in EXAMPLE.glob("*.rego"):
        shutil.copy(f, root / "mcp_guard" / f.name)
    return root


def test_the_example_and_default_tests_pass_on_the_embedded_engine(tmp_path: Path) -> None:
    report = run_tests_embedded(load_bundle(combined(tmp_path)))
    failed = [(o.rule.ref, o.status, o.message) for o in report.outcomes if o.status != "PASS"]
    assert not failed, failed
    names = {o.rule.name for o in report.outcomes if o.rule.file.endswith("results_test.rego")}
    assert len(names) >= 7 and "test_a_private_key_is_withheld" in names, names


def test_the_combined_bundle_turns_the_result_policy_on_and_the_default_alone_does_not(tmp_path: Path) -> None:
    assert ResultUse(EmbeddedEngine(load_bundle(combined(tmp_path)), decision="mcp_guard/decision_with_results"))()
    assert not ResultUse(EmbeddedEngine(load_bundle(DEFAULT)))()


@pytest.mark.e2e
@pytest.mark.opa
def test_the_example_and_default_tests_pass_on_real_opa() -> None:
    out = subprocess.run(
        [opa_binary(), "test", str(DEFAULT), str(EXAMPLE)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "results_test.rego" not in out.stdout, "no example test failed"  # opa test names files only on failure
