"""An in-process :class:`~mcp_guard.state.base.StateStore`: unit tests, and a Guard built without a store.

The same semantics as the SQLite store (exact sliding logs, all-or-nothing admission; flows with
counted labels, a bounded history and an idle TTL), kept in dicts.
Each method runs without awaiting between reading and writing, so on one event loop it is atomic; a batch
(:meth:`MemoryState.apply`) runs op by op and takes back the ops before a refusal, which ends in the same
state as the other backends' one transaction (another task may see the batch half done meanwhile). It
is not shared between processes: ``mcp-guard run`` always uses :func:`mcp_guard.state.open_state`.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio

from mcp_guard.state.base import (
    PURGE_EVERY_S,
    Admission,
    Applied,
    Bucket,
    Flow,
    FlowBounds,
    FlowCall,
    FlowFull,
    FlowRef,
    FlowTicket,
    LabelOrigin,
    Limit,
    StateOp,
    Ticket,
    apply_in_turn,
    buckets_of,
    flow_expired,
    retry_after,
    take_back_label,
    too_many_flows,
    too_many_labels,
)
from mcp_guard.types import new_id

__all__ = ["MemoryState"]


@dataclass
class _Label:
    n: int
    origin: LabelOrigin
    latest: LabelOrigin


@dataclass
class _Flow:
    principal: str
    generation: str
    seen: float
    labels: dict[str, _Label] = field(default_factory=dict)
    history: list[FlowCall] = field(default_factory=list)


class MemoryState:
    """Counters and flows in memory; ``clock`` (wall-clock seconds) is injectable for tests."""

    def __init__(self, *, clock: Callable[[], float] = time.time, flows: FlowBounds | None = None) -> None:
        self._clock = clock
        self._hits: dict[Bucket, list[tuple[float, str]]] = {}  # per bucket, sorted by time
        self.bounds = flows or FlowBounds()
        self._flows: dict[str, _Flow] = {}
        self._by_principal: dict[str, set[str]] = {}
        self._purged = 0.0
        self.closed = False

    def _live(self, bucket: Bucket, now: float) -> list[tuple[float, str]]:
        """The bucket's hits still in its window (older ones are dropped)."""
        hits = self._hits.get(bucket, [])
        cut = bisect.bisect_right(hits, (now - bucket[1], "\uffff"))
        if cut:
            del hits[:cut]
        return hits

    async def admit(self, limits: Sequence[Limit]) -> Admission:
        await anyio.lowlevel.checkpoint()
        now = self._clock()
        live = {b: self._live(b, now) for b in buckets_of(limits)}
        full = tuple(lim for lim in limits if len(live[lim.bucket]) >= lim.limit)
        if full:
            wait = max(retry_after(live[f.bucket][len(live[f.bucket]) - f.limit][0], f.window_s, now) for f in full)
            return Admission(False, {b: len(h) for b, h in live.items()}, full, wait)
        hit = new_id()
        for bucket, hits in live.items():
            bisect.insort(hits, (now, hit))
            self._hits[bucket] = hits
        return Admission(True, {b: len(h) for b, h in live.items()}, ticket=Ticket(hit, now, tuple(live)))

    async def apply(self, ops: Sequence[StateOp]) -> Applied:
        """Op by op, a refusal taking back the ops before it (:func:`~mcp_guard.state.base.apply_in_turn`)."""
        return await apply_in_turn(self, ops)

    async def release(self, ticket: Ticket) -> None:
        await anyio.lowlevel.checkpoint()
        for bucket in ticket.buckets:
            hits = self._hits.get(bucket, [])
            if (ticket.ts, ticket.hit) in hits:
                hits.remove((ticket.ts, ticket.hit))

    async def usage(self, buckets: Sequence[Bucket]) -> dict[Bucket, int]:
        await anyio.lowlevel.checkpoint()
        now = self._clock()
        return {b: len(self._live(b, now)) for b in buckets}

    # ------------------------------------------------------------------ flows
    def _live_flow(self, flow_id: str, now: float) -> _Flow | None:
        f = self._flows.get(flow_id)
        return f if f is not None and not flow_expired(f.seen, now, self.bounds) else None

    async def flow(self, flow_id: str) -> Flow:
        await anyio.lowlevel.checkpoint()
        f = self._live_flow(flow_id, self._clock())
        if f is None:
            return Flow(flow_id)
        return Flow(flow_id, {k: v.origin for k, v in f.labels.items()}, tuple(f.history))

    async def record_call(self, ref: FlowRef, call: FlowCall) -> FlowTicket | FlowFull:
        await anyio.lowlevel.checkpoint()
        now = self._clock()
        self._purge(now)
        f = self._live_flow(ref.id, now)
        if f is None:
            self._drop(ref.id)
            live = sum(1 for i in self._by_principal.get(ref.principal, ()) if self._live_flow(i, now) is not None)
            full = too_many_flows(ref.principal, live, self.bounds)
            if full is not None:
                return full
            f = _Flow(ref.principal, new_id(), now)
        adding = set(call.labels) - set(f.labels)
        full = too_many_labels(len(f.labels), len(adding), self.bounds)
        if full is not None:
            return full
        self._flows[ref.id] = f
        self._by_principal.setdefault(f.principal, set()).add(ref.id)
        f.seen = now
        f.history.append(call)
        del f.history[: -self.bounds.history]
        origin = LabelOrigin.of(call)
        for label in dict.fromkeys(call.labels):
            have = f.labels.get(label)
            if have is None:
                f.labels[label] = _Label(1, origin, origin)
            else:
                have.n, have.latest = have.n + 1, origin
        return FlowTicket(ref.id, f.generation, call)

    async def unrecord_call(self, ticket: FlowTicket) -> None:
        await anyio.lowlevel.checkpoint()
        f = self._flows.get(ticket.flow_id)
        if f is None or f.generation != ticket.generation:
            return
        gone = ticket.call.decision_id
        f.history = [c for c in f.history if c.decision_id != gone]
        for label in dict.fromkeys(ticket.call.labels):
            have = f.labels.get(label)
            if have is None:
                continue
            have.n, have.origin, have.latest = take_back_label(have.n, have.origin, have.latest, gone, f.history, label)
            if have.n <= 0:
                del f.labels[label]

    def _drop(self, flow_id: str) -> None:
        f = self._flows.pop(flow_id, None)
        if f is not None:
            ids = self._by_principal.get(f.principal)
            if ids is not None:
                ids.discard(flow_id)
                if not ids:
                    del self._by_principal[f.principal]

    def _purge(self, now: float) -> None:
        """Forget expired flows (at most every PURGE_EVERY_S seconds)."""
        if now - self._purged < PURGE_EVERY_S:
            return
        self._purged = now
        for flow_id in [i for i, f in self._flows.items() if flow_expired(f.seen, now, self.bounds)]:
            self._drop(flow_id)

    @property
    def flow_count(self) -> int:
        """Flows held (live or not yet purged): for tests of the bounds."""
        return len(self._flows)

    async def aclose(self) -> None:
        self.closed = True
