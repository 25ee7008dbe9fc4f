"""Session ids that name their worker (frontend/worker_sessions.py), on an in-memory ASGI app."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mcp_guard.frontend.worker_sessions import WorkerSessions

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
