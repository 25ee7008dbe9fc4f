"""Call metrics: what the :class:`Observe` stage counts, read by ``/metrics`` at scrape time.

One place collects them: :class:`Observe`, the outermost stage of the pipeline
(:mod:`mcp_guard.pipeline.build`), sees every request that targets an upstream once, with the outcome
the client is answered with — the policy's deny, a fail-closed deny, an audit override, or the
upstream's answer — and the time the whole pipeline took. The audit wait every call pays (its rows are
committed before it goes on) is timed by :class:`TimedSink`, the sink the two audit stages write through.

Recording a request is one ``dict`` lookup (its slot: a list of bucket counts and a sum), a ``bisect`` and
two additions: no locks (everything that records or reads runs on the proxy's one event loop), no strings
built, nothing formatted until a scrape sums the slots into families (:mod:`mcp_guard.metrics`,
:mod:`mcp_guard.frontend.ops`).

Label values are bounded, so a scrape stays small whatever clients and upstreams do:

* ``server``: an upstream named in the config.
* ``tool``: an upstream-local tool name from the upstream's catalogue (the handlers refuse a name no
  catalogue has before a call is built); at most :data:`MAX_TOOL_LABELS` names per upstream get their own
  series, later ones are counted as ``other`` — an upstream that keeps renaming its tools cannot grow the
  page without bound.
* ``action``: one of the pipeline's protocol methods (``tools/call``, ``resources/read``, …). A resource
  URI is never a label.
* ``decision``: ``allow``, ``deny``, or ``error`` (the pipeline raised: a bug, never a verdict).
* ``reason``: ``""`` for an allow, the :class:`~mcp_guard.types.ReasonCode` of a fail-closed deny, or
  ``policy`` for a deny the policy made (its free-text reasons are never labels).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass
from time import perf_counter
from typing import Final

from mcp_guard.metrics import Histogram
from mcp_guard.pipeline.audit import EventSink
from mcp_guard.pipeline.context import CallContext, CallNext, Interceptor, Outcome
from mcp_guard.types import AuditEvent, ReasonCode

__all__ = [
    "AUDIT_WAIT_BUCKETS",
    "CALL_BUCKETS",
    "MAX_TOOL_LABELS",
    "OTHER",
    "POLICY",
    "CallCounts",
    "CallMetrics",
    "Observe",
    "StageTimer",
    "TimedSink",
]

MAX_TOOL_LABELS: Final = 200  # distinct tool names per upstream with a series of their own
OTHER: Final = "other"  # the tool label of every name past MAX_TOOL_LABELS
POLICY: Final = "policy"  # the reason label of a deny the policy made (no ReasonCode)

# Seconds. The proxy adds ~1 ms; upstream calls run from milliseconds to their timeout (60 s by default).
CALL_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Seconds. A group commit takes ~0.1-1 ms on SQLite; record() gives up after 5 s.
AUDIT_WAIT_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
# Seconds. A stage's own work is microseconds (a policy evaluation ~0.1 ms); the upstream request (Forward)
# and the audit stages' commit waits reach into seconds.
STAGE_BUCKETS: Final = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.1,
    0.5,
    2.5,
    10.0,
    60.0,
)
FORWARD: Final = "Forward"  # the stage label of the upstream request

_TOOLS_CALL: Final = "tools/call"

# (server, action, tool label, decision, reason): one series of every family below. The tool label is ""
# for actions other than tools/call, so a resource URI never becomes part of a key.
SlotKey = tuple[str, str, str, str, str]


@dataclass(frozen=True, slots=True)
class CallCounts:
    """The call families at one moment (:meth:`CallMetrics.snapshot`), keyed as the ``*_LABELS`` say."""

    calls: dict[tuple[str, ...], int]  # CALLS_LABELS
    requests: dict[tuple[str, ...], int]  # REQUESTS_LABELS
    duration: Histogram  # DURATION_LABELS


class CallMetrics:
    """The counters and histograms of calls (one per Guard), bumped by :class:`Observe` and :class:`TimedSink`.

    Recording touches one *slot* per distinct (server, action, tool, decision, reason): a list holding the
    duration sum and bucket counts (its count is the number of requests). :attr:`calls`, :attr:`requests`
    and :attr:`duration` are views summed from the slots when a scrape asks, keyed by label-value tuples
    in the order of the ``*_LABELS`` class attributes.
    """

    CALLS_LABELS: Final = ("server", "tool", "decision", "reason")
    REQUESTS_LABELS: Final = ("server", "action", "decision", "reason")
    DURATION_LABELS: Final = ("server", "action", "decision")

    def __init__(self, *, max_tool_labels: int = MAX_TOOL_LABELS) -> None:
        self._bounds = CALL_BUCKETS
        self._slots: dict[SlotKey, list[float]] = {}  # key -> [duration sum, bucket counts…, +Inf count]
        self.errors: dict[tuple[str, ...], int] = {}  # allowed calls that ended in an error (not an isError result)
        self.rate_limited: dict[tuple[str, ...], int] = {}
        self.audit_wait = Histogram(AUDIT_WAIT_BUCKETS)
        # Each stage's own time by (stage,), when [telemetry] stage_metrics wraps the stages (time_stage).
        self.stages = Histogram(STAGE_BUCKETS)
        # Calls of this process parked on a human approval right now (the approval obligation keeps it).
        self.approvals_waiting = 0
        self.started = time.time()
        self._max_tools = max_tool_labels
        self._tools: dict[str, dict[str, str]] = {}  # server -> tool name -> its label

    # ------------------------------------------------------------------ recording (the hot path)
    def observe(self, ctx: CallContext, outcome: Outcome, seconds: float) -> None:
        """One request through the pipeline, as the client is answered (``Outcome.denial``, inlined)."""
        denial = outcome.override
        if denial is None:
            governing = outcome.decision
            if governing is not None and not governing.allow:
                denial = governing
        if denial is None:
            if outcome.error is not None:
                self.errors[(ctx.server,)] = self.errors.get((ctx.server,), 0) + 1
            self._record(ctx, "allow", "", seconds)
            return
        code = denial.code
        if code is ReasonCode.RATE_LIMITED:
            self.rate_limited[(ctx.server,)] = self.rate_limited.get((ctx.server,), 0) + 1
        self._record(ctx, "deny", code or POLICY, seconds)

    def observe_error(self, ctx: CallContext, seconds: float) -> None:
        """A request whose pipeline raised (a bug: stages answer with values)."""
        self._record(ctx, "error", "", seconds)

    def _record(self, ctx: CallContext, decision: str, reason: str, seconds: float) -> None:
        action = ctx.action
        key = (ctx.server, action, ctx.target if action == _TOOLS_CALL else "", decision, reason)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slot(key)
        slot[bisect_left(self._bounds, seconds) + 1] += 1
        slot[0] += seconds

    def _slot(self, key: SlotKey) -> list[float]:
        """The slot of a key seen for the first time — or of a tool past the cap, every time (its calls go to
        the ``other`` slot and its name is not remembered, so neither the slots nor the names grow)."""
        server, action, tool, decision, reason = key
        if action == _TOOLS_CALL:
            key = (server, action, self.tool_label(server, tool), decision, reason)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = [0.0, *([0] * (len(self._bounds) + 1))]
        return slot

    def tool_label(self, server: str, tool: str) -> str:
        """``tool`` itself while the upstream has fewer than the cap of named series, else :data:`OTHER`."""
        known = self._tools.get(server)
        if known is None:
            known = self._tools[server] = {}
        label = known.get(tool)
        if label is None:
            if len(known) >= self._max_tools:
                return OTHER  # not remembered: the map stays bounded too
            label = known[tool] = tool
        return label

    # ------------------------------------------------------------------ views (scrape time)
    def snapshot(self) -> CallCounts:
        """The families summed from the slots, in one pass (what a scrape reads)."""
        calls: dict[tuple[str, ...], int] = {}
        requests: dict[tuple[str, ...], int] = {}
        duration = Histogram(self._bounds)
        for (server, action, tool, decision, reason), slot in list(self._slots.items()):
            buckets = slot[1:]
            n = int(sum(buckets))
            if action == _TOOLS_CALL:
                k = (server, tool, decision, reason)
                calls[k] = calls.get(k, 0) + n
            k = (server, action, decision, reason)
            requests[k] = requests.get(k, 0) + n
            duration.add((server, action, decision), buckets, slot[0])
        return CallCounts(calls, requests, duration)

    @property
    def calls(self) -> dict[tuple[str, ...], int]:
        """tools/call requests by (server, tool, decision, reason)."""
        return self.snapshot().calls

    @property
    def requests(self) -> dict[tuple[str, ...], int]:
        """Every pipeline request (tools/call included) by (server, action, decision, reason)."""
        return self.snapshot().requests

    @property
    def duration(self) -> Histogram:
        """Pipeline time by (server, action, decision)."""
        return self.snapshot().duration

    def time_stage(self, stage: Interceptor) -> Interceptor:
        """``stage`` timed into :attr:`stages` under its class name (see :class:`StageTimer`)."""
        return StageTimer(stage, self.stages.series_for((type(stage).__name__,)), self.stages.bounds)

    def time_forward(self, forward: CallNext) -> CallNext:
        """The upstream request timed into :attr:`stages` as ``Forward``."""
        series, bounds = self.stages.series_for((FORWARD,)), self.stages.bounds

        async def timed(ctx: CallContext) -> Outcome:
            started = perf_counter()
            try:
                return await forward(ctx)
            finally:
                took = perf_counter() - started
                series[bisect_left(bounds, took)] += 1
                series[-1] += took

        return timed

    def timed(self, sink: EventSink) -> TimedSink:
        """``sink`` with every ``record()`` wait observed in :attr:`audit_wait`."""
        return TimedSink(sink, self.audit_wait)


class TimedSink:
    """An :class:`~mcp_guard.pipeline.audit.EventSink` that times each ``record()``: the wait for the commit.

    That wait — queue, group commit, transaction — is what a call pays for its decision and outcome rows,
    whatever the backend. A failed or timed-out write is observed too (its wait was paid).
    ``record_nowait`` passes straight through.
    """

    __slots__ = ("_bounds", "_series", "_sink")

    def __init__(self, sink: EventSink, histogram: Histogram) -> None:
        self._sink = sink
        self._bounds = histogram.bounds
        self._series = histogram.series_for(())  # the one series, updated in place (Histogram.observe, inlined)

    async def record(self, event: AuditEvent) -> int:
        started = perf_counter()
        try:
            return await self._sink.record(event)
        finally:
            waited = perf_counter() - started
            self._series[bisect_left(self._bounds, waited)] += 1
            self._series[-1] += waited

    def record_nowait(self, event: AuditEvent) -> None:
        self._sink.record_nowait(event)


class StageTimer:
    """One stage, timed: its **own** time — from entering it to its return, minus the time spent in its
    ``call_next`` (the stages inside it and the upstream request) — observed in one histogram series.

    Only in the pipeline with ``[telemetry] stage_metrics = true``: each wrapper is an extra coroutine frame
    and a closure per call (a few microseconds per stage; bench/bench_stage_metrics.py).
    """

    __slots__ = ("_bounds", "_series", "_stage")

    def __init__(self, stage: Interceptor, series: list[float], bounds: tuple[float, ...]) -> None:
        self._stage = stage
        self._series = series
        self._bounds = bounds

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Outcome:
        inner = 0.0

        async def timed_next(c: CallContext) -> Outcome:
            nonlocal inner
            entered = perf_counter()
            try:
                return await call_next(c)
            finally:
                inner += perf_counter() - entered

        started = perf_counter()
        try:
            return await self._stage(ctx, timed_next)
        finally:
            own = perf_counter() - started - inner
            self._series[bisect_left(self._bounds, own)] += 1
            self._series[-1] += own


class Observe:
    """Count every request and time it, from the outside of the pipeline.

    Runs inside ``call_next``: **everything** — argument inspection, the outcome and decision rows, the pin
    check, the policy, the obligations, redaction and the upstream call. So the outcome counted is the one
    the client gets (an ``audit_unavailable`` override included) and the time is the whole pipeline's.
    An exception from ``call_next`` is counted as ``decision="error"`` and re-raised; a cancelled request
    is not counted.
    """

    __slots__ = ("_metrics",)

    def __init__(self, metrics: CallMetrics) -> None:
        self._metrics = metrics

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Outcome:
        started = perf_counter()
        try:
            outcome = await call_next(ctx)
        except Exception:
            self._metrics.observe_error(ctx, perf_counter() - started)
            raise
        self._metrics.observe(ctx, outcome, perf_counter() - started)
        return outcome
