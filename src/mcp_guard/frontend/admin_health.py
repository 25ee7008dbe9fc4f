"""Health over the admin API: ``/readyz``'s view plus what only an operator should see.

Route (beside :mod:`mcp_guard.frontend.admin`'s; viewer or operator)::

    GET /admin/api/health
        {"status": "ready"|"not_ready", "policy": {...}, "audit": {...}, "upstreams": {...},   <- /readyz's body
         "sessions": {"<principal>": n, ...},                       open client sessions by principal
         "calls": {"allow": n, "deny": n, ...},                     tools/call counts by decision since start
         "denials": [{"server", "tool", "reason", "count"}, ...],   the ten most frequent deny reasons
         "console": {"event_streams": n}}

Each upstream's entry (``/readyz``'s ``state``/``up``/``restarts``/``problem``) gains what explains a failure:
``last_failure`` (why it last went down, kept after it recovered) and ``stderr``, the last
:data:`~mcp_guard.upstream.stdio.STDERR_TAIL_LINES` lines its child wrote (oldest first). A pooled upstream (one
child per principal) is listed too, with ``"pooled": true``, its running ``children`` by principal and one ring of
every child's lines, each labelled ``[principal]``. The lines were scrubbed of injected secret values as they were
read (:func:`~mcp_guard.upstream.stdio.open_stdio_transport` through the ``SecretManager``'s scrubber); here they
also pass :func:`~mcp_guard.frontend.ops.safe_text` (credential shapes, ``password=…``, URL user-info), like every
other upstream-written text of this document.

``/readyz`` needs no credentials, so it shows no principal; this route is behind :class:`AdminAuth`, so it may
name who is connected. Its free texts are ``/readyz``'s (already passed through
:func:`~mcp_guard.frontend.ops.safe_text`); principal ids and tool names are configuration, not secrets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_guard.frontend.admin import PREFIX, AdminAuth, Need
from mcp_guard.frontend.ops import OpsSources, readiness, safe_text

__all__ = ["AdminHealth", "PoolDetail", "UpstreamDetail", "health_body"]

TOP_DENIALS = 10


class UpstreamDetail(Protocol):
    """What health shows of one upstream connection beyond ``/readyz`` (an ``UpstreamConnection``)."""

    @property
    def name(self) -> str: ...
    @property
    def last_failure(self) -> str | None: ...
    @property
    def stderr_tail(self) -> Iterable[str]: ...


class PoolDetail(Protocol):
    """A pooled upstream (an ``UpstreamPool``): its totals, its children and its one stderr ring."""

    @property
    def name(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def restarts(self) -> int: ...
    @property
    def last_failure(self) -> str | None: ...
    @property
    def stderr_tail(self) -> Iterable[str]: ...
    def children_health(self) -> Mapping[str, tuple[str, int, str | None]]: ...


def _explained(last_failure: str | None, stderr: Iterable[str], scrub: Callable[[str], str]) -> dict[str, Any]:
    return {
        "last_failure": safe_text(last_failure, scrub) if last_failure else None,
        "stderr": [safe_text(line, scrub) for line in stderr],
    }


def _pool(pool: PoolDetail, scrub: Callable[[str], str]) -> dict[str, Any]:
    children = {
        principal: {"state": state, "restarts": restarts, "last_failure": safe_text(why, scrub) if why else None}
        for principal, (state, restarts, why) in sorted(pool.children_health().items())
    }
    return {
        "state": pool.state,
        "up": pool.state == "ready",
        "restarts": pool.restarts,
        "pooled": True,
        "children": children,
        **_explained(pool.last_failure, pool.stderr_tail, scrub),
    }


def upstream_details(
    upstreams: dict[str, Any], ops: OpsSources, conns: Iterable[UpstreamDetail], pools: Iterable[PoolDetail]
) -> dict[str, Any]:
    """``/readyz``'s upstream entries with their last failure and stderr lines, plus the pooled upstreams."""
    out = {name: dict(entry) for name, entry in upstreams.items()}
    for conn in conns:
        if conn.name in out:
            out[conn.name].update(_explained(conn.last_failure, list(conn.stderr_tail), ops.scrub))
    for pool in pools:
        out[pool.name] = _pool(pool, ops.scrub)
    return dict(sorted(out.items()))


def health_body(
    ops: OpsSources,
    session_principals: Iterable[str],
    streams: int,
    conns: Iterable[UpstreamDetail] = (),
    pools: Iterable[PoolDetail] = (),
) -> dict[str, Any]:
    """The health document (module docstring) read now."""
    body = dict(readiness(ops).body)
    body["upstreams"] = upstream_details(body["upstreams"], ops, conns, pools)
    counts = ops.calls.snapshot().calls  # (server, tool, decision, reason) -> n
    by_decision: Counter[str] = Counter()
    denials: Counter[tuple[str, str, str]] = Counter()
    for (server, tool, decision, reason), n in counts.items():
        by_decision[decision] += n
        if decision == "deny":
            denials[(server, tool, reason)] += n
    body["sessions"] = dict(sorted(Counter(session_principals).items()))
    body["calls"] = dict(sorted(by_decision.items()))
    body["denials"] = [
        {"server": s, "tool": t, "reason": r, "count": n} for (s, t, r), n in denials.most_common(TOP_DENIALS)
    ]
    body["console"] = {"event_streams": streams}
    return body


@dataclass(frozen=True)
class AdminHealth:
    auth: AdminAuth
    ops: OpsSources
    session_principals: Callable[[], Iterable[str]]  # the principal of each open client session
    event_streams: Callable[[], int]
    conns: Callable[[], Iterable[UpstreamDetail]] = lambda: ()  # the shared connections (their stderr lines)
    pools: Callable[[], Iterable[PoolDetail]] = lambda: ()  # the pooled upstreams

    def routes(self) -> list[Route]:
        return [Route(f"{PREFIX}/health", self.health, methods=["GET"])]

    async def health(self, request: Request) -> Response:
        who = await self.auth.require(request, Need.READ)
        if isinstance(who, Response):
            return who
        return JSONResponse(
            health_body(self.ops, self.session_principals(), self.event_streams(), self.conns(), self.pools()),
            headers={"Cache-Control": "no-store"},
        )
