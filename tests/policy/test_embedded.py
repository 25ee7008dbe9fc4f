"""The embedded (regorus) engine: decisions on the default bundle and every fail-closed path."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from mcp_guard.errors import PolicyError
from mcp_guard.policy import embedded as embedded_module
from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.types import PolicyInput, Principal, SessionInfo, ToolInfo

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "policies" / "rego"


def engine_for(tmp_path: Path, rego: str, *, decision: str = "t/decision", timeout_ms: int = 250) -> EmbeddedEngine:
    (tmp_path / "t.rego").write_text(rego)
    return EmbeddedEngine(load_bundle(tmp_path), decision=decision, timeout_ms=timeout_ms)


def policy_input(
    principal: str, roles: tuple[str, ...], server: str, tool: str, annotations: dict[str, bool], **arguments: object
) -> PolicyInput:
    return PolicyInput(
        action="tools/call",
        principal=Principal(principal, roles),
        session=SessionInfo("s", "stdio"),
        server=server,
        tool=tool,
        arguments=arguments,
        tool_info=ToolInfo(annotations=annotations),
    )


async def test_default_bundle_allows_with_obligations() -> None:
    engine = EmbeddedEngine(load_bundle(BUNDLE))
    request = policy_input("alice", ("support",), "tickets", "get_ticket", {"readOnlyHint": True}, id=1)
    d = await engine.evaluate(request)
    assert d.allow is True and d.code is None
    assert d.reasons == ("role 'support' allows tickets__get_ticket",)
    assert d.obligations == {
        "secrets": ["tickets_token"],
        "rate_limit": [{"key": "tool_calls|alice|tickets|get_ticket", "limit": 300, "window_s": 60}],
        "labels": ["private"],
    }
    assert d.revision == engine.revision == load_bundle(BUNDLE).revision


async def test_default_bundle_denies_with_reasons() -> None:
    engine = EmbeddedEngine(load_bundle(BUNDLE))
    d = await engine.evaluate(policy_input("alice", (), "tickets", "delete_ticket", {"destructiveHint": True}, id=1))
    assert d.allow is False and d.code is None
    assert "destructive" in d.reasons[0]
    d = await engine.evaluate(policy_input("bob", (), "warehouse", "query", {"readOnlyHint": True}, sql="DROP TABLE x"))
    assert d.allow is False and any("found DROP" in r for r in d.reasons)


async def test_undefined_decision_is_policy_undefined(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, 'package t\n\ndecision := {"allow": true} if input.ok\n')
    assert (await engine.evaluate_document({"ok": True})).allow is True
    d = await engine.evaluate_document({})
    assert d.allow is False and d.code == "policy_undefined" and d.reasons[0] == "policy_undefined"


async def test_missing_rule_is_policy_undefined(tmp_path: Path) -> None:
    for decision in ("t/nope", "other/decision"):
        engine = engine_for(tmp_path, 'package t\n\ndecision := {"allow": true}\n', decision=decision)
        d = await engine.evaluate_document({})
        assert d.allow is False and d.code == "policy_undefined"


@pytest.mark.parametrize("value", ['"allow"', "true", '[{"allow": true}]', '{"allow": "yes"}', '{"allow": 1}'])
async def test_malformed_decision_is_result_invalid(tmp_path: Path, value: str) -> None:
    engine = engine_for(tmp_path, f"package t\n\ndecision := {value}\n")
    d = await engine.evaluate_document({})
    assert d.allow is False and d.code == "result_invalid"


async def test_set_valued_reasons_are_accepted_as_list(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, 'package t\n\ndecision := {"allow": false, "reasons": {"b", "a"}}\n')
    d = await engine.evaluate_document({})
    assert d.allow is False and d.code is None and d.reasons == ("a", "b")


async def test_builtin_error_is_engine_error(tmp_path: Path) -> None:
    engine = engine_for(
        tmp_path,
        ('package t\n\ndeny contains "big" if to_number(input.n) > 5\n\ndecision := {"allow": count(deny) == 0}\n'),
    )
    assert (await engine.evaluate_document({"n": "3"})).allow is True
    d = await engine.evaluate_document({"n": "three"})
    assert d.allow is False and d.code == "engine_error"
    assert "t.rego" in d.reasons[1]
    assert "Stack backtrace" not in d.reasons[1]


def test_builtin_regorus_lacks_is_refused_at_load(tmp_path: Path) -> None:
    """Once an engine_error on every call; now the static check refuses the bundle, naming where."""
    with pytest.raises(
        PolicyError,
        match=r"t\.rego:3:\d+: builtin crypto\.x509\.parse_certificates is not implemented by the embedded "
        r"engine \(regorus\); use engine = \"opa\" \(in rule data\.t\.decision\)",
    ):
        engine_for(tmp_path, 'package t\n\ndecision := {"allow": crypto.x509.parse_certificates("x") != []}\n')


async def test_non_json_input_is_engine_error(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, 'package t\n\ndecision := {"allow": true}\n')
    d = await engine.evaluate_document({"x": math.nan})
    assert d.allow is False and d.code == "engine_error" and "not JSON" in d.reasons[1]
    d = await engine.evaluate_document({"x": object()})
    assert d.code == "engine_error"


async def test_over_budget_is_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A decision computed after the budget is discarded, even an allow (fake clock: +2 s per reading)."""
    engine = engine_for(tmp_path, 'package t\n\ndecision := {"allow": true}\n', timeout_ms=250)
    ticks = itertools.count(step=2_000_000_000)
    monkeypatch.setattr(embedded_module, "time", SimpleNamespace(perf_counter_ns=lambda: next(ticks)))
    d = await engine.evaluate_document({})
    assert d.allow is False and d.code == "timeout"
    assert "over the 250 ms budget" in d.reasons[1]


async def test_within_budget_is_not_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = engine_for(tmp_path, 'package t\n\ndecision := {"allow": true}\n', timeout_ms=250)
    ticks = itertools.count(step=249_000_000)
    monkeypatch.setattr(embedded_module, "time", SimpleNamespace(perf_counter_ns=lambda: next(ticks)))
    assert (await engine.evaluate_document({})).allow is True


def test_parse_error_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "ok.rego").write_text("package t\n\nx := 1\n")
    (tmp_path / "broken.rego").write_text("package t\n\nx := {\n")
    with pytest.raises(PolicyError, match=r"broken\.rego:4:\d+: "):
        EmbeddedEngine(load_bundle(tmp_path), decision="t/x")


def test_v0_syntax_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "old.rego").write_text("package t\n\nallow {\n\tinput.x\n}\n")
    with pytest.raises(PolicyError, match=r"old\.rego"):
        EmbeddedEngine(load_bundle(tmp_path), decision="t/allow")


async def test_reload_swaps_and_keeps_last_good(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, 'package t\n\ndecision := {"allow": false, "reasons": ["v1"]}\n')
    first = engine.revision
    (tmp_path / "t.rego").write_text('package t\n\ndecision := {"allow": true, "reasons": ["v2"]}\n')
    engine.reload(load_bundle(tmp_path))
    d = await engine.evaluate_document({})
    assert d.reasons == ("v2",) and d.revision == engine.revision != first
    good = engine.revision
    (tmp_path / "t.rego").write_text("package t\n\ndecision := {\n")
    with pytest.raises(PolicyError):
        engine.reload(load_bundle(tmp_path))
    d = await engine.evaluate_document({})
    assert d.allow is True and d.reasons == ("v2",) and engine.revision == good


async def test_test_files_are_not_loaded_for_decisions(tmp_path: Path) -> None:
    (tmp_path / "t_test.rego").write_text('package t\n\ndecision := {"allow": true}\n')
    engine = engine_for(tmp_path, "package t\n\nother := 1\n")
    d = await engine.evaluate_document({})
    assert d.code == "policy_undefined"
