"""The differential half of the load-time check, against the real OPA compiler (``opa check``).

Every BROKEN bundle of tests/policy/lint_corpus.py is rejected by OPA (and, tests/policy/test_lint.py
shows, refused by the embedded engine naming file:line); every VALID bundle and the default bundle are
accepted by OPA and their tests pass under ``opa test``. The shipped builtin table is what this OPA
reports. Needs the OPA binary ``make test`` builds: without it these tests fail, saying how to get it
(MCP_GUARD_SKIP_OPA=1 skips them on purpose).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from lint_corpus import BROKEN, VALID, BrokenBundle, ValidBundle
from opa_support import opa_binary

from mcp_guard.policy.builtins import generate_table

pytestmark = [pytest.mark.e2e, pytest.mark.opa]

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "policies" / "rego"


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def opa(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([opa_binary(), *map(str, args)], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("case", BROKEN, ids=lambda c: c.name)
def test_opa_rejects_every_broken_bundle(tmp_path: Path, case: BrokenBundle) -> None:
    out = opa("check", "--format", "json", write(tmp_path, case.files))
    assert out.returncode != 0, f"OPA accepted {case.name}: {case.why}"
    errors = json.loads(out.stdout or out.stderr)["errors"]
    # a compile error (not, say, a failure to read the directory), in a file of the bundle
    assert errors and all(e["code"].startswith("rego_") for e in errors), errors
    assert {Path(e["location"]["file"]).name for e in errors if "location" in e} <= set(case.files), errors


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.name)
def test_opa_accepts_every_valid_bundle(tmp_path: Path, case: ValidBundle) -> None:
    root = write(tmp_path, case.files)
    out = opa("check", root)
    assert out.returncode == 0, out.stdout + out.stderr
    if any(rel.endswith("_test.rego") for rel in case.files):
        tested = opa("test", root)
        assert tested.returncode == 0, tested.stdout + tested.stderr


def test_opa_accepts_the_default_bundle_with_the_issues_helper(tmp_path: Path) -> None:
    """The issue's helper function no longer collides with anything in the default bundle."""
    import shutil

    root = tmp_path / "bundle"
    shutil.copytree(BUNDLE, root)
    (root / "mcp_guard" / "helpers.rego").write_text("package mcp_guard\n\nat(inp, t) := object.get(inp, t, null)\n")
    out = opa("check", root)
    assert out.returncode == 0, out.stdout + out.stderr


def test_shipped_builtin_table_is_this_opas() -> None:
    shipped = json.loads((REPO / "src" / "mcp_guard" / "policy" / "builtins.json").read_text())
    fresh = generate_table(opa_binary(), embedded_missing=shipped["embedded_missing"])
    assert fresh == shipped, "regenerate: python -m mcp_guard.policy.builtins $(scripts/install-opa.sh --print)"
