"""The HTTP front as an OAuth resource server: JWT principals, 401s that say nothing, discovery, step-up."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from guard_harness import make_settings, read_log, recorder_upstream, running_guard, text_of
from http_harness import sse_answer
from mcp_guard.app import Guard
from mcp_guard.frontend import auth as auth_module
from mcp_guard.frontend.auth import BearerAuth, PrincipalUser
from mcp_guard.frontend.oauth import ResourceServer
from mcp_guard.testing import FunctionEngine, RecordingSink
from mcp_guard.types import AuthInfo, Decision, PolicyInput, Principal
from oauth_harness import ISSUER, FakeIdP, auth_settings, rsa_key, rsa_public_pem, unsigned

pytestmark = pytest.mark.anyio

BOB_KEY = "bob-api-key-0123456789"
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}


def _decide(inp: PolicyInput) -> Decision:
    """support sees and calls everything, analyst only echo; calling add needs the math:write scope."""
    p = inp.principal
    if inp.action == "tools/call" and inp.tool == "add" and "math:write" not in p.scopes:
        return Decision(
            allow=False, reasons=("adding needs math:write",), obligations={"step_up": {"scopes": ["math:write"]}}
        )
    if "support" in p.roles or ("analyst" in p.roles and inp.tool == "echo"):
        return Decision(allow=True, reasons=("role",))
    return Decision(allow=False, reasons=("no role",))


@dataclass
class Front:
    guard: Guard
    url: str
    idp: FakeIdP
    engine: FunctionEngine
    sink: RecordingSink
    log: Path

    @property
    def audience(self) -> str:
        return self.url

    def bearer(self, token: str) -> dict[str, str]:
        return {**HEADERS, "Authorization": f"Bearer {token}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def oauth_front(tmp_path: Path, idp_up: bool = True, **auth: Any) -> AsyncIterator[Front]:
    port = _free_port()
    audience = f"http://127.0.0.1:{port}/mcp"
    idp = FakeIdP(audience=audience)
    idp.up = idp_up
    log = tmp_path / "calls.jsonl"
    settings = make_settings(
        {"rec": recorder_upstream(log)},
        principals={
            "alice": {"roles": ["auditor"], "attributes": {"team": "care"}},
            "bob": {"roles": ["analyst"], "api_key_sha256": hashlib.sha256(BOB_KEY.encode()).hexdigest()},
        },
        auth=auth_settings(audience=audience, **auth).model_dump(),
    )
    engine, sink = FunctionEngine(_decide), RecordingSink()
    async with running_guard(settings, engine=engine, sink=sink) as guard:
        assert settings.auth is not None
        guard.oauth = ResourceServer(settings.auth, transport=idp.transport)  # the in-memory IdP
        async with guard.http_served(port=port) as url:
            assert url == audience
            yield Front(guard, url, idp, engine, sink, log)


def sdk_client(url: str, token: str, *, mode: str = "legacy", seen: list[httpx2.Response] | None = None) -> Client:
    async def record(r: httpx2.Response) -> None:
        if seen is not None:
            seen.append(r)

    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(20.0), event_hooks={"response": [record]}
    )
    return Client(streamable_http_client(url, http_client=http), mode=mode, read_timeout_seconds=20.0)  # type: ignore[arg-type]


async def _open_session(http: httpx2.AsyncClient, f: Front, token: str) -> dict[str, str]:
    r = await http.post(f.url, json=INIT, headers=f.bearer(token))
    assert r.status_code == 200, r.text
    headers = {**f.bearer(token), "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert (await http.post(f.url, json=note, headers=headers)).status_code == 202
    return headers


def _call(name: str, args: dict[str, Any], id: int = 2) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": args}}


async def test_a_token_is_a_principal_that_reaches_policy_and_the_audit_who_never_what(tmp_path: Path) -> None:
    async with oauth_front(tmp_path) as f:
        token = f.idp.token("alice", scope="tools:read", jti="jti-1", email="alice@example.com")
        async with sdk_client(f.url, token) as client:
            assert text_of(await client.call_tool("rec__echo", {"text": "hi"})) == "hi"
        call = next(i for i in f.engine.inputs if i.action == "tools/call")
        assert call.principal.to_policy() == {
            "id": "alice",
            "roles": ["auditor", "support"],  # [principals.alice] roles merged with the token's groups
            "attributes": {"email": "alice@example.com", "team": "care"},
            "scopes": ["tools:read"],
            "auth": {"method": "jwt", "issuer": ISSUER, "client_id": "agent-app"},
        }
        start = f.sink.of_kind("session.start")[0]
        assert start.principal == "alice"
        assert start.details is not None and start.details["auth"] == {
            "method": "jwt",
            "issuer": ISSUER,
            "client_id": "agent-app",
            "token_id_sha256": hashlib.sha256(b"jti-1").hexdigest(),
        }
        assert start.details["scopes"] == ["tools:read"]
        assert all(token not in repr(e) and token.split(".")[2] not in repr(e) for e in f.sink.events)


async def test_two_users_with_different_groups_see_different_tools(tmp_path: Path) -> None:
    async with oauth_front(tmp_path) as f:
        async with sdk_client(f.url, f.idp.token("alice", groups=["support"])) as a:
            alice = {t.name for t in (await a.list_tools()).tools}
        async with sdk_client(f.url, f.idp.token("carol", groups=["analyst"])) as c:
            carol = {t.name for t in (await c.list_tools()).tools}
        assert "rec__add" in alice and "rec__echo" in alice
        assert carol == {"rec__echo"}


def _hs256_with_public_key(idp: FakeIdP) -> str:
    import hmac

    from oauth_harness import b64url

    claims = {"iss": ISSUER, "aud": idp.audience, "sub": "mallory", "exp": 4_000_000_000}
    signing = unsigned({"alg": "HS256", "kid": "rsa-1"}, claims).rstrip(".")
    return signing + "." + b64url(hmac.new(rsa_public_pem(rsa_key()), signing.encode(), hashlib.sha256).digest())


async def test_bad_credentials_are_the_same_401_audited_and_reach_nothing(tmp_path: Path) -> None:
    async with oauth_front(tmp_path) as f, httpx2.AsyncClient(timeout=20) as http:
        idp = f.idp
        bad = [
            ("expired", "Bearer " + idp.token(exp=1)),
            ("not_yet_valid", "Bearer " + idp.token(nbf=4_000_000_000)),
            ("bad_audience", "Bearer " + idp.token(aud=f.url + "/other")),
            ("bad_audience", "Bearer " + idp.token(aud="https://api.github.test")),  # a token for another resource
            ("bad_issuer", "Bearer " + idp.token(iss="https://evil.test")),
            ("unknown_kid", "Bearer " + idp.token(kid="nope")),
            ("alg_not_allowed", "Bearer " + unsigned({"alg": "none"}, {"iss": ISSUER, "aud": f.url, "sub": "x"})),
            ("alg_not_allowed", "Bearer " + _hs256_with_public_key(idp)),
            ("bad_signature", "Bearer " + idp.token(key=rsa_key("other"))),
            ("invalid_key", "Bearer %%%garbage%%%"),
            ("invalid_key", "Bearer eyJhbGciOiJSUzI1NiJ9.e30.!!"),  # not even the JWS form: no key matches
            ("malformed", "Bearer " + unsigned({"alg": 5}, {}, b"x")),
            ("malformed_authorization", "Basic YWxpY2U6cHc="),
            ("oversized", "Bearer " + "A" * 1_000_000),
        ]
        bodies = set()
        for reason, value in bad:
            r = await http.post(f.url, json=INIT, headers={**HEADERS, "Authorization": value})
            assert r.status_code == 401, (reason, r.status_code)
            challenge = r.headers["www-authenticate"]
            assert challenge == f'Bearer error="invalid_token", resource_metadata="{f.guard.oauth.metadata_url}"'  # type: ignore[union-attr]
            if reason != "malformed_authorization":
                bodies.add(r.text)
        assert len(bodies) == 1  # nothing tells one failure from another
        r = await http.post(f.url, json=_call("rec__echo", {"text": "x"}), headers=f.bearer(idp.token(exp=1)))
        assert r.status_code == 401
        rejects = f.sink.of_kind("auth.reject")
        assert [e.reasons[0] for e in rejects if e.reasons] == [reason for reason, _ in bad] + ["expired"]
        assert rejects[0].principal == "alice"  # an expired but authentic token: who it named is on record
        assert rejects[5].principal is None  # unknown kid: nothing it claims is trusted
        assert not f.engine.inputs and not read_log(f.log)  # no policy question, no upstream call
        assert f.sink.of_kind("session.start") == []
        for e in f.sink.events:
            assert all(v.removeprefix("Bearer ")[:200] not in repr(e) for _, v in bad)


async def test_discovery_metadata_and_the_401_challenge_resolve(tmp_path: Path) -> None:
    async with (
        oauth_front(tmp_path, scopes_supported=["tools:read", "math:write"], required_scopes=[]) as f,
        httpx2.AsyncClient(timeout=20) as http,
    ):
        r = await http.post(f.url, json=INIT, headers=HEADERS)
        assert r.status_code == 401
        challenge = r.headers["www-authenticate"]
        assert "error=" not in challenge  # no credentials: no error code (RFC 6750 §3.1)
        url = challenge.split('resource_metadata="')[1].split('"')[0]
        assert url == f.url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
        expected = {
            "resource": f.url,
            "authorization_servers": [ISSUER],
            "bearer_methods_supported": ["header"],
            "scopes_supported": ["tools:read", "math:write"],
        }
        for where in (url, f.url.replace("/mcp", "/.well-known/oauth-protected-resource")):
            meta = await http.get(where)  # no credentials needed
            assert meta.status_code == 200 and meta.json() == expected
            assert meta.headers["access-control-allow-origin"] == "*"
        assert f.sink.of_kind("auth.reject")[0].reasons == ("missing_key",)


async def test_required_scopes_are_a_403_scope_challenge(tmp_path: Path) -> None:
    async with oauth_front(tmp_path, required_scopes=["mcp:use"]) as f, httpx2.AsyncClient(timeout=20) as http:
        r = await http.post(f.url, json=INIT, headers=HEADERS)
        assert r.status_code == 401 and 'scope="mcp:use"' in r.headers["www-authenticate"]
        r = await http.post(f.url, json=INIT, headers=f.bearer(f.idp.token(scope="tools:read")))
        assert r.status_code == 403
        assert r.headers["www-authenticate"].startswith('Bearer error="insufficient_scope", scope="mcp:use"')
        ok = await http.post(f.url, json=INIT, headers=f.bearer(f.idp.token(scope="tools:read mcp:use")))
        assert ok.status_code == 200
        reject = f.sink.of_kind("auth.reject")[-1]
        assert reject.reasons == ("insufficient_scope",) and reject.principal == "alice"


@pytest.mark.usefixtures("http_parser")  # the closing is the protocol's: on httptools and on h11
async def test_answers_given_before_the_body_is_read_close_the_connection_and_say_so(tmp_path: Path) -> None:
    """The 401 and the required-scope 403 are sent before the body is read and the connection is closed after
    them (slowloris): they announce it, so a client's next request (an OAuth client's discovery right after
    the 401) goes on a new connection instead of failing on the closing one. The same client then goes on."""
    async with oauth_front(tmp_path, required_scopes=["mcp:use"]) as f, httpx2.AsyncClient(timeout=20) as http:
        unauthenticated = await http.post(f.url, json=INIT, headers=HEADERS)
        assert unauthenticated.status_code == 401 and unauthenticated.headers["connection"] == "close"
        meta = await http.get(f.url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp"))
        assert meta.status_code == 200 and meta.headers.get("connection") != "close"  # kept open
        narrow = await http.post(f.url, json=INIT, headers=f.bearer(f.idp.token(scope="tools:read")))
        assert narrow.status_code == 403 and narrow.headers["connection"] == "close"
        ok = await http.post(f.url, json=INIT, headers=f.bearer(f.idp.token(scope="tools:read mcp:use")))
        assert ok.status_code == 200 and ok.headers.get("connection") != "close"


async def test_step_up_deny_is_a_403_and_a_token_with_the_scope_goes_through(tmp_path: Path) -> None:
    async with oauth_front(tmp_path) as f, httpx2.AsyncClient(timeout=20) as http:
        headers = await _open_session(http, f, f.idp.token("alice", scope="tools:read"))
        r = await http.post(f.url, json=_call("rec__add", {"a": 1, "b": 2}), headers=headers)
        assert r.status_code == 403
        assert r.headers["www-authenticate"] == (
            f'Bearer error="insufficient_scope", scope="math:write", '
            f'resource_metadata="{f.guard.oauth.metadata_url}", error_description="additional scope required"'  # type: ignore[union-attr]
        )
        deny = [e for e in f.sink.of_kind("call.decision") if e.decision == "deny"]
        assert deny and deny[0].details is not None
        assert deny[0].details["obligations"] == {"step_up": {"scopes": ["math:write"]}}
        assert r.json()["error"]["data"]["decision_id"] == deny[0].decision_id
        # Other calls on the same session are unaffected, and the same session steps up with a new token.
        ok = await http.post(f.url, json=_call("rec__echo", {"text": "x"}, 3), headers=headers)
        assert ok.status_code == 200 and sse_answer(ok)["result"]["content"][0]["text"] == "x"
        stepped = {**headers, "Authorization": "Bearer " + f.idp.token("alice", scope="tools:read math:write")}
        r = await http.post(f.url, json=_call("rec__add", {"a": 1, "b": 2}, 4), headers=stepped)
        assert r.status_code == 200 and sse_answer(r)["result"]["structuredContent"] == {"sum": 3}
        assert [c["params"]["name"] for c in read_log(f.log)] == ["echo", "add"]


async def test_step_up_on_the_2026_era_too(tmp_path: Path) -> None:
    async with oauth_front(tmp_path) as f:
        seen: list[httpx2.Response] = []
        async with sdk_client(f.url, f.idp.token("alice", scope="tools:read"), mode="2026-07-28", seen=seen) as c:
            assert text_of(await c.call_tool("rec__echo", {"text": "y"})) == "y"
            with pytest.raises(Exception):  # noqa: B017 - the SDK surfaces a 403 as its own transport error
                await c.call_tool("rec__add", {"a": 1, "b": 2})
        refused = [r for r in seen if r.status_code == 403]
        assert len(refused) == 1
        assert 'error="insufficient_scope", scope="math:write"' in refused[0].headers["www-authenticate"]
        assert [c["params"]["name"] for c in read_log(f.log)] == ["echo"]


async def test_api_keys_keep_working_and_their_step_up_denies_stay_plain(tmp_path: Path) -> None:
    async with oauth_front(tmp_path) as f:
        async with sdk_client(f.url, BOB_KEY) as c:
            assert {t.name for t in (await c.list_tools()).tools} == {"rec__echo"}
            r = await c.call_tool("rec__add", {"a": 1, "b": 2})
            assert r.is_error and "adding needs math:write" in text_of(r)
        bob = next(i for i in f.engine.inputs if i.action == "tools/call")
        assert bob.principal.auth.method == "api_key" and bob.principal.scopes == ()
        assert f.sink.of_kind("session.start")[0].details["auth"] == {  # type: ignore[index]
            "method": "api_key",
            "issuer": None,
            "client_id": None,
        }


async def test_a_session_is_bound_to_the_tokens_subject_and_client(tmp_path: Path) -> None:
    async with oauth_front(tmp_path) as f, httpx2.AsyncClient(timeout=20) as http:
        headers = await _open_session(http, f, f.idp.token("alice"))
        listing = {"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {}}
        for other in (f.idp.token("carol"), f.idp.token("alice", azp="another-app"), BOB_KEY):
            r = await http.post(f.url, json=listing, headers={**headers, "Authorization": f"Bearer {other}"})
            assert r.status_code == 404
        fresh = {**headers, "Authorization": "Bearer " + f.idp.token("alice")}  # a new token of the same grant
        assert (await http.post(f.url, json=listing, headers=fresh)).status_code == 200


async def test_idp_down_at_start_refuses_tokens_and_keys_still_work(tmp_path: Path) -> None:
    async with oauth_front(tmp_path, idp_up=False, jwks_min_interval_s=0) as f:
        async with httpx2.AsyncClient(timeout=20) as http:
            r = await http.post(f.url, json=INIT, headers=f.bearer(f.idp.token("alice")))
            assert r.status_code == 401
        assert f.sink.of_kind("auth.reject")[-1].reasons == ("idp_unreachable",)
        async with sdk_client(f.url, BOB_KEY) as c:
            assert text_of(await c.call_tool("rec__echo", {"text": "k"})) == "k"
        f.idp.up = True
        async with sdk_client(f.url, f.idp.token("alice")) as c:
            assert text_of(await c.call_tool("rec__echo", {"text": "t"})) == "t"


async def test_the_guard_only_guards_the_mcp_endpoint() -> None:
    """Other paths pass through (they are public by construction, or authenticate for themselves)."""
    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    refused: list[Any] = []
    guard = BearerAuth(app, {}, on_reject=lambda r, c: refused.append(r.reason))
    transport = httpx2.ASGITransport(app=guard)
    async with httpx2.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get("/.well-known/oauth-protected-resource")).status_code == 204
        assert (await http.post("/mcp")).status_code == 401
        assert (await http.post("/mcp/x")).status_code == 401
        assert (await http.get("/mcpx")).status_code == 204
    assert reached == ["/.well-known/oauth-protected-resource", "/mcpx"]
    assert refused == ["missing_key", "missing_key"]


async def test_no_token_reaches_the_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with oauth_front(tmp_path) as f, httpx2.AsyncClient(timeout=20) as http:
        good = f.idp.token("alice")
        bad = f.idp.token("alice", exp=1)
        await _open_session(http, f, good)
        await http.post(f.url, json=INIT, headers=f.bearer(bad))
        with anyio.fail_after(5):
            while not f.sink.of_kind("auth.reject"):  # noqa: ASYNC110 - the reject is recorded by another task
                await anyio.sleep(0.01)
    out = capsys.readouterr()
    for t in (good, bad):
        assert t.split(".")[1] not in out.err + out.out


async def test_a_keys_principal_is_one_object_across_requests_and_so_is_its_configured_value() -> None:
    """An API key's principal (and the anonymous one) is one object for every request, and its configured value one
    per settings: the audit remembers a call's unchanging policy-input text by these objects. A reload's new
    settings configure it anew; a JWT's principal carries its token and is made per request, never remembered."""
    key = "k-" + "x" * 20
    auth = BearerAuth(None, {"alice": hashlib.sha256(key.encode()).hexdigest()}, on_reject=lambda *_: None)  # type: ignore[arg-type]
    first, second = await auth.authenticate(f"Bearer {key}"), await auth.authenticate(f"Bearer {key}")
    assert isinstance(first, Principal) and first is second and first.auth.method == "api_key"
    settings = make_settings({}, principals={"alice": {"roles": ["support"], "attributes": {"team": "t"}}})
    configured = PrincipalUser(first).configured(settings)
    assert configured.roles == ("support",) and configured.attributes == {"team": "t"}
    assert PrincipalUser(second).configured(settings) is configured  # the next request: the same value
    reloaded = make_settings({}, principals={"alice": {"roles": ["admin"]}})
    assert PrincipalUser(second).configured(reloaded).roles == ("admin",)
    assert auth_module._Configured.settings is reloaded  # only the live settings' are held, not the old ones
    open_auth = BearerAuth(None, {}, on_reject=lambda *_: None, required=False)  # type: ignore[arg-type]
    assert await open_auth.authenticate(None) is await open_auth.authenticate(None)
    token = Principal(id="bob", auth=AuthInfo(method="jwt"))
    held = len(auth_module._Configured.made)
    assert PrincipalUser(token).configured(settings) is token  # not configured: passed through, not remembered
    assert len(auth_module._Configured.made) == held and auth_module._Configured.made.get(token) is None
