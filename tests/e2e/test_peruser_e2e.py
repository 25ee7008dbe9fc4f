"""Per-user upstream credentials, end to end: a real `mcp-guard run --transport http` with three API-key
principals in front of a stdio upstream (tests/fixtures/credential_reporter.py) whose token is a
per-principal secret (``name = "E2E_PEERTOKEN_{principal}"``).

Each principal's calls reach a child of its own that holds only its own token (the upstream reports a hash,
compared with the hash of the token given to that principal); the pool starts one child per principal and
stops it when idle (audited ``upstream.pool_start`` / ``upstream.pool_stop``); a principal without a token is
denied ``credential_missing`` and gets no child; no token appears in a result, the audit database or the log.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from e2e_support import API_KEY, POLL_S, REPO, _wait_for_url, guard_argv, write_config
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

sys.path.insert(0, str(REPO / "tests" / "secrets"))
from secret_checks import assert_no_secret  # noqa: E402

REPORTER = REPO / "tests" / "fixtures" / "credential_reporter.py"
KEYS = {"alice": "e2e-alice-key-5a1f90c3", "bob": "e2e-bob-key-8c2e41d7", "carol": "e2e-carol-key-3b7d02e9"}
TOKENS = {"alice": "ghp_aliceOwnToken+9f3K/2b==", "bob": "ghp_bobsOwnToken-7Qx1Lm0Zp"}  # carol has none
IDLE_S = 3.0
DEADLINE_S = 60.0


def _config(tmp: Path) -> Path:
    principals = "".join(
        f'\n[principals.{p}]\nroles = ["developer"]\napi_key_sha256 = "{hashlib.sha256(k.encode()).hexdigest()}"\n'
        for p, k in KEYS.items()
    )
    extra = principals + '\n[secrets.peer_token]\nprovider = "env"\nname = "E2E_PEERTOKEN_{principal}"\n'
    upstream = {
        "command": sys.executable,
        "args": [str(REPORTER)],
        "inject_env": {"UPSTREAM_TOKEN": "peer_token"},
        "pool": {"max": 4, "idle_s": IDLE_S},
        "timeout_s": 20,
    }
    return write_config(tmp, {"rep": upstream}, extra=extra, secrets_allowed=["peer_token"])


@contextmanager
def _guard(cfg: Path, log_file: Path) -> Iterator[str]:
    """The HTTP front, with each principal's token in mcp-guard's own environment; its /mcp URL."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **{f"E2E_PEERTOKEN_{p}": t for p, t in TOKENS.items()}}
    err = log_file.open("w")
    proc = subprocess.Popen(
        guard_argv(cfg, "--transport", "http", "--port", "0", "--log-level", "info"),
        stdout=subprocess.DEVNULL,
        stderr=err,
        cwd=REPO,
        env=env,
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


def _client(url: str, principal: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {KEYS[principal]}"}, timeout=httpx2.Timeout(60.0))
    return Client(streamable_http_client(url, http_client=http), read_timeout_seconds=60.0)


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _rows(audit: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(audit)
    try:
        rows = db.execute("SELECT kind, principal, server, decision, reasons, details FROM audit_events ORDER BY seq")
        return [
            {
                "kind": k,
                "principal": p,
                "server": s,
                "decision": d,
                "reasons": json.loads(r) if r else [],
                "details": json.loads(x) if x else {},
            }
            for k, p, s, d, r, x in rows.fetchall()
        ]
    finally:
        db.close()


def _pool_rows(audit: Path, kind: str) -> list[dict[str, Any]]:
    return [r for r in _rows(audit) if r["kind"] == kind]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose (mcp-guard reaps its children when the transport closes).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


async def _until(what: str, check: Any) -> None:
    with anyio.fail_after(DEADLINE_S):
        while not check():  # noqa: ASYNC110 - the state lives in another process
            await anyio.sleep(POLL_S)


async def _whoami(client: Client) -> dict[str, Any]:
    r = await client.call_tool("rep__whoami", {})
    assert not r.is_error, r
    assert isinstance(r.structured_content, dict)
    return r.structured_content


async def test_each_principal_reaches_its_own_child_with_its_own_token(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    log_file = tmp_path / "guard.log"
    audit = tmp_path / "audit.db"
    seen: list[str] = []
    with _guard(cfg, log_file) as url:
        async with _client(url, "alice") as alice, _client(url, "bob") as bob, _client(url, "carol") as carol:
            # Listing starts the caller's own child (on demand): its tools are listed.
            listed = await alice.list_tools()
            assert "rep__whoami" in {t.name for t in listed.tools}
            a1 = await _whoami(alice)
            again = await _whoami(alice)
            if not any(r["principal"] == "alice" for r in _pool_rows(audit, "upstream.pool_stop")):
                assert again["pid"] == a1["pid"], "alice's second call went to another child"
            b1 = await _whoami(bob)
            assert a1["sha256"] == again["sha256"] == _sha(TOKENS["alice"])
            assert b1["sha256"] == _sha(TOKENS["bob"])
            assert b1["pid"] not in (a1["pid"], again["pid"]), "alice and bob share one upstream process"

            # What a child says about its credential comes back scrubbed, whoever's it is.
            for client in (alice, bob):
                leaked = await client.call_tool("rep__leak", {})
                text = leaked.model_dump_json()
                assert "[REDACTED:peer_token]" in text, text
                seen.append(text)

            # Carol has no token: denied with a reason that says so, and no child is started for her.
            denied = await carol.call_tool("rep__whoami", {})
            assert denied.is_error
            seen.append(denied.model_dump_json())
            seen.append((await carol.list_tools()).model_dump_json())
            carol_rows = [r for r in _rows(audit) if r["principal"] == "carol" and r["kind"] == "call.decision"]
            assert carol_rows and carol_rows[-1]["decision"] == "deny"
            assert carol_rows[-1]["reasons"][0] == "credential_missing", carol_rows[-1]
            assert "E2E_PEERTOKEN_carol" in " ".join(carol_rows[-1]["reasons"])

            starts = _pool_rows(audit, "upstream.pool_start")
            assert {r["principal"] for r in starts} == {"alice", "bob"}, starts
            assert all(r["server"] == "rep" for r in starts)

            # Idle children are stopped (audited), their processes gone.
            await _until(
                "both idle children stopped",
                lambda: {r["principal"] for r in _pool_rows(audit, "upstream.pool_stop")} >= {"alice", "bob"},
            )
            stops = _pool_rows(audit, "upstream.pool_stop")
            assert {r["details"]["reason"] for r in stops} == {"idle"}, stops
            await _until("the children exited", lambda: not any(_alive(x["pid"]) for x in (a1, again, b1)))

            # The next call starts a new child for alice, again with her own token only.
            starts_before = len(_pool_rows(audit, "upstream.pool_start"))
            a2 = await _whoami(alice)
            assert a2["sha256"] == _sha(TOKENS["alice"]) and a2["pid"] not in (a1["pid"], again["pid"])
            assert [r["principal"] for r in _pool_rows(audit, "upstream.pool_start")[starts_before:]] == ["alice"]

    _verify_and_scan(cfg, tmp_path, [*seen, log_file.read_text()], list(TOKENS.values()))


def _verify_and_scan(cfg: Path, tmp: Path, seen: list[str], tokens: list[str]) -> None:
    """``audit verify`` passes on the chain, and no token is in what the clients saw, the log or the audit files."""
    verify = subprocess.run(
        [sys.executable, "-m", "mcp_guard", "audit", "verify", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    blobs = [s.encode() for s in seen] + [p.read_bytes() for p in tmp.glob("audit.db*")]
    for token in tokens:
        for blob in blobs:
            assert_no_secret(blob, token)


# ------------------------------------------------------------------------------------------- with the real IdP
# The test IdP's clients (tests/e2e/test_oauth_e2e.CLIENTS; sub = client id): each has a token file. The
# API-key principal "agent" of write_config has none.
FILE_TOKENS = {"alice-agent": "ghp_aliceFileToken/1Qw9==", "carol-agent": "ghp_carolFileToken-8Zx2"}


async def _idp_token(issuer: str, resource: str, client_id: str) -> str:
    from test_oauth_e2e import SECRET

    async with httpx2.AsyncClient(timeout=10) as http:
        r = await http.post(
            f"{issuer}/token",
            data={"grant_type": "client_credentials", "resource": resource, "scope": "tools:read"},
            auth=(client_id, SECRET[client_id]),
        )
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def _bearer(url: str, token: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(60.0))
    return Client(streamable_http_client(url, http_client=http), read_timeout_seconds=60.0)


@contextmanager
def _idp_stack(tmp: Path) -> Iterator[tuple[str, str, Path, Path]]:
    """The test IdP and mcp-guard as its resource server, each subject's token a file under ``tmp/tokens``:
    ``(issuer, /mcp url, config, log file)``."""
    from test_oauth_e2e import _free_port, _start_idp

    tokens_dir = tmp / "tokens"
    tokens_dir.mkdir()
    for sub, token in FILE_TOKENS.items():
        (tokens_dir / sub).write_text(token + "\n")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    idp, issuer = _start_idp(url, _free_port())
    log_file = tmp / "guard.log"
    extra = (
        f'\n[auth]\nissuer = "{issuer}"\naudience = "{url}"\nroles_claim = "groups"\n'
        f'\n[secrets.peer_token]\nprovider = "file"\nname = "{tokens_dir}/{{principal}}"\n'
    )
    upstream = {"command": sys.executable, "args": [str(REPORTER)], "inject_env": {"UPSTREAM_TOKEN": "peer_token"}}
    cfg = write_config(tmp, {"rep": upstream}, extra=extra, secrets_allowed=["peer_token"])
    guard: subprocess.Popen[bytes] | None = None
    try:
        with log_file.open("w") as err:
            guard = subprocess.Popen(
                guard_argv(cfg, "--transport", "http", "--port", str(port), "--log-level", "info"),
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            assert _wait_for_url(guard, log_file) == url
            yield issuer, url, cfg, log_file
    finally:
        for proc in (guard, idp):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


async def test_idp_subjects_get_their_own_file_credentials(tmp_path: Path) -> None:
    """Principals from IdP tokens (sub = client id, with a '-'): one token file per subject under a directory;
    a principal without a file (the API-key one) is denied; neither file tokens nor the clients' bearer tokens
    reach the record."""
    audit = tmp_path / "audit.db"
    with _idp_stack(tmp_path) as (issuer, url, cfg, log_file):
        bearer = {sub: await _idp_token(issuer, url, sub) for sub in FILE_TOKENS}
        async with _bearer(url, bearer["alice-agent"]) as alice, _bearer(url, bearer["carol-agent"]) as carol:
            a = await _whoami(alice)
            c = await _whoami(carol)
        assert a["sha256"] == _sha(FILE_TOKENS["alice-agent"]) and c["sha256"] == _sha(FILE_TOKENS["carol-agent"])
        assert a["pid"] != c["pid"]
        async with _bearer(url, API_KEY) as agent:
            denied = await agent.call_tool("rep__whoami", {})
        assert denied.is_error
        agent_rows = [r for r in _rows(audit) if r["principal"] == "agent" and r["kind"] == "call.decision"]
        assert agent_rows and agent_rows[-1]["reasons"][0] == "credential_missing", agent_rows
        assert {r["principal"] for r in _pool_rows(audit, "upstream.pool_start")} == set(FILE_TOKENS)
    _verify_and_scan(cfg, tmp_path, [log_file.read_text()], [*FILE_TOKENS.values(), *bearer.values()])
