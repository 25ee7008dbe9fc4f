"""JWT access tokens → principal or refusal, and the issuer's key cache (discovery, rotation, outages)."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import anyio
import jwt
import pytest

from mcp_guard.frontend.jwks import JwksCache, KeyMiss, discovery_urls
from mcp_guard.frontend.tokens import JwtVerifier, Rejection, looks_like_jwt
from mcp_guard.types import AuthFailure, Principal
from oauth_harness import (
    AUDIENCE,
    ISSUER,
    Clock,
    FakeIdP,
    auth_settings,
    ec_key,
    ed_key,
    public_jwk,
    rsa_key,
    rsa_public_pem,
    unsigned,
)

pytestmark = pytest.mark.anyio


def verifier(idp: FakeIdP, clock: Clock | None = None, **overrides: Any) -> JwtVerifier:
    s = auth_settings(**overrides)
    return JwtVerifier(s, JwksCache(s, transport=idp.transport, clock=clock or Clock()))


async def reason_of(v: JwtVerifier, token: str) -> AuthFailure:
    with anyio.fail_after(10):
        got = await v.verify(token)
    assert isinstance(got, Rejection), got
    return got.reason


async def test_a_valid_token_becomes_a_principal() -> None:
    idp = FakeIdP()
    token = idp.token(
        "alice",
        scope="tools:read tickets:write",
        groups=["support", "oncall", 7],
        email="alice@example.com",
        jti="token-1",
        **{"https://idp.test/department": "care"},
    )
    p = await verifier(idp).verify(token)
    assert isinstance(p, Principal)
    assert p.id == "alice"
    assert p.roles == ("support", "oncall")
    assert p.scopes == ("tools:read", "tickets:write")
    assert p.attributes == {"email": "alice@example.com", "https://idp.test/department": "care"}
    assert p.auth.method == "jwt" and p.auth.issuer == ISSUER and p.auth.client_id == "agent-app"
    assert p.auth.token_id_sha256 == hashlib.sha256(b"token-1").hexdigest()
    assert p.to_policy()["auth"] == {"method": "jwt", "issuer": ISSUER, "client_id": "agent-app"}
    assert p.to_policy()["scopes"] == ["tools:read", "tickets:write"]


async def test_claim_shapes_scp_lists_dotted_roles_client_id() -> None:
    idp = FakeIdP()
    v = verifier(idp, roles_claim="realm_access.roles", scope_claim="scp")
    token = idp.token(
        "bob", scp=["a", "b"], realm_access={"roles": ["analyst"]}, azp=None, client_id="cli-2", aud=[AUDIENCE, "x"]
    )
    p = await v.verify(token)
    assert isinstance(p, Principal)
    assert (p.roles, p.scopes, p.auth.client_id) == (("analyst",), ("a", "b"), "cli-2")


@pytest.mark.parametrize("alg", ["ES256", "PS256", "EdDSA"])
async def test_other_asymmetric_algorithms(alg: str) -> None:
    idp = FakeIdP()
    idp.keys.append(public_jwk(ed_key(), "ed-1"))
    key, kid = {"ES256": (ec_key(), "ec-1"), "PS256": (rsa_key(), "rsa-1"), "EdDSA": (ed_key(), "ed-1")}[alg]
    assert isinstance(await verifier(idp).verify(idp.token(key=key, alg=alg, kid=kid)), Principal)


def _now() -> int:
    return int(time.time())


# Every token an attacker or a confused client may present, and the reason it is refused.
BAD: list[tuple[str, Any, AuthFailure]] = [
    ("expired", lambda idp: idp.token(exp=_now() - 120), AuthFailure.EXPIRED),
    ("not yet valid (nbf)", lambda idp: idp.token(nbf=_now() + 600), AuthFailure.NOT_YET_VALID),
    ("issued in the future (iat)", lambda idp: idp.token(iat=_now() + 600), AuthFailure.NOT_YET_VALID),
    ("wrong audience", lambda idp: idp.token(aud="https://guard.test/other"), AuthFailure.BAD_AUDIENCE),
    ("a token for another resource", lambda idp: idp.token(aud="https://api.github.test"), AuthFailure.BAD_AUDIENCE),
    ("no audience", lambda idp: idp.token(aud=None), AuthFailure.MISSING_CLAIM),
    ("wrong issuer", lambda idp: idp.token(iss="https://evil.test"), AuthFailure.BAD_ISSUER),
    ("no expiry", lambda idp: idp.token(exp=None), AuthFailure.MISSING_CLAIM),
    ("no subject", lambda idp: idp.token(sub=None), AuthFailure.MISSING_CLAIM),
    ("a control character in sub", lambda idp: idp.token("al\nice"), AuthFailure.MISSING_CLAIM),
    ("unknown kid", lambda idp: idp.token(kid="nope"), AuthFailure.UNKNOWN_KID),
    (
        "alg none",
        lambda idp: unsigned({"alg": "none", "typ": "JWT"}, {"iss": ISSUER, "aud": AUDIENCE, "sub": "x"}),
        AuthFailure.ALG_NOT_ALLOWED,
    ),
    (
        "HS256 signed with the RSA public key",
        lambda idp: _hs256_with_public_key(idp),
        AuthFailure.ALG_NOT_ALLOWED,
    ),
    ("an algorithm outside the allowlist", lambda idp: idp.token(alg="RS512"), AuthFailure.ALG_NOT_ALLOWED),
    ("a key of the wrong type for alg", lambda idp: idp.token(alg="ES256", kid="rsa-1"), AuthFailure.UNKNOWN_KID),
    ("tampered payload", lambda idp: _tampered(idp), AuthFailure.BAD_SIGNATURE),
    (
        "signed by another key under the issuer's kid",
        lambda idp: idp.token(key=rsa_key("other")),
        AuthFailure.BAD_SIGNATURE,
    ),
    ("garbage", lambda idp: "not.a.jwt", AuthFailure.MALFORMED),
    ("header not JSON", lambda idp: "aGVsbG8.eyJ9.c2ln", AuthFailure.MALFORMED),
    ("header kid not a string", lambda idp: unsigned({"alg": "RS256", "kid": 5}, {}, b"sig"), AuthFailure.MALFORMED),
    ("payload not JSON", lambda idp: _bad_payload(idp), AuthFailure.BAD_SIGNATURE),
]


def _hs256_with_public_key(idp: FakeIdP) -> str:
    # The classic confusion attack: HMAC keyed with the (public) PEM of the issuer's RSA key.
    import hashlib as h
    import hmac

    from oauth_harness import b64url

    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": _now() + 300}
    signing = unsigned({"alg": "HS256", "kid": "rsa-1"}, claims).rstrip(".")
    sig = hmac.new(rsa_public_pem(rsa_key()), signing.encode(), h.sha256).digest()
    return signing + "." + b64url(sig)


def _tampered(idp: FakeIdP) -> str:
    head, _, sig = idp.token("alice").split(".")
    from oauth_harness import b64url

    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "root", "exp": _now() + 300}
    import json

    return ".".join([head, b64url(json.dumps(claims).encode()), sig])


def _bad_payload(idp: FakeIdP) -> str:
    head, _, sig = idp.token("alice").split(".")
    return ".".join([head, "bm90IGpzb24", sig])


@pytest.mark.parametrize(("name", "make", "reason"), BAD, ids=[b[0] for b in BAD])
async def test_bad_tokens_are_refused_with_their_reason(name: str, make: Any, reason: AuthFailure) -> None:
    idp = FakeIdP()
    assert await reason_of(verifier(idp), make(idp)) is reason


async def test_require_at_jwt_refuses_other_types() -> None:
    idp = FakeIdP()
    v = verifier(idp, require_at_jwt=True)
    assert await reason_of(v, idp.token(headers={"typ": "JWT"})) is AuthFailure.BAD_TYPE
    assert isinstance(await v.verify(idp.token(headers={"typ": "at+jwt"})), Principal)


async def test_who_a_refused_token_names_is_recorded_only_if_its_signature_verified() -> None:
    idp = FakeIdP()
    v = verifier(idp)
    expired = await v.verify(idp.token("alice", exp=_now() - 120))
    assert isinstance(expired, Rejection)
    assert expired.details() == {
        "method": "jwt",
        "alg": "RS256",
        "kid": "rsa-1",
        "issuer": ISSUER,
        "subject": "alice",
        "client_id": "agent-app",
    }
    forged = await v.verify(_tampered(idp))
    assert isinstance(forged, Rejection) and forged.reason is AuthFailure.BAD_SIGNATURE
    assert "subject" not in forged.details() and "issuer" not in forged.details()


async def test_symmetric_keys_in_the_jwks_are_never_used() -> None:
    idp = FakeIdP()
    secret = b"s" * 32
    from oauth_harness import b64url

    idp.keys.append({"kty": "oct", "k": b64url(secret), "kid": "hmac-1", "alg": "HS256"})
    forged = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": _now() + 60},
        secret,
        algorithm="HS256",
        headers={"kid": "hmac-1"},
    )
    # HS256 is not even configurable; with an RS256 header the oct key does not fit either.
    assert await reason_of(verifier(idp), forged) is AuthFailure.ALG_NOT_ALLOWED
    with pytest.raises(ValueError, match="asymmetric algorithms only"):
        auth_settings(algorithms=["HS256"])


def test_bearer_values_are_told_apart_by_form() -> None:
    idp = FakeIdP()
    assert looks_like_jwt(idp.token())
    for value in ("alice-key-0123456789", "a.b.c", "x" * 50, "eyJhbGciOiJub25lIn0", "a.b", ".."):
        assert not looks_like_jwt(value), value


# ---------------------------------------------------------------------------------------------- the key cache


def test_discovery_urls() -> None:
    assert discovery_urls("https://idp.test/realms/acme") == [
        "https://idp.test/realms/acme/.well-known/openid-configuration",
        "https://idp.test/.well-known/oauth-authorization-server/realms/acme",
    ]


async def test_keys_are_discovered_fetched_once_and_reused() -> None:
    idp = FakeIdP()
    v = verifier(idp)
    for _ in range(5):
        assert isinstance(await v.verify(idp.token()), Principal)
    assert idp.fetches_of("/.well-known/openid-configuration") == 1 and idp.fetches_of("/jwks") == 1


async def test_rfc8414_metadata_is_the_fallback() -> None:
    idp = FakeIdP()
    idp.discovery = "oauth"
    assert isinstance(await verifier(idp).verify(idp.token()), Principal)
    assert idp.fetches_of("/.well-known/oauth-authorization-server") == 1


async def test_metadata_naming_another_issuer_is_not_used() -> None:
    idp = FakeIdP()
    idp.discovery = "wrong-issuer"
    assert await reason_of(verifier(idp), idp.token()) is AuthFailure.IDP_UNREACHABLE
    assert idp.fetches_of("/jwks") == 0


async def test_configured_jwks_url_skips_discovery() -> None:
    idp = FakeIdP()
    v = verifier(idp, jwks_url=idp.jwks_uri)
    assert isinstance(await v.verify(idp.token()), Principal)
    assert [u for u in idp.requests] == [idp.jwks_uri]


async def test_an_unknown_kid_refreshes_the_keys_once_per_interval() -> None:
    """A rotation is picked up; tokens with made-up kids cannot make mcp-guard hammer the IdP."""
    idp, clock = FakeIdP(), Clock()
    v = verifier(idp, clock)
    assert isinstance(await v.verify(idp.token()), Principal)
    clock.advance(31)
    idp.keys.append(public_jwk(rsa_key("b"), "rsa-2"))
    assert isinstance(await v.verify(idp.token(key=rsa_key("b"), kid="rsa-2")), Principal)  # rotation
    assert idp.fetches_of("/jwks") == 2
    for i in range(50):
        assert await reason_of(v, idp.token(kid=f"random-{i}")) is AuthFailure.UNKNOWN_KID
    assert idp.fetches_of("/jwks") == 2  # within the interval: no fetch at all
    clock.advance(31)
    assert await reason_of(v, idp.token(kid="random-x")) is AuthFailure.UNKNOWN_KID
    assert idp.fetches_of("/jwks") == 3


async def test_concurrent_requests_share_one_fetch() -> None:
    idp = FakeIdP()
    v = verifier(idp)
    results: list[object] = []

    async def one() -> None:
        results.append(await v.verify(idp.token()))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)
    assert all(isinstance(r, Principal) for r in results) and len(results) == 20
    assert idp.fetches_of("/jwks") == 1


async def test_idp_down_at_start_is_401_until_it_answers() -> None:
    idp, clock = FakeIdP(), Clock()
    idp.up = False
    v = verifier(idp, clock)
    await v.keys.warm()
    assert not v.keys.has_keys
    assert await reason_of(v, idp.token()) is AuthFailure.IDP_UNREACHABLE
    idp.up = True
    assert await reason_of(v, idp.token()) is AuthFailure.IDP_UNREACHABLE  # rate limit: no new attempt yet
    clock.advance(31)
    assert isinstance(await v.verify(idp.token()), Principal)


async def test_idp_down_mid_run_cached_keys_work_until_they_expire() -> None:
    idp, clock = FakeIdP(), Clock()
    v = verifier(idp, clock, jwks_refresh_s=300, jwks_max_age_s=3600)
    assert isinstance(await v.verify(idp.token()), Principal)
    idp.up = False
    clock.advance(301)  # stale: a refresh is tried, fails, and the cached keys keep working
    assert isinstance(await v.verify(idp.token()), Principal)
    assert idp.fetches_of("/jwks") == 2
    clock.advance(3000)  # 3301 s after the last good fetch: still within max age
    assert isinstance(await v.verify(idp.token()), Principal)
    clock.advance(300)  # past jwks_max_age_s: the keys are dropped, fail closed
    assert await reason_of(v, idp.token()) is AuthFailure.IDP_UNREACHABLE
    idp.up = True
    clock.advance(31)
    assert isinstance(await v.verify(idp.token()), Principal)


async def test_a_hanging_idp_is_bounded_by_the_timeout() -> None:
    idp = FakeIdP()
    idp.hang = True
    v = verifier(idp, http_timeout_s=0.2)
    with anyio.fail_after(5):
        assert await reason_of(v, idp.token()) is AuthFailure.IDP_UNREACHABLE


async def test_a_stale_refresh_in_flight_holds_up_only_the_request_that_started_it() -> None:
    idp, clock = FakeIdP(), Clock()
    v = verifier(idp, clock, http_timeout_s=5)
    assert isinstance(await v.verify(idp.token()), Principal)
    idp.hang = True
    clock.advance(301)  # stale: the next key lookup refreshes, and the IdP never answers
    done: list[str] = []
    fetching = anyio.Event()

    async def first() -> None:
        assert isinstance(await v.verify(idp.token(jti="first")), Principal)  # after the 5 s timeout
        done.append("first")

    async def second() -> None:
        with anyio.fail_after(10):
            while len(idp.requests) < 3:  # noqa: ASYNC110 - discovery, keys, then the first request's refresh
                await anyio.sleep(0.01)
        fetching.set()
        assert isinstance(await v.verify(idp.token(jti="second")), Principal)  # the held keys, at once
        done.append("second")

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            tg.start_soon(second)
    assert fetching.is_set() and done == ["second", "first"] and idp.fetches_of("/jwks") == 2


async def test_an_oversized_or_odd_jwks_is_refused() -> None:
    idp = FakeIdP()
    idp.keys = [{"kty": "RSA", "n": "x" * 1_100_000, "e": "AQAB", "kid": "big"}]
    assert await reason_of(verifier(idp), idp.token()) is AuthFailure.IDP_UNREACHABLE
    idp2 = FakeIdP()
    idp2.keys = [{"kty": "RSA", "use": "enc", "kid": "rsa-1", **public_jwk(rsa_key(), None, use="enc")}]
    assert await reason_of(verifier(idp2), idp2.token()) is AuthFailure.IDP_UNREACHABLE


async def test_a_token_without_kid_uses_the_only_key() -> None:
    idp = FakeIdP()
    idp.keys = [public_jwk(rsa_key(), None)]
    assert isinstance(await verifier(idp).verify(idp.token(kid=None)), Principal)
    idp2 = FakeIdP()  # two keys: a kid-less token names none of them
    assert await reason_of(verifier(idp2), idp2.token(kid=None)) is AuthFailure.UNKNOWN_KID


async def test_key_miss_is_a_value() -> None:
    idp = FakeIdP()
    s = auth_settings()
    cache = JwksCache(s, transport=idp.transport, clock=Clock())
    assert await cache.key("nope", "RS256") == KeyMiss(AuthFailure.UNKNOWN_KID)


# ---------------------------------------------------------------------------------------------- remembered tokens


def _counting(v: JwtVerifier) -> list[str]:
    """Record each key lookup the verifier makes (a token it does not remember needs one)."""
    lookups: list[str] = []
    real = v.keys.key

    async def key(kid: str | None, alg: str) -> Any:
        lookups.append(str(kid))
        return await real(kid, alg)

    v.keys.key = key  # type: ignore[method-assign]
    return lookups


async def test_a_verified_token_is_remembered_until_its_expiry_and_no_longer() -> None:
    idp, wall = FakeIdP(), Clock()
    wall.now = time.time()
    s = auth_settings()
    v = JwtVerifier(s, JwksCache(s, transport=idp.transport, clock=Clock()), clock=wall)
    lookups = _counting(v)
    token = idp.token(exp=int(wall.now) + 30)
    for _ in range(3):
        assert isinstance(await v.verify(token), Principal)
    assert len(lookups) == 1  # verified once, then remembered
    wall.advance(31)  # past its exp: never served from memory (the signature and claims are checked again)
    await v.verify(token)
    assert len(lookups) == 2
    refused = idp.token(aud="https://elsewhere.test")
    for _ in range(2):
        assert await reason_of(v, refused) is AuthFailure.BAD_AUDIENCE
    assert len(lookups) == 4  # refusals are not remembered


async def test_a_remembered_token_is_refused_once_its_keys_expire() -> None:
    idp, clock = FakeIdP(), Clock()
    v = verifier(idp, clock, jwks_refresh_s=300, jwks_max_age_s=600)
    token = idp.token()
    assert isinstance(await v.verify(token), Principal)
    idp.up = False
    clock.advance(601)
    assert await reason_of(v, token) is AuthFailure.IDP_UNREACHABLE


async def test_a_rotation_forgets_remembered_tokens() -> None:
    idp, clock = FakeIdP(), Clock()
    v = verifier(idp, clock)
    lookups = _counting(v)
    token = idp.token()
    await v.verify(token)
    clock.advance(31)
    idp.keys.append(public_jwk(rsa_key("b"), "rsa-2"))
    await v.verify(idp.token(key=rsa_key("b"), kid="rsa-2"))  # a new key set is fetched
    await v.verify(token)
    assert lookups == ["rsa-1", "rsa-2", "rsa-1"]
