"""End to end with a real IdP: `mcp-guard run --transport http` as an OAuth resource server for the npm
`oidc-provider` (tests/e2e/oidc_idp.mjs), driven by the MCP Python SDK — with bearer tokens fetched from the
IdP, and with the SDK's own OAuth client (discovery, client credentials, scope step-up).

The policy is real Rego on the embedded engine: group `support` sees every recorder tool, `analyst` only
`echo`; calling `add` needs the `math:write` scope, else a deny with ``obligations.step_up``.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from e2e_support import POLL_S, REPO, _wait_for_url, guard_argv, recorder, start_oidc_idp, write_config
from mcp import Client
from mcp.client.auth import TokenStorage
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

OTHER_RESOURCE = "https://api.other.test/mcp"
# Where the IdP sends a signed-in user's browser back to; nothing listens there (the test reads the redirect).
REDIRECT_URI = "http://127.0.0.1:9/callback"
CLIENTS = [
    {"client_id": "alice-agent", "client_secret": "alice-secret-4e1f0c9a7b", "groups": ["support"]},
    {"client_id": "carol-agent", "client_secret": "carol-secret-9d2b6e1f3a", "groups": ["analyst"]},
]
# A pre-registered public client for the authorization-code flow (test_oauth_authcode_e2e.py): PKCE, no secret.
AGENT_APP = {"client_id": "e2e-agent-app", "grant_types": ["authorization_code"], "redirect_uris": [REDIRECT_URI]}
SECRET = {c["client_id"]: c["client_secret"] for c in CLIENTS}
# People who sign in through the authorization-code flow (test_oauth_authcode_e2e.py), with their groups.
USERS = [{"sub": "alice", "groups": ["support"]}, {"sub": "bob", "groups": ["analyst"]}]

POLICY = """package mcp_guard

import rego.v1

default decision := {"allow": false, "reasons": ["no group of this principal grants it"], "obligations": {}}

groups := {g | some g in input.principal.roles}

granted if "support" in groups

granted if {
	"analyst" in groups
	input.tool == "echo"
}

needs_step_up if {
	input.action == "tools/call"
	input.tool == "add"
	not "math:write" in input.principal.scopes
}

decision := {
	"allow": false,
	"reasons": ["adding needs the math:write scope"],
	"obligations": {"step_up": {"scopes": ["math:write"]}},
} if {
	granted
	needs_step_up
}

decision := {"allow": true, "reasons": ["granted to the principal's group"], "obligations": {}} if {
	granted
	not needs_step_up
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    """A running IdP and mcp-guard in front of the recorder."""

    issuer: str
    url: str  # mcp-guard's /mcp, also its [auth] audience
    audit: Path
    guard_log: Path
    calls: Path
    idp: subprocess.Popen[str]
    tokens: list[str] = field(default_factory=list)  # every token handed out, to look for in the records

    async def token(self, client_id: str, scope: str = "tools:read", resource: str | None = None) -> str:
        async with httpx2.AsyncClient(timeout=10) as http:
            r = await http.post(
                f"{self.issuer}/token",
                data={"grant_type": "client_credentials", "resource": resource or self.url, "scope": scope},
                auth=(client_id, SECRET[client_id]),
            )
        assert r.status_code == 200, r.text
        token = str(r.json()["access_token"])
        self.tokens.append(token)
        return token

    def rows(self, kind: str) -> list[dict[str, Any]]:
        with sqlite3.connect(self.audit) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM audit_events WHERE kind = ? ORDER BY seq", (kind,))]

    async def wait_rows(self, kind: str, n: int = 1) -> list[dict[str, Any]]:
        with anyio.fail_after(15):
            while len(rows := self.rows(kind)) < n:  # noqa: ASYNC110 - rows come from another process
                await anyio.sleep(POLL_S)
        return rows


def _start_idp(resource: str, port: int) -> tuple[subprocess.Popen[str], str]:
    args = ["--port", str(port), "--resource", resource, "--other-resource", OTHER_RESOURCE]
    return start_oidc_idp(args, {"IDP_CLIENTS": json.dumps([*CLIENTS, AGENT_APP]), "IDP_USERS": json.dumps(USERS)})


@contextmanager
def oauth_stack(tmp: Path) -> Iterator[Stack]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    idp, issuer = _start_idp(url, _free_port())
    guard: subprocess.Popen[bytes] | None = None
    try:
        bundle = tmp / "bundle"
        bundle.mkdir()
        (bundle / "policy.rego").write_text(POLICY)
        calls = tmp / "calls.jsonl"
        auth = (
            "\n[auth]\n"
            f'issuer = "{issuer}"\n'
            f'audience = "{url}"\n'
            'roles_claim = "groups"\n'
            "require_at_jwt = true\n"
            'required_scopes = ["tools:read"]\n'  # the 401's scope hint: what a client asks for first
            'scopes_supported = ["tools:read", "math:write"]\n'
            "jwks_min_interval_s = 1\n"
        )
        cfg = write_config(tmp, {"rec": recorder(calls)}, extra=auth, bundle=bundle)
        log = tmp / "guard.log"
        with log.open("w") as err:
            guard = subprocess.Popen(
                guard_argv(cfg, "--transport", "http", "--port", str(port), "--log-level", "info"),
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            assert _wait_for_url(guard, log) == url
            yield Stack(issuer, url, tmp / "audit.db", log, calls, idp)
    finally:
        for proc in (guard, idp):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with oauth_stack(tmp_path_factory.mktemp("oauth")) as s:
        yield s


def _bearer_client(url: str, token: str, seen: list[httpx2.Response] | None = None) -> Client:
    async def record(r: httpx2.Response) -> None:
        if seen is not None:
            seen.append(r)

    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30.0), event_hooks={"response": [record]}
    )
    return Client(streamable_http_client(url, http_client=http), mode="legacy", read_timeout_seconds=30.0)  # type: ignore[arg-type]


def _text(r: types.CallToolResult) -> str:
    return "".join(c.text for c in r.content if isinstance(c, types.TextContent))


def _recorded_calls(stack: Stack) -> list[str]:
    if not stack.calls.exists():
        return []
    return [json.loads(line)["params"]["name"] for line in stack.calls.read_text().splitlines() if line.strip()]


async def test_two_clients_with_different_groups_see_different_tools(stack: Stack) -> None:
    alice = await stack.token("alice-agent")
    carol = await stack.token("carol-agent")
    async with _bearer_client(stack.url, alice) as a:
        seen_by_alice = {t.name for t in (await a.list_tools()).tools}
        assert _text(await a.call_tool("rec__echo", {"text": "from alice"})) == "from alice"
    async with _bearer_client(stack.url, carol) as c:
        seen_by_carol = {t.name for t in (await c.list_tools()).tools}
        denied = await c.call_tool("rec__add", {"a": 1, "b": 2})
        assert denied.is_error and "no group of this principal grants it" in _text(denied)
    assert {"rec__echo", "rec__add"} <= seen_by_alice and seen_by_carol == {"rec__echo"}
    starts = await stack.wait_rows("session.start", 2)
    details = [json.loads(r["details"]) for r in starts if r["principal"] == "alice-agent"]
    assert details and details[0]["auth"]["method"] == "jwt" and details[0]["auth"]["issuer"] == stack.issuer
    assert details[0]["auth"]["client_id"] == "alice-agent" and len(details[0]["auth"]["token_id_sha256"]) == 64
    assert details[0]["roles"] == ["support"] and details[0]["scopes"] == ["tools:read"]


async def test_missing_token_is_401_whose_resource_metadata_resolves(stack: Stack) -> None:
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "0"}},
    }
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with httpx2.AsyncClient(timeout=10) as http:
        r = await http.post(stack.url, json=init, headers=headers)
        assert r.status_code == 401
        metadata_url = r.headers["www-authenticate"].split('resource_metadata="')[1].split('"')[0]
        meta = await http.get(metadata_url)
    assert meta.status_code == 200
    assert meta.json() == {
        "resource": stack.url,
        "authorization_servers": [stack.issuer],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["tools:read", "math:write"],
    }


async def test_a_token_for_another_resource_is_401(stack: Stack) -> None:
    other = await stack.token("alice-agent", resource=OTHER_RESOURCE)  # same IdP, same client, other audience
    before = len(stack.rows("auth.reject"))
    seen: list[httpx2.Response] = []
    with pytest.raises(Exception):  # noqa: B017 - the SDK client fails on the 401 in its own way
        async with _bearer_client(stack.url, other, seen) as c:
            await c.list_tools()
    assert [r.status_code for r in seen] == [401]
    assert 'error="invalid_token"' in seen[0].headers["www-authenticate"]
    rows = await stack.wait_rows("auth.reject", before + 1)
    assert json.loads(rows[-1]["reasons"]) == ["bad_audience"] and rows[-1]["principal"] == "alice-agent"


async def test_step_up_is_a_403_with_the_scope_the_policy_names(stack: Stack) -> None:
    token = await stack.token("alice-agent", scope="tools:read")
    seen: list[httpx2.Response] = []
    async with _bearer_client(stack.url, token, seen) as c:
        with pytest.raises(Exception):  # noqa: B017 - the SDK client fails on the 403 in its own way
            await c.call_tool("rec__add", {"a": 2, "b": 3})
    refused = [r for r in seen if r.status_code == 403]
    assert len(refused) == 1
    challenge = refused[0].headers["www-authenticate"]
    assert challenge.startswith('Bearer error="insufficient_scope", scope="math:write", resource_metadata="')
    assert "add" not in _recorded_calls(stack)


class _Memory(TokenStorage):
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


async def test_the_sdk_oauth_client_discovers_authenticates_and_steps_up(stack: Stack) -> None:
    """mcp.client.auth end to end: 401 → protected-resource metadata → the IdP's metadata → a client-credentials
    token for mcp-guard's resource → the call; then 403 insufficient_scope → a token with the union of scopes →
    the retried call goes through."""
    storage = _Memory()
    auth = ClientCredentialsOAuthProvider(
        server_url=stack.url,
        storage=storage,
        client_id="alice-agent",
        client_secret=SECRET["alice-agent"],
        scope="tools:read",
        issuer=stack.issuer,
    )
    seen: list[httpx2.Response] = []

    async def record(r: httpx2.Response) -> None:
        seen.append(r)

    http = httpx2.AsyncClient(auth=auth, timeout=httpx2.Timeout(30.0), event_hooks={"response": [record]})
    async with Client(streamable_http_client(stack.url, http_client=http), mode="legacy") as c:  # type: ignore[arg-type]
        assert "rec__add" in {t.name for t in (await c.list_tools()).tools}
        first = storage.tokens
        assert first is not None and first.scope == "tools:read"
        result = await c.call_tool("rec__add", {"a": 20, "b": 22})
        assert result.structured_content == {"sum": 42}
    assert storage.tokens is not None and set((storage.tokens.scope or "").split()) == {"tools:read", "math:write"}
    stack.tokens += [first.access_token, storage.tokens.access_token]
    statuses = [r.status_code for r in seen if r.request.url.path == "/mcp"]
    assert statuses[0] == 401 and 403 in statuses
    assert any(r.request.url.path == "/.well-known/oauth-protected-resource/mcp" for r in seen)
    assert any(r.request.url.path == "/token" for r in seen)
    assert _recorded_calls(stack).count("add") == 1  # forwarded once: after the step-up, never before
    decisions = [r for r in stack.rows("call.decision") if r["tool"] == "add" and r["principal"] == "alice-agent"]
    assert [d["decision"] for d in decisions][-2:] == ["deny", "allow"]
    assert json.loads(decisions[-2]["details"])["obligations"] == {"step_up": {"scopes": ["math:write"]}}


async def test_no_token_reaches_the_audit_or_the_log(stack: Stack) -> None:
    """Runs after the others in this module: every token they were handed is looked for."""
    assert stack.tokens
    await stack.wait_rows("session.start", 1)
    with sqlite3.connect(stack.audit) as db:
        dump = "\n".join(repr(row) for row in db.execute("SELECT * FROM audit_events"))
    log = stack.guard_log.read_text()
    for token in stack.tokens:
        for part in token.split("."):  # neither the token nor any of its segments
            if len(part) > 20:
                assert part not in dump and part not in log
    # What is there instead: who, and the token's id by hash.
    starts = [json.loads(r["details"]) for r in stack.rows("session.start")]
    hashes = {d["auth"].get("token_id_sha256") for d in starts if d["auth"]["method"] == "jwt"}
    jtis = {json.loads(_b64(t.split(".")[1]))["jti"] for t in stack.tokens}
    assert hashes and hashes <= {hashlib.sha256(j.encode()).hexdigest() for j in jtis}


async def test_idp_down_mid_run_cached_keys_keep_working(tmp_path: Path) -> None:
    with oauth_stack(tmp_path) as s:
        token = await s.token("alice-agent")
        async with _bearer_client(s.url, token) as c:
            assert _text(await c.call_tool("rec__echo", {"text": "before"})) == "before"
        s.idp.terminate()
        s.idp.wait(timeout=15)
        async with _bearer_client(s.url, token) as c:  # the keys were cached at start: still verified
            assert _text(await c.call_tool("rec__echo", {"text": "after"})) == "after"
        # A token whose key mcp-guard has not seen needs the (down) IdP: refused, fail closed.
        head = json.loads(_b64(token.split(".")[0]))
        forged = token.replace(token.split(".")[0], _b64e(json.dumps({**head, "kid": "rotated"})), 1)
        async with httpx2.AsyncClient(timeout=10) as http:
            r = await http.post(
                s.url,
                json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                headers={"Authorization": f"Bearer {forged}", "Accept": "application/json, text/event-stream"},
            )
        assert r.status_code == 401
        rows = await s.wait_rows("auth.reject")
        assert json.loads(rows[-1]["reasons"])[0] in ("unknown_kid", "idp_unreachable")


def _b64(segment: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _b64e(text: str) -> str:
    import base64

    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()
