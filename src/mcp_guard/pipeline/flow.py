"""Session information flow: what a flow is, the ``labels`` obligation, and ``context.flow`` for the policy.

Rules about *combinations* of calls — "an agent that read private data and then saw untrusted input may
not send anything out" (the lethal trifecta; the GitHub MCP "toxic flow") — need a memory of what a
conversation has already touched. That memory is a **flow**: the labels its calls acquired and its
recent calls. The policy reads it as ``input.context.flow`` and adds to it with
``obligations.labels = ["private", "untrusted"]``.

**What a flow is.** The unit of one agent conversation, as far as mcp-guard can tell it apart:

* a **2025-11-25 client** (handshake era): the MCP session. A new session is a new flow; a
  ``_meta`` correlation id is ignored (a session cannot be split into flows).
* a **stateless 2026-07-28 client** (every request a session of its own): the **principal** (who
  authenticated), the **client identity** (``clientInfo.name`` of the request's ``_meta`` envelope; none
  given counts as one identity) and an optional **correlation id** the client sends in the request's
  ``_meta`` under :data:`FLOW_META_KEY` (``"mcp-guard/flow"``: a string of 1–128 printable characters;
  anything else is ignored with a warning, so the call joins the principal + client flow — the broader,
  stricter one). Without a correlation id all of a principal's requests from one client are one flow.
  mcp-guard removes the key before the request goes upstream.

A flow ends when unused for ``[audit] flow_idle_ttl_s`` seconds (default 3600): its labels and history
are forgotten and the next call under the same identity starts a fresh flow. That applies to sessions
too (a session idle past the TTL starts over). The flow's id is an opaque digest of the above
(:func:`flow_ref`), never a session id or correlation id as such.

Flows separate conversations of an honest client; they are not a barrier against a client that wants to
escape its history — one that opens a new session, or sends a new correlation id, starts a clean flow,
just as it could start a new conversation. (The principal and the client's software choose the
correlation id, not the model: an agent cannot change ``_meta`` through tool arguments.)

**The labels obligation** (:class:`LabelsObligation`, registered in
:func:`~mcp_guard.pipeline.build.obligation_handlers` before ``rate_limit``): a list of at most
:data:`MAX_LABELS` label names (letters, digits and ``_ . : / -``, at most 64 characters, starting
with a letter or digit); anything else is ``obligation_invalid``. The handler records the allowed call
in its flow — history entry and labels — as its op of the call's one state batch
(:class:`~mcp_guard.pipeline.obligations.StateWrite`: one transaction with the ``rate_limit`` admission):
if ``rate_limit`` refuses the call the batch is rolled back, and if the call is not forwarded after all
(its allow row cannot be written) the record is taken back, so **labels stick only to calls that were
forwarded**. They apply from that moment, before the upstream answers: a call running
in parallel in the same flow already sees them. The handler is ``always``: when the bundle uses flows,
every allowed call is recorded in the history, with or without labels.

**context.flow** (:class:`TrackFlow`, a stage right inside ``RecordOutcome``): before pin check and
policy it reads the call's flow from the state store and puts it on the context; Authorize passes it to
the policy as ``input.context.flow`` = ``{"id", "labels": [sorted names], "labeled_by": {label:
{"decision_id", "server", "tool", "time"} of the first call that added it}, "history": [{"server",
"tool", "action", "decision", "labels", "decision_id", "time"}, …]}`` (the last 32 calls, oldest first).
``labeled_by`` outlives the history, so a rule can always name the call that tainted a flow. When the
call ends in a deny (the policy's, or any stage's), the stage appends it to the history with decision
``deny`` and no labels — except a ``state_unavailable`` or ``flow_limit`` deny, whose store just failed
to take a record. Listings have no flow.

**Fail closed.** A flow that cannot be read or written (``[audit] state_timeout_ms``, unwritable file)
is a deny ``state_unavailable``, recorded; a flow that would grow past its bounds (live flows per
principal, distinct labels per flow: :class:`~mcp_guard.state.base.FlowBounds`) is a deny
``flow_limit``. A failed undo leaves the labels on (stricter, never looser); a deny that cannot be
appended to the history is only logged (the call was refused anyway).

**Cost.** A bundle that never mentions flows pays nothing: :class:`FlowUse` scans the loaded bundle's
policies and data once per load for the words ``flow`` or ``labels``; without them no flow is read or
written, and the composed pipeline leaves :class:`TrackFlow` out (:mod:`mcp_guard.pipeline.in_use`; the next
call after a reload that turns flows on has it). (An over-approximation: a comment mentioning "flow" turns
tracking on. A bundle that builds the key ``"labels"`` out of pieces is still honoured — the handler records a
``labels`` obligation whenever one arrives.) An engine whose bundle mcp-guard does not hold (OPA serving its
own policies) is assumed to use flows. With flows: one store read before policy (on SQLite usually from memory: the
store's flow cache), and the record of an allowed call rides in the call's one state batch; a deny is one
write after the call.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from functools import partial
from typing import Final, Literal

import structlog

from mcp_guard.errors import StateError
from mcp_guard.frozen import evolve
from mcp_guard.pipeline.context import CallContext, CallNext, Outcome
from mcp_guard.pipeline.obligations import ABSENT, Refusal, StateWrite
from mcp_guard.policy.base import BundleHolder
from mcp_guard.policy.reads import PathRead
from mcp_guard.state.base import FLOW_HISTORY_PATH, FlowCall, FlowFull, FlowRef, OpResult, Record, StateStore
from mcp_guard.types import Decision, ReasonCode, utc_now

__all__ = [
    "FLOW_META_KEY",
    "MAX_LABELS",
    "FlowUse",
    "HistoryRead",
    "LabelsObligation",
    "TrackFlow",
    "bundle_uses_flows",
    "correlation_id",
    "flow_ref",
    "parse_labels",
]

log = structlog.get_logger("mcp_guard.flow")

FLOW_META_KEY: Final = "mcp-guard/flow"
"""The request ``_meta`` key under which a stateless client names its flow (a correlation id)."""

MAX_CORRELATION_CHARS: Final = 128
MAX_LABELS: Final = 16  # labels in one obligation
_LABEL: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}")
_FLOW_WORDS: Final = re.compile(r"\b(?:flow|labels)\b")
# Denies whose flow could not take a record a moment ago: not tried again for the history.
_UNRECORDABLE: Final = frozenset({ReasonCode.STATE_UNAVAILABLE, ReasonCode.FLOW_LIMIT})


# ---------------------------------------------------------------------- what a flow is
def correlation_id(meta: object) -> str | None:
    """The correlation id a request's ``_meta`` carries under :data:`FLOW_META_KEY`, or None.

    A malformed one (not a string, empty, too long, control characters) is ignored with a warning: the
    call then belongs to its principal + client flow, the broader one, so a typo never loosens a rule."""
    if not isinstance(meta, Mapping):
        return None
    value = meta.get(FLOW_META_KEY)
    if value is None:
        return None
    if isinstance(value, str) and 0 < len(value) <= MAX_CORRELATION_CHARS and value.isprintable():
        return value
    log.warning(
        "flow.correlation_ignored",
        key=FLOW_META_KEY,
        reason=f"expected a string of 1 to {MAX_CORRELATION_CHARS} printable characters, got {type(value).__name__}",
    )
    return None


def flow_ref(ctx: CallContext) -> FlowRef:
    """The flow a call belongs to (the module docstring says why each era's flow is what it is)."""
    if not ctx.session.stateless:
        return FlowRef(_digest("session", ctx.session.id), ctx.principal.id)
    client = ctx.session.client_name or ""
    return FlowRef(_digest("stateless", ctx.principal.id, client, ctx.correlation_id or ""), ctx.principal.id)


@functools.lru_cache(maxsize=4096)
def _digest(*parts: str) -> str:
    """An opaque, fixed-length id: the parts cannot be read back or run into each other. Remembered for the
    sessions most recently seen: every call of a flow asks twice (its read and its record), with the same parts."""
    return "f-" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


# ---------------------------------------------------------------------- whether the bundle uses flows
def bundle_uses_flows(files: Mapping[str, str]) -> bool:
    """Whether any policy or data file (path → text) mentions ``flow`` or ``labels`` as a word."""
    return any(_FLOW_WORDS.search(text) for text in files.values())


class FlowUse:
    """Whether calls need their flow: the loaded bundle's :func:`bundle_uses_flows`, re-checked after a reload.

    True for an engine whose bundle mcp-guard does not hold (OPA serving its own policies, test engines):
    what cannot be seen is assumed to be used."""

    def __init__(self, engine: object) -> None:
        # Asked once: an isinstance against a runtime-checkable Protocol costs ~10 µs, and this runs per call.
        self._engine = engine if isinstance(engine, BundleHolder) else None
        self._seen: object = None
        self._uses = True

    def __call__(self) -> bool:
        if self._engine is None:
            return True
        bundle = self._engine.bundle
        if bundle is None:
            return True
        if bundle is not self._seen:
            files = {f.rel: f.text for f in (*bundle.policies, *bundle.data_files)}
            self._uses, self._seen = bundle_uses_flows(files), bundle
            log.info("flow.tracking", enabled=self._uses, revision=getattr(bundle, "revision", None))
        return self._uses


class HistoryRead(PathRead):
    """Whether any of ``engines`` can read ``input.context.flow.history``: the one evaluating the call (its result
    too: one decision rule answers both) and the shadow candidate asked the same input
    (:class:`~mcp_guard.policy.reads.PathRead`)."""

    def __init__(self, *engines: object) -> None:
        super().__init__(FLOW_HISTORY_PATH, *engines)


# ---------------------------------------------------------------------- the stage
class TrackFlow:
    """Inside ``call_next``: pin check, authorize, obligations, the allow row and the upstream — reached with
    ``ctx.flow`` set to the call's flow as the store holds it now (when the bundle uses flows). A call that
    ends in a deny is appended to the flow's history after ``call_next`` returns; an allowed one was
    recorded by :class:`LabelsObligation`.

    ``history`` says whether any decision asked about the call can read ``input.context.flow.history``
    (:class:`~mcp_guard.policy.reads.PathRead` over the engine and the shadow candidate). While none can, the
    flow reaches them without it (:meth:`~mcp_guard.state.base.Flow.without_history`: ``history: []``, and the
    decision row lists it as omitted): the shipped bundle reads the labels but never the history, and a 32-call
    history was most of every decision row. The history itself is recorded in the store as always, so a bundle
    that reads it finds it whole from its first call. Decided at the call's start, like the rest of this stage:
    a reload during the call takes effect at the next one."""

    def __init__(self, store: StateStore, uses: Callable[[], bool], history: Callable[[], bool] = lambda: True) -> None:
        self._store = store
        self._uses = uses
        self._history = history

    def as_used(self) -> TrackFlow | None:
        """Left out of the pipeline while the bundle does not use flows (:mod:`mcp_guard.pipeline.in_use`)."""
        return self if self._uses() else None

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Outcome:
        if not self._uses():
            return await call_next(ctx)
        ref = flow_ref(ctx)
        try:
            flow = await self._store.flow(ref.id)
        except StateError as e:
            log.error("flow.state_unavailable", error=str(e), call_id=ctx.call_id, stage="read")
            detail = (
                f"the information flow of this call cannot be read ({e.cause}); "
                "mcp-guard refuses calls whose flow it cannot check"
            )
            return Outcome(decision=Decision.deny(ReasonCode.STATE_UNAVAILABLE, detail))
        if not self._history():
            flow = flow.without_history()
        outcome = await call_next(evolve(ctx, flow=flow))
        denial = outcome.denial
        if denial is not None and denial.code not in _UNRECORDABLE:
            await self._record_deny(ctx, ref, denial)
        return outcome

    async def _record_deny(self, ctx: CallContext, ref: FlowRef, denial: Decision) -> None:
        call = _flow_call(ctx, denial.decision_id, "deny", ())
        try:
            recorded = await self._store.record_call(ref, call)
        except StateError as e:
            log.warning("flow.deny_not_recorded", error=str(e), call_id=ctx.call_id, decision_id=denial.decision_id)
            return
        if isinstance(recorded, FlowFull):
            log.warning("flow.deny_not_recorded", error=recorded.reason, call_id=ctx.call_id)


def _flow_call(
    ctx: CallContext, decision_id: str, decision: Literal["allow", "deny"], labels: tuple[str, ...]
) -> FlowCall:
    return FlowCall(
        decision_id=decision_id,
        action=ctx.action,
        server=ctx.server,
        tool=ctx.target,
        decision=decision,
        labels=labels,
        time=utc_now(),
    )


# ---------------------------------------------------------------------- the obligation
def parse_labels(value: object) -> tuple[str, ...] | str:
    """The labels of an ``obligations.labels`` value (duplicates dropped, order kept), or what is wrong."""
    if not isinstance(value, list):
        return f"obligations.labels must be a list of label names, got {_type(value)}"
    if len(value) > MAX_LABELS:
        return f"obligations.labels has {len(value)} entries, at most {MAX_LABELS} are allowed"
    for i, label in enumerate(value):
        if not isinstance(label, str) or not _LABEL.fullmatch(label):
            shown = repr(label) if isinstance(label, str) and len(label) <= 80 else _type(label)
            return (
                f"obligations.labels[{i}] must be a name of 1 to 64 letters, digits and _ . : / - "
                f"(starting with a letter or digit), got {shown}"
            )
    return tuple(dict.fromkeys(value))


class LabelsObligation:
    """The ``labels`` obligation: record the allowed call (and its labels) in its flow, or deny.

    ``always``: with the bundle using flows every allowed call is recorded in its flow's history; with
    it not using them (``ctx.flow`` is None) only a call that carries labels is — so while ``uses`` (the
    bundle's :class:`FlowUse`) says no, :meth:`as_used` is a copy that runs only for a ``labels`` key: for an
    absent one it would let the call through doing nothing."""

    name = "labels"

    def __init__(self, store: StateStore, uses: Callable[[], bool] | None = None, *, always: bool = True) -> None:
        self._store = store
        self._flows = uses
        self.always = always

    def as_used(self) -> LabelsObligation:
        """Run on every allowed call while flows are used (or cannot be known), else only when asked for."""
        always = self._flows is None or self._flows()
        return self if always == self.always else LabelsObligation(self._store, self._flows, always=always)

    async def enforce(self, ctx: CallContext, value: object) -> Refusal | StateWrite | None:
        if value is ABSENT:
            labels: tuple[str, ...] = ()
        else:
            parsed = parse_labels(value)
            if isinstance(parsed, str):
                return Refusal(ReasonCode.OBLIGATION_INVALID, parsed)
            labels = parsed
        if ctx.flow is None and not labels:
            return None
        decision = ctx.decision
        assert decision is not None, "obligations run after a decision"
        call = _flow_call(ctx, decision.decision_id, "allow", labels)
        return StateWrite(self._store, (Record(flow_ref(ctx), call),), _flow_full, partial(_unrecordable, ctx))


def _flow_full(result: OpResult) -> Refusal:
    assert isinstance(result, FlowFull), "called for a refused record"
    return Refusal(ReasonCode.FLOW_LIMIT, f"this call's flow cannot take it: {result.reason}")


def _unrecordable(ctx: CallContext, e: StateError) -> Refusal:
    log.error("flow.state_unavailable", error=str(e), call_id=ctx.call_id, stage="record")
    return Refusal(
        ReasonCode.STATE_UNAVAILABLE,
        f"the information flow of this call cannot be recorded ({e.cause}); "
        "mcp-guard refuses calls it cannot record in their flow",
    )


def _type(v: object) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(v), type(v).__name__
    )
