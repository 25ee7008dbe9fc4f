"""Human approval through a real ``mcp-guard run --transport http`` with real clients of both protocol eras.

The bundle asks for an approval (approvers ``role:secops``) on every ``rec__echo``; operators decide with the
real CLI (``mcp-guard approvals …``, another process on the same state file) and the admin API. What must hold:
an approved call runs exactly once; the same call again asks for a new approval; changed arguments ask for a new
approval; the requester cannot approve their own call; an approval left undecided expires into a deny naming
it; a 2026-07-28 client is given a URL elicitation and its retry runs once approved; the recorder upstream's log
proves which calls reached it; the audit chain holds every step and ``audit verify`` passes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from e2e_support import API_KEY, REPO, _wait_for_url, guard_argv, http_guard, recorder, write_config
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

BOB_KEY = "e2e-bob-operator-key-77"
BUNDLE_REGO = """package mcp_guard

import rego.v1

default decision := {"allow": true, "reasons": ["e2e: allowed"]}

decision := {
	"allow": true,
	"reasons": ["e2e: echo needs an approval"],
	"obligations": {"approval": {"reason": "echo is sensitive", "approvers": ["role:secops"], "ttl_s": ttl}},
} if {
	input.action == "tools/call"
	input.tool == "echo"
}

ttl := 1.5 if input.arguments.text == "expire-me" else := 120
"""


def _bundle(tmp: Path) -> Path:
    bundle = tmp / "bundle"
    bundle.mkdir()
    (bundle / "approval.rego").write_text(BUNDLE_REGO)
    (bundle / "data.json").write_text("{}")
    return bundle


def _config(tmp: Path, port: int) -> Path:
    extra = f"""
[principals.bob]
roles = ["secops", "operator"]
api_key_sha256 = "{hashlib.sha256(BOB_KEY.encode()).hexdigest()}"

[console]
base_url = "http://127.0.0.1:{port}"
"""
    return write_config(tmp, {"rec": recorder(tmp / "rec.log")}, bundle=_bundle(tmp), extra=extra)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _client(url: str, mode: str, **kwargs: Any) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=httpx2.Timeout(120.0))
    return Client(streamable_http_client(url, http_client=http), mode=mode, read_timeout_seconds=120.0, **kwargs)  # type: ignore[arg-type]


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _echoes(log: Path) -> list[str]:
    if not log.exists():
        return []
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [e["arguments"]["text"] for e in entries if e.get("name") == "echo"]


async def _cli(cfg: Path, *args: str, operator: str | None = None) -> tuple[int, str, str]:
    env = {**os.environ}
    env.pop("MCP_GUARD_OPERATOR", None)
    if operator is not None:
        env["MCP_GUARD_OPERATOR"] = operator
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-m", "mcp_guard", *args, "--config", str(cfg)], check=False, env=env
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def _pending_ids(cfg: Path) -> list[str]:
    code, out, err = await _cli(cfg, "approvals", "list", "--json")
    assert code == 0, err
    return [a["id"] for a in json.loads(out)["approvals"] if a["status"] == "pending"]


async def _new_pending(cfg: Path, seen: set[str]) -> str:
    """The id of the approval that appears (pending) besides those ``seen``."""
    with anyio.fail_after(60):
        while not (new := [i for i in await _pending_ids(cfg) if i not in seen]):  # noqa: ASYNC110 - another process
            await anyio.sleep(0.1)
    seen.update(new)
    return new[0]


@asynccontextmanager
async def _calling(url: str, mode: str, text: str) -> AsyncIterator[list[types.CallToolResult]]:
    """A 2025-11-25 client's call running in the background; the list holds its result once it returns."""
    results: list[types.CallToolResult] = []

    async def call() -> None:
        async with _client(url, mode) as client:
            results.append(await client.call_tool("rec__echo", {"text": text}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        yield results
    assert results, "the call did not return"


def approval_id_of(params: types.ElicitRequestURLParams) -> str:
    """The approval an elicitation points at: the last segment of its URL."""
    return params.url.rsplit("/", 1)[1]


def _rows(audit: Path) -> list[tuple[str, str | None, dict[str, Any]]]:
    db = sqlite3.connect(audit)
    try:
        rows = db.execute("SELECT kind, principal, details FROM audit_events ORDER BY seq").fetchall()
    finally:
        db.close()
    return [(k, p, json.loads(d) if d else {}) for k, p, d in rows]


@contextmanager
def _guard(cfg: Path, port: int, log_file: Path) -> Iterator[str]:
    """``mcp-guard run --transport http`` on ``port`` (the port ``[console] base_url`` names); its /mcp URL."""
    err = log_file.open("w")
    proc = subprocess.Popen(
        guard_argv(cfg, "--transport", "http", "--port", str(port), "--log-level", "info"),
        stdout=subprocess.DEVNULL,
        stderr=err,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield _wait_for_url(proc, log_file)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err.close()


async def test_approvals_from_the_cli_and_the_api_for_clients_of_both_eras(tmp_path: Path) -> None:
    port = _free_port()
    cfg = _config(tmp_path, port)
    log = tmp_path / "rec.log"
    seen: set[str] = set()
    with _guard(cfg, port, tmp_path / "guard.log") as url:
        # --- a 2025-11-25 client waits; the requester cannot approve; an operator's CLI approval runs it once
        async with _calling(url, "legacy", "one") as results:
            first = await _new_pending(cfg, seen)
            code, _, err = await _cli(cfg, "approvals", "approve", first, "--as", "agent")
            assert code == 1 and "may not decide its own approval" in err, err
            code, out, err = await _cli(cfg, "approvals", "approve", first, "--comment", "looks fine", operator="bob")
            assert code == 0 and first in out, err
        [one] = results
        assert not one.is_error and "one" in _text(one), _text(one)
        assert _echoes(log) == ["one"]
        code, _, err = await _cli(cfg, "approvals", "approve", first, "--as", "bob")
        assert code == 1 and "executed, not pending" in err, "single use: decided and consumed"

        # --- the same call again asks for a new approval; denied, the deny names it
        async with _calling(url, "legacy", "one") as results:
            again = await _new_pending(cfg, seen)
            assert again != first
            code, _, err = await _cli(cfg, "approvals", "deny", again, "--comment", "not twice", operator="bob")
            assert code == 0, err
        [denied] = results
        text = _text(denied)
        assert denied.is_error and "approval_denied" in text and again in text and "not twice" in text, text
        assert _echoes(log) == ["one"]

        # --- changed arguments ask for a new approval; approved over the admin API
        async with _calling(url, "legacy", "two") as results:
            changed = await _new_pending(cfg, seen)
            async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {BOB_KEY}"}, timeout=30) as http:
                shown = await http.get(f"http://127.0.0.1:{port}/admin/api/approvals/{changed}")
                assert shown.status_code == 200 and shown.json()["arguments"] == {"text": "two"}
                r = await http.post(f"http://127.0.0.1:{port}/admin/api/approvals/{changed}/approve", json={})
                assert r.status_code == 200, r.text
        [two] = results
        assert not two.is_error and "two" in _text(two)
        assert _echoes(log) == ["one", "two"]

        # --- an approval nobody decides expires: a deny naming it
        async with _calling(url, "legacy", "expire-me") as results:
            pass  # nobody decides (it expires sooner than `approvals list` could show it)
        [expired] = results
        text = _text(expired)
        found = re.search(r"approval ([0-9a-f]{32}) expired", text)
        assert expired.is_error and "approval_expired" in text and found, text
        expiring = found.group(1)
        assert "expire-me" not in _echoes(log)

        # --- a 2026-07-28 client gets a URL elicitation; its retry runs once approved (with the CLI)
        asked: list[types.ElicitRequestURLParams] = []

        async def on_elicit(context: Any, params: Any) -> types.ElicitResult:
            assert isinstance(params, types.ElicitRequestURLParams), params
            asked.append(params)
            prefix = f"http://127.0.0.1:{port}/admin/api/approvals/"
            assert params.url.startswith(prefix) and approval_id_of(params) in params.message
            approval_id = approval_id_of(params)
            code, _, err = await _cli(cfg, "approvals", "approve", approval_id, "--as", "bob")
            assert code == 0, err
            return types.ElicitResult(action="accept")

        async with _client(url, "2026-07-28", elicitation_callback=on_elicit) as modern:
            three = await modern.call_tool("rec__echo", {"text": "three"})
            assert not three.is_error and "three" in _text(three), _text(three)
            three_again = await modern.call_tool("rec__echo", {"text": "three"})
            assert not three_again.is_error
        assert len(asked) == 2 and approval_id_of(asked[0]) != approval_id_of(asked[1]), "same call: new approval"
        assert _echoes(log) == ["one", "two", "three", "three"]

    rows = _rows(tmp_path / "audit.db")
    steps = [(k, d.get("approval_id")) for k, _, d in rows if k.startswith("approval.")]
    for approval_id in (first, changed, approval_id_of(asked[0]), approval_id_of(asked[1])):
        mine = [k for k, i in steps if i == approval_id]
        assert mine == ["approval.requested", "approval.granted", "approval.executed"], (approval_id, mine)
    assert [k for k, i in steps if i == again] == ["approval.requested", "approval.denied"]
    assert [k for k, i in steps if i == expiring] == ["approval.requested", "approval.expired"]
    granted = next(p for k, p, d in rows if k == "approval.granted" and d["approval_id"] == first)
    assert granted == "bob"
    code, out, err = await _cli(cfg, "audit", "verify")
    assert code == 0, out + err


def _pg_replica(tmp: Path, dsn: str) -> Path:
    """A replica's config (its own state file and recorder log) whose audit log and approvals are on ``dsn``."""
    tmp.mkdir()
    cfg = _config(tmp, _free_port())
    text = cfg.read_text()
    old = f"[audit]\npath = {json.dumps(str(tmp / 'audit.db'))}\n"
    assert old in text
    cfg.write_text(text.replace(old, f'[audit]\nbackend = "postgres"\ndsn = {json.dumps(dsn)}\n'))
    return cfg


async def test_on_postgres_an_approval_made_on_another_replica_releases_the_call(pg_dsn: str, tmp_path: Path) -> None:
    replica_a, replica_b = _pg_replica(tmp_path / "a", pg_dsn), _pg_replica(tmp_path / "b", pg_dsn)
    with (
        http_guard(replica_a, tmp_path / "guard-a.log") as url_a,
        http_guard(replica_b, tmp_path / "guard-b.log") as url_b,
    ):
        async with _calling(url_a, "legacy", "via-pg") as results:
            approval_id = await _new_pending(replica_b, set())  # replica b's config sees replica a's approval
            admin_b = url_b.removesuffix("/mcp") + f"/admin/api/approvals/{approval_id}/approve"
            async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {BOB_KEY}"}, timeout=30) as http:
                r = await http.post(admin_b, json={"comment": "approved on replica b"})
            assert r.status_code == 200, r.text
        [result] = results
        assert not result.is_error and "via-pg" in _text(result), _text(result)
    assert _echoes(tmp_path / "a" / "rec.log") == ["via-pg"]
    assert not (tmp_path / "a" / "audit.db").exists() and not (tmp_path / "b" / "audit.db").exists()
    code, out, err = await _cli(replica_a, "audit", "verify")
    assert code == 0, out + err
