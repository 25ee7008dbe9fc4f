"""An in-process :class:`~mcp_guard.state.base.StateStore`: unit tests, and a Guard built without a store.

The same semantics as the SQLite store (exact sliding logs, all-or-nothing admission), kept in dicts.
Each method runs without awaiting between reading and writing, so on one event loop it is atomic. It
is not shared between processes: ``mcp-guard run`` always uses :func:`mcp_guard.state.open_state`.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence

import anyio

from mcp_guard.state.base import Admission, Bucket, Limit, Ticket, buckets_of, retry_after
from mcp_guard.types import new_id

__all__ = ["MemoryState"]


class MemoryState:
    """Counters in memory; ``clock`` (wall-clock seconds) is injectable for tests."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._hits: dict[Bucket, list[tuple[float, str]]] = {}  # per bucket, sorted by time
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

    async def aclose(self) -> None:
        self.closed = True
