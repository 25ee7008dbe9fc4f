"""build_pipeline: the documented stage order is the built one, and the Guard runs it end to end.

The end-to-end cases run a Guard (tests/guard_harness.py) in front of the recorder upstream, whose call
log proves whether a call reached it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pipeline_kit import registry

import mcp_guard.pipeline.build as build
from guard_harness import client_of, make_settings, read_log, recorder_upstream, running_guard, text_of
from mcp_guard.app import Guard
from mcp_guard.pipeline.secret_source import NO_SECRETS
from mcp_guard.state import MemoryState
from mcp_guard.testing import FunctionEngine, RecordingSink, allow_all
from mcp_guard.types import AuditEvent, Decision, EventKind, ReasonCode

pytestmark = pytest.mark.anyio

REVISION = "rev-e2e"


def test_the_documented_order_is_the_built_order() -> None:
    """The module docstring is where the order is written down; it must say what pipeline_stages builds."""
    assert build.__doc__ is not None
    drawn = re.search(r"::\n\n(.*?)\n\n", build.__doc__, re.S)
    assert drawn is not None
    documented = [name.strip() for name in drawn.group(1).replace("\n", " ").split("→")]
    stages = build.pipeline_stages(
        engine=allow_all(), sink=RecordingSink(), registry=registry(), secrets=NO_SECRETS, state=MemoryState()
    )
    assert documented == [type(s).__name__ for s in stages] + ["Forward"]


def test_a_guard_without_secrets_runs_the_same_pipeline_with_the_null_object() -> None:
    guard = Guard(make_settings({"rec": recorder_upstream()}), engine=allow_all(), sink=RecordingSink())
    assert guard.secrets is NO_SECRETS


# --------------------------------------------------------------------------- end to end
def _allow(_i: Any) -> Decision:
    return Decision(allow=True, reasons=("ok",), revision=REVISION)


@asynccontextmanager
async def _guard(tmp_path: Path, sink: RecordingSink, engine: FunctionEngine) -> AsyncIterator[Guard]:
    async with running_guard(
        make_settings({"rec": recorder_upstream(tmp_path / "calls.log")}), engine=engine, sink=sink
    ) as g:
        yield g


def _echoes(tmp_path: Path) -> list[str]:
    return [e["arguments"]["text"] for e in read_log(tmp_path / "calls.log") if e.get("name") == "echo"]


def _allow_rows(sink: RecordingSink) -> list[AuditEvent]:
    return [e for e in sink.of_kind(EventKind.CALL_DECISION) if e.decision == "allow"]


async def test_store_down_before_forwarding_the_call_never_reaches_the_upstream(tmp_path: Path) -> None:
    sink = RecordingSink()
    async with _guard(tmp_path, sink, FunctionEngine(_allow)) as guard, client_of(guard) as client:
        assert text_of(await client.call_tool("rec__echo", {"text": "before"})) == "before"
        sink.fail_when = lambda e: e.kind == EventKind.CALL_DECISION and e.decision == "allow"
        r = await client.call_tool("rec__echo", {"text": "while down"})

    assert r.is_error and text_of(r).startswith("Denied by mcp-guard: audit_unavailable")
    assert _echoes(tmp_path) == ["before"]  # the second call never reached the upstream
    (refused,) = sink.refused
    # The client is told the decision id of the allow that governed the call; the deny row carries it.
    assert refused.decision_id is not None and refused.decision_id in text_of(r)
    deny = sink.of_kind(EventKind.CALL_DECISION)[-1]
    assert deny.decision == "deny" and deny.reasons is not None and deny.reasons[0] == ReasonCode.AUDIT_UNAVAILABLE
    assert (deny.decision_id, deny.policy_revision) == (refused.decision_id, REVISION)


async def test_store_down_after_forwarding_the_result_is_withheld(tmp_path: Path) -> None:
    sink = RecordingSink()
    sink.fail_when = lambda e: e.kind == EventKind.CALL_RESULT
    async with _guard(tmp_path, sink, FunctionEngine(_allow)) as guard, client_of(guard) as client:
        r = await client.call_tool("rec__echo", {"text": "the secret plan"})

    assert _echoes(tmp_path) == ["the secret plan"]  # it ran …
    assert r.is_error and "audit_unavailable" in text_of(r) and "withheld" in text_of(r)
    assert "the secret plan" not in text_of(r) and r.structured_content is None  # … its answer is withheld
    (allow,) = _allow_rows(sink)
    (refused,) = sink.refused
    assert refused.kind == EventKind.CALL_RESULT
    assert (refused.decision_id, refused.policy_revision) == (allow.decision_id, REVISION)
    assert allow.decision_id is not None and allow.decision_id in text_of(r)


async def test_an_unknown_obligation_is_denied_recorded_and_never_forwarded(tmp_path: Path) -> None:
    engine = FunctionEngine(
        lambda _i: Decision(allow=True, obligations={"watermark": {"text": "x"}}, revision=REVISION)
    )
    sink = RecordingSink()
    async with _guard(tmp_path, sink, engine) as guard, client_of(guard) as client:
        r = await client.call_tool("rec__echo", {"text": "x"})
    assert r.is_error and "obligation_unknown" in text_of(r) and "'watermark'" in text_of(r)
    assert _echoes(tmp_path) == []
    assert _allow_rows(sink) == []
    (deny,) = sink.of_kind(EventKind.CALL_DECISION)
    assert deny.reasons is not None and deny.reasons[0] == ReasonCode.OBLIGATION_UNKNOWN
    assert deny.policy_revision == REVISION and deny.tool == "echo" and deny.server == "rec"
