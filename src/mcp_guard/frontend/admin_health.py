"""Health over the admin API: ``/readyz``'s view plus what only an operator should see.

Route (beside :mod:`mcp_guard.frontend.admin`'s; viewer or operator)::

    GET /admin/api/health
        {"status": "ready"|"not_ready", "policy": {...}, "audit": {...}, "upstreams": {...},   <- /readyz's body
         "sessions": {"<principal>": n, ...},                       open client sessions by principal
         "calls": {"allow": n, "deny": n, ...},                     tools/call counts by decision since start
         "denials": [{"server", "tool", "reason", "count"}, ...],   the ten most frequent deny reasons
         "console": {"event_streams": n}}

``/readyz`` needs no credentials, so it shows no principal; this route is behind :class:`AdminAuth`, so it may
name who is connected. Its free texts are ``/readyz``'s (already passed through
:func:`~mcp_guard.frontend.ops.safe_text`); principal ids and tool names are configuration, not secrets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_guard.frontend.admin import PREFIX, AdminAuth, Need
from mcp_guard.frontend.ops import OpsSources, readiness

__all__ = ["AdminHealth", "health_body"]

TOP_DENIALS = 10


def health_body(ops: OpsSources, session_principals: Iterable[str], streams: int) -> dict[str, Any]:
    """The health document (module docstring) read now."""
    body = dict(readiness(ops).body)
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

    def routes(self) -> list[Route]:
        return [Route(f"{PREFIX}/health", self.health, methods=["GET"])]

    async def health(self, request: Request) -> Response:
        who = await self.auth.require(request, Need.READ)
        if isinstance(who, Response):
            return who
        return JSONResponse(
            health_body(self.ops, self.session_principals(), self.event_streams()),
            headers={"Cache-Control": "no-store"},
        )
