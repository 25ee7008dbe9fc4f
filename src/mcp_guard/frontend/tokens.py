"""JWT access tokens (RFC 9068) → a principal, or the reason the token is refused.

:meth:`JwtVerifier.verify` checks, in this order, and stops at the first failure:

1. the compact JWS shape and a JSON header (``malformed``); ``typ`` when ``[auth] require_at_jwt``;
2. ``alg`` is in ``[auth] algorithms`` — never ``none``, never HS* (``alg_not_allowed``), decided before any
   key is looked up, so an HMAC "signed" with the issuer's public key is refused unread;
3. the issuer's key for ``kid`` (:class:`~mcp_guard.frontend.jwks.JwksCache`: ``unknown_kid``,
   ``idp_unreachable``);
4. the signature (``bad_signature``) — only then are claims looked at;
5. ``exp`` (``expired``), ``nbf``/``iat`` (``not_yet_valid``) with ``[auth] leeway_s``; ``iss`` equal to
   ``[auth] issuer`` (``bad_issuer``); ``aud`` naming ``[auth] audience`` (``bad_audience``: a token for
   another resource); ``exp``, ``iss``, ``aud`` and ``sub`` present (``missing_claim``).

Claims → :class:`~mcp_guard.types.Principal`: ``sub`` → id; ``[auth] roles_claim`` → roles;
``[auth] scope_claim`` → scopes; each of ``[auth] attribute_claims`` → an attribute of that name;
``principal.auth`` = {method ``jwt``, issuer, client_id (``azp``, else ``client_id``)} and the sha256 of ``jti``.
A claim name is looked up as written first (``https://example.com/roles``), then as a dotted path
(``realm_access.roles``).

A token that verified is remembered (by its sha256) for :data:`CACHE_TTL_S` at most, never past its ``exp``, and
only while the same key set is in force, so a client presenting it again (every request of a session) costs a
hash and a lookup instead of a signature check; at most :data:`CACHE_SIZE` tokens are remembered. (The keys'
refresh then happens on the next token that is not remembered.)

A refusal (:class:`Rejection`) carries what may be recorded about the token — its ``alg`` and ``kid``, and the
issuer, subject and client only when the signature verified (claims of an unverified token are whatever the
sender wrote). Never the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import exceptions as jwt_errors

from mcp_guard.frontend.jwks import JwksCache, KeyMiss
from mcp_guard.settings import AuthSettings
from mcp_guard.types import AuthFailure, AuthInfo, AuthMethod, Principal

__all__ = ["CACHE_SIZE", "CACHE_TTL_S", "JwtVerifier", "Rejection", "looks_like_jwt"]

CACHE_TTL_S = 60.0
CACHE_SIZE = 4096

_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_MAX_ID = 256  # longest sub / client id / kid / alg mcp-guard records
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def looks_like_jwt(value: str) -> bool:
    """Whether a bearer value has the JWS compact form (three base64url segments, the first a JSON object)."""
    return _header(value) is not None


def _header(value: str) -> dict[str, Any] | None:
    """The JOSE header of a compact JWS, or None if ``value`` is not one (decoded here: PyJWT's own parse
    decodes and checks every segment, character by character, which is most of its cost)."""
    if not _JWS.fullmatch(value):
        return None
    head = value.split(".", 1)[0]
    try:
        doc = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a credential was refused, and what may be recorded about it (never the credential)."""

    reason: AuthFailure
    method: AuthMethod | None = None
    alg: str | None = None
    kid: str | None = None
    # Only from a token whose signature verified:
    issuer: str | None = None
    subject: str | None = None
    client_id: str | None = None

    def details(self) -> dict[str, Any]:
        """The audit ``details`` of this refusal (fields that are set)."""
        fields = {
            "method": self.method,
            "alg": self.alg,
            "kid": self.kid,
            "issuer": self.issuer,
            "subject": self.subject,
            "client_id": self.client_id,
        }
        return {k: v for k, v in fields.items() if v is not None}


_ERRORS: tuple[tuple[type[Exception], AuthFailure], ...] = (
    (jwt_errors.InvalidSignatureError, AuthFailure.BAD_SIGNATURE),
    (jwt_errors.InvalidKeyError, AuthFailure.BAD_SIGNATURE),  # e.g. an RSA key shorter than 2048 bits
    (jwt_errors.InvalidAlgorithmError, AuthFailure.ALG_NOT_ALLOWED),
    (jwt_errors.ExpiredSignatureError, AuthFailure.EXPIRED),
    (jwt_errors.ImmatureSignatureError, AuthFailure.NOT_YET_VALID),
    (jwt_errors.InvalidIssuerError, AuthFailure.BAD_ISSUER),
    (jwt_errors.InvalidAudienceError, AuthFailure.BAD_AUDIENCE),
    (jwt_errors.MissingRequiredClaimError, AuthFailure.MISSING_CLAIM),
    (jwt_errors.InvalidSubjectError, AuthFailure.MISSING_CLAIM),
)
# Refusals that come after the signature verified: the token's claims are the issuer's, so who it names is known.
_AUTHENTIC = frozenset(
    {
        AuthFailure.EXPIRED,
        AuthFailure.NOT_YET_VALID,
        AuthFailure.BAD_ISSUER,
        AuthFailure.BAD_AUDIENCE,
        AuthFailure.MISSING_CLAIM,
        AuthFailure.MALFORMED,
    }
)


class JwtVerifier:
    """Validates access tokens of ``[auth] issuer`` with keys from ``keys`` (see the module docstring)."""

    def __init__(self, settings: AuthSettings, keys: JwksCache, *, clock: Callable[[], float] = time.time) -> None:
        self._s = settings
        self._keys = keys
        self._clock = clock  # wall clock, as exp is
        self._verified: dict[bytes, tuple[Principal, float, int]] = {}  # sha256 → (principal, until, key generation)
        self._algorithms = frozenset(settings.algorithms)
        self._options: Any = {
            "require": ["exp", "iss", "aud", "sub"],
            "verify_signature": True,
            "verify_exp": True,
            "verify_nbf": True,
            "verify_iat": True,
            "verify_aud": True,
            "verify_iss": True,
            "verify_sub": True,
            "verify_jti": True,
            "enforce_minimum_key_length": True,
        }

    @property
    def keys(self) -> JwksCache:
        return self._keys

    async def verify(self, token: str) -> Principal | Rejection:
        """The token's principal (before configured roles are merged in), or why it is refused."""
        digest = hashlib.sha256(token.encode()).digest()
        known = self._verified.get(digest)
        if known is not None:
            principal, until, generation = known
            if self._clock() < until and generation == self._keys.generation and self._keys.trusted():
                return principal
            del self._verified[digest]
        result = await self._verify(token)
        if isinstance(result, Principal):
            self._remember(digest, result)
        return result

    def _remember(self, digest: bytes, principal: Principal) -> None:
        until = min(self._clock() + CACHE_TTL_S, float(principal.auth.expires_at or 0))
        if len(self._verified) >= CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))
        self._verified[digest] = (principal, until, self._keys.generation)

    async def _verify(self, token: str) -> Principal | Rejection:
        header = _header(token)
        if header is None:
            return Rejection(AuthFailure.MALFORMED, "jwt")
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or not (kid is None or isinstance(kid, str)):
            return Rejection(AuthFailure.MALFORMED, "jwt")
        seen = Rejection(AuthFailure.MALFORMED, "jwt", alg=_short(alg), kid=_short(kid))
        if alg not in self._algorithms:
            return _with(seen, AuthFailure.ALG_NOT_ALLOWED)
        if self._s.require_at_jwt and str(header.get("typ", "")).lower() not in ("at+jwt", "application/at+jwt"):
            return _with(seen, AuthFailure.BAD_TYPE)
        key = await self._keys.key(kid, alg)
        if isinstance(key, KeyMiss):
            return _with(seen, key.reason)
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self._s.audience,
                issuer=self._s.issuer,
                leeway=self._s.leeway_s,
                options=self._options,
            )
        except jwt_errors.PyJWTError as e:
            reason = next((r for cls, r in _ERRORS if isinstance(e, cls)), AuthFailure.MALFORMED)
            if reason in _AUTHENTIC and not isinstance(e, jwt_errors.DecodeError):
                return _authentic(seen, reason, token)
            return _with(seen, reason)
        return self._principal(claims, seen)

    def _principal(self, claims: Mapping[str, Any], seen: Rejection) -> Principal | Rejection:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > _MAX_ID or _CONTROL.search(sub):
            return _with(seen, AuthFailure.MISSING_CLAIM)
        jti = claims.get("jti")
        auth = AuthInfo(
            method="jwt",
            issuer=str(claims["iss"]),
            client_id=_client_of(claims),
            token_id_sha256=hashlib.sha256(jti.encode()).hexdigest() if isinstance(jti, str) else None,
            expires_at=int(claims["exp"]),
        )
        attributes = {}
        for name in self._s.attribute_claims:
            value = claim(claims, name)
            if value is not None:
                attributes[name] = value
        return Principal(
            id=sub,
            roles=_strings(claim(claims, self._s.roles_claim), split=False),
            attributes=attributes,
            scopes=_strings(claim(claims, self._s.scope_claim), split=True),
            auth=auth,
        )


def claim(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by its name as written, else by a dotted path into nested objects (None if absent)."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _strings(value: Any, *, split: bool) -> tuple[str, ...]:
    """A claim as a tuple of strings: a list's string items, or one string (split on spaces for scopes)."""
    if isinstance(value, str):
        items = value.split() if split else [value]
    elif isinstance(value, list):
        items = [v for v in value if isinstance(v, str)]
    else:
        return ()
    return tuple(dict.fromkeys(i for i in items if i))


def _client_of(claims: Mapping[str, Any]) -> str | None:
    for name in ("azp", "client_id"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return _short(value)
    return None


def _short(value: object) -> str | None:
    """A header or claim value fit for the audit log: a string, control characters removed, bounded."""
    if not isinstance(value, str):
        return None
    return _CONTROL.sub("", value)[:_MAX_ID]


def _with(seen: Rejection, reason: AuthFailure) -> Rejection:
    return Rejection(reason, seen.method, alg=seen.alg, kid=seen.kid)


def _authentic(seen: Rejection, reason: AuthFailure, token: str) -> Rejection:
    """A refusal of a token whose signature verified: who it names may be recorded."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt_errors.PyJWTError:
        return _with(seen, reason)
    return Rejection(
        reason,
        seen.method,
        alg=seen.alg,
        kid=seen.kid,
        issuer=_short(claims.get("iss")),
        subject=_short(claims.get("sub")),
        client_id=_client_of(claims),
    )
