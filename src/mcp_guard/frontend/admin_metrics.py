"""The numbers of ``/metrics`` over the last minutes, for the console's charts: a small ring sampled server-side.

Route (beside :mod:`mcp_guard.frontend.admin`'s; viewer or operator)::

    GET /admin/api/metrics
        {"replica": "<host>:<pid>", "interval_s": 2.0,
         "points": [{"t": <unix s>, "calls": {"allow": <calls/s>, "deny": …, "error": …},
                     "p50_ms": <ms>|null, "p99_ms": <ms>|null,        tools/call latency in that interval
                     "approvals_pending": n, "audit_queue": n}, …]}   oldest first

**Why sampled here and not in the browser.** Every :data:`SAMPLE_INTERVAL_S` this process reads the same
counters ``/metrics`` shows (``mcp_guard_calls_total`` by decision, the ``mcp_guard_call_duration_seconds``
histogram of ``tools/call``, ``mcp_guard_approvals_pending``, ``mcp_guard_audit_queue_depth``) into a ring of
:data:`KEEP` samples (five minutes), and answers rates and quantiles computed between consecutive samples of
*this* process. Behind a load balancer, successive polls of one page land on different replicas, whose
counters are unrelated: a page that differenced the totals it was handed would draw a spike (or a negative
rate) at every switch. Here each answer is one replica's own consistent history, named by ``replica``, so the
page can simply draw the latest answer — and a page opened just now sees the last five minutes at once. The
cost is one counter snapshot every two seconds (no I/O) and a few kilobytes. A deployment-wide view is
Prometheus' job (``/metrics`` of every replica); the console shows the replica that answered.

Quantiles are estimated from the histogram's bucket counts added in the interval, interpolated linearly inside
a bucket as Prometheus' ``histogram_quantile`` does; ``null`` when no call finished in the interval.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_guard.frontend.admin import PREFIX, AdminAuth, Need
from mcp_guard.frontend.ops import AuditHealth, OpsSources

__all__ = ["KEEP", "SAMPLE_INTERVAL_S", "AdminMetrics", "MetricsHistory", "Sample", "quantile", "read_sample"]

SAMPLE_INTERVAL_S: Final = 2.0
KEEP: Final = 150  # samples: five minutes at the interval
_TOOLS_CALL: Final = "tools/call"


@dataclass(frozen=True, slots=True)
class Sample:
    """The counters at one moment: totals since start, and the gauges as they were."""

    t: float  # unix seconds
    calls: Counter[str]  # tools/call by decision, since start
    buckets: tuple[float, ...]  # tools/call duration bucket counts (not cumulative, +Inf last), since start
    approvals_pending: int
    audit_queue: int


def read_sample(ops: OpsSources, clock: Callable[[], float] = time.time) -> Sample:
    """The counters of ``/metrics`` read now (the same snapshot a scrape takes)."""
    counts = ops.calls.snapshot()
    calls: Counter[str] = Counter()
    for (_server, _tool, decision, _reason), n in counts.calls.items():
        calls[decision] += n
    buckets = [0.0] * (len(counts.duration.bounds) + 1)
    for (_server, action, _decision), series in counts.duration.series.items():
        if action == _TOOLS_CALL:
            for i, count in enumerate(series[:-1]):  # the last entry is the sum
                buckets[i] += count
    audit = ops.audit
    return Sample(
        t=clock(),
        calls=calls,
        buckets=tuple(buckets),
        approvals_pending=ops.approvals_pending() if ops.approvals_pending is not None else 0,
        audit_queue=audit.queued if isinstance(audit, AuditHealth) else 0,
    )


def quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """The ``q`` quantile (seconds) of observations in ``counts`` (per bucket, ``+Inf`` last) with upper
    ``bounds``; linear inside the bucket it falls in; the largest finite bound when it falls in ``+Inf``."""
    total = sum(counts)
    if total <= 0:
        return None
    rank, seen = q * total, 0.0
    for i, n in enumerate(counts):
        if n > 0 and seen + n >= rank:
            if i >= len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * ((rank - seen) / n)
        seen += n
    return bounds[-1]


class MetricsHistory:
    """The ring of samples of this process (module docstring); :meth:`run` fills it until cancelled."""

    def __init__(
        self,
        read: Callable[[], Sample],
        bounds: Sequence[float],
        *,
        interval_s: float = SAMPLE_INTERVAL_S,
        keep: int = KEEP,
    ) -> None:
        self._read = read
        self._bounds = tuple(bounds)
        self.interval_s = interval_s
        self._ring: deque[Sample] = deque(maxlen=keep + 1)  # n + 1 samples make n intervals
        self.replica = f"{socket.gethostname()}:{os.getpid()}"

    def sample(self) -> None:
        self._ring.append(self._read())

    async def run(self) -> None:
        while True:
            self.sample()
            await anyio.sleep(self.interval_s)

    def points(self) -> list[dict[str, Any]]:
        """One point per interval between consecutive samples, oldest first."""
        ring = list(self._ring)
        return [self._point(before, after) for before, after in itertools.pairwise(ring)]

    def _point(self, before: Sample, after: Sample) -> dict[str, Any]:
        seconds = max(after.t - before.t, 1e-3)
        decisions = sorted(set(before.calls) | set(after.calls) | {"allow", "deny"})
        added = [max(0.0, a - b) for a, b in zip(after.buckets, before.buckets, strict=True)]
        p50, p99 = quantile(0.5, self._bounds, added), quantile(0.99, self._bounds, added)
        return {
            "t": round(after.t, 3),
            "calls": {d: round(max(0, after.calls[d] - before.calls[d]) / seconds, 3) for d in decisions},
            "p50_ms": None if p50 is None else round(p50 * 1000, 3),
            "p99_ms": None if p99 is None else round(p99 * 1000, 3),
            "approvals_pending": after.approvals_pending,
            "audit_queue": after.audit_queue,
        }


@dataclass(frozen=True)
class AdminMetrics:
    auth: AdminAuth
    history: MetricsHistory

    def routes(self) -> list[Route]:
        return [Route(f"{PREFIX}/metrics", self.metrics, methods=["GET"])]

    async def metrics(self, request: Request) -> Response:
        who = await self.auth.require(request, Need.READ)
        if isinstance(who, Response):
            return who
        body = {"replica": self.history.replica, "interval_s": self.history.interval_s, "points": self.history.points()}
        return JSONResponse(body, headers={"Cache-Control": "no-store"})
