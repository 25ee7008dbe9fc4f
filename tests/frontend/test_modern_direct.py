"""A 2026-07-28 tools/call answered in its POST's own task (frontend/modern_direct.py) answers exactly as the SDK's
modern entry answers it: the same status, content type and body for results, tool errors, the upstream's JSON-RPC
errors, unknown tools, invalid params and refusals of the SDK's ladder; the same SSE stream for a call reporting
progress; the same InputRequiredResult round and retry; the same audit rows. Every case runs on both paths in one
test (``direct``, then the SDK's entry with the direct path switched off, as ``bench/ablate.py sdk-modern`` does)
and compares; raw HTTP, so status codes and content types are visible.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp.server import _streamable_http_modern

from guard_harness import make_settings, read_log, recorder_upstream, running_guard, wait_for
from http_harness import http_front
from mcp_guard.frontend import modern_direct
from mcp_guard.frontend.modern_direct import ModernDirect
from mcp_guard.testing import RecordingSink
from mcp_guard.types import EventKind

pytestmark = pytest.mark.anyio

KEY = "alice-modern-direct-key-0123456789"
VERSION = "2026-07-28"
CAPS: dict[str, Any] = {"elicitation": {"form": {}}}


def _meta(**more: Any) -> dict[str, Any]:
    return {
        types.PROTOCOL_VERSION_META_KEY: VERSION,
        types.CLIENT_INFO_META_KEY: {"name": "raw", "version": "0"},
        types.CLIENT_CAPABILITIES_META_KEY: CAPS,
        **more,
    }


def _call(rid: int, tool: str, arguments: Any, *, meta: dict[str, Any] | None = None, **params: Any) -> Any:
    """A 2026-07-28 ``tools/call`` (its body and routing headers) as a raw client posts it."""
    body = {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": meta or _meta(), **params},
    }
    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "Authorization": f"Bearer {KEY}",
        "mcp-protocol-version": VERSION,
        "mcp-method": "tools/call",
        "mcp-name": tool,
    }
    return body, headers


def _normalised(text: str) -> Any:
    """A body or row with per-call values taken out: ids (32 hex digits), requestState tokens (per-process MACs),
    times."""
    text = re.sub(r"mg1\.[A-Za-z0-9_.=-]+", "<state>", text)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z?", "<time>", text)
    return re.sub(r"\b[0-9a-f]{32}\b", "<id>", text)


def _answer(r: httpx2.Response) -> tuple[int, str, Any]:
    """What a client sees: the status, the content type, and the body (an SSE stream as its data events)."""
    kind = r.headers.get("content-type", "").split(";")[0]
    if kind == "text/event-stream":
        events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
        return r.status_code, kind, json.loads(_normalised(json.dumps(events)))
    return r.status_code, kind, json.loads(_normalised(r.text)) if r.text else None


def _rows(sink: RecordingSink) -> list[Any]:
    """The call rows audited, without their per-row ids, times and durations."""
    rows = []
    for e in sink.events:
        if e.kind.startswith("call."):
            per_row = ("event_id", "ts", "duration_ms", "decision_id", "session_id")
            row = {f.name: getattr(e, f.name) for f in dataclasses.fields(e) if f.name not in per_row}
            text = json.dumps(row, default=lambda o: getattr(o, "text", str(o)), sort_keys=True)
            rows.append(json.loads(_normalised(text)))
    return rows


async def _cases(log: Path) -> tuple[list[tuple[int, str, Any]], list[Any]]:
    """Every case on one guard's HTTP front: the answers, and the call rows audited."""
    settings = make_settings(
        {"rec": recorder_upstream(log)},
        principals={"alice": {"roles": ["support"], "api_key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}},
    )
    sink = RecordingSink()
    answers = []
    async with (
        running_guard(settings, sink=sink) as guard,
        http_front(guard) as url,
        httpx2.AsyncClient(timeout=20) as h,
    ):

        async def post(body: Any, headers: dict[str, str]) -> httpx2.Response:
            return await h.post(url, content=json.dumps(body), headers=headers)

        for rid, (tool, arguments) in enumerate(
            [
                ("rec__echo", {"text": "plain"}),  # a result
                ("rec__fail", {}),  # a tool error (isError)
                ("rec__raise_error", {}),  # the upstream's own JSON-RPC error, passed on
                ("rec__nope", {}),  # an unknown tool: mcp-guard's deny result
                ("rec__echo", "not an object"),  # invalid params: the SDK's validation
            ],
            start=1,
        ):
            answers.append(_answer(await post(*_call(rid, tool, arguments))))
        # A call reporting progress the client asked for: the SDK's SSE stream, its events, then the answer.
        progress = _meta(progressToken="p-1")
        answers.append(_answer(await post(*_call(6, "rec__slow", {"seconds": 0.05, "steps": 2}, meta=progress))))
        # Refusals of the SDK's ladder: a routing header that disagrees with the body, an envelope without _meta.
        body, headers = _call(7, "rec__echo", {"text": "x"})
        answers.append(_answer(await post(body, {**headers, "mcp-name": "rec__other"})))
        body, headers = _call(8, "rec__echo", {"text": "x"})
        del body["params"]["_meta"]
        answers.append(_answer(await post(body, headers)))
        answers.append(_answer(await h.post(url, content=b"{not json", headers=headers)))
        # An InputRequiredResult round: the upstream asks the client; the retry with the answer completes the call.
        first = await post(*_call(9, "rec__elicit", {"message": "The answer?"}))
        answers.append(_answer(first))
        state = first.json()["result"]["requestState"]
        key = next(iter(first.json()["result"]["inputRequests"]))
        reply = {key: {"action": "accept", "content": {"answer": "forty-two"}}}
        retry = _call(10, "rec__elicit", {"message": "The answer?"}, inputResponses=reply, requestState=state)
        answers.append(_answer(await post(*retry)))
        assert not guard.bridge.calls
    return answers, _rows(sink)


async def test_every_answer_and_audit_row_is_the_sdk_entrys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    handled: list[str] = []
    real = ModernDirect.handle

    async def counted(self: ModernDirect, scope: Any, receive: Any, send: Any) -> None:
        handled.append(scope["path"])
        await real(self, scope, receive, send)

    monkeypatch.setattr(ModernDirect, "handle", counted)
    direct, direct_rows = await _cases(tmp_path / "direct.log")
    assert len(handled) == 11  # every case took the direct path
    monkeypatch.setattr(ModernDirect, "takes", lambda *_a: False)  # the SDK's entry (bench/ablate.py sdk-modern)
    sdk, sdk_rows = await _cases(tmp_path / "sdk.log")
    assert len(handled) == 11  # none more
    for i, (d, s) in enumerate(zip(direct, sdk, strict=True)):
        assert d == s, f"case {i}"
    assert direct_rows == sdk_rows
    # What the cases are (so a case that stopped testing what it says fails here, on both paths at once).
    json_ok = (200, "application/json")
    assert direct[0][:2] == json_ok and direct[0][2]["result"]["content"][0]["text"] == "plain"
    assert direct[1][:2] == json_ok and direct[1][2]["result"]["isError"] is True
    assert "error" in direct[2][2] and direct[2][2]["id"] == 3
    assert direct[3][2]["result"]["isError"] is True and "does not exist" in json.dumps(direct[3][2])
    assert direct[4][0] == 400 and direct[4][2]["error"]["code"] == types.INVALID_PARAMS
    status, kind, events = direct[5]
    assert (status, kind) == (200, "text/event-stream")
    assert [e.get("method") for e in events[:-1]] == ["notifications/progress"] * 2 and events[-1]["id"] == 6
    assert direct[6][0] == 400 and direct[6][2]["error"]["code"] == types.HEADER_MISMATCH
    assert direct[7][0] == 400 and direct[7][2]["error"]["code"] == types.INVALID_PARAMS
    assert direct[8][2]["error"]["code"] == types.PARSE_ERROR
    assert direct[9][2]["result"]["resultType"] == "input_required"
    assert "forty-two" in json.dumps(direct[10][2]["result"])
    assert [r["kind"] for r in direct_rows].count(EventKind.CALL_DECISION) >= 5


async def _hang_then_disconnect(log: Path, sink: RecordingSink) -> None:
    """``rec__hang`` called over 2026-07-28; once the upstream has it, the client closes the connection. The round
    being served ends with it (the bridge's call is no longer ``busy`` and its expiry runs) while the call itself
    waits for a retry until it expires, as any abandoned round does (frontend/input_required.py)."""
    settings = make_settings(
        {"rec": recorder_upstream(log)},
        principals={"alice": {"roles": ["support"], "api_key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}},
    )
    async with running_guard(settings, sink=sink) as guard, http_front(guard) as url:
        body, headers = _call(1, "rec__hang", {})
        async with httpx2.AsyncClient(timeout=20) as http, anyio.create_task_group() as tg:

            async def call() -> None:
                await http.post(url, content=json.dumps(body), headers=headers)

            tg.start_soon(call)
            await wait_for(lambda: any(e.get("name") == "hang" for e in read_log(log)))
            (pending,) = guard.bridge.calls.values()
            assert pending.busy  # the POST is serving the call's round
            tg.cancel_scope.cancel()  # the client goes away: its connection closes
        await wait_for(lambda: not pending.busy and pending.deadline != math.inf)


@pytest.mark.parametrize("path", ["direct", "sdk"])
async def test_a_client_that_disconnects_ends_its_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    if path == "sdk":
        monkeypatch.setattr(ModernDirect, "takes", lambda *_a: False)
    sink = RecordingSink()
    await _hang_then_disconnect(tmp_path / "rec.log", sink)
    assert not sink.of_kind(EventKind.CALL_RESULT)


@pytest.mark.parametrize("path", ["direct", "sdk"])
async def test_a_call_outlasting_the_window_is_an_sse_stream_with_keep_alives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    # The window and the keep-alive interval shortened on both paths (the SDK reads its own at each wait).
    monkeypatch.setattr(modern_direct, "PING_INTERVAL_S", 0.02)
    monkeypatch.setattr(_streamable_http_modern, "_SSE_PING_INTERVAL", 0.02)
    if path == "sdk":
        monkeypatch.setattr(ModernDirect, "takes", lambda *_a: False)
    settings = make_settings(
        {"rec": recorder_upstream(tmp_path / "rec.log")},
        principals={"alice": {"roles": ["support"], "api_key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}},
    )
    async with running_guard(settings) as guard, http_front(guard) as url, httpx2.AsyncClient(timeout=20) as http:
        body, headers = _call(3, "rec__slow", {"seconds": 0.3, "steps": 1})
        r = await http.post(url, content=json.dumps(body), headers=headers)
    assert r.status_code == 200 and r.headers["content-type"].split(";")[0] == "text/event-stream"
    assert ": ping" in r.text  # the keep-alive comment, sent while the call was silent
    events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
    assert [e["id"] for e in events] == [3] and "result" in events[0]


@pytest.mark.parametrize(
    "raw",
    [
        [],
        [(b"mcp-method", b"tools/call"), (b"accept", b"application/json")],
        [(b"accept", b"text/event-stream"), (b"x-dup", b"first"), (b"accept", b"application/json"), (b"x-dup", b"2")],
        [(b"mcp-name", b"caf\xe9"), (b"host", b"h"), (b"mcp-name", b"second")],
    ],
)
def test_the_headers_the_ladder_gets_are_what_dict_of_starlettes_headers_gives(raw: list[tuple[bytes, bytes]]) -> None:
    # First value per name, names in order of first appearance, latin-1 decoded: exactly dict(request.headers).
    from starlette.datastructures import Headers

    headers = Headers(raw=raw)
    got = modern_direct._first_values(headers.items())
    assert got == dict(headers) and list(got) == list(dict(headers))
