"""A 2025-11-25 session's tools/call run in its POST's own task (frontend/direct_call.py) answers exactly as the SDK's
dispatcher path answers it: the same bodies for results, tool errors, JSON-RPC errors, denials and invalid params,
the same streams for log messages, the same answer to a cancelled call and to a session that ends mid-call, the
same audit rows. Every case runs on both paths (``direct``, and ``sdk`` with the direct path switched off) and
compares; raw HTTP, so the content types are visible. (frontend/test_json_first.py runs its cases on both too.)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from guard_harness import RECORDER_CALLS, make_settings, read_log, recorder_upstream, running_guard, wait_for
from http_harness import counted_direct_runs, http_front, raw_session, sdk_dispatch_only, tools_call_body
from mcp_guard.testing import RecordingSink
from mcp_guard.types import EventKind

pytestmark = pytest.mark.anyio

KEY = "alice-direct-call-key-0123456789"


@asynccontextmanager
async def _session(
    log: Path, sink: RecordingSink, *, listed: bool = True
) -> AsyncIterator[tuple[httpx2.AsyncClient, str, dict[str, str]]]:
    """An initialized 2025-11-25 session on a guard's HTTP front (``listed``: it has made a listing already)."""
    settings = make_settings(
        {"rec": recorder_upstream(log)},
        principals={"alice": {"roles": ["support"], "api_key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}},
    )
    async with (
        running_guard(settings, sink=sink) as guard,
        http_front(guard) as url,
        httpx2.AsyncClient(timeout=20) as http,
    ):
        headers = await raw_session(http, url, KEY, listed=listed)
        yield http, url, headers


def _without_ids(body: dict[str, Any]) -> dict[str, Any]:
    """A response body with the per-call ids (decision ids: 32 hex digits, in ``_meta`` and in texts) taken out."""
    return dict(json.loads(re.sub(r"\b[0-9a-f]{32}\b", "<id>", json.dumps(body))))


# What each call is answered on the SDK's path (recorded from it: the direct path must give the same bodies).
CASES = RECORDER_CALLS  # one case for each way a call ends


async def _answers(log: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The bodies of :data:`CASES` in one session, and the kinds of the call rows audited."""
    sink = RecordingSink()
    answers = []
    async with _session(log, sink) as (http, url, headers):
        for i, (tool, arguments) in enumerate(CASES, start=1):
            r = await http.post(url, json=tools_call_body(i, tool, arguments), headers=headers)
            assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), r.text
            answers.append(_without_ids(r.json()))
    return answers, [e.kind for e in sink.events if e.kind.startswith("call.")]


async def test_every_answer_is_the_sdk_paths_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = counted_direct_runs(monkeypatch)
    direct, direct_rows = await _answers(tmp_path / "direct.log")
    assert runs == ["tools/call"] * len(CASES)
    sdk_dispatch_only(monkeypatch)
    sdk, sdk_rows = await _answers(tmp_path / "sdk.log")
    assert runs == ["tools/call"] * len(CASES)  # none more: the SDK's dispatcher ran the second set
    assert direct == sdk
    assert direct_rows == sdk_rows
    assert direct[0]["result"]["content"][0]["text"] == "plain"
    assert direct[1]["result"]["isError"] is True
    assert "error" in direct[2] and direct[2]["id"] == 3
    assert direct[3]["result"]["isError"] is True and "does not exist" in json.dumps(direct[3])
    assert direct[4]["error"]["code"] == -32602  # INVALID_PARAMS, from the SDK's own validation
    assert direct_rows.count(EventKind.CALL_DECISION) == 4


async def test_a_log_message_mid_call_turns_the_answer_into_a_stream(
    tmp_path: Path, direct_runs: list[str] | None
) -> None:
    async with _session(tmp_path / "rec.log", RecordingSink()) as (http, url, headers):
        r = await http.post(
            url, json=tools_call_body(7, "rec__log", {"level": "warning", "message": "halfway"}), headers=headers
        )
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:") and line[5:].strip()]
        assert events[0]["method"] == "notifications/message" and "halfway" in json.dumps(events[0])
        assert events[-1]["id"] == 7 and "result" in events[-1]
    assert direct_runs is None or direct_runs == ["tools/call"]


async def _hung_call(
    tmp_path: Path, rid: int, end: Callable[[httpx2.AsyncClient, str, dict[str, str]], Awaitable[httpx2.Response]]
) -> tuple[httpx2.Response, RecordingSink]:
    """``rec__hang`` called as ``rid``; once the upstream has it, ``end`` ends it: the call's answer, the audit."""
    log, sink = tmp_path / "rec.log", RecordingSink()
    async with _session(log, sink) as (http, url, headers):
        answer: list[httpx2.Response] = []

        async def call() -> None:
            answer.append(await http.post(url, json=tools_call_body(rid, "rec__hang", {}), headers=headers))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await wait_for(lambda: any(e.get("name") == "hang" for e in read_log(log)))
            ended = await end(http, url, headers)
            assert ended.status_code in (200, 202), ended.text
        await wait_for(lambda: bool(sink.of_kind(EventKind.CALL_CANCELLED)))
    return answer[0], sink


async def test_a_cancelled_call_is_answered_request_cancelled_and_audited(
    tmp_path: Path, direct_runs: list[str] | None
) -> None:
    async def cancel(http: httpx2.AsyncClient, url: str, headers: dict[str, str]) -> httpx2.Response:
        note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 8}}
        return await http.post(url, json=note, headers=headers)

    answer, sink = await _hung_call(tmp_path, 8, cancel)
    assert answer.status_code == 200 and answer.json()["error"]["code"] == -32800  # REQUEST_CANCELLED
    assert answer.json()["id"] == 8
    assert not sink.of_kind(EventKind.CALL_RESULT)
    assert direct_runs is None or direct_runs == ["tools/call"]


async def test_a_session_ending_mid_call_ends_the_call(tmp_path: Path, direct_runs: list[str] | None) -> None:
    async def end_session(http: httpx2.AsyncClient, url: str, headers: dict[str, str]) -> httpx2.Response:
        return await http.delete(url, headers=headers)

    answer, _sink = await _hung_call(tmp_path, 9, end_session)
    assert answer.status_code == 500 and "Session terminated" in answer.text
    assert direct_runs is None or direct_runs == ["tools/call"]


async def test_a_session_the_front_does_not_know_yet_takes_the_sdk_path(
    tmp_path: Path, direct_runs: list[str] | None
) -> None:
    async with _session(tmp_path / "rec.log", RecordingSink(), listed=False) as (http, url, headers):
        first = await http.post(url, json=tools_call_body(1, "rec__echo", {"text": "a"}), headers=headers)
        second = await http.post(url, json=tools_call_body(2, "rec__echo", {"text": "b"}), headers=headers)
    assert first.json()["result"]["content"][0]["text"] == "a" and second.json()["result"]["content"][0]["text"] == "b"
    assert direct_runs is None or direct_runs == ["tools/call"]  # the first made the session known; the second ran
