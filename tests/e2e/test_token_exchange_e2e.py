"""Token exchange (RFC 8693) end to end: `mcp-guard run --transport http` as an OAuth resource server for the
real IdP (tests/e2e/oidc_idp.mjs, npm `oidc-provider` with a token-exchange grant), in front of an HTTP
upstream (tests/fixtures/token_reporter.py) that accepts only JWTs of that IdP for its own audience and
reports the token each call came with, and logs every Authorization header it receives.

Shown: alice's call reaches the upstream with a token whose audience is the upstream's and whose subject is
alice; a policy rule with ``obligations.upstream_scopes`` narrows one tool's token to ``reports:read``; the
upstream lists with the gateway's own client-credentials token; the client's own token appears neither in
the upstream's log nor in the audit database nor in mcp-guard's log; an API-key caller is denied
``subject_token_missing``; with the IdP stopped, a call whose exchanged token is cached still works and one
that needs a new exchange is denied ``token_exchange_failed``.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
from e2e_support import API_KEY, REPO, _wait_for_url, guard_argv, start_oidc_idp, write_config
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

REPORTER = REPO / "tests" / "fixtures" / "token_reporter.py"
UPSTREAM_AUD = "https://reports.upstream.test/mcp"
EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
GATEWAY = {
    "client_id": "mcp-guard-gw",
    "client_secret": "gw-secret-7c1e93b04d5a",
    "grant_types": ["client_credentials", EXCHANGE_GRANT],
}
ALICE = {"client_id": "alice-agent", "client_secret": "alice-secret-4e1f0c9a7b", "groups": ["support"]}
BOB = {"client_id": "bob-agent", "client_secret": "bob-secret-2a8d5f6e1c", "groups": ["support"]}
CLIENTS = [GATEWAY, ALICE, BOB]

POLICY = """package mcp_guard

import rego.v1

default decision := {"allow": true, "reasons": ["allowed"], "obligations": {}}

read_only := {"upstream_scopes": ["reports:read"]}

decision := {"allow": true, "reasons": ["reading needs read only"], "obligations": read_only} if {
	input.tool == "read_report"
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[Any] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Stack:
    issuer: str
    url: str
    audit: Path
    guard_log: Path
    upstream_log: Path
    idp: subprocess.Popen[str]

    async def token(self, client: dict[str, Any]) -> str:
        async with httpx2.AsyncClient(timeout=10) as http:
            r = await http.post(
                f"{self.issuer}/token",
                data={"grant_type": "client_credentials", "resource": self.url, "scope": "tools:read"},
                auth=(client["client_id"], client["client_secret"]),
            )
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    def decisions(self, principal: str) -> list[dict[str, Any]]:
        with sqlite3.connect(self.audit) as db:
            rows = db.execute(
                "SELECT decision, reasons, details, tool FROM audit_events WHERE kind = 'call.decision' "
                "AND principal = ? ORDER BY seq",
                (principal,),
            ).fetchall()
        return [
            {"decision": d, "reasons": json.loads(r or "[]"), "details": json.loads(x or "{}"), "tool": t}
            for d, r, x, t in rows
        ]

    def upstream_authorizations(self) -> list[str]:
        lines = self.upstream_log.read_text().splitlines() if self.upstream_log.exists() else []
        return [str(json.loads(line)["authorization"]) for line in lines if line.strip()]


def _start_idp(resource: str) -> tuple[subprocess.Popen[str], str]:
    args = ["--port", str(_free_port()), "--resource", resource, "--upstream-resource", UPSTREAM_AUD]
    return start_oidc_idp(args, {"IDP_CLIENTS": json.dumps(CLIENTS)})


def _start_upstream(issuer: str, log: Path) -> tuple[subprocess.Popen[str], str]:
    argv = [sys.executable, str(REPORTER), "--log", str(log), "--jwks", f"{issuer}/jwks"]
    proc = subprocess.Popen(
        [*argv, "--issuer", issuer, "--audience", UPSTREAM_AUD], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        raise AssertionError(f"the upstream did not start (exit {proc.wait(10)})")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}/mcp"


@contextmanager
def exchange_stack(tmp: Path) -> Iterator[Stack]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    idp, issuer = _start_idp(url)
    upstream: subprocess.Popen[str] | None = None
    guard: subprocess.Popen[bytes] | None = None
    try:
        upstream_log = tmp / "upstream.jsonl"
        upstream, upstream_url = _start_upstream(issuer, upstream_log)
        bundle = tmp / "bundle"
        bundle.mkdir()
        (bundle / "policy.rego").write_text(POLICY)
        extra = (
            f'\n[auth]\nissuer = "{issuer}"\naudience = "{url}"\nroles_claim = "groups"\njwks_min_interval_s = 1\n'
            '\n[secrets.gw_secret]\nprovider = "env"\nname = "E2E_GW_CLIENT_SECRET"\n'
        )
        exchange = {
            "client_id": GATEWAY["client_id"],
            "client_secret": "gw_secret",
            "audience": UPSTREAM_AUD,
            "scopes": ["reports:read", "reports:write"],
        }
        rep = {"transport": "http", "url": upstream_url, "token_exchange": exchange, "timeout_s": 20}
        cfg = write_config(tmp, {"rep": rep}, extra=extra, bundle=bundle)
        log = tmp / "guard.log"
        with log.open("w") as err:
            guard = subprocess.Popen(
                guard_argv(cfg, "--transport", "http", "--port", str(port), "--log-level", "debug"),
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "E2E_GW_CLIENT_SECRET": GATEWAY["client_secret"]},
            )
            assert _wait_for_url(guard, log) == url
            yield Stack(issuer, url, tmp / "audit.db", log, upstream_log, idp)
    finally:
        for proc in (guard, upstream, idp):
            _stop(proc)


def _client(url: str, bearer: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {bearer}"}, timeout=httpx2.Timeout(30.0))
    return Client(streamable_http_client(url, http_client=http), mode="legacy", read_timeout_seconds=30.0)  # type: ignore[arg-type]


def _seen(result: types.CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _claims(bearer: str) -> dict[str, Any]:
    """The (unverified) claims of a JWT the upstream received: whose token it was."""
    payload = bearer.removeprefix("Bearer ").split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


async def test_each_call_carries_the_callers_exchanged_token_narrowed_by_policy(tmp_path: Path) -> None:
    with exchange_stack(tmp_path) as stack:
        alice = await stack.token(ALICE)
        async with _client(stack.url, alice) as a:
            assert {"rep__read_report", "rep__write_report"} <= {t.name for t in (await a.list_tools()).tools}
            wrote = _seen(await a.call_tool("rep__write_report", {"name": "q3"}))
            read = _seen(await a.call_tool("rep__read_report", {"name": "q3"}))
        assert wrote["sub"] == read["sub"] == "alice-agent"
        assert wrote["aud"] == read["aud"] == UPSTREAM_AUD
        assert wrote["scope"] == "reports:read reports:write"  # no upstream_scopes: every configured scope
        assert read["scope"] == "reports:read"  # narrowed by the policy for this tool's call
        assert wrote["act"] == {"sub": GATEWAY["client_id"]}

        allows = [r for r in stack.decisions("alice-agent") if r["decision"] == "allow"]
        by_tool = {r["tool"]: r["details"]["upstream_token"] for r in allows}
        assert by_tool == {
            "write_report": {"audience": UPSTREAM_AUD, "scopes": ["reports:read", "reports:write"]},
            "read_report": {"audience": UPSTREAM_AUD, "scopes": ["reports:read"]},
        }

        # The upstream's own traffic (handshake, listing) came with the gateway's client-credentials token.
        received = stack.upstream_authorizations()
        subjects = {_claims(h)["sub"] for h in received}
        assert subjects == {GATEWAY["client_id"], "alice-agent"}, subjects

        # An API-key caller has no token to exchange: denied, with the reason recorded.
        async with _client(stack.url, API_KEY) as agent:
            denied = await agent.call_tool("rep__read_report", {"name": "q3"})
        assert denied.is_error and "subject_token_missing" in _text(denied)
        (row,) = stack.decisions("agent")
        assert row["decision"] == "deny" and row["reasons"][0] == "subject_token_missing", row

    # The client's own token never went upstream, into the audit database, or into mcp-guard's log.
    assert all(alice not in h for h in received)
    assert alice.encode() not in stack.audit.read_bytes()
    assert alice not in stack.guard_log.read_text()
    for sent in received:  # nor did an exchanged token reach the audit database or the log
        token = sent.removeprefix("Bearer ")
        assert token.encode() not in stack.audit.read_bytes() and token not in stack.guard_log.read_text()


async def test_idp_down_cached_exchange_keeps_working_a_new_one_is_refused(tmp_path: Path) -> None:
    with exchange_stack(tmp_path) as stack:
        alice = await stack.token(ALICE)
        async with _client(stack.url, alice) as a:
            assert _seen(await a.call_tool("rep__read_report", {}))["scope"] == "reports:read"
            _stop(stack.idp)
            # Same caller, same scopes: the exchanged token is cached and still valid.
            assert _seen(await a.call_tool("rep__read_report", {}))["sub"] == "alice-agent"
            # Other scopes need a new exchange, and the IdP is gone: denied, never sent with another token.
            before = len(stack.upstream_authorizations())
            refused = await a.call_tool("rep__write_report", {})
        assert refused.is_error and "token_exchange_failed" in _text(refused)
        assert len(stack.upstream_authorizations()) == before
        last = stack.decisions("alice-agent")[-1]
        assert last["decision"] == "deny" and last["reasons"][0] == "token_exchange_failed", last
        assert "the IdP could not be reached" in last["reasons"][1]
