"""2025-11-25 sessions over HTTP: a request POST is answered JSON unless the call streams (frontend/json_first.py).

Raw HTTP, so the content type each case gets is visible: a plain call is one JSON body; a call that reports
progress, or whose upstream asks the client something mid-call, or that outlasts the JSON window is an SSE
stream whose events are exactly what the SDK's transport would have sent; what the transport does not
defer (initialize, notifications, malformed bodies, an Accept without SSE) is answered as before.

Every case runs twice: with ``tools/call`` run in the POST's own task (frontend/direct_call.py; the session makes
a listing first, so the front knows it) and through the SDK's dispatcher (``sdk``): the answers must not differ.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest

from guard_harness import make_settings, recorder_upstream, running_guard
from http_harness import http_client, http_front, raw_session, tools_call_body
from mcp_guard.frontend import json_first

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("direct_runs")]

KEY = "alice-json-first-key-0123456789"


def _settings():  # type: ignore[no-untyped-def]
    return make_settings(
        {"rec": recorder_upstream()},
        principals={"alice": {"roles": ["support"], "api_key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}},
    )


@asynccontextmanager
async def _session(
    capabilities: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[httpx2.AsyncClient, str, dict[str, str]]]:
    """A guard's HTTP front and one initialized 2025-11-25 session on it: (client, url, the session's headers)."""
    async with (
        running_guard(_settings()) as guard,
        http_front(guard) as url,
        httpx2.AsyncClient(timeout=20) as http,
    ):
        headers = await raw_session(http, url, KEY, capabilities=capabilities)
        yield http, url, headers


def _events(body: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages of an SSE body, in order (comments and empty priming events skipped)."""
    out = []
    for line in body.splitlines():
        if line.startswith("data:") and line[5:].strip():
            out.append(json.loads(line[5:]))
    return out


async def test_a_call_that_streams_nothing_is_one_json_body(direct_runs: list[str] | None) -> None:
    async with _session() as (http, url, headers):
        r = await http.post(url, json=tools_call_body(1, "rec__echo", {"text": "plain"}), headers=headers)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/json")
        assert r.headers["mcp-session-id"] == headers["mcp-session-id"]
        body = r.json()
        assert body["id"] == 1 and body["result"]["content"][0]["text"] == "plain"
        # a JSON-RPC error answer (unknown method) is JSON as well, with the request's id
        r = await http.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "no/such"}, headers=headers)
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["id"] == 2 and r.json()["error"]["code"] == -32601
        assert direct_runs is None or direct_runs == ["tools/call"]


async def test_a_call_reporting_progress_is_an_sse_stream(direct_runs: list[str] | None) -> None:
    async with _session() as (http, url, headers):
        call = tools_call_body(3, "rec__slow", {"seconds": 0.05, "steps": 3}, meta={"progressToken": "p-1"})
        r = await http.post(url, json=call, headers=headers)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _events(r.text)
        progress = [e for e in events if e.get("method") == "notifications/progress"]
        assert [p["params"]["progress"] for p in progress] == [1, 2, 3]
        assert all(p["params"]["progressToken"] == "p-1" for p in progress)
        assert events[-1]["id"] == 3 and "result" in events[-1]  # the response ends the stream
        assert direct_runs is None or direct_runs == ["tools/call"]


async def test_an_upstream_request_mid_call_streams_and_its_answer_completes_the_call(
    direct_runs: list[str] | None,
) -> None:
    async with _session({"elicitation": {"form": {}}}) as (http, url, headers):
        call = tools_call_body(4, "rec__elicit", {"message": "Which colour?"})
        async with http.stream("POST", url, json=call, headers=headers) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            seen: list[dict[str, Any]] = []
            async for line in r.aiter_lines():
                if not (line.startswith("data:") and line[5:].strip()):
                    continue
                message = json.loads(line[5:])
                seen.append(message)
                if message.get("method") == "elicitation/create":
                    answer = {
                        "jsonrpc": "2.0",
                        "id": message["id"],
                        "result": {"action": "accept", "content": {"answer": "teal"}},
                    }
                    posted = await http.post(url, json=answer, headers=headers)
                    assert posted.status_code == 202
                if message.get("id") == 4:
                    break
        assert seen[0]["method"] == "elicitation/create"
        assert "Which colour?" in seen[0]["params"]["message"]
        final = seen[-1]
        assert final["id"] == 4 and "teal" in json.dumps(final["result"])
        assert direct_runs is None or direct_runs == ["tools/call"]


async def test_a_call_outlasting_the_json_window_gets_headers_and_its_answer_as_sse(
    monkeypatch: pytest.MonkeyPatch, direct_runs: list[str] | None
) -> None:
    monkeypatch.setattr(json_first, "JSON_WINDOW_S", 0.01)
    async with _session() as (http, url, headers):
        r = await http.post(url, json=tools_call_body(5, "rec__slow", {"seconds": 0.2, "steps": 1}), headers=headers)
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _events(r.text)
        assert [e["id"] for e in events] == [5] and "result" in events[0]
        assert direct_runs is None or direct_runs == ["tools/call"]


async def test_what_is_not_deferred_is_answered_as_the_sdk_answers_it() -> None:
    async with _session() as (http, url, headers):
        # no text/event-stream in Accept: refused, as before
        only_json = {**headers, "Accept": "application/json"}
        r = await http.post(url, json=tools_call_body(6, "rec__echo", {"text": "x"}), headers=only_json)
        assert r.status_code == 406
        # a body that is not JSON, and a batch: the SDK's 400s
        r = await http.post(url, content=b"{not json", headers=headers)
        assert r.status_code == 400 and r.json()["error"]["code"] == -32700
        r = await http.post(url, json=[tools_call_body(7, "rec__echo", {"text": "x"})], headers=headers)
        assert r.status_code == 400
        # no session id: 400, an unknown one: 404 (the manager's), and the call never ran
        r = await http.post(
            url, json=tools_call_body(8, "rec__echo", {"text": "x"}), headers={**headers, "mcp-session-id": "nope"}
        )
        assert r.status_code == 404


async def test_the_sdk_client_works_against_json_answers(tmp_path: Path) -> None:
    """The SDK's own client (which accepts both) reads the JSON answers; progress still reaches its callback."""
    async with running_guard(_settings()) as guard, http_front(guard) as url, http_client(url, KEY) as client:
        r = await client.call_tool("rec__echo", {"text": "sdk"})
        assert r.content[0].text == "sdk"  # type: ignore[union-attr]
        seen: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append(progress)

        await client.call_tool("rec__slow", {"seconds": 0.05, "steps": 2}, progress_callback=on_progress)
        assert seen == [1, 2]


@pytest.mark.parametrize("session_id", ["0123abcd", None])
@pytest.mark.parametrize(
    "answer",
    [
        {"result": {"content": [{"type": "text", "text": "é ☃"}], "isError": False}},
        {"error": {"code": -32602, "message": "bad", "data": {"x": 1}}},
    ],
)
async def test_a_direct_json_answer_is_the_sdks_json_response(answer: dict[str, Any], session_id: str | None) -> None:
    """The direct path writes its JSON answer itself: the same ASGI messages as the SDK's ``_create_json_response``."""
    from mcp_types import JSONRPCError, JSONRPCRequest, JSONRPCResponse

    from mcp_guard.frontend.direct_call import Settled, Settlement

    message = (JSONRPCResponse if "result" in answer else JSONRPCError).model_validate(
        {"jsonrpc": "2.0", "id": 7, **answer}
    )
    transport = json_first.JsonFirstTransport(mcp_session_id=session_id, is_json_response_enabled=False)
    scope = {"type": "http", "method": "POST", "headers": []}

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    sdk: list[Any] = []
    ours: list[Any] = []

    async def to(out: list[Any]) -> Any:
        async def send(m: dict[str, Any]) -> None:
            out.append(m)

        return send

    await transport._create_json_response(message)(scope, receive, await to(sdk))
    request = JSONRPCRequest(jsonrpc="2.0", id=7, method="tools/call")
    await transport._send_json(Settlement(Settled.ANSWERED, message), request, scope, receive, await to(ours))
    assert ours == sdk
