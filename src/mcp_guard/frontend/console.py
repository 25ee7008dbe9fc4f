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

**Login** authenticates the key exactly as ``/mcp`` would (:meth:`AdminAuth.authenticate`; a refusal is audited
``auth.reject``), requires the viewer or operator role, and opens a server-side session
(:mod:`mcp_guard.frontend.console_sessions`). The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict``
(no other site's page sends it) and ``Secure`` when the console is reached over https (the request, or
``[console] base_url``).

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

from dataclasses import dataclass
from importlib import resources
from typing import Final
from urllib.parse import parse_qs, urlsplit

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from mcp_guard.frontend.admin import MAX_BODY_BYTES, AdminAuth, Need, error_response
from mcp_guard.frontend.auth import Rejection, with_configured
from mcp_guard.frontend.console_sessions import COOKIE, CSRF_HEADER, ConsoleSessions

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
}


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
        if self.sessions.get(request.cookies.get(COOKIE)) is None:
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
        if not _same_origin(request):
            return _see(f"{CONSOLE}/login?e=origin")
        key = await _form_key(request)
        if not key:
            return _see(f"{CONSOLE}/login?e=bad")
        result = await self.auth.authenticate(f"Bearer {key}")
        if isinstance(result, Rejection):
            client = request.client
            self.auth.on_reject(result, f"{client.host}:{client.port}" if client else None)
            return _see(f"{CONSOLE}/login?e=bad")
        principal = with_configured(self.auth.settings, result)
        if not self.auth.may(principal, Need.READ):
            return _see(f"{CONSOLE}/login?e=role")
        sid = self.sessions.open(principal)
        log.info("console.login", principal=principal.id, roles=list(principal.roles))
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

    def _secure(self, request: Request) -> bool:
        base = self.auth.settings.console.base_url or ""
        return request.url.scheme == "https" or base.startswith("https://")

    async def logout(self, request: Request) -> Response:
        sid = request.cookies.get(COOKIE)
        session = self.sessions.get(sid)
        if session is not None and not session.csrf_ok(request.headers.get(CSRF_HEADER)):
            return error_response(403, f"logging out needs the session's {CSRF_HEADER} header")
        self.sessions.close(sid)
        response = Response(status_code=204, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path="/", secure=self._secure(request), httponly=True, samesite="strict")
        return response

    async def session(self, request: Request) -> Response:
        session = self.sessions.get(request.cookies.get(COOKIE))
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
