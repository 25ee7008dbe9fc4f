"""The default bundle's URL rules decide on the host a WHATWG parser reads (the corpus of tests/test_urlhost.py).

Each corpus URL is sent as the ``url`` argument of ``fetch`` (allowlist: example.com, *.example.com,
docs.python.org, …) through the real ``PolicyInput.to_dict`` (which fills ``context.urls``). A URL is allowed
exactly when the WHATWG reading is a valid https URL without credentials whose host is on the allowlist —
on the embedded engine and on real OPA.
"""

from __future__ import annotations

import fnmatch
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from opa_support import opa_binary

from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.types import PolicyInput, Principal, SessionInfo, ToolInfo

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "policies" / "rego"
CASES: list[dict[str, Any]] = json.loads((REPO / "tests" / "fixtures" / "whatwg_url_hosts.json").read_text("utf-8"))[
    "cases"
]
URL_CONFIG = json.loads((BUNDLE / "data.json").read_text("utf-8"))["mcp_guard_config"]["urls"]
ALLOWED_HOSTS: list[str] = URL_CONFIG["allowed_hosts"]["fetch"]


def should_allow(case: dict[str, Any]) -> bool:
    """What the bundle must answer, from the WHATWG reading alone."""
    if not case["valid"] or case["scheme"] != "https" or case["userinfo"] or not case["host"]:
        return False
    return any(case["host"] == p or fnmatch.fnmatchcase(case["host"], p) for p in ALLOWED_HOSTS)


@pytest.fixture(scope="module")
def engine() -> EmbeddedEngine:
    return EmbeddedEngine(load_bundle(BUNDLE))


def fetch_input(url: str) -> dict[str, Any]:
    return PolicyInput(
        action="tools/call",
        principal=Principal("alice", ("support",)),
        session=SessionInfo("s", "stdio"),
        server="fetch",
        tool="fetch",
        arguments={"url": url},
        tool_info=ToolInfo(annotations={"readOnlyHint": True}),
    ).to_dict()


def test_the_corpus_has_both_answers() -> None:
    assert sum(should_allow(c) for c in CASES) >= 5
    assert sum(not should_allow(c) for c in CASES) >= 30


def test_the_reported_bypass_is_denied(engine: EmbeddedEngine) -> None:
    d = engine.evaluate_sync(fetch_input("https://169.254.169.254\\.example.com/"))
    assert d.allow is False
    assert any("host '169.254.169.254'" in r for r in d.reasons), d.reasons


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["note"])
def test_embedded_bundle_decides_on_the_whatwg_host(case: dict[str, Any], engine: EmbeddedEngine) -> None:
    d = engine.evaluate_sync(fetch_input(case["input"]))
    assert d.code is None, d.reasons  # the policy decided; no engine failure
    assert d.allow is should_allow(case), (case, d.reasons)


@pytest.mark.opa
def test_real_opa_decides_every_corpus_url_the_same_way(tmp_path: Path) -> None:
    docs = [fetch_input(c["input"]) for c in CASES]
    (tmp_path / "input.json").write_text(json.dumps({"docs": docs}), encoding="utf-8")
    query = "[d.allow | some doc in input.docs; d := data.mcp_guard.decision with input as doc]"
    out = subprocess.run(
        [opa_binary(), "eval", "--format=json", "-d", str(BUNDLE), "-i", str(tmp_path / "input.json"), query],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    answers = json.loads(out.stdout)["result"][0]["expressions"][0]["value"]
    assert answers == [should_allow(c) for c in CASES]
