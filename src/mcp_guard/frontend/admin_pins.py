"""Tool pins over the admin API: changed definitions side by side with the approved ones, and their approval.

Routes (beside :mod:`mcp_guard.frontend.admin`'s)::

    GET  /admin/api/pins                              viewer or operator
         {"pins": [{server, tool, sha256, pinned_at, approved_by}],
          "pending": [{server, tool, sha256, first_seen, approved_sha256, diff, rows}]}
    POST /admin/api/pins/{server}/{tool}/approve      operator; body {"sha256": "<the full reviewed hash>"}

``rows`` is the side-by-side view of the approved definition against the pending one (both as sorted,
indented JSON): one ``{"op": "same"|"changed"|"removed"|"added", "old": line|null, "new": line|null}`` per row,
so the console draws it without a diff library; ``diff`` is the unified diff ``mcp-guard tools pins`` prints.

**Approving what was reviewed.** The body must name the *full* sha256 of the pending definition the operator
looked at: if the upstream changed the tool again since the page was drawn, the hash no longer matches and the
answer is 409 — nothing is approved that nobody saw. Approval is the pin store's (as ``mcp-guard tools
approve``, by ``console:<principal>``), then a ``tool.pin_approved`` row (source ``console``, the approver as
principal), then the registry re-reads its pins, so the tool is listed (and callable) again at once and
clients are told the list changed. 404: no such pending change; 503: the change was approved but the audit
store could not record it.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_guard.audit.events import pin_event
from mcp_guard.errors import AuditError
from mcp_guard.frontend.admin import PREFIX, AdminAuth, Need, error_response, read_body
from mcp_guard.pins import PinBackend
from mcp_guard.pins.store import PendingChange
from mcp_guard.pipeline.audit import EventSink
from mcp_guard.types import EventKind

__all__ = ["AdminPins", "side_by_side"]


def _lines(definition: dict[str, Any] | None) -> list[str]:
    return json.dumps(definition or {}, indent=2, sort_keys=True, ensure_ascii=False).splitlines()


def side_by_side(old: dict[str, Any] | None, new: dict[str, Any]) -> list[dict[str, Any]]:
    """The two definitions' JSON lines aligned row by row (see the module docstring)."""
    a, b = _lines(old), _lines(new)
    rows: list[dict[str, Any]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            rows += [{"op": "same", "old": x, "new": y} for x, y in zip(a[i1:i2], b[j1:j2], strict=True)]
            continue
        olds, news = a[i1:i2], b[j1:j2]
        for k in range(max(len(olds), len(news))):
            x = olds[k] if k < len(olds) else None
            y = news[k] if k < len(news) else None
            rows.append(
                {
                    "op": "changed" if x is not None and y is not None else "removed" if y is None else "added",
                    "old": x,
                    "new": y,
                }
            )
    return rows


def _pending(c: PendingChange) -> dict[str, Any]:
    return {**c.to_json(), "rows": side_by_side(c.approved.definition if c.approved else None, c.definition)}


@dataclass(frozen=True)
class AdminPins:
    """The pins routes over the proxy's pin store; ``recheck`` is the registry's re-read (un-hides approved tools)."""

    auth: AdminAuth
    pins: PinBackend | None  # None: pinning has no store here (a Guard built without one)
    sink: EventSink
    recheck: Callable[[], Awaitable[bool]]

    def routes(self) -> list[Route]:
        return [
            Route(f"{PREFIX}/pins", self.list_pins, methods=["GET"]),
            Route(f"{PREFIX}/pins/{{server}}/{{tool}}/approve", self.approve, methods=["POST"]),
        ]

    async def list_pins(self, request: Request) -> Response:
        who = await self.auth.require(request, Need.READ)
        if isinstance(who, Response):
            return who
        if self.pins is None:
            return JSONResponse({"pins": [], "pending": []})
        pins = [
            {
                "server": p.server,
                "tool": p.tool,
                "sha256": p.sha256,
                "pinned_at": p.pinned_at,
                "approved_by": p.approved_by,
            }
            for p in self.pins.pins()
        ]
        return JSONResponse({"pins": pins, "pending": [_pending(c) for c in self.pins.pending()]})

    async def approve(self, request: Request) -> Response:
        who = await self.auth.require(request, Need.ACT)
        if isinstance(who, Response):
            return who
        sha = await _reviewed_sha(request)
        if isinstance(sha, Response):
            return sha
        server, tool = request.path_params["server"], request.path_params["tool"]
        if self.pins is None:
            return error_response(404, f"no pending change for {server}/{tool}")
        waiting = [c for c in self.pins.pending() if (c.server, c.tool) == (server, tool)]
        if not waiting:
            return error_response(404, f"no pending change for {server}/{tool}")
        if sha not in {c.sha256 for c in waiting}:
            return error_response(
                409, f"{server}/{tool} changed again since it was reviewed: review the new definition"
            )
        previous = next((p.sha256 for p in self.pins.pins() if (p.server, p.tool) == (server, tool)), None)
        try:
            pin = self.pins.approve(server, tool, sha, by=f"console:{who.id}")
        except KeyError as e:  # pins.store.ApprovalRefused: it changed (or was approved) between the two reads
            return error_response(409, f"{server}/{tool}: {e.args[0] if e.args else e}")
        try:
            await self.sink.record(
                pin_event(
                    EventKind.TOOL_PIN_APPROVED,
                    server,
                    tool,
                    principal=who.id,
                    source="console",
                    sha256=pin.sha256,
                    previous_sha256=previous,
                    approved_by=pin.approved_by,
                )
            )
        except AuditError:
            await self.recheck()
            return error_response(503, "the change was approved but the audit store could not record it")
        await self.recheck()
        return JSONResponse({"server": server, "tool": tool, "sha256": pin.sha256, "approved_by": pin.approved_by})


async def _reviewed_sha(request: Request) -> str | Response:
    """The ``sha256`` of the body: the full hash of the definition the operator reviewed."""
    body = await read_body(request)
    if isinstance(body, Response):
        return body
    try:
        doc: Any = json.loads(body or b"null")
    except ValueError:
        doc = None
    sha = doc.get("sha256") if isinstance(doc, dict) else None
    if not isinstance(sha, str) or len(sha) != 64 or any(ch not in "0123456789abcdef" for ch in sha):
        return error_response(400, 'the body must be {"sha256": "<the full sha256 of the reviewed definition>"}')
    return sha
