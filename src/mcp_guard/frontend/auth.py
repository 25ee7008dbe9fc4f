"""Who is calling: HTTP authentication (API keys, JWT access tokens) and one principal resolver per transport.

A request's :class:`~mcp_guard.types.Principal` is found in two steps: the transport establishes who the
caller is — the stdio launcher (:func:`stdio_principal`), or the credential :class:`BearerAuth` checked on
the HTTP front (:func:`http_principal`) — and :func:`with_configured` merges in what ``[principals.<id>]``
says about that id: its roles join the token's, its attributes override the token's attributes of the same
name (the operator's file is the more deliberate statement). The principal is resolved for every request,
so a session whose client stepped up to a token with more scopes is decided on the new token.

HTTP credentials, ``Authorization: Bearer <value>``, each a configured option:

* **API key** — ``[principals.<id>] api_key_sha256``. Keys are never stored: the value is hashed and
  compared with every configured digest in constant time (``hmac.compare_digest``, no early exit), so timing
  reveals neither which principal matched nor how much of a digest did.
* **JWT access token** — with ``[auth]`` configured, a value that is no API key and has the JWS compact form
  (three base64url segments, the first a JSON object) is validated as an access token of ``[auth] issuer``
  (:mod:`mcp_guard.frontend.tokens`). Telling the two apart this way is robust in both directions: an API key
  is recognised by its digest whatever it looks like, and a JWT can only ever be accepted by signature.

A missing, malformed, unknown or invalid credential is answered ``401`` before any MCP processing — the same
answer whatever was wrong (with ``[auth]``: ``WWW-Authenticate: Bearer resource_metadata="…"``, see
:mod:`mcp_guard.frontend.oauth`) — and the reason (:class:`~mcp_guard.types.AuthFailure`) is handed to
``on_reject`` to be logged and audited, without the credential. Only the MCP endpoint is guarded here; the
discovery document is public by design, and every other route must authenticate for itself.

On success the principal rides the ASGI scope as a :class:`PrincipalUser` — an ``AuthenticatedUser``, the form
the SDK's session manager binds a session to: (client id, issuer, subject) for a token, the principal id for
a key — so another principal presenting that session's id is answered 404. The client's ``Authorization``
header never goes further than this check: upstreams are reached through mcp-guard's own client sessions,
which never copy client headers (no token passthrough). A validated JWT is kept on ``principal.auth`` as a
:class:`~mcp_guard.types.SubjectToken` for one use only: the subject of a token exchange
(:mod:`mcp_guard.pipeline.exchange`), whose result — never the token itself — goes upstream.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import ServerRequestContext
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_guard.frontend.asgi_headers import first_header
from mcp_guard.frontend.oauth import ResourceServer
from mcp_guard.frontend.stepup import StepUpGate
from mcp_guard.frontend.tokens import Rejection, looks_like_jwt
from mcp_guard.frozen import evolve
from mcp_guard.memo import ByIdentity
from mcp_guard.settings import Settings
from mcp_guard.types import AuthFailure, AuthInfo, AuthMethod, Principal, SubjectToken

__all__ = [
    "ANONYMOUS",
    "BearerAuth",
    "KeyRing",
    "OnReject",
    "PrincipalResolver",
    "PrincipalUser",
    "Rejection",
    "http_principal",
    "key_digest",
    "key_digests",
    "principal_for",
    "stdio_principal",
    "with_configured",
]

ANONYMOUS = "anonymous"
DEFAULT_MAX_HEADER_BYTES = 16 * 1024  # without [auth]: the longest Authorization header looked at

# The principal of the client that sent a request, as its transport knows it.
PrincipalResolver = Callable[[ServerRequestContext[Any, Any]], Principal]
# A refused request: why (never the credential), and the client's address. The caller logs and audits it.
OnReject = Callable[[Rejection, str | None], None]


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_digests(settings: Settings) -> dict[str, str]:
    """principal id → sha256 of its API key, for every principal that has one (what :class:`BearerAuth` checks)."""
    return {pid: p.api_key_sha256 for pid, p in settings.principals.items() if p.api_key_sha256}


class KeyRing:
    """The API-key digests :class:`BearerAuth` checks (principal id → sha256 hex), replaceable while serving:
    a config reload swaps in the new ``[principals.*]`` keys, and the next request is checked against them."""

    def __init__(self, digests: dict[str, str]) -> None:
        self._entries: list[tuple[str, bytes]] = []
        self.replace(digests)

    def replace(self, digests: dict[str, str]) -> None:
        self._entries = [(pid, bytes.fromhex(d)) for pid, d in digests.items()]

    def match(self, key: str) -> str | None:
        """The principal whose key this is, compared in constant time against every digest."""
        got = hashlib.sha256(key.encode()).digest()
        found: str | None = None
        for pid, want in self._entries:
            if hmac.compare_digest(got, want):
                found = pid
        return found


def with_configured(settings: Settings, principal: Principal) -> Principal:
    """``principal`` with ``[principals.<its id>]`` merged in: roles joined, configured attributes winning."""
    p = settings.principals.get(principal.id)
    if p is None:
        return principal
    roles = tuple(dict.fromkeys([*p.roles, *principal.roles]))
    return evolve(principal, roles=roles, attributes={**principal.attributes, **p.attributes})


def principal_for(settings: Settings, principal_id: str, *, auth: AuthInfo | None = None) -> Principal:
    """The configured principal (roles, attributes); an unconfigured id gets no roles."""
    return with_configured(settings, Principal(id=principal_id, auth=auth or AuthInfo()))


def stdio_principal(settings: Settings, principal_id: str) -> PrincipalResolver:
    """A stdio client is whoever launched mcp-guard: one configured principal for every request."""
    principal = principal_for(settings, principal_id, auth=AuthInfo(method="stdio"))

    def resolve(_ctx: ServerRequestContext[Any, Any]) -> Principal:
        return principal

    return resolve


def http_principal(settings: Settings) -> PrincipalResolver:
    """The principal :class:`BearerAuth` put on the request's ASGI scope, with its configuration merged in
    (``anonymous`` if none)."""
    anonymous = principal_for(settings, ANONYMOUS)

    def resolve(ctx: ServerRequestContext[Any, Any]) -> Principal:
        request = ctx.request
        user = getattr(request, "scope", {}).get("user") if request is not None else None
        return user.configured(settings) if isinstance(user, PrincipalUser) else anonymous

    return resolve


class PrincipalUser(AuthenticatedUser):
    """The principal a request authenticated as (``scope["user"]``). Its access token is the SDK's session
    binding — (client id, issuer, subject) of a JWT, the principal id of an API key — never the credential."""

    def __init__(self, principal: Principal) -> None:
        a = principal.auth
        jwt = a.method == "jwt"
        super().__init__(
            AccessToken(
                token="<redacted>",
                client_id=(a.client_id or principal.id) if jwt else principal.id,
                scopes=list(principal.scopes),
                subject=principal.id if jwt else None,
                claims={"iss": a.issuer} if jwt and a.issuer else None,
            )
        )
        self.principal = principal
        self._configured: tuple[Settings, Principal] | None = None

    def configured(self, settings: Settings) -> Principal:
        """:func:`with_configured` of this principal, made once per request and settings: a call asks for its
        principal several times (its session, its policy input, its upstream), and a reload brings new settings."""
        made = self._configured
        if made is None or made[0] is not settings:
            made = self._configured = (settings, _configured(settings, self.principal))
        return made[1]


class _Configured:
    """The configured principals of the live settings, by authenticated principal object (:func:`_configured`)."""

    settings: Settings | None = None  # the settings they were configured with: another settings object clears them
    made: ByIdentity[Principal] = ByIdentity(1024)  # the configured principal by the authenticated one


def _configured(settings: Settings, principal: Principal) -> Principal:
    """:func:`with_configured`, one object per authenticated principal object across requests — for the principals
    :class:`BearerAuth` hands out as one object per key (API keys, the anonymous one): the audit keeps a call's
    unchanging policy-input text by the objects it is made of (mcp_guard.audit.events), and every request used to
    bring a fresh copy. Only the live settings' are kept (a reload's new settings start afresh, and the old ones
    are not held). A token's principal (a JWT: it carries the token) is made per request and not kept here."""
    if principal.auth.method == "jwt":
        return with_configured(settings, principal)
    if _Configured.settings is not settings:
        _Configured.made.clear()
        _Configured.settings = settings
    hit = _Configured.made.get(principal)
    if hit is not None:
        return hit
    return _Configured.made.put(with_configured(settings, principal), principal)


class BearerAuth:
    """Guards the MCP endpoint (``mcp_path`` and below); every other path passes through untouched.

    Inside: the MCP app, reached only with a :class:`PrincipalUser` on the scope — and, for a JWT-authenticated
    POST, through a :class:`~mcp_guard.frontend.stepup.StepUpGate`, so a policy's step-up deny becomes a 403.
    """

    def __init__(
        self,
        app: ASGIApp,
        digests: dict[str, str] | KeyRing,
        *,
        on_reject: OnReject,
        required: bool = True,
        anonymous_principal: str = ANONYMOUS,
        oauth: ResourceServer | None = None,
        mcp_path: str = "/mcp",
    ) -> None:
        """``digests`` maps principal id → sha256 hex of its API key; ``oauth`` is ``[auth]`` (None: keys only)."""
        self.app = app
        self._keys = digests if isinstance(digests, KeyRing) else KeyRing(digests)
        self._on_reject = on_reject
        self._required = required
        self._anonymous = anonymous_principal
        self._oauth = oauth
        self._path = mcp_path.rstrip("/")
        self._max_header = oauth.settings.max_token_bytes + len("Bearer ") if oauth else DEFAULT_MAX_HEADER_BYTES
        # (principal id, method) -> the one Principal of an API key or the anonymous one (_keyed); bounded by the
        # configured keys: a reload that drops a key leaves one small value behind.
        self._principals: dict[tuple[str, AuthMethod | None], Principal] = {}

    def _match(self, key: str) -> str | None:
        return self._keys.match(key)

    def _keyed(self, principal_id: str, method: AuthMethod | None) -> Principal:
        """The principal of an API key (or the anonymous one): one object per id, the same for every request."""
        made = self._principals.get((principal_id, method))
        if made is None:
            auth = AuthInfo(method=method) if method is not None else AuthInfo()
            made = self._principals[(principal_id, method)] = Principal(id=principal_id, auth=auth)
        return made

    async def authenticate(self, header: str | None) -> Principal | Rejection:
        """The principal an ``Authorization`` header value proves, or why it proves none."""
        if header is None:
            if self._required:
                return Rejection(AuthFailure.MISSING_KEY)
            return self._keyed(self._anonymous, None)
        if len(header) > self._max_header:
            return Rejection(AuthFailure.OVERSIZED)
        value = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not value:
            return Rejection(AuthFailure.MALFORMED_AUTHORIZATION)
        pid = self._match(value)
        if pid is not None:
            return self._keyed(pid, "api_key")
        if self._oauth is not None and looks_like_jwt(value):
            verified = await self._oauth.verifier.verify(value)
            if isinstance(verified, Rejection):
                return verified
            # The validated token rides along only as a token exchange's subject (SubjectToken never shows it).
            return replace(verified, auth=replace(verified.auth, subject_token=SubjectToken(value)))
        return Rejection(AuthFailure.INVALID_KEY, "api_key")

    def _guards(self, path: str) -> bool:
        return path == self._path or path.startswith(self._path + "/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._guards(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        header = first_header(scope, b"authorization")
        result = await self.authenticate(header)
        if isinstance(result, Rejection):
            self._on_reject(result, _client(scope))
            await self._unauthorized(send, result, presented=header is not None)
            return
        app = self.app
        if self._oauth is not None and result.auth.method == "jwt":
            missing = [s for s in self._oauth.settings.required_scopes if s not in result.scopes]
            if missing:
                self._on_reject(_insufficient(result), _client(scope))
                await _send(send, 403, "insufficient scope", self._oauth.insufficient_scope(missing))
                return
            if scope.get("method") == "POST":
                app = StepUpGate(app, self._oauth.insufficient_scope)
        scope["user"] = PrincipalUser(result)
        await app(scope, receive, send)

    async def _unauthorized(self, send: Send, rejection: Rejection, *, presented: bool) -> None:
        if rejection.reason is AuthFailure.MISSING_KEY:
            message = "authentication required: Authorization: Bearer <credentials>"
        elif rejection.reason is AuthFailure.MALFORMED_AUTHORIZATION:
            message = "Authorization must be 'Bearer <credentials>'"
        else:
            message = "invalid credentials"
        challenge = self._oauth.unauthorized(presented=presented) if self._oauth else 'Bearer realm="mcp-guard"'
        await _send(send, 401, message, challenge)


def _insufficient(principal: Principal) -> Rejection:
    a = principal.auth
    return Rejection(
        AuthFailure.INSUFFICIENT_SCOPE, "jwt", issuer=a.issuer, subject=principal.id, client_id=a.client_id
    )


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None


async def _send(send: Send, status: int, message: str, challenge: str) -> None:
    """Answer before the request body is read, and say the connection ends here (``Connection: close``).

    The body may still be on its way, so the server closes the connection after this answer (see
    :mod:`mcp_guard.frontend.slowloris`). Unannounced, that close races the client's next request on the
    same keep-alive connection — an OAuth client's discovery request right after the 401 — which then fails
    with a read error; announced, the client opens a new connection."""
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32001, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", challenge.encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
