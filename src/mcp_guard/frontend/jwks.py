"""The issuer's signing keys: discovered, fetched, cached, refreshed on an unknown ``kid``, dropped when too old.

One :class:`JwksCache` per ``[auth]`` issuer. Its only question is :meth:`JwksCache.key`: the public key with
this ``kid`` for this algorithm, or why there is none (:class:`KeyMiss`).

Where the keys come from: ``[auth] jwks_url`` if set, else the ``jwks_uri`` of the issuer's metadata —
``<issuer>/.well-known/openid-configuration`` (OpenID Connect Discovery), then
``/.well-known/oauth-authorization-server<issuer path>`` (RFC 8414). The metadata must name the configured
issuer exactly (OIDC Discovery §4.3), or it is not used.

How long they are trusted (times from ``[auth]``):

* keys fetched less than ``jwks_refresh_s`` ago are used as they are — no network on the request path;
* older keys are re-fetched by the first request that needs them (the others keep using them meanwhile, never
  queueing behind a slow IdP); if the IdP does not answer they keep working ...
* ... until ``jwks_max_age_s`` after the last successful fetch; then they are dropped and every token is
  refused (``idp_unreachable``) until the IdP answers again — fail closed;
* a token whose ``kid`` is not in the set triggers a re-fetch (a key rotation), and stays refused if the new
  set does not have it either.

Every fetch, whatever triggers it, is rate-limited to one per ``jwks_min_interval_s`` and single-flight (a
request that needs the fetch — no keys yet, an unknown ``kid`` — waits for the one in progress), so tokens with
random ``kid`` values cannot make mcp-guard hammer the IdP. Each HTTP request is bounded by ``http_timeout_s``
and each answer by :data:`MAX_DOCUMENT_BYTES`. Symmetric keys (``kty: oct``) are never taken from a JWKS; a key
must fit the algorithm (RSA for RS*/PS*, the matching EC curve for ES*, Ed25519/Ed448 for EdDSA) and, when it
names an ``alg``, name this one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import structlog
from jwt import PyJWK
from jwt.exceptions import PyJWKError

from mcp_guard.settings import AuthSettings
from mcp_guard.types import AuthFailure

__all__ = ["MAX_DOCUMENT_BYTES", "JwksCache", "KeyMiss", "discovery_urls"]

log = structlog.get_logger("mcp_guard.auth")

MAX_DOCUMENT_BYTES = 1024 * 1024  # discovery metadata and JWKS answers larger than this are refused

# Which key an algorithm needs: the JWK kty and, for EC/OKP, the curves allowed.
_FAMILY: dict[str, tuple[str, frozenset[str] | None]] = {
    **{a: ("RSA", None) for a in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}


@dataclass(frozen=True, slots=True)
class KeyMiss:
    """Why no key verifies a token: ``unknown_kid`` or ``idp_unreachable`` (no usable key set at all)."""

    reason: AuthFailure


class _FetchFailed(Exception):
    """The IdP did not give a usable answer (the message says what; logged, never shown to clients)."""


@dataclass
class _KeySet:
    """One fetched JWKS: the usable signing keys by kid (None: keys without a kid), and when it was fetched."""

    by_kid: dict[str | None, list[Mapping[str, Any]]]
    fetched_at: float
    built: dict[tuple[str | None, str], PyJWK | None] = field(default_factory=dict)

    def find(self, kid: str | None, alg: str) -> PyJWK | None:
        """The key for (kid, alg); a token without a kid may use the set's only key."""
        if (kid, alg) not in self.built:
            self.built[(kid, alg)] = self._build(kid, alg)
        return self.built[(kid, alg)]

    def _build(self, kid: str | None, alg: str) -> PyJWK | None:
        candidates = self.by_kid.get(kid, [])
        if kid is None and not candidates:
            every = [k for keys in self.by_kid.values() for k in keys]
            candidates = every if len(every) == 1 else []
        for jwk in candidates:
            if not _fits(jwk, alg):
                continue
            try:
                return PyJWK(dict(jwk), algorithm=alg)
            except (PyJWKError, ValueError, TypeError):
                continue
        return None


def _fits(jwk: Mapping[str, Any], alg: str) -> bool:
    family = _FAMILY.get(alg)
    if family is None:
        return False
    kty, curves = family
    if jwk.get("kty") != kty or (curves is not None and jwk.get("crv") not in curves):
        return False
    return jwk.get("alg") in (None, alg)


def _usable(jwk: object) -> bool:
    """A public signing key of a kind mcp-guard verifies with (never a symmetric one)."""
    if not isinstance(jwk, dict) or jwk.get("kty") not in ("RSA", "EC", "OKP"):
        return False
    if jwk.get("use") not in (None, "sig"):
        return False
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return False
    kid = jwk.get("kid")
    return kid is None or isinstance(kid, str)


def discovery_urls(issuer: str) -> list[str]:
    """Where the issuer's metadata may be: OpenID Connect Discovery first, then RFC 8414 (path inserted)."""
    base = issuer.rstrip("/")
    u = urlsplit(issuer)
    path = u.path.rstrip("/")
    return [
        f"{base}/.well-known/openid-configuration",
        f"{u.scheme}://{u.netloc}/.well-known/oauth-authorization-server{path}",
    ]


class JwksCache:
    """The issuer's public keys, as the module docstring describes. ``transport`` and ``clock`` are for tests
    (an in-memory IdP, a clock that can be moved)."""

    def __init__(
        self,
        settings: AuthSettings,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._s = settings
        self._transport = transport
        self._clock = clock
        self._jwks_url: str | None = settings.jwks_url
        self._keys: _KeySet | None = None
        self._lock = anyio.Lock()
        self._last_attempt = -math.inf
        self.fetches = 0  # fetch attempts made, successful or not
        self.generation = 0  # changes whenever the key set in force is replaced or dropped

    @property
    def has_keys(self) -> bool:
        return self._keys is not None

    def trusted(self) -> bool:
        """Whether the key set in force may still be relied on (held, and within ``jwks_max_age_s``), without
        any network: what a token verified earlier with it needs to stay good."""
        keys = self._keys
        return keys is not None and self._clock() - keys.fetched_at <= self._s.jwks_max_age_s

    async def key(self, kid: str | None, alg: str) -> PyJWK | KeyMiss:
        """The key that verifies a token with this ``kid`` and ``alg`` (fetching or refreshing if due)."""
        keys = await self._current()
        if keys is None:
            return KeyMiss(AuthFailure.IDP_UNREACHABLE)
        found = keys.find(kid, alg)
        if found is not None:
            return found
        # Not in the set: perhaps the IdP rotated its keys since we fetched them.
        keys = await self._refresh(due=lambda k: True)  # waits: the key may come with the fetch in flight
        found = keys.find(kid, alg) if keys is not None else None
        if found is not None:
            return found
        return KeyMiss(AuthFailure.UNKNOWN_KID if keys is not None else AuthFailure.IDP_UNREACHABLE)

    async def warm(self) -> None:
        """Fetch the keys now (at start), so the first request does not wait and an unreachable IdP is logged."""
        await self._current()

    async def _current(self) -> _KeySet | None:
        """The key set to use now: refreshed first if stale, dropped if too old and not refreshable."""
        keys = self._keys
        if keys is None or self._clock() - keys.fetched_at >= self._s.jwks_refresh_s:
            keys = await self._refresh(
                due=lambda k: k is None or self._clock() - k.fetched_at >= self._s.jwks_refresh_s,
                wait=keys is None,  # stale keys still serve while another request refreshes them
            )
        if keys is not None and self._clock() - keys.fetched_at > self._s.jwks_max_age_s:
            log.error("auth.jwks_expired", issuer=self._s.issuer, age_s=round(self._clock() - keys.fetched_at))
            self._keys = keys = None
            self.generation += 1
        return keys

    async def _refresh(self, *, due: Callable[[_KeySet | None], bool], wait: bool = True) -> _KeySet | None:
        """Fetch the JWKS if still ``due`` once the lock is ours and the rate limit allows; the set in force after.

        ``wait=False``: if a fetch is already in flight, do not queue behind it — use the keys held now.
        """
        if not wait and self._lock.locked():
            return self._keys
        attempts = self.fetches
        async with self._lock:
            if self.fetches != attempts or not due(self._keys):
                return self._keys  # a fetch was made while we waited for the lock: its outcome stands
            if self._clock() - self._last_attempt < self._s.jwks_min_interval_s:
                return self._keys
            self._last_attempt = self._clock()
            self.fetches += 1
            try:
                keys = await self._fetch()
            except _FetchFailed as e:
                log.warning(
                    "auth.jwks_unavailable",
                    issuer=self._s.issuer,
                    error=str(e),
                    cached=self._keys is not None,
                    retry_after_s=self._s.jwks_min_interval_s,
                )
                return self._keys
            self._keys = keys
            self.generation += 1
            log.info("auth.jwks_loaded", issuer=self._s.issuer, keys=sum(len(v) for v in keys.by_kid.values()))
            return keys

    async def _fetch(self) -> _KeySet:
        """Discover the JWKS URL (once) and fetch the key set. Raises :class:`_FetchFailed`."""
        timeout = self._s.http_timeout_s
        async with httpx2.AsyncClient(
            timeout=httpx2.Timeout(timeout), follow_redirects=False, transport=self._transport
        ) as http:
            if self._jwks_url is None:
                self._jwks_url = await self._discover(http)
            doc = await _get_json(http, self._jwks_url, timeout)
        raw = doc.get("keys")
        if not isinstance(raw, list):
            raise _FetchFailed(f"{self._jwks_url}: not a JWK set (no 'keys' list)")
        by_kid: dict[str | None, list[Mapping[str, Any]]] = {}
        for jwk in raw:
            if _usable(jwk):
                by_kid.setdefault(jwk.get("kid"), []).append(jwk)
        if not by_kid:
            raise _FetchFailed(f"{self._jwks_url}: no usable signing key (RSA, EC or OKP with use 'sig')")
        return _KeySet(by_kid=by_kid, fetched_at=self._clock())

    async def _discover(self, http: httpx2.AsyncClient) -> str:
        problems: list[str] = []
        for url in discovery_urls(self._s.issuer):
            try:
                meta = await _get_json(http, url, self._s.http_timeout_s)
            except _FetchFailed as e:
                problems.append(str(e))
                continue
            if meta.get("issuer") != self._s.issuer:
                raise _FetchFailed(f"{url} names issuer {meta.get('issuer')!r}, not {self._s.issuer!r}")
            jwks_uri = meta.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not _acceptable_url(jwks_uri):
                raise _FetchFailed(f"{url}: jwks_uri {jwks_uri!r} is not an https URL")
            return jwks_uri
        raise _FetchFailed("; ".join(problems))


def _acceptable_url(url: str) -> bool:
    u = urlsplit(url)
    return u.scheme == "https" or (u.scheme == "http" and u.hostname in ("127.0.0.1", "localhost", "::1"))


async def _get_json(http: httpx2.AsyncClient, url: str, timeout: float) -> dict[str, Any]:
    """GET a JSON object, the whole exchange bounded by ``timeout`` and the body by MAX_DOCUMENT_BYTES."""
    try:
        with anyio.fail_after(timeout):
            async with http.stream("GET", url, headers={"Accept": "application/json"}) as r:
                if r.status_code != 200:
                    raise _FetchFailed(f"{url}: HTTP {r.status_code}")
                body = bytearray()
                async for chunk in r.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise _FetchFailed(f"{url}: answer larger than {MAX_DOCUMENT_BYTES} bytes")
    except TimeoutError:
        raise _FetchFailed(f"{url}: no answer within {timeout} s") from None
    except httpx2.HTTPError as e:
        raise _FetchFailed(f"{url}: {type(e).__name__}: {e}") from None
    try:
        doc = json.loads(bytes(body))
    except ValueError:
        raise _FetchFailed(f"{url}: not JSON") from None
    if not isinstance(doc, dict):
        raise _FetchFailed(f"{url}: not a JSON object")
    return doc
