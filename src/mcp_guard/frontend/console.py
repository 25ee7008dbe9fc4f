"""The operator console: a few static pages and one hand-written ES module, served under ``/console``.

No build step and no separate server: the files in ``frontend/console_static/`` are package data, served as they
are. The pages read and act only through the admin API (``/admin/api/…``); this module adds the login and the
files::

    GET  /console/                 the console (303 to the login page without a live session)
    GET  /console/login            the login form (an API key or an access token)
    POST /console/login            form ``key=…`` → 303 to /console/ with the session cookie, or back to the
                                   form with a fixed message (the key is never echoed)
    GET  /console/session          the logged-in principal, whether it may act, and the session's CSRF token
    POST /console/logout           ends the session (needs the CSRF header)
    GET  /console/static/<file>    console.js, console.css

**Login** authenticates the key exactly as ``/mcp`` would (:meth:`AdminAuth.authenticate`), requires the viewer
or operator role, and opens a session in the shared session store (:mod:`mcp_guard.frontend.console_sessions`:
valid on every replica). Every login and logout is an audit row — ``console.login`` (principal, ``method``
``api_key`` or ``jwt``, ``role`` operator or viewer), ``console.login_failed`` (the reason: ``bad_credentials``
with the credential check's own reason, ``no_role``, ``cross_origin``, ``store_unavailable``)
and ``console.logout`` — with the client address, never the key, the token or the session id. **Failed logins
are rate-limited per client address**: after ``[console] login_failures_max`` failures within
``login_failures_window_s`` (counted in the shared state store, so replicas count together) the form refuses
without checking the key. Those refusals are not audited (a flood cannot flood the log); the failure that reaches
the limit is, with ``limited: true``. The address is the TCP peer's: behind a reverse proxy, every client shares
the proxy's.

The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends it) and
``Secure`` when the console is reached over https (the request, or ``[console] base_url``).

**CSRF.** Every acting request of a session must carry the session's token in ``X-CSRF-Token`` — which only a page
of this origin can read (``/console/session`` has no CORS header) — on top of ``SameSite=Strict``. The login form
itself refuses a POST whose ``Origin`` is another site (login CSRF).

**What a page may do.** Every answer here carries a strict Content-Security-Policy (scripts, styles, fetches and
form targets from this origin only; no inline script or style; no framing), ``X-Frame-Options: DENY``,
``nosniff``, a referrer only to this origin (``no-referrer`` would make Chromium post the login form with
``Origin: null``) and ``no-store``. The script writes every value with ``textContent``, never as HTML, so an
event's arguments or an upstream's tool description cannot inject markup. No page contains a key, a token or a
secret value: the HTML is static, and the data comes from the admin API, which shows the audit copy (secrets
scrubbed) of everything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from mcp_guard.audit.events import console_event
from mcp_guard.errors import StateError
from mcp_guard.frontend.admin import MAX_BODY_BYTES, AdminAuth, Need, error_response
from mcp_guard.frontend.auth import Rejection, with_configured
from mcp_guard.frontend.console_sessions import COOKIE, CSRF_HEADER, ConsoleSessions
from mcp_guard.state import Limit, StateStore
from mcp_guard.types import AuditEvent, EventKind, Principal

__all__ = ["CONSOLE", "SECURITY_HEADERS", "ConsolePages"]

log = structlog.get_logger("mcp_guard.console")

CONSOLE: Final = "/console"
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make a form POST send Origin: null
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_STATIC: Final = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
# The login page's one variable part: a fixed text per code, never anything the request sent.
_LOGIN_MESSAGES: Final = {
    "": "",
    "bad": "That key or token was not accepted.",
    "role": "This principal has neither the operator nor the viewer role.",
    "expired": "Your session has ended: log in again.",
    "origin": "The login form was posted from another site.",
    "slow": "Too many failed logins from this address: wait a few minutes and try again.",
    "unavailable": "Logins cannot be recorded right now: try again shortly.",
}
_THROTTLE_KEY: Final = "console-login-failed|"


def _client(request: Request) -> str | None:
    client = request.client
    return f"{client.host}:{client.port}" if client else None


def _asset(name: str) -> bytes:
    return resources.files("mcp_guard.frontend").joinpath("console_static", name).read_bytes()


def _page(body: bytes, media_type: str, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type=media_type, headers=SECURITY_HEADERS)


def _see(location: str) -> Response:
    return RedirectResponse(location, status_code=303, headers=SECURITY_HEADERS)


def _same_origin(request: Request) -> bool:
    """A form POST's ``Origin`` (when the browser sends one) names this host."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc == request.headers.get("host")


@dataclass(frozen=True)
class ConsolePages:
    """The console's routes; ``auth`` is the admin API's check (its ``sessions`` are the console's logins)."""

    auth: AdminAuth
    sessions: ConsoleSessions
    record: Callable[[AuditEvent], None]  # the audit sink's record_nowait (logins and logouts)
    state: StateStore  # counts failed logins per client address (shared by replicas on one store)

    def routes(self) -> list[Route]:
        return [
            Route(CONSOLE, self.root, methods=["GET"]),
            Route(f"{CONSOLE}/", self.index, methods=["GET"]),
            Route(f"{CONSOLE}/login", self.login_form, methods=["GET"]),
            Route(f"{CONSOLE}/login", self.login, methods=["POST"]),
            Route(f"{CONSOLE}/logout", self.logout, methods=["POST"]),
            Route(f"{CONSOLE}/session", self.session, methods=["GET"]),
            Route(f"{CONSOLE}/static/{{name}}", self.static, methods=["GET"]),
        ]

    async def root(self, request: Request) -> Response:
        return _see(f"{CONSOLE}/")

    async def index(self, request: Request) -> Response:
        if await self.sessions.get(request.cookies.get(COOKIE)) is None:
            return _see(f"{CONSOLE}/login" + ("?e=expired" if COOKIE in request.cookies else ""))
        return _page(_asset("index.html"), "text/html; charset=utf-8")

    async def login_form(self, request: Request) -> Response:
        message = _LOGIN_MESSAGES.get(request.query_params.get("e", ""), "")
        html = _asset("login.html").replace(b"{{message}}", message.encode())
        return _page(html, "text/html; charset=utf-8")

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return _page(b"Not Found", "text/plain; charset=utf-8", 404)
        return _page(_asset(name), _STATIC[name])

    async def login(self, request: Request) -> Response:
        limit = self._limit(request)
        try:
            throttled = (await self.state.usage([limit.bucket]))[limit.bucket] >= limit.limit
        except StateError:
            return self._failed(request, "store_unavailable", "unavailable")
        if throttled:
            return _see(f"{CONSOLE}/login?e=slow")
        if not _same_origin(request):
            return await self._refused(request, limit, "cross_origin", "origin")
        key = await _form_key(request)
        if not key:
            return await self._refused(request, limit, "bad_credentials", "bad", detail="missing_key")
        result = await self.auth.authenticate(f"Bearer {key}")
        if isinstance(result, Rejection):
            details = result.details()
            return await self._refused(request, limit, "bad_credentials", "bad", detail=str(result.reason), **details)
        principal = with_configured(self.auth.settings, result)
        if not self.auth.may(principal, Need.READ):
            return await self._refused(
                request, limit, "no_role", "role", principal=principal.id, method=principal.auth.method
            )
        try:
            sid = await self.sessions.open(principal)
        except StateError:
            return self._failed(request, "store_unavailable", "unavailable", principal=principal.id)
        role = self._role(principal)
        log.info("console.login", principal=principal.id, role=role, method=principal.auth.method)
        self.record(
            console_event(
                EventKind.CONSOLE_LOGIN,
                principal=principal.id,
                client=_client(request),
                method=principal.auth.method,
                role=role,
            )
        )
        response = _see(f"{CONSOLE}/")
        response.set_cookie(
            COOKIE,
            sid,
            max_age=int(self.auth.settings.console.session_ttl_s),
            path="/",
            secure=self._secure(request),
            httponly=True,
            samesite="strict",
        )
        return response

    def _limit(self, request: Request) -> Limit:
        console = self.auth.settings.console
        host = request.client.host if request.client else "unknown"
        return Limit(_THROTTLE_KEY + host, console.login_failures_max, console.login_failures_window_s)

    def _role(self, principal: Principal) -> str:
        return "operator" if self.auth.may(principal, Need.ACT) else "viewer"

    async def _refused(
        self, request: Request, limit: Limit, reason: str, code: str, *, principal: str | None = None, **details: Any
    ) -> Response:
        """A failed login: counted against the client address, audited (unless the address is now over its
        limit and was already), and answered with the fixed message ``code``."""
        try:
            admission = await self.state.admit([limit])
        except StateError:
            admission = None  # not counted, but the failure itself is still recorded
        if admission is not None and not admission.admitted:
            return _see(f"{CONSOLE}/login?e=slow")
        if admission is not None and admission.usage.get(limit.bucket, 0) >= limit.limit:
            details["limited"] = True
        return self._failed(request, reason, code, principal=principal, **details)

    def _failed(
        self, request: Request, reason: str, code: str, *, principal: str | None = None, **details: Any
    ) -> Response:
        log.warning("console.login_failed", reason=reason, client=_client(request))
        self.record(
            console_event(
                EventKind.CONSOLE_LOGIN_FAILED, principal=principal, client=_client(request), reason=reason, **details
            )
        )
        return _see(f"{CONSOLE}/login?e={code}")

    def _secure(self, request: Request) -> bool:
        base = self.auth.settings.console.base_url or ""
        return request.url.scheme == "https" or base.startswith("https://")

    async def logout(self, request: Request) -> Response:
        sid = request.cookies.get(COOKIE)
        session = await self.sessions.get(sid)
        if session is not None and not session.csrf_ok(request.headers.get(CSRF_HEADER)):
            return error_response(403, f"logging out needs the session's {CSRF_HEADER} header")
        try:
            ended = await self.sessions.close(sid)
        except StateError as e:
            return error_response(503, f"the session store cannot answer: {e.cause}")
        if ended is not None:
            p = ended.principal
            log.info("console.logout", principal=p.id)
            self.record(
                console_event(
                    EventKind.CONSOLE_LOGOUT,
                    principal=p.id,
                    client=_client(request),
                    method=p.auth.method,
                    role=self._role(p),
                )
            )
        response = Response(status_code=204, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path="/", secure=self._secure(request), httponly=True, samesite="strict")
        return response

    async def session(self, request: Request) -> Response:
        session = await self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            return error_response(401, "not logged in")
        p = session.principal
        return JSONResponse(
            {
                "principal": p.id,
                "roles": list(p.roles),
                "can_act": self.auth.may(p, Need.ACT),
                "csrf_token": session.csrf,
                "csrf_header": CSRF_HEADER,
            },
            headers=SECURITY_HEADERS,
        )


async def _form_key(request: Request) -> str | None:
    """The ``key`` field of a url-encoded login form (bounded; None when absent or malformed)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    try:
        fields = parse_qs(body.decode("ascii"), max_num_fields=4)
    except (UnicodeDecodeError, ValueError):
        return None
    values = fields.get("key") or []
    key = values[0].strip() if len(values) == 1 else ""
    return key or None
