"""The state-store protocol: the shared, durable state the pipeline keeps between calls.

mcp-guard keeps state that outlives a request and must be the same for every process serving one
deployment (several ``mcp-guard run`` processes on one host today; replicas on PostgreSQL with the
scale-out issue). Today that is **rate-limit counters** and **information flows**; approvals will join
this protocol (one protocol, several backends: :mod:`mcp_guard.state.sqlite`,
:mod:`mcp_guard.state.memory`, later PostgreSQL), chosen in one place (:func:`mcp_guard.state.open_state`).

Counters
--------
A counter (a *bucket*) is named by the pair ``(key, window_s)``: the same key with two windows is two
independent counters; the same key and window with two limits is one counter checked against both.
Each counter is an exact sliding log: one row per counted hit with its timestamp, pruned as hits leave
the window. A hit at time ``t`` counts in ``[t, t + window_s)``; a call at ``now`` is admitted iff, for
every limit, fewer than ``limit`` hits of its bucket lie in ``(now - window_s, now]``. That is exact
(no fixed-window burst at the boundary, no interpolation), and costs one row per admitted call per
bucket (never more rows than ``limit`` stay in a window, because refused calls are not counted).

Every call is atomic in the backend, across processes and replicas:

* :meth:`StateStore.admit` checks every limit and, only if all have room, counts one hit in each
  bucket — all or nothing, in one transaction (SQLite ``BEGIN IMMEDIATE``; PostgreSQL: one
  transaction that locks the bucket rows in key order);
* :meth:`StateStore.release` takes back the hits of one admission (the call was not forwarded after all);
* :meth:`StateStore.usage` reads how many hits each bucket holds in its window now.

Time is the store's clock (wall-clock seconds, the same for every process on a host; a PostgreSQL
backend uses the database's clock so replicas agree). Tests inject a clock.

Flows
-----
A *flow* (:mod:`mcp_guard.pipeline.flow` says what one is: an MCP session, or a stateless client's
principal + client + correlation id) is the labels its calls acquired and its recent calls. The store
keeps, per flow id:

* its **labels**, each with how many recorded calls added it and the first (``origin``) and latest of
  them — a label is present while that count is above zero, so taking back one call
  (:meth:`StateStore.unrecord_call`) never removes a label another call also added;
* its **history**: the last :attr:`FlowBounds.history` calls, oldest first, allowed or denied;
* its principal and the time of its last recorded call: a flow unused for :attr:`FlowBounds.idle_s`
  seconds is gone (read as empty; its rows are deleted as the store next writes), so the next call
  under the same id starts a fresh flow.

:meth:`StateStore.flow` reads one flow (one snapshot); :meth:`StateStore.record_call` appends a call
and adds its labels, atomically (creating the flow, or a fresh one in place of an expired one);
:meth:`StateStore.unrecord_call` takes a recorded call back (it was not forwarded after all).

Batches
-------
The writes one call needs — count it against its limits, record it in its flow — go to the store as one
batch (:meth:`StateStore.apply`, a list of :data:`StateOp`): one transaction (SQLite: one ``BEGIN
IMMEDIATE … COMMIT``; PostgreSQL: one transaction, its locks taken together in ascending order). The ops
run in order; the first one that is *refused* (an :class:`Admission` that is not admitted, a
:class:`FlowFull`) ends the batch and rolls the whole transaction back, so an op before it leaves no trace
— all or nothing, the same across processes as a single op. The answer (:class:`Applied`) holds one
result per op that ran. Each single-op method is that op alone. Taking a committed batch back (the call
was not forwarded after all) is again one batch: :func:`undo_ops` of its results, newest first.

Bounded size: at most :attr:`FlowBounds.history` calls and :attr:`FlowBounds.labels` distinct labels per
flow, at most :attr:`FlowBounds.per_principal` live flows per principal. A call that would exceed a
bound is not recorded: :meth:`StateStore.record_call` answers :class:`FlowFull` (the caller denies).
Refusing rather than evicting is deliberate: evicting the oldest flow would let a client wash a
flow's labels away by opening many flows.

Every method is bounded by the store's timeout and raises :class:`~mcp_guard.errors.StateError` when
the store cannot answer (unreachable, unwritable, timed out): callers deny (fail closed), never skip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import structlog

from mcp_guard.errors import StateError

__all__ = [
    "FLOW_HISTORY",
    "FLOW_HISTORY_PATH",
    "Admission",
    "Admit",
    "Applied",
    "Bucket",
    "Flow",
    "FlowBounds",
    "FlowCall",
    "FlowFull",
    "FlowHistory",
    "FlowRef",
    "FlowTicket",
    "LabelOrigin",
    "Limit",
    "OpFailed",
    "OpResult",
    "Record",
    "Release",
    "StateOp",
    "StateStore",
    "Ticket",
    "Unrecord",
    "apply_in_turn",
    "buckets_of",
    "is_refusal",
    "retry_after",
    "undo_ops",
    "whole_seconds",
]

log = structlog.get_logger("mcp_guard.state")

Bucket = tuple[str, float]
"""A counter's name: ``(key, window_s)``."""


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``limit`` counted calls per ``window_s`` seconds for ``key`` (an entry of ``obligations.rate_limit``)."""

    key: str
    limit: int
    window_s: float

    @property
    def bucket(self) -> Bucket:
        return (self.key, self.window_s)


@dataclass(frozen=True, slots=True)
class Ticket:
    """What :meth:`StateStore.release` needs to take back one admission: its hit id, time and buckets."""

    hit: str
    ts: float
    buckets: tuple[Bucket, ...]


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer of :meth:`StateStore.admit`.

    ``admitted``: one hit was counted in every bucket (and ``ticket`` can take it back). Otherwise
    nothing was counted, ``full`` lists the limits without room and ``retry_after_s`` is how long until
    all of them have room again (assuming no other call is counted meanwhile). ``usage`` is each
    bucket's count in its window after the call (including this hit when admitted).
    """

    admitted: bool
    usage: dict[Bucket, int]
    full: tuple[Limit, ...] = ()
    retry_after_s: float = 0.0
    ticket: Ticket | None = None


# ---------------------------------------------------------------------- flows
@dataclass(frozen=True, slots=True)
class FlowBounds:
    """How long a flow lives unused and how large it may grow (see the module docstring, Flows)."""

    idle_s: float = 3600.0
    history: int = 32
    labels: int = 64
    per_principal: int = 10_000


@dataclass(frozen=True, slots=True)
class FlowRef:
    """Which flow a call belongs to: its opaque id and the principal it counts against."""

    id: str
    principal: str


@dataclass(frozen=True, slots=True)
class FlowCall:
    """One call in a flow's history (``context.flow.history[i]`` in the policy input)."""

    decision_id: str
    action: str
    server: str
    tool: str
    decision: Literal["allow", "deny"]
    labels: tuple[str, ...]
    time: str  # RFC3339 UTC

    def to_policy(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "tool": self.tool,
            "action": self.action,
            "decision": self.decision,
            "labels": list(self.labels),
            "decision_id": self.decision_id,
            "time": self.time,
        }

    def to_json(self) -> dict[str, Any]:
        return self.to_policy()

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> FlowCall:
        return cls(
            decision_id=str(doc["decision_id"]),
            action=str(doc["action"]),
            server=str(doc["server"]),
            tool=str(doc["tool"]),
            decision="allow" if doc["decision"] == "allow" else "deny",
            labels=tuple(str(x) for x in doc["labels"]),
            time=str(doc["time"]),
        )


@dataclass(frozen=True, slots=True)
class LabelOrigin:
    """A call that added a label to its flow: the decision that allowed it, where it went, when."""

    decision_id: str
    server: str
    tool: str
    time: str

    @classmethod
    def of(cls, call: FlowCall) -> LabelOrigin:
        return cls(call.decision_id, call.server, call.tool, call.time)

    def to_policy(self) -> dict[str, Any]:
        return {"decision_id": self.decision_id, "server": self.server, "tool": self.tool, "time": self.time}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> LabelOrigin:
        return cls(str(doc["decision_id"]), str(doc["server"]), str(doc["tool"]), str(doc["time"]))


FLOW_HISTORY_PATH: Final = ("context", "flow", "history")
FLOW_HISTORY: Final = ".".join(FLOW_HISTORY_PATH)
"""Where a flow's history is in the policy input: ``input.context.flow.history``."""


@dataclass(frozen=True, slots=True)
class Flow:
    """A flow as the policy sees it (``input.context.flow``): an unknown or expired flow is empty.

    ``history_omitted``: the history was left out of the input because no decision can read it
    (:meth:`without_history`; :mod:`mcp_guard.pipeline.flow`) — the input then shows ``history: []`` and the
    decision row says so (:attr:`omitted`), so a replay of a candidate that reads it knows the row cannot answer."""

    id: str
    labels: Mapping[str, LabelOrigin] = field(default_factory=dict)  # label → the first call that added it
    history: tuple[FlowCall, ...] = ()  # oldest first, at most FlowBounds.history
    history_omitted: bool = False

    def without_history(self) -> Flow:
        """This flow as a decision that cannot read its history is given it."""
        return Flow(self.id, self.labels, (), history_omitted=True)

    @property
    def omitted(self) -> tuple[str, ...]:
        """The input paths left out of this flow's part of the input (dotted, as a decision row lists them)."""
        return (FLOW_HISTORY,) if self.history_omitted else ()

    def to_policy(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "labels": sorted(self.labels),
            "labeled_by": {label: origin.to_policy() for label, origin in sorted(self.labels.items())},
            "history": FlowHistory(self.history),
        }


class FlowHistory(list[dict[str, Any]]):
    """``context.flow.history`` as the policy sees it — a plain JSON list of :meth:`FlowCall.to_policy` objects —
    that remembers the calls it was made of (:attr:`calls`).

    Why: a call's decision row keeps the whole policy input, and a long flow's history is most of it (32 calls:
    ~40 µs of canonical JSON per row, the same calls encoded again on every call of the flow). The audit
    encoder (:func:`mcp_guard.audit.events.policy_record`) takes each call's text from its cache of the
    :class:`FlowCall` values it has seen instead. The list refuses changes, so it always holds what ``calls``
    says; its objects are fresh for each list, as before."""

    __slots__ = ("calls",)

    def __init__(self, calls: tuple[FlowCall, ...]) -> None:
        super().__init__([c.to_policy() for c in calls])
        self.calls = calls

    def _refuse(self, *_args: Any, **_kwargs: Any) -> Any:
        raise TypeError("a flow history cannot be changed (it is the flow's record)")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = pop = remove = clear = sort = reverse = _refuse

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))  # a copy (pickle, deepcopy) is a plain list: it no longer names the calls


@dataclass(frozen=True, slots=True)
class FlowTicket:
    """What :meth:`StateStore.unrecord_call` needs to take one recorded call back.

    ``generation`` names the flow's lifetime: a ticket for a flow that has since expired and started
    again under the same id changes nothing."""

    flow_id: str
    generation: str
    call: FlowCall


@dataclass(frozen=True, slots=True)
class FlowFull:
    """:meth:`StateStore.record_call` did not record the call: a bound of :class:`FlowBounds` would be exceeded."""

    reason: str


# ---------------------------------------------------------------------- batches
@dataclass(frozen=True, slots=True)
class Admit:
    """:meth:`StateStore.admit` as an op of a batch; refused when a limit is full."""

    limits: tuple[Limit, ...]


@dataclass(frozen=True, slots=True)
class Release:
    """:meth:`StateStore.release` as an op of a batch."""

    ticket: Ticket


@dataclass(frozen=True, slots=True)
class Record:
    """:meth:`StateStore.record_call` as an op of a batch; refused when the flow is full."""

    ref: FlowRef
    call: FlowCall


@dataclass(frozen=True, slots=True)
class Unrecord:
    """:meth:`StateStore.unrecord_call` as an op of a batch."""

    ticket: FlowTicket


StateOp = Admit | Release | Record | Unrecord
"""One write of a batch (:meth:`StateStore.apply`). A new kind of shared state adds its op here and to each backend."""

OpResult = Admission | FlowTicket | FlowFull | None
"""What an op answered: ``Admit`` an :class:`Admission`; ``Record`` a :class:`FlowTicket` or :class:`FlowFull`;
``Release`` and ``Unrecord`` None."""


class OpFailed(StateError):
    """The StateError of :meth:`StateStore.apply` when the backend knows which op failed: ``at``, its index."""

    def __init__(self, message: str, *, cause: str, at: int) -> None:
        super().__init__(message, cause=cause)
        self.at = at


def is_refusal(result: OpResult) -> bool:
    """Whether an op's answer ends its batch (and rolls it back): a full limit, a full flow."""
    return isinstance(result, FlowFull) or (isinstance(result, Admission) and not result.admitted)


@dataclass(frozen=True, slots=True)
class Applied:
    """The answer of :meth:`StateStore.apply`: one result per op that ran, in order. When the last is a refusal
    (:attr:`committed` is False) the ops after it did not run and nothing of the batch was kept."""

    results: tuple[OpResult, ...]

    @property
    def committed(self) -> bool:
        return not (self.results and is_refusal(self.results[-1]))


def undo_ops(results: Sequence[OpResult]) -> list[StateOp]:
    """The batch that takes back the committed ops behind ``results``: their inverses, newest first."""
    undo: list[StateOp] = []
    for result in reversed(results):
        if isinstance(result, Admission) and result.ticket is not None:
            undo.append(Release(result.ticket))
        elif isinstance(result, FlowTicket):
            undo.append(Unrecord(result))
    return undo


class StateStore(Protocol):
    """The shared state of a deployment (see the module docstring). Every method may raise StateError."""

    async def admit(self, limits: Sequence[Limit]) -> Admission:
        """Count one hit in every limit's bucket iff every limit has room; else count nothing."""
        ...

    async def release(self, ticket: Ticket) -> None:
        """Take back the hits of an admission (no-op for hits that already left their window)."""
        ...

    async def usage(self, buckets: Sequence[Bucket]) -> dict[Bucket, int]:
        """Each bucket's number of hits in its window now (0 for a bucket never counted)."""
        ...

    async def flow(self, flow_id: str) -> Flow:
        """The flow as it is now: its labels and recent calls (empty when unknown or idle past its TTL)."""
        ...

    async def record_call(self, ref: FlowRef, call: FlowCall) -> FlowTicket | FlowFull:
        """Append ``call`` to the flow's history and add its labels, atomically; the flow's idle time restarts."""
        ...

    async def unrecord_call(self, ticket: FlowTicket) -> None:
        """Take a recorded call back: its history entry, and one count of each of its labels."""
        ...

    async def apply(self, ops: Sequence[StateOp]) -> Applied:
        """Run ``ops`` in order as one transaction; the first refusal ends it and rolls every op back (see Batches).

        On StateError nothing of the batch is kept (but for PostgreSQL's lost-COMMIT case, see its module)."""
        ...

    async def aclose(self) -> None: ...


async def apply_in_turn(store: StateStore, ops: Sequence[StateOp]) -> Applied:
    """:meth:`StateStore.apply` built from the single-op methods: each op its own transaction, and a refusal takes
    back the ops before it (:func:`undo_ops`) — the path the obligations took before batches. The in-memory store
    answers ``apply`` this way (one process, one loop: the end state is the batch's); ``bench/ablate.py
    per-op-state`` puts it back on SQLite to measure the batch against it.

    An op that fails raises :class:`OpFailed` naming it (the ops before it are taken back first); a take-back
    that fails is logged and leaves its op applied, as the obligations' undo always did (stricter, never looser)."""
    results: list[OpResult] = []
    for at, op in enumerate(ops):
        try:
            result = await _apply_one(store, op)
        except StateError as e:
            await _take_back_in_turn(store, results)
            raise OpFailed(str(e), cause=e.cause, at=at) from e
        results.append(result)
        if is_refusal(result):
            await _take_back_in_turn(store, results[:-1])
            break
    return Applied(tuple(results))


async def _take_back_in_turn(store: StateStore, results: Sequence[OpResult]) -> None:
    for undo in undo_ops(results):
        try:
            await _apply_one(store, undo)
        except StateError as e:
            log.warning("state.not_taken_back", op=type(undo).__name__, error=str(e))


async def _apply_one(store: StateStore, op: StateOp) -> OpResult:
    if isinstance(op, Admit):
        return await store.admit(op.limits)
    if isinstance(op, Record):
        return await store.record_call(op.ref, op.call)
    if isinstance(op, Release):
        await store.release(op.ticket)
        return None
    await store.unrecord_call(op.ticket)
    return None


def buckets_of(limits: Sequence[Limit]) -> dict[Bucket, int]:
    """The distinct buckets of ``limits``, each with its tightest limit (the same bucket is counted once)."""
    tightest: dict[Bucket, int] = {}
    for lim in limits:
        tightest[lim.bucket] = min(lim.limit, tightest.get(lim.bucket, lim.limit))
    return tightest


def retry_after(oldest_blocking_ts: float, window_s: float, now: float) -> float:
    """Seconds until the hit at ``oldest_blocking_ts`` leaves its window (never negative)."""
    return max(0.0, oldest_blocking_ts + window_s - now)


def whole_seconds(seconds: float) -> int:
    """``seconds`` rounded up to a whole second, at least 1: a retry after that many seconds finds room."""
    return max(1, math.ceil(seconds - 1e-9))


# ---------------------------------------------------------------------- flow helpers (every backend)
PURGE_EVERY_S = 60.0
"""How often (at most) a backend deletes the rows of expired flows, as part of a write."""


def flow_expired(seen: float, now: float, bounds: FlowBounds) -> bool:
    """Whether a flow last used at ``seen`` is gone at ``now`` (idle for ``bounds.idle_s`` or longer)."""
    return seen <= now - bounds.idle_s


def too_many_flows(principal: str, live: int, bounds: FlowBounds) -> FlowFull | None:
    if live < bounds.per_principal:
        return None
    return FlowFull(
        f"principal {principal!r} already has {live} live flows (at most {bounds.per_principal}); "
        f"a flow ends {bounds.idle_s:g} s after its last call"
    )


def too_many_labels(present: int, adding: int, bounds: FlowBounds) -> FlowFull | None:
    if present + adding <= bounds.labels:
        return None
    return FlowFull(
        f"the flow would hold {present + adding} distinct labels (at most {bounds.labels}); "
        "the policy labels calls with too many different names"
    )


def replacement(history: Sequence[FlowCall], label: str, gone: str, *, newest: bool) -> LabelOrigin | None:
    """Another allowed call in ``history`` that added ``label`` (not ``gone``): the oldest, or the newest."""
    calls = reversed(history) if newest else iter(history)
    for c in calls:
        if c.decision_id != gone and c.decision == "allow" and label in c.labels:
            return LabelOrigin.of(c)
    return None


def take_back_label(
    n: int, origin: LabelOrigin, latest: LabelOrigin, gone: str, history: Sequence[FlowCall], label: str
) -> tuple[int, LabelOrigin, LabelOrigin]:
    """A label's count, origin and latest after the call ``gone`` (one of its adders) is taken back.

    The count is exact, so the label stays while another recorded call added it. When ``gone`` was the
    origin (or latest), another adder takes its place: from the history if one is there, else the other
    end (the origin/latest pair only names the first and last adders, not every one)."""
    n -= 1
    if origin.decision_id == gone:
        origin = replacement(history, label, gone, newest=False) or (latest if latest.decision_id != gone else origin)
    if latest.decision_id == gone:
        latest = replacement(history, label, gone, newest=True) or origin
    return n, origin, latest
