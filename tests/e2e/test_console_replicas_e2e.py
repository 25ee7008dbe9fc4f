"""Console sessions across replicas: two `mcp-guard run --transport http` processes on one PostgreSQL DSN.

A login on replica A is a session replica B honours (read and act, with the session's CSRF token); a logout on A
ends it on B too. The login and the logout are audit rows in the shared log, without the key."""

from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from e2e_support import http_guard, recorder, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

OPERATOR_KEY = "e2e-olga-key-9a8b7c6d"
COOKIE = "mcp_guard_console"


def _replica_config(tmp: Path, dsn: str) -> Path:
    tmp.mkdir()
    digest = hashlib.sha256(OPERATOR_KEY.encode()).hexdigest()
    operator = f'\n[principals.olga]\nroles = ["operator"]\napi_key_sha256 = "{digest}"\n'
    cfg = write_config(tmp, {"rec": recorder()}, extra=operator)
    text = cfg.read_text()
    old = f"[audit]\npath = {json.dumps(str(tmp / 'audit.db'))}\n"
    assert old in text
    cfg.write_text(text.replace(old, f'[audit]\nbackend = "postgres"\ndsn = {json.dumps(dsn)}\n'))
    return cfg


def _rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return list(conn.execute(sql))


async def test_a_login_on_one_replica_is_honoured_by_the_other_and_a_logout_ends_it_on_both(
    pg_dsn: str, tmp_path: Path
) -> None:
    configs = [_replica_config(tmp_path / name, pg_dsn) for name in ("replica-a", "replica-b")]
    with ExitStack() as stack:
        a, b = (
            stack.enter_context(http_guard(cfg, tmp_path / f"guard-{i}.log")).removesuffix("/mcp")
            for i, cfg in enumerate(configs)
        )
        async with (
            httpx2.AsyncClient(base_url=a, timeout=30) as on_a,
            httpx2.AsyncClient(base_url=b, timeout=30) as on_b,
        ):
            login = await on_a.post("/console/login", data={"key": OPERATOR_KEY})
            assert login.status_code == 303 and login.headers["location"] == "/console/", login.headers
            sid = login.cookies[COOKIE]
            on_b.cookies.set(COOKIE, sid)
            session = await on_b.get("/console/session")
            assert session.status_code == 200 and session.json()["principal"] == "olga" and session.json()["can_act"]
            csrf = {"x-csrf-token": session.json()["csrf_token"]}
            acted = await on_b.post("/admin/api/approvals/no-such-id/approve", headers=csrf)
            assert acted.status_code == 404, "past the session, CSRF and role checks on the other replica"
            assert (await on_b.get("/admin/api/health")).status_code == 200

            assert (await on_a.post("/console/logout", headers=csrf)).status_code == 204
            stale = await on_b.get("/admin/api/approvals")
            assert stale.status_code == 401, "logged out on A: the cookie is worthless on B"
            assert (await on_b.get("/console/session")).status_code == 401

    kinds = [k for (k,) in _rows(pg_dsn, "SELECT kind FROM audit_events WHERE kind LIKE 'console.%' ORDER BY seq")]
    assert kinds == ["console.login", "console.logout"]
    everything = json.dumps(_rows(pg_dsn, "SELECT * FROM audit_events"), default=str)
    assert OPERATOR_KEY not in everything and sid not in everything
