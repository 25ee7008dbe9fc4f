"""An in-memory identity provider for the auth unit tests: keys generated here, discovery and JWKS served over
an ``httpx2.MockTransport``, tokens minted with PyJWT, a clock the test moves.

The e2e tests use a real one (tests/e2e/oidc_idp.mjs, npm ``oidc-provider``).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from functools import cache
from typing import Any

import anyio
import httpx2
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from mcp_guard.settings import AuthSettings

ISSUER = "https://idp.test"
AUDIENCE = "https://guard.test/mcp"


@cache
def rsa_key(name: str = "a") -> rsa.RSAPrivateKey:
    """An RSA-2048 key per name, generated once per test run."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def ec_key(name: str = "a") -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@cache
def ed_key(name: str = "a") -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public_jwk(key: Any, kid: str | None, **extra: Any) -> dict[str, Any]:
    """The public JWK of a private key."""
    pub = key.public_key()
    if isinstance(key, rsa.RSAPrivateKey):
        doc = RSAAlgorithm.to_jwk(pub, as_dict=True)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        doc = ECAlgorithm.to_jwk(pub, as_dict=True)
    else:
        doc = OKPAlgorithm.to_jwk(pub, as_dict=True)
    if kid is not None:
        doc["kid"] = kid
    return {**doc, "use": "sig", **extra}


def rsa_public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A compact JWS assembled by hand (for alg 'none' and other tokens no library would sign)."""
    return ".".join(
        [
            b64url(json.dumps(header).encode()),
            b64url(json.dumps(claims).encode()),
            b64url(signature) if signature else "",
        ]
    )


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeIdP:
    """Discovery metadata and a JWKS over a MockTransport. ``up = False`` refuses connections; ``hang`` never
    answers; ``discovery`` picks which well-known document exists. Every request is recorded."""

    def __init__(self, issuer: str = ISSUER, audience: str = AUDIENCE) -> None:
        self.issuer = issuer
        self.audience = audience
        self.keys: list[dict[str, Any]] = [public_jwk(rsa_key(), "rsa-1"), public_jwk(ec_key(), "ec-1")]
        self.up = True
        self.hang = False
        self.discovery = "oidc"  # "oidc" | "oauth" (RFC 8414 only) | "wrong-issuer"
        self.requests: list[str] = []
        self.transport = httpx2.MockTransport(self._handle)

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks"

    def fetches_of(self, path: str) -> int:
        return sum(1 for url in self.requests if url.endswith(path))

    async def _handle(self, request: httpx2.Request) -> httpx2.Response:
        url = str(request.url)
        self.requests.append(url)
        if self.hang:
            await anyio.Event().wait()  # cancelled by the caller's timeout
        if not self.up:
            raise httpx2.ConnectError("connection refused", request=request)
        path = request.url.path
        meta = {"issuer": self.issuer, "jwks_uri": self.jwks_uri, "token_endpoint": f"{self.issuer}/token"}
        if self.discovery == "wrong-issuer":
            meta["issuer"] = "https://evil.test"
        if path == "/.well-known/openid-configuration" and self.discovery != "oauth":
            return httpx2.Response(200, json=meta)
        if path == "/.well-known/oauth-authorization-server" and self.discovery == "oauth":
            return httpx2.Response(200, json=meta)
        if path == "/jwks":
            return httpx2.Response(200, json={"keys": self.keys})
        return httpx2.Response(404)

    def token(
        self,
        sub: str = "alice",
        *,
        key: Any = None,
        alg: str = "RS256",
        kid: str | None = "rsa-1",
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A signed access token for ``sub``; claims override the defaults (None removes one)."""
        now = int(time.time())
        doc: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "iat": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
            "azp": "agent-app",
            "scope": "tools:read",
            "groups": ["support"],
        }
        doc.update(claims)
        doc = {k: v for k, v in doc.items() if v is not None}
        hdr = {"kid": kid, **(headers or {})} if kid is not None else dict(headers or {})
        signer = key if key is not None else (ec_key() if alg.startswith("ES") else rsa_key())
        return jwt.encode(doc, signer, algorithm=alg, headers=hdr)


def auth_settings(**overrides: Any) -> AuthSettings:
    """[auth] for the fake IdP (JWKS discovered); ``overrides`` replace keys."""
    doc: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "roles_claim": "groups",
        "attribute_claims": ["email", "https://idp.test/department"],
        "algorithms": ["RS256", "PS256", "ES256", "EdDSA"],
        "jwks_min_interval_s": 30,
    }
    doc.update(overrides)
    return AuthSettings.model_validate(doc)
