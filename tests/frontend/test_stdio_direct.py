"""A stdio session's tools/call started as its line is read (frontend/stdio_direct.py) answers exactly as the SDK's
dispatcher path answers it: the same lines for results, tool errors, the upstream's JSON-RPC error, an unknown tool,
invalid params and an enveloped request; the same progress and log lines before the answer; the same request to the
client (sampling) and the answer after the client's reply; a cancelled call unanswered; calls concurrent; a stream
that ends mid-call answered CONNECTION_CLOSED; the same audit rows. Every case runs on both paths (``direct``, and
``sdk`` with :meth:`StdioDirect.take` switched off, as ``bench/ablate.py sdk-stdio-dispatch`` does) in a session
driven message by message over the streams ``Guard.serve_streams`` serves (the stdio front's line streams wrap the
same pair), and compares the lines each path writes, encoded as the stdio writer encodes them.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

from guard_harness import (
    RECORDER_CALLS,
    TIMEOUT_S,
    make_settings,
    read_log,
    recorder_upstream,
    running_guard,
    wait_for,
)
from mcp_guard.frontend.stdio_direct import StdioDirect
from mcp_guard.streams import encode_line
from mcp_guard.testing import RecordingSink
from mcp_guard.types import AuditEvent, EventKind

pytestmark = pytest.mark.anyio

_IDS = re.compile(r"\b[0-9a-f]{32}\b")


def _scrubbed(text: str) -> str:
    """Per-call ids (decision ids, 32 hex digits) taken out."""
    return _IDS.sub("<id>", text)


@dataclass
class RawSession:
    """A client over the server's stream pair: sends messages, reads the lines the server writes."""

    send: MemoryObjectSendStream[SessionMessage]
    receive: MemoryObjectReceiveStream[SessionMessage]
    lines: list[str] = field(default_factory=list)

    async def write(self, message: dict[str, Any]) -> None:
        await self.send.send(SessionMessage(types.jsonrpc_message_adapter.validate_python(message)))

    async def read(self) -> dict[str, Any]:
        """The next message the server writes (kept, as its line, in :attr:`lines`)."""
        with anyio.fail_after(TIMEOUT_S):
            item = await self.receive.receive()
        line = encode_line(item).decode()
        self.lines.append(_scrubbed(line))
        return dict(json.loads(line))

    async def answer_of(self, rid: int | str) -> dict[str, Any]:
        """Read until the answer to ``rid`` (what comes before it is kept in :attr:`lines` too)."""
        while True:
            message = await self.read()
            if message.get("id") == rid and "method" not in message:
                return message

    async def call(self, rid: int, tool: str, arguments: Any, meta: dict[str, Any] | None = None) -> None:
        params: dict[str, Any] = {"name": tool, "arguments": arguments}
        if meta is not None:
            params["_meta"] = meta
        await self.write({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params})


@dataclass
class Run:
    session: RawSession
    sink: RecordingSink
    log: Path


@asynccontextmanager
async def _session(tmp_path: Path, name: str) -> AsyncIterator[Run]:
    """An initialized session (it has listed its tools, so the front knows it) on a guard with a recorder upstream."""
    log, sink = tmp_path / f"{name}.log", RecordingSink()
    to_server, server_reads = anyio.create_memory_object_stream[SessionMessage](32)
    server_writes, from_server = anyio.create_memory_object_stream[SessionMessage](32)
    async with (
        running_guard(make_settings({"rec": recorder_upstream(log)}), sink=sink) as guard,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(guard.serve_streams, server_reads, server_writes, "stdio")
        session = RawSession(to_server, from_server)
        await session.write(
            {
                "jsonrpc": "2.0",
                "id": "init",
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {"sampling": {}},
                    "clientInfo": {"name": "raw", "version": "1"},
                },
            }
        )
        await session.answer_of("init")
        await session.write({"jsonrpc": "2.0", "method": "notifications/initialized"})
        await session.write({"jsonrpc": "2.0", "id": "list", "method": "tools/list"})
        await session.answer_of("list")
        session.lines.clear()
        yield Run(session, sink, log)
        tg.cancel_scope.cancel()


def _rows(sink: RecordingSink) -> list[tuple[Any, ...]]:
    """The call rows, without their per-call ids and times."""

    def row(e: AuditEvent) -> tuple[Any, ...]:
        values = (e.principal, e.server, e.tool, e.decision, e.reasons, e.arguments, e.result)
        return (e.kind, _scrubbed(json.dumps(values, sort_keys=True, default=str)))

    return [row(e) for e in sink.events if e.kind.startswith("call.")]


Scenario = Callable[[Run], Any]


def _counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The requests the direct path takes from now on (it stays on)."""
    taken: list[str] = []
    real = StdioDirect.take

    def counted(self: StdioDirect, item: Any) -> bool:
        took = real(self, item)
        if took:
            taken.append(item.message.method)
        return took

    monkeypatch.setattr(StdioDirect, "take", counted)
    return taken


async def _both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scenario: Scenario
) -> tuple[tuple[list[str], list[tuple[Any, ...]]], list[str]]:
    """Run ``scenario`` on the direct path, then on the SDK's; assert both wrote the same lines and audit rows."""
    taken = _counted(monkeypatch)
    outcomes = []
    for name in ("direct", "sdk"):
        if name == "sdk":
            monkeypatch.setattr(StdioDirect, "take", lambda self, item: False)
        async with _session(tmp_path, name) as run:
            await scenario(run)
            lines = list(run.session.lines)
        outcomes.append((lines, _rows(run.sink)))
    assert outcomes[0] == outcomes[1]
    return outcomes[0], taken


CASES = RECORDER_CALLS  # one case for each way a call ends


async def test_every_answer_is_the_sdk_paths_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(run: Run) -> None:
        for rid, (tool, arguments) in enumerate(CASES, start=1):
            await run.session.call(rid, tool, arguments)
            await run.session.answer_of(rid)

    (lines, rows), taken = await _both(tmp_path, monkeypatch, scenario)
    assert taken == ["tools/call"] * len(CASES)  # every one ran directly on the first pass, none on the second
    answers = [json.loads(line) for line in lines]
    assert answers[0]["result"]["content"][0]["text"] == "plain"
    assert answers[1]["result"]["isError"] is True
    assert answers[2]["error"]["code"] == -32001 and answers[2]["id"] == 3
    assert answers[3]["result"]["isError"] is True and "does not exist" in lines[3]
    assert answers[4]["error"]["code"] == -32602  # INVALID_PARAMS, from the SDK's own validation
    assert [kind for kind, _ in rows].count(EventKind.CALL_DECISION) == 4


async def test_an_enveloped_call_is_refused_by_the_sdks_legacy_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(run: Run) -> None:
        meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}
        await run.session.call(1, "rec__echo", {"text": "x"}, meta=meta)
        await run.session.answer_of(1)

    (lines, _), taken = await _both(tmp_path, monkeypatch, scenario)
    assert taken == []
    assert json.loads(lines[0])["error"]["code"] == -32600  # INVALID_REQUEST


async def test_progress_and_log_lines_come_before_the_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(run: Run) -> None:
        await run.session.call(1, "rec__slow", {"seconds": 0, "steps": 3}, meta={"progressToken": "p1"})
        await run.session.answer_of(1)
        await run.session.call(2, "rec__log", {"level": "warning", "message": "halfway"})
        await run.session.answer_of(2)

    (lines, _), taken = await _both(tmp_path, monkeypatch, scenario)
    assert taken == ["tools/call", "tools/call"]
    methods = [json.loads(line).get("method") for line in lines]
    assert methods == [*["notifications/progress"] * 3, None, "notifications/message", None]


async def test_a_request_to_the_client_mid_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(run: Run) -> None:
        await run.session.call(1, "rec__sample", {"prompt": "hello?"})
        request = await run.session.read()
        assert request["method"] == "sampling/createMessage"
        await run.session.write(
            {
                "jsonrpc": "2.0",
                "id": request["id"],
                "result": {"role": "assistant", "content": {"type": "text", "text": "hi"}, "model": "m"},
            }
        )
        answer = await run.session.answer_of(1)
        assert answer["result"]["content"][0]["text"] == "hi"

    _outcome, taken = await _both(tmp_path, monkeypatch, scenario)
    assert taken == ["tools/call"]


async def test_calls_run_concurrently_and_a_cancelled_one_is_not_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(run: Run) -> None:
        await run.session.call(1, "rec__hang", {})
        await run.session.call(2, "rec__echo", {"text": "beside"})
        await run.session.answer_of(2)  # answered while 1 hangs
        await wait_for(lambda: any(e.get("name") == "hang" for e in read_log(run.log)))
        await run.session.write(
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1, "reason": "enough"}}
        )
        await wait_for(lambda: bool(run.sink.of_kind(EventKind.CALL_CANCELLED)))
        await run.session.call(3, "rec__echo", {"text": "after"})
        await run.session.answer_of(3)  # the next line after 2's answer: 1 was never answered

    (lines, rows), taken = await _both(tmp_path, monkeypatch, scenario)
    assert taken == ["tools/call"] * 3
    assert [json.loads(line)["id"] for line in lines] == [2, 3]
    assert EventKind.CALL_CANCELLED in [kind for kind, _ in rows]


async def test_a_stream_that_ends_mid_call_answers_connection_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(run: Run) -> None:
        await run.session.call(1, "rec__hang", {})
        await wait_for(lambda: any(e.get("name") == "hang" for e in read_log(run.log)))
        await run.session.send.aclose()  # the client's stdin ends
        await run.session.answer_of(1)
        with anyio.fail_after(TIMEOUT_S):
            async for item in run.session.receive:  # nothing more, and the server closes its end
                run.session.lines.append(_scrubbed(encode_line(item).decode()))

    (lines, _), taken = await _both(tmp_path, monkeypatch, scenario)
    assert taken == ["tools/call"]
    assert [json.loads(line)["error"]["code"] for line in lines] == [types.CONNECTION_CLOSED]
