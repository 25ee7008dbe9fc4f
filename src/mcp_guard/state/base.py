"""The state-store protocol: the shared, durable state the pipeline keeps between calls.

mcp-guard keeps state that outlives a request and must be the same for every process serving one
deployment (several ``mcp-guard run`` processes on one host today; replicas on PostgreSQL with the
scale-out issue). Today that is **rate-limit counters**; approvals and flow labels will join this
protocol (one protocol, several backends: :mod:`mcp_guard.state.sqlite`, :mod:`mcp_guard.state.memory`,
later PostgreSQL), chosen in one place (:func:`mcp_guard.state.open_state`).

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

Every method is bounded by the store's timeout and raises :class:`~mcp_guard.errors.StateError` when
the store cannot answer (unreachable, unwritable, timed out): callers deny (fail closed), never skip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Admission", "Bucket", "Limit", "StateStore", "Ticket", "buckets_of", "retry_after", "whole_seconds"]

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

    async def aclose(self) -> None: ...


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
