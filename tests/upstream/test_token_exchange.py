"""The token exchanger of a ``token_exchange`` upstream against an in-memory token endpoint (an
``httpx2.MockTransport`` playing the IdP), with a clock the test moves: the RFC 8693 request it makes, the
cache (per subject, audience and scopes; until shortly before expiry; bounded), failures as ExchangeError
that quote no token, and the auth hook that puts each call's own token on its own HTTP request."""

from __future__ import annotations

import base64
import json
from collections import Counter
from typing import Any
from urllib.parse import parse_qs

import anyio
import httpx2
import mcp_types as types
import pytest

from mcp_guard.errors import UpstreamError
from mcp_guard.settings import TokenExchangeSettings, UpstreamSettings
from mcp_guard.types import SubjectToken
from mcp_guard.upstream.connection import UpstreamConnection
from mcp_guard.upstream.token_exchange import (
    EXCHANGE_GRANT,
    ExchangeError,
    TokenCache,
    TokenExchanger,
    UpstreamToken,
    call_token,
)

pytestmark = pytest.mark.anyio

ISSUER = "https://idp.example"
AUDIENCE = "https://reports.example/mcp"
SECRET = "gw-secret-0a9b8c7d"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TokenEndpoint:
    """The IdP's discovery document and token endpoint; answers ``answer`` (status, body) to each token request."""

    def __init__(self) -> None:
        self.forms: list[dict[str, str]] = []
        self.basic: list[str] = []
        self.discoveries = 0
        self.status = 200
        self.body: dict[str, Any] | None = None  # None: a token with the asked scopes
        self.up = True
        self.issued = 0
        self.gate: anyio.Event | None = None  # set: token requests wait for it
        self.transport = httpx2.MockTransport(self._handle)

    async def _handle(self, request: httpx2.Request) -> httpx2.Response:
        if not self.up:
            raise httpx2.ConnectError("connection refused", request=request)
        if request.url.path == "/.well-known/openid-configuration":
            self.discoveries += 1
            return httpx2.Response(200, json={"issuer": ISSUER, "token_endpoint": f"{ISSUER}/oauth/token"})
        assert request.url.path == "/oauth/token", request.url
        if self.gate is not None:
            await self.gate.wait()
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        self.forms.append(form)
        self.basic.append(base64.b64decode(request.headers["authorization"].removeprefix("Basic ")).decode())
        if self.body is not None or self.status != 200:
            return httpx2.Response(self.status, json=self.body or {})
        self.issued += 1
        scope = form.get("scope", "")
        return httpx2.Response(
            200,
            json={"access_token": f"issued-{self.issued}", "token_type": "Bearer", "expires_in": 300, "scope": scope},
        )


def _settings(**over: Any) -> TokenExchangeSettings:
    base: dict[str, Any] = {
        "client_id": "mcp-guard",
        "client_secret": "gw",
        "audience": AUDIENCE,
        "scopes": ["reports:read", "reports:write"],
    }
    return TokenExchangeSettings.model_validate({**base, **over})


def _exchanger(idp: TokenEndpoint, clock: Clock, **over: Any) -> TokenExchanger:
    async def secret() -> str:
        return SECRET

    size = over.pop("cache_size", 16)
    return TokenExchanger(
        "rep",
        _settings(**over),
        issuer=ISSUER,
        client_secret=secret,
        transport=idp.transport,
        clock=clock,
        cache_size=size,
    )


async def test_exchange_is_an_rfc8693_request_as_the_gateway_client_for_the_upstream_audience() -> None:
    idp, clock = TokenEndpoint(), Clock()
    token = await _exchanger(idp, clock).exchange(SubjectToken("alice-at"), ("reports:read",))
    assert (token.value, token.audience, token.scopes) == ("issued-1", AUDIENCE, ("reports:read",))
    (form,) = idp.forms
    assert form == {
        "grant_type": EXCHANGE_GRANT,
        "subject_token": "alice-at",
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "resource": AUDIENCE,
        "audience": AUDIENCE,
        "scope": "reports:read",
    }
    assert idp.basic == [f"mcp-guard:{SECRET}"] and idp.discoveries == 1  # token_url from the issuer's discovery
    assert "issued-1" not in repr(token) and token.to_audit() == {"audience": AUDIENCE, "scopes": ["reports:read"]}


async def test_a_token_is_cached_per_subject_and_scopes_until_shortly_before_it_expires() -> None:
    idp, clock = TokenEndpoint(), Clock()
    ex = _exchanger(idp, clock, refresh_margin_s=30)
    alice, bob = SubjectToken("alice-at"), SubjectToken("bob-at")
    first = await ex.exchange(alice, ("reports:read",))
    assert await ex.exchange(alice, ("reports:read",)) is first
    assert (await ex.exchange(bob, ("reports:read",))).value != first.value  # another subject: its own token
    assert (await ex.exchange(alice, ("reports:write",))).value != first.value  # other scopes: another token
    assert len(idp.forms) == 3
    clock.now += 300 - 31
    assert await ex.exchange(alice, ("reports:read",)) is first
    clock.now += 1  # within the margin of its expiry: exchanged again
    assert (await ex.exchange(alice, ("reports:read",))).value != first.value
    assert len(idp.forms) == 4


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    clock = Clock()
    cache = TokenCache(margin_s=0, size=2, clock=clock)
    a, b, c = (("s", AUDIENCE, (n,)) for n in "abc")
    for key in (a, b):
        cache.put(key, UpstreamToken("t", AUDIENCE, key[2], clock.now + 60))
    assert cache.get(a) is not None  # a is now the most recently used
    cache.put(c, UpstreamToken("t", AUDIENCE, ("c",), clock.now + 60))
    assert len(cache) == 2 and cache.get(b) is None and cache.get(a) is not None


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (
            400,
            {"error": "invalid_grant", "error_description": "token alice-at is bad"},
            r"refused \(400 invalid_grant\)",
        ),
        (401, {"error": "bad code with spaces"}, r"refused \(401 no error code\)"),
        (200, {"token_type": "Bearer", "expires_in": 60}, "holds no access_token"),
        (200, {"access_token": "x", "token_type": "mac", "expires_in": 60}, "not a bearer token"),
        (200, {"access_token": "x", "token_type": "Bearer", "expires_in": -1}, "no usable expires_in"),
        (200, {"access_token": "x", "token_type": "Bearer", "scope": "reports:read admin"}, "beyond those asked"),
    ],
)
async def test_an_unusable_answer_is_an_exchange_error_that_quotes_no_token(
    status: int, body: dict[str, Any], reason: str
) -> None:
    idp, clock = TokenEndpoint(), Clock()
    idp.status, idp.body = status, body
    with pytest.raises(ExchangeError, match=reason) as info:
        await _exchanger(idp, clock).exchange(SubjectToken("alice-at"), ("reports:read",))
    assert "alice-at" not in str(info.value)


async def test_an_unreachable_or_slow_idp_is_an_exchange_error_and_nothing_is_cached() -> None:
    idp, clock = TokenEndpoint(), Clock()
    ex = _exchanger(idp, clock, token_url=f"{ISSUER}/oauth/token", timeout_s=0.05)
    idp.up = False
    with pytest.raises(ExchangeError, match=r"could not be reached \(ConnectError\)"):
        await ex.exchange(SubjectToken("alice-at"), ("reports:read",))
    idp.up = True
    assert (await ex.exchange(SubjectToken("alice-at"), ("reports:read",))).value == "issued-1"
    assert idp.discoveries == 0  # token_url given: no discovery

    async def hang(request: httpx2.Request) -> httpx2.Response:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def secret() -> str:
        return SECRET

    slow = TokenExchanger(
        "rep",
        _settings(timeout_s=0.05, token_url=f"{ISSUER}/t"),
        issuer=None,
        client_secret=secret,
        transport=httpx2.MockTransport(hang),
    )
    with pytest.raises(ExchangeError, match=r"did not answer within 0\.05s"):
        await slow.exchange(SubjectToken("alice-at"), ())


async def test_the_auth_hook_sends_each_calls_own_token_and_the_service_token_otherwise() -> None:
    idp, clock = TokenEndpoint(), Clock()
    ex = _exchanger(idp, clock)
    seen: dict[str, str] = {}

    async def upstream(request: httpx2.Request) -> httpx2.Response:
        await anyio.lowlevel.checkpoint()  # let the other call interleave
        if "authorization" in request.headers:
            seen[request.url.path] = request.headers["authorization"]
        return httpx2.Response(200)

    auth = ex.auth()
    async with httpx2.AsyncClient(auth=auth, transport=httpx2.MockTransport(upstream)) as http:

        async def call(path: str, token: UpstreamToken) -> None:
            with call_token(token):
                await http.post(f"https://up.example/{path}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "alice", UpstreamToken("alice-exchanged", AUDIENCE, (), clock.now + 60))
            tg.start_soon(call, "bob", UpstreamToken("bob-exchanged", AUDIENCE, (), clock.now + 60))
        await http.get("https://up.example/listing")  # no call token: the gateway's own
        with call_token(UpstreamToken("other", "https://elsewhere.example", (), clock.now + 60)):
            await http.post("https://up.example/wrong")  # neither that token nor the gateway's: none
        clock.now += 3600  # the service token expired, and the IdP is down: none either, nothing raised
        idp.up = False
        await http.get("https://up.example/down")
    assert seen == {
        "/alice": "Bearer alice-exchanged",
        "/bob": "Bearer bob-exchanged",
        "/listing": "Bearer issued-1",
    }
    assert "/wrong" not in seen and "/down" not in seen
    assert auth.last_problem == "the gateway's own token: the IdP could not be reached (ConnectError)"
    assert (
        idp.forms[-1]["grant_type"] == "client_credentials" and idp.forms[-1]["scope"] == "reports:read reports:write"
    )


def test_the_subject_token_never_shows_in_a_repr_or_string() -> None:
    subject = SubjectToken("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.sig")
    assert "eyJ" not in repr(subject) and "eyJ" not in str(subject) and "eyJ" not in json.dumps({"s": str(subject)})
    assert subject.reveal().startswith("eyJ") and len(subject.sha256) == 64


async def test_a_connection_that_exchanges_refuses_a_call_without_its_token() -> None:
    idp, clock = TokenEndpoint(), Clock()
    settings = UpstreamSettings(transport="http", url="https://up.example/mcp")
    conn = UpstreamConnection("rep", settings, hooks=None, auth=_exchanger(idp, clock).auth())  # type: ignore[arg-type]
    request = types.CallToolRequest(params=types.CallToolRequestParams(name="read", arguments={}))
    with pytest.raises(UpstreamError, match="takes each caller's exchanged token"):
        await conn.request(request)


async def test_concurrent_misses_of_one_key_make_one_request_and_share_its_answer() -> None:
    idp, clock = TokenEndpoint(), Clock()
    ex = _exchanger(idp, clock)
    got: list[str] = []
    errors: list[str] = []

    async def one(subject: str) -> None:
        try:
            got.append((await ex.exchange(SubjectToken(subject), ("reports:read",))).value)
        except ExchangeError as e:
            errors.append(str(e))

    async def together(*subjects: str) -> None:
        idp.gate = anyio.Event()  # the IdP answers once every call is waiting
        async with anyio.create_task_group() as tg:
            for subject in subjects:
                tg.start_soon(one, subject)
            await anyio.wait_all_tasks_blocked()
            idp.gate.set()

    await together("alice-at", "alice-at", "alice-at", "bob-at")
    assert len(idp.forms) == 2 and sorted(Counter(got).values()) == [1, 3]

    idp.status, idp.body = 400, {"error": "invalid_grant"}  # a refusal reaches every waiter, and is not cached
    await together("carol-at", "carol-at", "carol-at")
    assert len(idp.forms) == 3 and len(errors) == 3 and all("invalid_grant" in e for e in errors)
    await together("carol-at")
    assert len(idp.forms) == 4
