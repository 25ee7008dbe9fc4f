"""Trace spans per call and per stage (mcp_guard.pipeline.trace), seen by the OpenTelemetry SDK's in-memory
exporter: the client's W3C trace context (``_meta`` or HTTP header) is the parent, the upstream is handed
the Forward span's, the decision id and reason are on the call span — and with traces off, nothing of it
is even imported."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from guard_harness import REPO, client_of, make_settings, read_log, recorder_upstream, text_of
from mcp_guard.app import Guard
from mcp_guard.pipeline.trace import TraceCall
from mcp_guard.telemetry import INSTRUMENTATION, open_tracing, traces_enabled
from mcp_guard.testing import FunctionEngine, RecordingSink
from mcp_guard.types import Decision, PolicyInput

pytestmark = pytest.mark.anyio

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
# The stages in use with a test engine and no shadow candidate or token-exchange upstream (mcp_guard.pipeline.in_use):
# flows are assumed used (TrackFlow); no ShadowPolicy; ExchangeToken and ResultPolicy always.
STAGES = [
    "Observe",
    "InspectArguments",
    "RecordOutcome",
    "TrackFlow",
    "PinCheck",
    "Authorize",
    "EnforceObligations",
    "ExchangeToken",
    "RecordDecision",
    "Redecide",
    "ResultPolicy",
    "Redact",
]


def _decide(i: PolicyInput) -> Decision:
    if i.tool == "add":
        return Decision(allow=False, reasons=("adding is not allowed here",), revision="rev-1")
    if i.tool == "fail":  # an obligation nothing enforces: a fail-closed deny with a code
        return Decision(allow=True, obligations={"no_such_obligation": 1}, revision="rev-1")
    return Decision(allow=True, revision="rev-1")


@asynccontextmanager
async def traced_guard(tmp_path: Path) -> AsyncIterator[tuple[Guard, InMemorySpanExporter, RecordingSink]]:
    settings = make_settings({"rec": recorder_upstream(tmp_path / "rec.log", RECORDER_LOG_METHODS="tools/call")})
    exporter = InMemorySpanExporter()
    sink = RecordingSink()
    with open_tracing(settings, exporter=exporter, env={}) as provider:
        assert provider is not None
        guard = Guard(settings, engine=FunctionEngine(_decide), sink=sink, tracer=provider.get_tracer(INSTRUMENTATION))
        async with guard.running():
            assert not await guard.registry.wait_ready(20)
            yield guard, exporter, sink


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    (span,) = [s for s in spans if s.name == name]
    return span


async def test_a_call_is_one_server_span_under_the_clients_context_with_a_span_per_stage(tmp_path: Path) -> None:
    async with traced_guard(tmp_path) as (guard, exporter, sink), client_of(guard) as client:
        result = await client.call_tool("rec__echo", {"text": "hi"}, meta={"traceparent": TRACEPARENT})
        assert text_of(result) == "hi"
    spans = exporter.get_finished_spans()
    call = _by_name(spans, "tools/call rec__echo")
    assert call.kind == SpanKind.SERVER
    assert call.context is not None and f"{call.context.trace_id:032x}" == TRACE_ID
    assert call.parent is not None and f"{call.parent.span_id:016x}" == CLIENT_SPAN and call.parent.is_remote
    attrs = dict(call.attributes or {})
    (row,) = [e for e in sink.of_kind("call.decision") if e.tool == "echo"]
    assert attrs["mcp_guard.decision_id"] == row.decision_id and attrs["mcp_guard.decision"] == "allow"
    assert attrs["mcp_guard.policy_revision"] == "rev-1" and attrs["mcp_guard.server"] == "rec"
    assert attrs["mcp.method.name"] == "tools/call" and attrs["enduser.id"] == guard.stdio_principal

    # One span per stage in use, nested in pipeline order, then the upstream request; none for a stage left out.
    parent = call
    for name in [*STAGES, "forward rec"]:
        span = _by_name(spans, name)
        assert span.parent is not None and span.parent.span_id == parent.context.span_id, name  # type: ignore[union-attr]
        parent = span
    forward = _by_name(spans, "forward rec")
    assert forward.kind == SpanKind.CLIENT
    assert not [s for s in spans if s.name == "ShadowPolicy"]

    # The upstream was handed the Forward span's context, not the client's.
    (logged,) = read_log(tmp_path / "rec.log")
    sent = logged["params"]["_meta"]["traceparent"]
    assert sent == f"00-{TRACE_ID}-{forward.context.span_id:016x}-01"  # type: ignore[union-attr]


async def test_a_deny_carries_its_reason_and_a_fail_closed_one_its_code(tmp_path: Path) -> None:
    async with traced_guard(tmp_path) as (guard, exporter, sink), client_of(guard) as client:
        denied = await client.call_tool("rec__add", {"a": 1, "b": 2})
        assert denied.is_error and "adding is not allowed here" in text_of(denied)
        refused = await client.call_tool("rec__fail", {})
        assert refused.is_error and "obligation_unknown" in text_of(refused)
    spans = exporter.get_finished_spans()
    rows = {e.tool: e for e in sink.of_kind("call.decision")}

    policy = dict(_by_name(spans, "tools/call rec__add").attributes or {})
    assert policy["mcp_guard.decision"] == "deny" and policy["mcp_guard.decision_id"] == rows["add"].decision_id
    assert list(policy["mcp_guard.reasons"]) == ["adding is not allowed here"]  # type: ignore[arg-type]
    assert "mcp_guard.reason_code" not in policy  # a policy deny has no code

    closed = dict(_by_name(spans, "tools/call rec__fail").attributes or {})
    assert closed["mcp_guard.decision"] == "deny" and closed["mcp_guard.reason_code"] == "obligation_unknown"
    assert closed["mcp_guard.decision_id"] == rows["fail"].decision_id
    assert _by_name(spans, "tools/call rec__add").parent is None  # no client trace context: a new trace
    assert not [s for s in spans if s.name.startswith("forward")]  # neither was forwarded


async def test_the_http_traceparent_header_is_the_parent_when_meta_has_none(tmp_path: Path) -> None:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    settings = make_settings({"rec": recorder_upstream()}, server={"require_auth": False})
    exporter = InMemorySpanExporter()
    with open_tracing(settings, exporter=exporter, env={}) as provider:
        assert provider is not None
        guard = Guard(settings, engine=FunctionEngine(_decide), sink=RecordingSink(), tracer=provider.get_tracer("t"))
        async with guard.running():
            assert not await guard.registry.wait_ready(20)
            async with guard.http_served() as url:
                http = httpx2.AsyncClient(headers={"traceparent": TRACEPARENT}, timeout=httpx2.Timeout(20.0))
                async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:  # type: ignore[arg-type]
                    assert text_of(await client.call_tool("rec__echo", {"text": "h"})) == "h"
    call = _by_name(exporter.get_finished_spans(), "tools/call rec__echo")
    assert call.parent is not None and f"{call.parent.span_id:016x}" == CLIENT_SPAN
    assert f"{call.context.trace_id:032x}" == TRACE_ID  # type: ignore[union-attr]


def test_traces_are_off_unless_asked_for() -> None:
    settings = make_settings({})
    assert not traces_enabled(settings, {})
    assert not traces_enabled(settings, {"OTEL_TRACES_EXPORTER": "none"})
    assert traces_enabled(settings, {"OTEL_TRACES_EXPORTER": "otlp"})
    assert not traces_enabled(settings, {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"})
    on = make_settings({}, telemetry={"traces": True})
    assert traces_enabled(on, {})
    with open_tracing(settings, env={}) as provider:
        assert provider is None


def test_with_traces_off_the_pipeline_has_no_tracing_and_never_imports_it(tmp_path: Path) -> None:
    """A real call through a Guard built with no tracer, in a fresh interpreter: the tracing stage is not in
    the pipeline and neither it nor the OpenTelemetry SDK was ever imported."""
    script = f"""
import json, sys, anyio
sys.path[:0] = [{str(REPO / "tests")!r}]
from guard_harness import client_of, make_settings, recorder_upstream, running_guard
from mcp_guard.pipeline.build import pipeline_stages

async def main():
    settings = make_settings({{"rec": recorder_upstream()}})
    async with running_guard(settings) as guard, client_of(guard) as client:
        await client.call_tool("rec__echo", {{"text": "x"}})
        stages = [type(s).__name__ for s in pipeline_stages(
            engine=guard.engine, sink=guard.sink, registry=guard.registry, secrets=guard.secrets, state=guard.state)]
    loaded = [m for m in sys.modules if m == "mcp_guard.pipeline.trace" or m.startswith("opentelemetry.sdk")]
    print(json.dumps({{"stages": stages, "loaded": loaded}}))

anyio.run(main)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    assert "TraceCall" not in report["stages"] and report["stages"][0] == "Observe"


def test_the_tracing_stage_is_outermost_when_on() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from mcp_guard.pipeline.build import traced_stages

    stages = traced_stages([], TracerProvider().get_tracer("t"))
    assert isinstance(stages[0], TraceCall)
