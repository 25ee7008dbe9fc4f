"""The admin HTTP API: approvals today (the console builds on it; events and pins will join).

Routes (mounted on the HTTP front's Starlette route table, beside the OAuth metadata)::

    GET  /admin/api/approvals[?status=pending,granted,…]   viewer or operator: newest first (JSON list)
    GET  /admin/api/approvals/{id}                         viewer or operator: one approval
    POST /admin/api/approvals/{id}/approve                 operator: body {"comment": "…"} (optional)
    POST /admin/api/approvals/{id}/deny                    operator

**Who may.** :class:`AdminAuth` is the one check every admin route makes (:meth:`AdminAuth.require`): the
caller proves who they are exactly as on ``/mcp`` — ``Authorization: Bearer`` with an API key or an access
token of ``[auth]`` (the same :meth:`~mcp_guard.frontend.auth.BearerAuth.authenticate`) — and their roles,
``[principals.<id>]`` merged in, must include ``[console] operator_role`` to act or ``viewer_role`` (or the
operator role) to read. No or bad credentials → 401 (audited as ``auth.reject``, like ``/mcp``); a known
principal without the role → 403. Credentials are required here even when ``[server] require_auth = false``.
Instead of the header, a console login's session cookie (:mod:`mcp_guard.frontend.console_sessions`) will
do; a request that acts then also needs the session's CSRF token header. The events, chain, pins and health
routes are in :mod:`mcp_guard.frontend.admin_events`, :mod:`~mcp_guard.frontend.admin_pins` and
:mod:`~mcp_guard.frontend.admin_health`.

Approving is :func:`mcp_guard.approvals.decide.decide` with the caller as approver (the approval's
``approvers`` must include them, and the requester may not approve their own call): 200 with the approval,
403 when this principal may not decide it, 404 for an unknown id, 409 when it is no longer pending, 503 when
the approval or audit store cannot answer.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_guard.approvals.base import ApprovalStore, Status, Verdict
from mcp_guard.approvals.decide import ApprovalNotFound, DecisionRefused, Recorder, decide
from mcp_guard.errors import AuditError, StateError
from mcp_guard.frontend.auth import OnReject, Rejection, with_configured
from mcp_guard.frontend.console_sessions import COOKIE, CSRF_HEADER, ConsoleSessions
from mcp_guard.settings import Settings
from mcp_guard.types import AuthFailure, Principal

__all__ = ["PREFIX", "AdminApi", "AdminAuth", "Need", "error_response"]

PREFIX = "/admin/api"
MAX_BODY_BYTES = 16 * 1024
MAX_COMMENT = 2000

Authenticate = Callable[[str | None], Awaitable[Principal | Rejection]]


class Need(Enum):
    """What a route needs: to read (viewer or operator) or to act (operator)."""

    READ = "read"
    ACT = "act"


@dataclass(frozen=True)
class AdminAuth:
    """The admin check: credentials as on ``/mcp``, then the ``[console]`` role the route needs."""

    authenticate: Authenticate
    settings: Settings
    on_reject: OnReject
    sessions: ConsoleSessions | None = None  # console logins: a session cookie stands for the header

    async def require(self, request: Request, need: Need) -> Principal | Response:
        """The caller, or the 401/403 response to send instead."""
        header = request.headers.get("authorization")
        if header is None and self.sessions is not None and COOKIE in request.cookies:
            return await self._from_session(request, need)
        result = await self.authenticate(header) if header is not None else Rejection(AuthFailure.MISSING_KEY)
        if isinstance(result, Rejection):
            client = request.client
            self.on_reject(result, f"{client.host}:{client.port}" if client else None)
            return _error(401, "authentication required", headers={"WWW-Authenticate": 'Bearer realm="mcp-guard"'})
        return self._with_role(with_configured(self.settings, result), need)

    async def _from_session(self, request: Request, need: Need) -> Principal | Response:
        """A console session's principal (resolved at login); an acting request must carry its CSRF token."""
        assert self.sessions is not None
        session = await self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            return _error(401, "the console session has expired: log in again")
        if (need is Need.ACT or request.method not in ("GET", "HEAD")) and not session.csrf_ok(
            request.headers.get(CSRF_HEADER)
        ):
            return _error(403, f"a console request that acts needs the session's {CSRF_HEADER} header")
        return self._with_role(session.principal, need)

    def _allowed(self, need: Need) -> set[str]:
        console = self.settings.console
        return {console.operator_role} if need is Need.ACT else {console.operator_role, console.viewer_role}

    def may(self, principal: Principal, need: Need) -> bool:
        """Whether ``principal`` (roles already merged with ``[principals]``) has a role ``need`` asks for."""
        return bool(self._allowed(need) & set(principal.roles))

    def _with_role(self, principal: Principal, need: Need) -> Principal | Response:
        if not self.may(principal, need):
            wanted = " or ".join(sorted(self._allowed(need)))
            return _error(403, f"{principal.id!r} needs the role {wanted} for this")
        return principal


@dataclass(frozen=True)
class AdminApi:
    """The admin routes over the approval store; decisions are recorded through ``sink``."""

    auth: AdminAuth
    approvals: ApprovalStore
    sink: Recorder

    def routes(self) -> list[Route]:
        return [
            Route(f"{PREFIX}/approvals", self.list_approvals, methods=["GET"]),
            Route(f"{PREFIX}/approvals/{{approval_id}}", self.show_approval, methods=["GET"]),
            Route(f"{PREFIX}/approvals/{{approval_id}}/approve", self.approve, methods=["POST"]),
            Route(f"{PREFIX}/approvals/{{approval_id}}/deny", self.deny, methods=["POST"]),
        ]

    async def list_approvals(self, request: Request) -> Response:
        who = await self.auth.require(request, Need.READ)
        if isinstance(who, Response):
            return who
        raw = request.query_params.get("status")
        try:
            statuses = [Status(s.strip()) for s in raw.split(",") if s.strip()] if raw else None
        except ValueError:
            return _error(400, f"status must be a comma-separated list of {', '.join(s.value for s in Status)}")
        try:
            found = await self.approvals.list(statuses)
        except StateError as e:
            return _error(503, f"the approval store cannot answer: {e.cause}")
        return JSONResponse({"approvals": [a.to_dict() for a in found]})

    async def show_approval(self, request: Request) -> Response:
        who = await self.auth.require(request, Need.READ)
        if isinstance(who, Response):
            return who
        try:
            found = await self.approvals.get(request.path_params["approval_id"])
        except StateError as e:
            return _error(503, f"the approval store cannot answer: {e.cause}")
        if found is None:
            return _error(404, "no such approval")
        return JSONResponse(found.to_dict())

    async def approve(self, request: Request) -> Response:
        return await self._decide(request, Verdict.GRANT)

    async def deny(self, request: Request) -> Response:
        return await self._decide(request, Verdict.DENY)

    async def _decide(self, request: Request, verdict: Verdict) -> Response:
        who = await self.auth.require(request, Need.ACT)
        if isinstance(who, Response):
            return who
        comment = await _comment(request)
        if isinstance(comment, Response):
            return comment
        approval_id = request.path_params["approval_id"]
        try:
            decided = await decide(self.approvals, self.sink, approval_id, verdict, who, comment=comment, source="api")
        except ApprovalNotFound:
            return _error(404, "no such approval")
        except DecisionRefused as e:
            return _error(409 if e.conflict else 403, str(e))
        except StateError as e:
            return _error(503, f"the approval store cannot answer: {e.cause}")
        except AuditError:
            return _error(503, "the decision was made but the audit store could not record it")
        return JSONResponse(decided.to_dict())


async def read_body(request: Request) -> bytes | Response:
    """The request body, at most ``MAX_BODY_BYTES`` (413 beyond): every admin body is a small JSON document, so
    nothing larger is ever buffered."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return _error(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    return body


async def json_object(request: Request) -> dict[str, Any] | Response:
    """The body as a JSON object (bounded by :func:`read_body`); anything else is a 400."""
    body = await read_body(request)
    if isinstance(body, Response):
        return body
    try:
        doc: Any = json.loads(body or b"null")
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return _error(400, "the body must be a JSON object")
    return doc


async def _comment(request: Request) -> str | Response | None:
    """The optional ``comment`` of a decision's JSON body (an empty body is no comment)."""
    body = await read_body(request)
    if isinstance(body, Response):
        return body
    if not body.strip():
        return None
    try:
        doc: Any = json.loads(body)
    except ValueError:
        return _error(400, 'the body must be JSON: {"comment": "…"}')
    if not isinstance(doc, dict) or set(doc) - {"comment"}:
        return _error(400, 'the body must be a JSON object with at most the key "comment"')
    comment = doc.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT):
        return _error(400, f"comment must be a string of at most {MAX_COMMENT} characters")
    return comment


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


error_response = _error  # the admin API's error shape, for the routes in sibling modules
