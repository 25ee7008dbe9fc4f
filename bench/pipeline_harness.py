"""Pieces the in-process pipeline benches share (bench_flow, bench_metrics, bench_stage_metrics, bench_stages).

These benches drive the real stage list (``mcp_guard.pipeline.build.pipeline_stages``) in one event loop with
no network, so a stage's cost can be resolved to microseconds; they need the same call, the same idle
registry, the same way of taking metrics out of the list and the same span-dropping tracer. One copy here,
so that a change to the pipeline is followed in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mcp_types as types

from mcp_guard.pipeline.context import CallContext, Interceptor
from mcp_guard.pipeline.observe import Observe, TimedSink
from mcp_guard.settings import parse_settings
from mcp_guard.testing import idle_registry
from mcp_guard.types import AuditEvent, Principal, SessionInfo, ToolInfo
from mcp_guard.upstream.registry import Registry

__all__ = ["NullSink", "dropping_exporter", "idle_upstreams", "tools_call", "traces_dropped", "without_metrics"]


class NullSink:
    """An audit sink that keeps nothing: no I/O, and no list growing over a million calls."""

    async def record(self, event: AuditEvent) -> int:
        return 0

    def record_nowait(self, event: AuditEvent) -> None:
        return None


def idle_upstreams(*servers: str) -> Registry:
    """A registry naming ``servers`` whose upstreams are never started (the pipeline ends in a test upstream)."""
    settings = parse_settings({"upstreams": {s: {"command": "never"} for s in servers}}, source="<bench>")
    return idle_registry(settings)


def tools_call(
    server: str,
    tool: str,
    args: dict[str, Any],
    *,
    principal: str = "local-agent",
    roles: Sequence[str] = ("developer",),
) -> CallContext:
    """A ``tools/call`` as the fronts hand it to the pipeline: a 2025-11-25 HTTP session, a read-only tool."""
    return CallContext(
        action="tools/call",
        principal=Principal(principal, tuple(roles)),
        session=SessionInfo("bench-session", "http"),
        server=server,
        target=tool,
        exposed=f"{server}__{tool}",
        arguments=args,
        request=types.CallToolRequest(params=types.CallToolRequestParams(name=tool, arguments=args)),
        tool_info=ToolInfo(annotations={"readOnlyHint": True}),
    )


def without_metrics(stages: Sequence[Interceptor]) -> list[Interceptor]:
    """``stages`` with metrics off entirely: no ``Observe`` stage, and the audit stages writing to the bare sink
    instead of through the commit-wait timer (the ``no-metrics`` ablation). Reaches into the audit stages'
    ``_sink``: the product has no switch for it (metrics are always on), so a bench can only take it out."""
    out = [s for s in stages if not isinstance(s, Observe)]
    for stage in out:
        sink = getattr(stage, "_sink", None)
        if isinstance(sink, TimedSink):
            stage._sink = sink._sink  # type: ignore[attr-defined]
    return out


def dropping_exporter() -> Any:
    """A span exporter that keeps nothing and counts what it was given (``.spans``): the cost of making spans,
    not of shipping them (the product's batch processor ships them off the call path). Imported now: the SDK
    is an extra."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def __init__(self) -> None:
            self.spans = 0

        def export(self, spans: Any) -> SpanExportResult:
            self.spans += len(spans)
            return SpanExportResult.SUCCESS

    return Drop()


def traces_dropped() -> Any:
    """A tracer from the OpenTelemetry SDK whose spans are made, then dropped."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(dropping_exporter()))
    return provider.get_tracer("bench")
