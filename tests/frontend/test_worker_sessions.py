"""Session ids that name their worker (frontend/worker_sessions.py), on an in-memory ASGI app, and the audit
rows of a real HTTP front serving as a worker."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import anyio
import httpx2
import pytest

from guard_harness import TIMEOUT_S, make_settings, recorder_upstream, running_guard
from http_harness import sse_answer
from mcp_guard.frontend.worker_sessions import WorkerSessions
from mcp_guard.testing import RecordingSink

pytestmark = pytest.mark.anyio


class SessionApp:
    """Answers with the session id it was given (or issues "abc"), as the SDK's session manager would."""

    def __init__(self) -> None:
        self.seen: list[bytes | None] = []
        self.lifespan = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            self.lifespan += 1
            return
        given = dict(scope["headers"]).get(b"mcp-session-id")
        self.seen.append(given)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"mcp-session-id", given or b"abc")]})
        await send({"type": "http.response.body", "body": b""})


async def ask(app: Any, session: bytes | None) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"host", b"127.0.0.1")] + ([(b"mcp-session-id", session)] if session is not None else [])
    await app({"type": "http", "method": "POST", "path": "/mcp", "headers": headers}, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


async def test_issued_ids_name_the_worker_and_come_back_bare() -> None:
    inner = SessionApp()
    app = WorkerSessions(inner, 1)
    status, headers, _ = await ask(app, None)
    assert status == 200 and headers[b"mcp-session-id"] == b"w1-abc"
    status, headers, _ = await ask(app, b"w1-abc")
    assert status == 200 and inner.seen == [None, b"abc"] and headers[b"mcp-session-id"] == b"w1-abc"


async def test_another_workers_session_is_a_404_naming_it() -> None:
    inner = SessionApp()
    status, headers, body = await ask(WorkerSessions(inner, 0), b"w3-abc")
    assert status == 404 and inner.seen == []
    error = json.loads(body)["error"]
    assert error["code"] == -32001 and "worker 3" in error["message"] and "worker 0" in error["message"]
    assert headers[b"content-type"] == b"application/json"


async def test_an_id_without_a_worker_prefix_and_other_scopes_pass_through() -> None:
    inner = SessionApp()
    app = WorkerSessions(inner, 0)
    status, _, _ = await ask(app, b"w10abc")  # not a prefix: the session manager says whether it exists
    assert status == 200 and inner.seen == [b"w10abc"]
    await app({"type": "lifespan"}, None, None)
    assert inner.lifespan == 1


async def test_a_workers_audit_rows_carry_the_session_id_its_client_holds() -> None:
    """``run --workers N``: the session.start row and each call's decision row name the session as the client's
    Mcp-Session-Id does (``w<n>-`` and the SDK's id), so a row can be matched to the client's session."""
    key = "worker-test-key-0123456789"
    settings = make_settings(
        {"rec": recorder_upstream()},
        principals={"alice": {"roles": ["support"], "api_key_sha256": hashlib.sha256(key.encode()).hexdigest()}},
    )
    sink = RecordingSink()
    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "Authorization": f"Bearer {key}",
    }
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
    }
    echo = {"name": "rec__echo", "arguments": {"text": "hi"}}
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": echo}
    port: list[int] = []
    async with running_guard(settings, sink=sink) as guard, anyio.create_task_group() as tg:
        listening = anyio.Event()

        def ready(p: int) -> None:
            port.append(p)
            listening.set()

        tg.start_soon(lambda: guard.serve_http("127.0.0.1", 0, ready=ready, worker=3))
        with anyio.fail_after(TIMEOUT_S):
            await listening.wait()
        url = f"http://127.0.0.1:{port[0]}/mcp"
        async with httpx2.AsyncClient(timeout=TIMEOUT_S) as http:
            r = await http.post(url, json=init, headers=headers)
            sid = r.headers["mcp-session-id"]
            assert r.status_code == 200 and sid.startswith("w3-")
            session = {**headers, "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
            r = await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
            assert r.status_code == 202
            r = await http.post(url, json=call, headers=session)
            assert r.status_code == 200 and not sse_answer(r)["result"].get("isError")
            await http.delete(url, headers=session)
        tg.cancel_scope.cancel()
    (start,) = sink.of_kind("session.start")
    (decision,) = sink.of_kind("call.decision")
    assert start.session_id == sid and decision.session_id == sid
    assert all(e.session_id == sid for e in sink.of_kind("session.end"))
