"""The console's login, session cookie, CSRF rule and headers, and the admin API it reads (events, chain, pins,
health), over a real HTTP front with a real SQLite audit log and pin store (in process)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from guard_harness import TIMEOUT_S, make_settings, recorder_upstream, running_guard
from http_harness import http_client
from mcp_guard.app import Guard
from mcp_guard.audit import open_sink
from mcp_guard.frontend.admin_pins import side_by_side
from mcp_guard.frontend.auth import key_digest
from mcp_guard.frontend.console import SECURITY_HEADERS
from mcp_guard.frontend.console_sessions import COOKIE, ConsoleSessions
from mcp_guard.pins import PinStore
from mcp_guard.testing import FunctionEngine
from mcp_guard.types import Decision, PolicyInput, Principal

pytestmark = pytest.mark.anyio

KEYS = {
    "agent": "agent-key-0123456789",
    "olga": "olga-key-0123456789",
    "vera": "vera-key-0123456789",
    "eve": "eve-0123",
}
ROLES = {"agent": ["dev"], "olga": ["operator"], "vera": ["viewer"], "eve": []}


def _decide(inp: PolicyInput) -> Decision:
    if inp.action == "tools/list" and inp.tool == "add" and inp.principal.id == "vera":
        return Decision(allow=False, revision="r1")
    if inp.action == "tools/call" and (inp.arguments or {}).get("text") == "no":
        return Decision(allow=False, reasons=("unit: no means no",), revision="r1")
    return Decision(allow=True, revision="r1")


@dataclass
class Front:
    base: str
    mcp: str
    guard: Guard

    def browser(self, **headers: str) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(base_url=self.base, headers=headers, timeout=httpx2.Timeout(20.0))


@asynccontextmanager
async def _front(tmp_path: Path, *, dsn: str | None = None, **console: Any) -> AsyncIterator[Front]:
    """A Guard serving HTTP over a real audit log: SQLite in ``tmp_path``, or PostgreSQL at ``dsn``."""
    audit = {"path": str(tmp_path / "audit.db"), "state_path": str(tmp_path / "state.db")}
    if dsn is not None:
        audit |= {"backend": "postgres", "dsn": dsn}
    settings = make_settings(
        {"rec": recorder_upstream(tmp_path / "rec.log")},
        principals={pid: {"api_key_sha256": key_digest(KEYS[pid]), "roles": ROLES[pid]} for pid in KEYS},
        audit=audit,
        console=console,
    )
    pins = PinStore(tmp_path / "state.db")
    try:
        async with open_sink(settings) as sink:
            guard = Guard(settings, engine=FunctionEngine(_decide), sink=sink, pins=pins)
            async with guard.running():
                assert not await guard.registry.wait_ready(TIMEOUT_S)
                async with guard.http_served() as url:
                    yield Front(url.removesuffix("/mcp"), url, guard)
    finally:
        pins.close()


@asynccontextmanager
async def _login(front: Front, who: str) -> AsyncIterator[httpx2.AsyncClient]:
    """A client holding ``who``'s console session cookie, sending the page's CSRF token as the page would."""
    async with front.browser() as c:
        r = await c.post("/console/login", data={"key": KEYS[who]})
        assert r.status_code == 303 and r.headers["location"] == "/console/", r.headers
        session = await c.get("/console/session")
        assert session.status_code == 200
        c.headers["x-csrf-token"] = session.json()["csrf_token"]
        yield c


async def _call(front: Front, text: str) -> None:
    async with http_client(front.mcp, KEYS["agent"]) as client:
        await client.call_tool("rec__echo", {"text": text})


# ------------------------------------------------------------------------------------------- login and cookie


async def test_login_sets_a_strict_http_only_cookie_and_refuses_bad_keys_roles_and_other_origins(
    tmp_path: Path,
) -> None:
    async with _front(tmp_path) as front, front.browser() as c:
        r = await c.post("/console/login", data={"key": "not-a-key"})
        assert r.status_code == 303 and r.headers["location"].endswith("?e=bad") and COOKIE not in r.cookies
        r = await c.post("/console/login", data={"key": KEYS["eve"]})
        assert r.headers["location"].endswith("?e=role") and COOKIE not in r.cookies
        r = await c.post("/console/login", data={"key": KEYS["olga"]}, headers={"Origin": "http://evil.example"})
        assert r.headers["location"].endswith("?e=origin") and COOKIE not in r.cookies
        r = await c.post("/console/login", data={"key": KEYS["vera"]})
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        assert "secure" not in cookie, "plain http: a Secure cookie would never come back"
        page = await c.get("/console/login", params={"e": "bad"})
        assert "not accepted" in page.text and KEYS["vera"] not in page.text
        assert (await c.get("/console/session")).status_code == 200
        c.headers["x-csrf-token"] = (await c.get("/console/session")).json()["csrf_token"]
        assert (await c.post("/console/logout")).status_code == 204
    rows = _rows(
        tmp_path, "SELECT kind, principal, decision, reasons, details FROM audit_events WHERE kind LIKE 'console.%'"
    )
    seen = [(k, p, d, json.loads(r) if r else None) for k, p, d, r, _ in rows]
    assert seen == [
        ("console.login_failed", None, "deny", ["bad_credentials"]),
        ("console.login_failed", "eve", "deny", ["no_role"]),
        ("console.login_failed", None, "deny", ["cross_origin"]),
        ("console.login", "vera", "allow", None),
        ("console.logout", "vera", None, None),
    ]
    login = json.loads(rows[3][4])
    assert login["method"] == "api_key" and login["role"] == "viewer" and login["client"].startswith("127.0.0.1:")
    assert json.loads(rows[0][4])["detail"] == "invalid_key"
    assert not any(key in json.dumps(rows) for key in KEYS.values()), "never the key"


async def test_failed_logins_are_rate_limited_per_client_address(tmp_path: Path) -> None:
    async with _front(tmp_path, login_failures_max=3, login_failures_window_s=600) as front, front.browser() as c:
        for _ in range(3):
            assert (await c.post("/console/login", data={"key": "guess"})).headers["location"].endswith("?e=bad")
        r = await c.post("/console/login", data={"key": KEYS["vera"]})
        assert r.headers["location"].endswith("?e=slow") and COOKIE not in r.cookies, "even a good key waits"
        assert "Too many failed logins" in (await c.get("/console/login", params={"e": "slow"})).text
    failed = _rows(tmp_path, "SELECT details FROM audit_events WHERE kind = 'console.login_failed'")
    assert len(failed) == 3 and json.loads(failed[-1][0])["limited"] is True, "refusals while limited: not audited"


async def test_the_session_cookie_reads_and_acting_needs_the_csrf_header_and_the_operator_role(tmp_path: Path) -> None:
    async with _front(tmp_path) as front:
        async with _login(front, "vera") as viewer:
            assert (await viewer.get("/admin/api/approvals")).status_code == 200
            no_csrf = await viewer.post("/admin/api/approvals/x/approve", headers={"x-csrf-token": ""})
            assert no_csrf.status_code == 403 and "x-csrf-token" in no_csrf.json()["error"]
            assert (await viewer.post("/admin/api/approvals/x/approve")).status_code == 403, "a viewer never acts"
        async with _login(front, "olga") as operator:
            forged = await operator.post("/admin/api/approvals/x/approve", headers={"x-csrf-token": "guess"})
            assert forged.status_code == 403
            assert (await operator.post("/admin/api/approvals/x/approve")).status_code == 404, "past the checks"
            sid = operator.cookies[COOKIE]
            assert (await operator.post("/console/logout")).status_code == 204
        async with front.browser(Cookie=f"{COOKIE}={sid}") as copied:  # the cookie, kept by someone after logout
            stale = await copied.get("/admin/api/approvals")
            assert stale.status_code == 401 and "expired" in stale.json()["error"], "logged out for good"
            assert (await copied.get("/console/")).headers["location"].endswith("?e=expired")


async def test_pages_carry_a_strict_csp_and_unknown_files_are_not_served(tmp_path: Path) -> None:
    async with _front(tmp_path) as front, front.browser() as c:
        assert (await c.get("/console/")).status_code == 303
        r = await c.get("/console/login")
        for name, value in SECURITY_HEADERS.items():
            assert r.headers[name] == value
        assert "'unsafe-inline'" not in r.headers["content-security-policy"]
        js = await c.get("/console/static/console.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert "innerHTML" not in js.text, "values are written as text, never as markup"
        assert (await c.get("/console/static/..%2Fconsole.py")).status_code == 404
        assert (await c.get("/console/static/index.html")).status_code == 404


async def test_the_console_can_be_turned_off(tmp_path: Path) -> None:
    async with _front(tmp_path, enabled=False) as front, front.browser() as c:
        assert (await c.get("/console/login")).status_code == 404
        assert (
            await c.get("/admin/api/health", headers={"Authorization": f"Bearer {KEYS['vera']}"})
        ).status_code == 200


async def test_sessions_expire_and_a_logout_is_final() -> None:
    now = [0.0]
    table = ConsoleSessions(10, clock=lambda: now[0])
    sid = await table.open(Principal(id="p", roles=("viewer",)))
    session = await table.get(sid)
    assert session is not None and session.principal.roles == ("viewer",)
    assert await table.get(sid + "x") is None and await table.get("") is None
    other = await table.open(Principal(id="q"))
    assert (await table.close(other)) is not None and await table.get(other) is None
    now[0] = 10.0
    assert await table.get(sid) is None


# ------------------------------------------------------------------------------------------- events and chain


async def _messages(response: httpx2.Response, want: int) -> list[dict[str, Any]]:
    """The first ``want`` audit events of an SSE response."""
    got: list[dict[str, Any]] = []
    event = ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "audit":
            got.append(json.loads(line[6:]))
            if len(got) == want:
                return got
    raise AssertionError("the stream ended")


async def test_the_event_stream_sends_committed_denials_matching_the_filters(tmp_path: Path) -> None:
    async with _front(tmp_path) as front, front.browser(Authorization=f"Bearer {KEYS['vera']}") as c:
        params = {"decision": "deny", "kind": "call.*"}  # the backlog or the follow: no deny is older than ours
        async with c.stream("GET", "/admin/api/events", params=params) as stream, anyio.create_task_group() as tg:
            assert stream.headers["content-type"].startswith("text/event-stream")
            tg.start_soon(_call, front, "yes")
            tg.start_soon(_call, front, "no")
            with anyio.fail_after(20):
                [denied] = await _messages(stream, 1)
        assert denied["kind"] == "call.decision" and denied["decision"] == "deny" and denied["tool"] == "echo"
        assert denied["reasons"] == ["unit: no means no"] and denied["arguments"] == {"text": "no"}

        one = (await c.get(f"/admin/api/events/{denied['seq']}")).json()
        assert one["event"] == denied and one["linked"] == [], "a deny is one row"
        [(allowed,)] = _rows(
            tmp_path, "SELECT seq FROM audit_events WHERE kind = 'call.decision' AND decision = 'allow'"
        )
        other = (await c.get(f"/admin/api/events/{allowed}")).json()
        assert [e["kind"] for e in other["linked"]] == ["call.result"], "an allowed call's outcome is linked to it"
        assert other["linked"][0]["decision_id"] == other["event"]["decision_id"]
        assert (await c.get("/admin/api/events/999999")).status_code == 404

        async with c.stream("GET", "/admin/api/events", headers={"Last-Event-ID": str(denied["seq"] - 1)}) as resumed:
            with anyio.fail_after(20):
                [again] = await _messages(resumed, 1)
        assert again == denied, "a reconnecting EventSource resumes right after the last event it had"

        chain = (await c.get("/admin/api/chain")).json()
        assert chain["ok"] and chain["head_seq"] >= denied["seq"] and len(chain["head_hash"]) == 64
        for bad in ({"since": "yesterday"}, {"last": "many"}, {"last": "1001"}):
            assert (await c.get("/admin/api/events", params=bad)).status_code == 400, bad


async def test_the_event_stream_and_the_chain_on_postgresql(tmp_path: Path, pg_dsn: str) -> None:
    async with _front(tmp_path, dsn=pg_dsn) as front, front.browser(Authorization=f"Bearer {KEYS['vera']}") as c:
        async with c.stream("GET", "/admin/api/events", params={"decision": "deny"}) as stream:
            await _call(front, "no")
            with anyio.fail_after(20):
                [denied] = await _messages(stream, 1)
        assert denied["tool"] == "echo" and denied["reasons"] == ["unit: no means no"]
        assert (await c.get(f"/admin/api/events/{denied['seq']}")).json()["event"] == denied
        chain = (await c.get("/admin/api/chain")).json()
        assert chain["ok"] and chain["head_seq"] >= denied["seq"]


async def test_a_log_that_cannot_be_read_is_a_problem_event_and_a_503(tmp_path: Path) -> None:
    settings = make_settings(
        {},
        principals={"vera": {"api_key_sha256": key_digest(KEYS["vera"]), "roles": ["viewer"]}},
        audit={"path": str(tmp_path / "nowhere" / "audit.db")},
    )
    async with running_guard(settings) as guard, guard.http_served() as url:
        headers = {"Authorization": f"Bearer {KEYS['vera']}"}
        async with httpx2.AsyncClient(base_url=url.removesuffix("/mcp"), headers=headers, timeout=20.0) as c:
            chain = await c.get("/admin/api/chain")
            assert chain.status_code == 503 and "no audit database" in chain.json()["error"]
            assert (await c.get("/admin/api/events/1")).status_code == 503
            async with c.stream("GET", "/admin/api/events") as stream:
                with anyio.fail_after(20):
                    lines = stream.aiter_lines()
                    assert await anext(lines) == "event: problem"
                    assert "no audit database" in json.loads((await anext(lines)).removeprefix("data: "))["error"]


async def test_event_streams_are_bounded_and_give_their_slot_back(tmp_path: Path) -> None:
    async with (
        _front(tmp_path, max_event_streams=1) as front,
        front.browser(Authorization=f"Bearer {KEYS['vera']}") as c,
    ):
        async with c.stream("GET", "/admin/api/events") as first:
            assert first.status_code == 200
            assert (await c.get("/admin/api/events")).status_code == 503
        with anyio.fail_after(20):
            while True:  # the first client left: its slot comes back once the server notices
                async with c.stream("GET", "/admin/api/events") as again:
                    if again.status_code == 200:
                        break
                await anyio.sleep(0.05)


# ------------------------------------------------------------------------------------------- pins and health


async def test_a_pin_is_approved_only_by_an_operator_naming_the_reviewed_hash(tmp_path: Path) -> None:
    async with _front(tmp_path) as front:
        async with http_client(front.mcp, KEYS["agent"]) as client:
            await client.call_tool("rec__mutate", {"description": "changed under our feet"})
            with anyio.fail_after(20):
                while "rec__echo" in [t.name for t in (await client.list_tools()).tools]:  # noqa: ASYNC110 - another process
                    await anyio.sleep(0.05)
        async with _login(front, "vera") as viewer, _login(front, "olga") as operator:
            [change] = (await viewer.get("/admin/api/pins")).json()["pending"]
            assert change["tool"] == "echo" and "changed under our feet" in change["diff"]
            assert any(r["op"] == "changed" and "changed under our feet" in r["new"] for r in change["rows"])
            path = "/admin/api/pins/rec/echo/approve"
            assert (await viewer.post(path, json={"sha256": change["sha256"]})).status_code == 403
            assert (await operator.post(path, json={"sha256": change["sha256"][:12]})).status_code == 400
            assert (await operator.post(path, json={"sha256": "0" * 64})).status_code == 409
            assert (
                await operator.post("/admin/api/pins/rec/nope/approve", json={"sha256": "0" * 64})
            ).status_code == 404
            ok = await operator.post(path, json={"sha256": change["sha256"]})
            assert ok.status_code == 200 and ok.json()["approved_by"] == "console:olga"
        async with http_client(front.mcp, KEYS["agent"]) as client:
            assert "rec__echo" in [t.name for t in (await client.list_tools()).tools], "un-hidden at once"
    approved = _rows(tmp_path, "SELECT principal, details FROM audit_events WHERE kind = 'tool.pin_approved'")
    assert any(p == "olga" and json.loads(d)["source"] == "console" for p, d in approved)


async def test_health_names_upstreams_sessions_and_counts(tmp_path: Path) -> None:
    async with _front(tmp_path) as front, front.browser(Authorization=f"Bearer {KEYS['vera']}") as c:
        await _call(front, "no")
        h = (await c.get("/admin/api/health")).json()
        assert h["status"] == "ready" and h["upstreams"]["rec"]["up"] and h["audit"]["backend"] == "sqlite"
        assert h["calls"]["deny"] == 1 and h["denials"][0]["tool"] == "echo"
        async with front.browser(Authorization=f"Bearer {KEYS['eve']}") as eve:
            assert (await eve.get("/admin/api/health")).status_code == 403


async def test_the_admin_api_serves_this_replicas_points_after_calls(tmp_path: Path) -> None:
    async with _front(tmp_path) as front, front.browser(Authorization=f"Bearer {KEYS['vera']}") as c:
        front.guard.metrics_history.sample()
        await _call(front, "yes")
        await _call(front, "no")
        front.guard.metrics_history.sample()
        body = (await c.get("/admin/api/metrics")).json()
        async with front.browser(Authorization=f"Bearer {KEYS['eve']}") as eve:
            assert (await eve.get("/admin/api/metrics")).status_code == 403
    assert body["replica"] and body["interval_s"] == 2.0
    points = body["points"]
    assert any(p["calls"]["allow"] > 0 for p in points) and any(p["calls"]["deny"] > 0 for p in points)
    assert any(p["p50_ms"] is not None and p["p99_ms"] >= p["p50_ms"] for p in points)


async def test_who_can_see_what_and_a_call_tried_against_the_policy_without_running_it(tmp_path: Path) -> None:
    async with _front(tmp_path) as front, front.browser(Authorization=f"Bearer {KEYS['vera']}") as c:
        assert (await c.get("/admin/api/access")).json() == {"principals": sorted(KEYS)}
        agent = (await c.get("/admin/api/access", params={"principal": "agent"})).json()
        vera = (await c.get("/admin/api/access", params={"principal": "vera"})).json()
        assert "rec__add" in [t["name"] for t in agent["tools"]] and agent["roles"] == ROLES["agent"]
        assert "rec__add" not in [t["name"] for t in vera["tools"]] and vera["total"] == agent["total"] - 1
        assert (await c.get("/admin/api/access", params={"principal": ""})).status_code == 400

        before = _rows(tmp_path, "SELECT count(*) FROM audit_events WHERE kind LIKE 'call.%'")
        tried = await c.post(
            "/admin/api/access/try", json={"principal": "agent", "tool": "rec__echo", "arguments": {"text": "no"}}
        )
        assert tried.status_code == 200, tried.text
        assert tried.json()["decision"]["allow"] is False and tried.json()["decision"]["reasons"] == [
            "unit: no means no"
        ]
        assert tried.json()["input"]["server"] == "rec" and tried.json()["input"]["tool"] == "echo"
        ok = await c.post("/admin/api/access/try", json={"principal": "agent", "tool": "rec__echo", "arguments": {}})
        assert ok.json()["decision"]["allow"] is True
        assert (await c.post("/admin/api/access/try", json={"principal": "agent", "tool": "nope"})).status_code == 404
        assert (await c.post("/admin/api/access/try", json={"tool": "rec__echo"})).status_code == 400
        assert _rows(tmp_path, "SELECT count(*) FROM audit_events WHERE kind LIKE 'call.%'") == before, "nothing ran"
        assert not (tmp_path / "rec.log").exists() or "echo" not in (tmp_path / "rec.log").read_text()
        async with front.browser(Authorization=f"Bearer {KEYS['eve']}") as eve:
            assert (await eve.get("/admin/api/access", params={"principal": "agent"})).status_code == 403


def test_side_by_side_aligns_changed_added_and_removed_lines() -> None:
    rows = side_by_side({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4})
    assert [r["op"] for r in rows] == ["same", "same", "changed", "added", "same"]
    assert rows[2] == {"op": "changed", "old": '  "b": 2', "new": '  "b": 3,'}
    assert side_by_side(None, {})[0] == {"op": "same", "old": "{}", "new": "{}"}


def _rows(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    import sqlite3

    db = sqlite3.connect(tmp_path / "audit.db")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()
