"""Tokens for an HTTP upstream configured with ``token_exchange``: the caller's own, exchanged (RFC 8693).

For each call, :meth:`TokenExchanger.exchange` trades the caller's validated access token (the
``subject_token``) at the IdP's token endpoint for one whose audience is the upstream (``resource`` and
``audience`` = ``token_exchange.audience``) with the scopes the call may use, authenticated as the gateway's
own client (``client_id`` and the secret ``client_secret`` names, HTTP Basic). What mcp-guard does with it
is :mod:`mcp_guard.pipeline.exchange`'s; the client's own token never leaves mcp-guard.

Listings, the handshake and every other request the connection makes on its own account (no call in
flight) use the gateway's own token from the client-credentials grant (:meth:`TokenExchanger.service_token`).

Caching: a token is kept, keyed by (sha256 of the subject token, audience, scopes), until
``refresh_margin_s`` before its expiry, at most :data:`CACHE_SIZE` of them (least recently used dropped).
Concurrent misses of one key make one request to the IdP (single flight): the others wait for its token,
or its error; a flight exists only while its request runs, so waiting is bounded by ``timeout_s`` too.
Every request to the IdP is bounded by ``timeout_s``; a refusal, a timeout, or an answer that is not a
usable bearer token raises :class:`ExchangeError` with a reason that quotes no token (the IdP's ``error``
code only, bounded). An IdP that grants more scopes than asked is refused too: downscoping must hold.

How a call's token reaches the upstream over one shared SDK session (:class:`ExchangeAuth`)
    The connection's ``httpx2`` client carries an :class:`httpx2.Auth` that, for each HTTP request, reads the
    token of the call being sent from a context variable (set by :func:`call_token` around the request in
    ``UpstreamConnection.request``), and otherwise uses the service token. This is correct under
    concurrency because the SDK's streamable-HTTP transport sends each message's POST in a copy of the
    *sender's* context (``mcp.shared._context_streams``: the write stream snapshots
    ``contextvars.copy_context()`` at ``send()`` and the transport's POST task runs in it): two calls in
    flight at once each see only the token their own task set, and the transport's own traffic (the
    standalone GET stream, session DELETE, answers to upstream requests) runs in the transport's context,
    where no call token is set. A per-principal connection pool would also isolate principals, but one call's
    narrowed scopes differ from the next call's of the same principal, and a connection per (principal, scope
    set) would repeat the handshake for each; the per-request header keeps one session and one token per call.
"""

from __future__ import annotations

import base64
import contextlib
import re
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus

import anyio
import httpx2
import structlog

from mcp_guard.errors import SecretError
from mcp_guard.settings import TokenExchangeSettings
from mcp_guard.types import SubjectToken

__all__ = [
    "CACHE_SIZE",
    "EXCHANGE_GRANT",
    "ExchangeAuth",
    "ExchangeError",
    "TokenCache",
    "TokenExchanger",
    "UpstreamToken",
    "call_token",
]

log = structlog.get_logger("mcp_guard.upstream")

EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
CACHE_SIZE = 4096
DEFAULT_EXPIRES_IN_S = 60  # an answer without expires_in: assume a short life
_MAX_ERROR = 80
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.:-]+$")
_CALL_TOKEN: ContextVar[UpstreamToken | None] = ContextVar("mcp_guard_upstream_call_token", default=None)


class ExchangeError(Exception):
    """The IdP did not give a usable token; the message says why and quotes no token."""


@dataclass(frozen=True, slots=True)
class UpstreamToken:
    """A token for one upstream: its audience and scopes may be recorded, its value only sent."""

    value: str = field(repr=False)
    audience: str
    scopes: tuple[str, ...]
    expires_at: float  # on the exchanger's clock

    def to_audit(self) -> dict[str, Any]:
        """What the audit row says about it: who it is for and what it may do, never the token."""
        return {"audience": self.audience, "scopes": list(self.scopes)}


CacheKey = tuple[str, str, tuple[str, ...]]


@dataclass(eq=False)
class _Flight:
    """One request to the IdP in progress for a cache key, and how it ended (neither: it was cancelled)."""

    done: anyio.Event = field(default_factory=anyio.Event)
    token: UpstreamToken | None = None
    error: ExchangeError | None = None


class TokenCache:
    """Tokens by (subject hash, audience, scopes), each until ``margin_s`` before its expiry; bounded (LRU)."""

    def __init__(self, *, margin_s: float, size: int = CACHE_SIZE, clock: Callable[[], float] = time.monotonic):
        self._margin = margin_s
        self._size = size
        self._clock = clock
        self._tokens: OrderedDict[CacheKey, UpstreamToken] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tokens)

    def get(self, key: CacheKey) -> UpstreamToken | None:
        token = self._tokens.get(key)
        if token is None:
            return None
        if self._clock() >= token.expires_at - self._margin:
            del self._tokens[key]
            return None
        self._tokens.move_to_end(key)
        return token

    def put(self, key: CacheKey, token: UpstreamToken) -> None:
        self._tokens[key] = token
        self._tokens.move_to_end(key)
        while len(self._tokens) > self._size:
            self._tokens.popitem(last=False)


@contextlib.contextmanager
def call_token(token: UpstreamToken | None) -> Iterator[None]:
    """Within this block, HTTP requests sent by this task carry ``token`` (see the module docstring)."""
    reset = _CALL_TOKEN.set(token)
    try:
        yield
    finally:
        _CALL_TOKEN.reset(reset)


class TokenExchanger:
    """The token exchange of one upstream (``[upstreams.X] token_exchange``)."""

    def __init__(
        self,
        upstream: str,
        settings: TokenExchangeSettings,
        *,
        issuer: str | None,
        client_secret: Callable[[], Awaitable[str]],
        transport: httpx2.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self.upstream = upstream
        self.settings = settings
        self._issuer = issuer
        self._client_secret = client_secret
        self._transport = transport
        self._clock = clock
        self._cache = TokenCache(margin_s=settings.refresh_margin_s, size=cache_size, clock=clock)
        self._flights: dict[CacheKey, _Flight] = {}
        self._token_url = settings.token_url

    @property
    def scopes(self) -> tuple[str, ...]:
        """Every scope a call to this upstream may be given."""
        return tuple(self.settings.scopes)

    def auth(self) -> ExchangeAuth:
        return ExchangeAuth(self)

    async def exchange(self, subject: SubjectToken, scopes: tuple[str, ...]) -> UpstreamToken:
        """A token for this upstream acting for ``subject``'s owner with ``scopes`` (cached). Raises ExchangeError."""
        form = {
            "grant_type": EXCHANGE_GRANT,
            "subject_token": subject.reveal(),
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "requested_token_type": ACCESS_TOKEN_TYPE,
        }
        return await self._cached((subject.sha256, self.settings.audience, scopes), form, scopes)

    async def service_token(self) -> UpstreamToken:
        """The gateway's own token for this upstream (client credentials; cached), for what no call sends."""
        key = ("", self.settings.audience, self.scopes)
        return await self._cached(key, {"grant_type": "client_credentials"}, self.scopes)

    async def _cached(self, key: CacheKey, form: dict[str, str], scopes: tuple[str, ...]) -> UpstreamToken:
        """The cached token of ``key``, else the one request in flight for it, else a new request."""
        while True:
            cached = self._cache.get(key)
            if cached is not None:
                return cached
            flight = self._flights.get(key)
            if flight is None:
                return await self._fly(key, form, scopes)
            await flight.done.wait()  # bounded: the flight's request is under timeout_s
            if flight.token is not None:
                return flight.token
            if flight.error is not None:
                raise flight.error
            # that request was cancelled with its caller: try again (this task may fly next)

    async def _fly(self, key: CacheKey, form: dict[str, str], scopes: tuple[str, ...]) -> UpstreamToken:
        flight = self._flights[key] = _Flight()
        try:
            flight.token = await self._request(form, scopes)
            self._cache.put(key, flight.token)
            return flight.token
        except ExchangeError as e:
            flight.error = e
            raise
        finally:
            del self._flights[key]
            flight.done.set()

    # ------------------------------------------------------------------ the IdP
    async def _request(self, form: dict[str, str], scopes: tuple[str, ...]) -> UpstreamToken:
        audience = self.settings.audience
        form = {**form, "resource": audience, "audience": audience}
        if scopes:
            form["scope"] = " ".join(scopes)
        try:
            with anyio.fail_after(self.settings.timeout_s):
                url = await self._endpoint()
                basic = await self._basic()  # SecretError names the secret, never a value
                async with self._client() as http:
                    response = await http.post(url, data=form, headers={"Authorization": basic})
                body = _json(response)
        except TimeoutError:
            raise ExchangeError(f"the IdP did not answer within {self.settings.timeout_s:g}s") from None
        except httpx2.HTTPError as e:
            raise ExchangeError(f"the IdP could not be reached ({type(e).__name__})") from None
        except SecretError as e:
            raise ExchangeError(f"the gateway's client secret is unavailable: {e}") from None
        if response.status_code != 200:
            raise ExchangeError(f"the IdP refused ({response.status_code} {_error_code(body)})")
        return self._token(body, scopes)

    def _token(self, body: dict[str, Any] | None, asked: tuple[str, ...]) -> UpstreamToken:
        if body is None or not isinstance(body.get("access_token"), str) or not body["access_token"]:
            raise ExchangeError("the IdP's answer holds no access_token")
        if str(body.get("token_type", "")).lower() not in ("bearer", "n_a"):
            raise ExchangeError("the IdP's answer is not a bearer token")
        scope = body.get("scope")
        granted = tuple(scope.split()) if isinstance(scope, str) else asked
        extra = sorted(set(granted) - set(asked))
        if extra:
            raise ExchangeError(f"the IdP granted scope(s) beyond those asked for: {', '.join(extra)}")
        expires_in = body.get("expires_in", DEFAULT_EXPIRES_IN_S)
        if not isinstance(expires_in, int | float) or isinstance(expires_in, bool) or expires_in <= 0:
            raise ExchangeError("the IdP's answer has no usable expires_in")
        return UpstreamToken(body["access_token"], self.settings.audience, granted, self._clock() + float(expires_in))

    async def _basic(self) -> str:
        secret = await self._client_secret()
        raw = f"{_form(self.settings.client_id)}:{_form(secret)}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    async def _endpoint(self) -> str:
        """``token_url``, else the issuer's ``token_endpoint`` (discovered once, then remembered)."""
        if self._token_url is not None:
            return self._token_url
        assert self._issuer is not None, "settings validation requires token_url or [auth] issuer"
        base = self._issuer.rstrip("/")
        for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
            async with self._client() as http:
                doc = _json(await http.get(base + path))
            endpoint = doc.get("token_endpoint") if doc else None
            if isinstance(endpoint, str) and endpoint.startswith(("https://", "http://")):
                self._token_url = endpoint
                return endpoint
        raise ExchangeError("the issuer's discovery document names no token_endpoint")

    def _client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=self._transport, follow_redirects=False)


class ExchangeAuth(httpx2.Auth):
    """Sets each upstream request's ``Authorization``: the current call's token, else the service token.

    It never raises: an exception here would end the SDK transport's task group, taking every other call in
    flight on the session down with it. A request it has no right token for goes without ``Authorization``
    (the upstream answers 401, which the SDK turns into an error for that request alone): the service token
    cannot be had (the IdP is down), or a call's token is for another audience — never replaced by the
    gateway's own token, which would act for the caller with the wrong identity. ``last_problem`` keeps why.
    """

    def __init__(self, exchanger: TokenExchanger) -> None:
        self._exchanger = exchanger
        self.last_problem: str | None = None

    async def async_auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        token = await self._token()
        if token is None:
            request.headers.pop("Authorization", None)
        else:
            request.headers["Authorization"] = f"Bearer {token.value}"
        yield request

    async def _token(self) -> UpstreamToken | None:
        upstream = self._exchanger.upstream
        token = _CALL_TOKEN.get()
        if token is not None:
            if token.audience == self._exchanger.settings.audience:
                return token
            self.last_problem = f"a call's token is for {token.audience!r}, not this upstream"
        else:
            try:
                return await self._exchanger.service_token()
            except ExchangeError as e:
                self.last_problem = f"the gateway's own token: {e}"
        log.warning("token_exchange.no_token", upstream=upstream, problem=self.last_problem)
        return None


def _form(value: str) -> str:
    """RFC 6749 §2.3.1: client id and secret are form-urlencoded before Basic encoding."""
    return quote_plus(value)


def _json(response: httpx2.Response) -> dict[str, Any] | None:
    try:
        doc = response.json()
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _error_code(body: dict[str, Any] | None) -> str:
    """The IdP's ``error`` code if it is a plain code (its description is not repeated: it may echo input)."""
    code = body.get("error") if body else None
    if isinstance(code, str) and _ERROR_CODE.match(code):
        return code[:_MAX_ERROR]
    return "no error code"
