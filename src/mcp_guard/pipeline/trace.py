"""Trace spans of a call and of every pipeline stage — in the pipeline only when traces are on.

:func:`mcp_guard.pipeline.build.pipeline_stages` imports this module (and with it OpenTelemetry) only when
it is handed a tracer (:mod:`mcp_guard.telemetry`), so with traces off neither the import nor a single
instruction of it is on the call path.

The spans of one call::

    tools/call tickets__get_ticket   SERVER   TraceCall: child of the client's W3C trace context
      Observe                         INTERNAL  one per stage, nested as the stages are (a stage's span
        InspectArguments                        holds the stages inside it: its own time is its span's
          …                                     minus its child's)
                Forward tickets       CLIENT    the upstream request; its ``_meta.traceparent`` names this span

The client's trace context is its request's ``_meta`` ``traceparent`` / ``tracestate`` (MCP's place for
it), else the HTTP request's ``traceparent`` / ``tracestate`` headers (:attr:`CallContext.trace_context`,
read by the handlers). The upstream gets ``_meta.traceparent`` (and ``tracestate``) of the ``Forward`` span
instead of the client's, so its own spans hang under mcp-guard's.

What a span says (attributes): the method, the upstream, the tool or prompt name (never a resource URI or
an argument), the session, the principal; after the call the governing ``decision_id``, ``decision``
(allow/deny), the deny's reason code or the policy's reasons — what the client is told, never more — the
policy revision, and for an error its origin (guard or upstream) with the span status ERROR.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import Span

from mcp_guard.pipeline.context import CallContext, CallNext, Interceptor, Outcome

__all__ = ["TRACE_KEYS", "TraceCall", "client_trace_context", "traced_forward", "traced_stage", "with_trace_meta"]

TRACE_KEYS = ("traceparent", "tracestate")  # W3C trace context, in `_meta` and as HTTP headers
_PROPAGATOR = TraceContextTextMapPropagator()
_NAMED = frozenset({"tools/call", "prompts/get"})  # actions whose target (a catalogue name) may name a span


def _meta_of(ctx: CallContext) -> dict[str, Any]:
    params = getattr(ctx.request, "params", None)
    meta = getattr(params, "meta", None) if params is not None else None
    if meta is None:
        return {}
    if hasattr(meta, "model_dump"):
        return dict(meta.model_dump(by_alias=True, mode="json", exclude_none=True))
    return dict(meta)


def client_trace_context(ctx: CallContext) -> dict[str, str]:
    """The client's W3C trace context: from its request's ``_meta``, else from its HTTP headers."""
    meta = _meta_of(ctx)
    if isinstance(meta.get("traceparent"), str):
        return {k: meta[k] for k in TRACE_KEYS if isinstance(meta.get(k), str)}
    return dict(ctx.trace_context or {})


def span_name(ctx: CallContext) -> str:
    return f"{ctx.action} {ctx.exposed}" if ctx.action in _NAMED else ctx.action


class TraceCall:
    """Outermost stage: one SERVER span for the call, a child of the client's trace context when it sent
    one. Everything — every other stage and the upstream call — runs inside it (in its ``call_next``)."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Outcome:
        parent: Context = _PROPAGATOR.extract(client_trace_context(ctx))
        attributes: dict[str, str] = {
            "mcp.method.name": ctx.action,
            "mcp_guard.server": ctx.server,
            "mcp.session.id": ctx.session.id,
            "enduser.id": ctx.principal.id,
        }
        if ctx.action in _NAMED:
            attributes["mcp_guard.target"] = ctx.target
        with self._tracer.start_as_current_span(
            span_name(ctx), context=parent, kind=SpanKind.SERVER, attributes=attributes
        ) as span:
            outcome = await call_next(ctx)
            annotate(span, outcome)
            return outcome


def annotate(span: Span, outcome: Outcome) -> None:
    """The decision and how the call ended, on the call's span."""
    decision = outcome.decision
    if decision is not None:
        span.set_attribute("mcp_guard.decision_id", decision.decision_id)
        if decision.revision:
            span.set_attribute("mcp_guard.policy_revision", decision.revision)
    denial = outcome.denial
    span.set_attribute("mcp_guard.decision", "deny" if denial is not None else "allow" if decision else "none")
    if denial is not None:
        if denial.code is not None:
            span.set_attribute("mcp_guard.reason_code", str(denial.code))
        span.set_attribute("mcp_guard.reasons", [str(r) for r in denial.reasons])
    if outcome.error is not None:
        span.set_attribute("mcp_guard.error_origin", str(outcome.error_origin))
        span.set_attribute("error.type", str(outcome.error.code))
        span.set_status(Status(StatusCode.ERROR, f"{outcome.error_origin} error {outcome.error.code}"))


def traced_stage(stage: Interceptor, tracer: Tracer) -> Interceptor:
    """``stage`` inside an INTERNAL span named after it (its ``call_next`` — the inner stages — inside too)."""
    name = type(stage).__name__

    async def run(ctx: CallContext, call_next: CallNext) -> Outcome:
        with tracer.start_as_current_span(name):
            return await stage(ctx, call_next)

    return run


def traced_forward(forward: CallNext, tracer: Tracer) -> CallNext:
    """The upstream request inside a CLIENT span, with that span's trace context in its ``_meta``."""

    async def run(ctx: CallContext) -> Outcome:
        with tracer.start_as_current_span(f"forward {ctx.server}", kind=SpanKind.CLIENT) as span:
            outcome = await forward(with_trace_meta(ctx))
            if outcome.error is not None:
                span.set_status(Status(StatusCode.ERROR, f"{outcome.error_origin} error {outcome.error.code}"))
            return outcome

    return run


def with_trace_meta(ctx: CallContext, carrier: Mapping[str, str] | None = None) -> CallContext:
    """``ctx`` whose request carries the current span's trace context in ``_meta`` (replacing the client's)."""
    if carrier is None:
        injected: dict[str, str] = {}
        _PROPAGATOR.inject(injected)
        carrier = injected
    params = getattr(ctx.request, "params", None)
    if params is None or not carrier:
        return ctx
    meta = {k: v for k, v in _meta_of(ctx).items() if k not in TRACE_KEYS}
    meta.update(carrier)
    request = ctx.request.model_copy(update={"params": params.model_copy(update={"meta": meta})})
    return replace(ctx, request=request)
