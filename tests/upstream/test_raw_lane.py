"""The lean lane to a stdio upstream: lines out, answers matched by id, errors as the session raises them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from guard_harness import POLL_S, TIMEOUT_S, make_settings, recorder_upstream
from mcp_guard.channel import Ask, Notice, Progress
from mcp_guard.errors import UpstreamTimeout
from mcp_guard.types import EventKind
from mcp_guard.upstream.connection import UpstreamConnection
from mcp_guard.upstream.raw_lane import LANE_ID_PREFIX, InvalidAnswer, RawLane

pytestmark = pytest.mark.anyio


class Wire:
    """What the lane wrote, one parsed line each."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self.written = anyio.Event()

    async def write(self, data: bytes) -> None:
        assert data.endswith(b"\n") and data.count(b"\n") == 1  # one whole line per write
        self.lines.append(json.loads(data))
        self.written.set()


def _take(lane: RawLane, line: bytes) -> bool:
    """What the transport's read loop does with a line: claim it, then hand it over (here at once)."""
    message = lane.claim(line)
    return message is not None and lane.offer(message)


async def _answered(lane: RawLane, wire: Wire, answer: dict[str, Any], method: str = "tools/call") -> Any:
    """Send one request; once it is on the wire, answer it with ``answer`` (its id filled in) as a raw line."""
    got: list[Any] = []

    async def ask() -> None:
        try:
            got.append(await lane.request(method, {"name": "echo", "arguments": {"text": "hi"}}))
        except Exception as e:
            got.append(e)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask)
        with anyio.fail_after(TIMEOUT_S):
            await wire.written.wait()
        rid = wire.lines[-1]["id"]
        assert _take(lane, json.dumps({**answer, "id": rid}).encode())
    return got[0]


async def test_a_request_is_one_line_with_a_lane_id_and_its_result_comes_back_as_sent() -> None:
    wire = Wire()
    lane = RawLane(wire.write)
    result = await _answered(lane, wire, {"jsonrpc": "2.0", "result": {"content": [], "_meta": {"k": 1}}})
    assert result == {"content": [], "_meta": {"k": 1}}
    (line,) = wire.lines
    assert line["method"] == "tools/call" and line["params"] == {"name": "echo", "arguments": {"text": "hi"}}
    assert isinstance(line["id"], str) and line["id"].startswith(LANE_ID_PREFIX)
    assert lane.requests == 1


async def test_lines_that_are_not_a_waiting_answer_are_left_to_the_session() -> None:
    wire = Wire()
    lane = RawLane(wire.write)
    assert not _take(lane, b'{"jsonrpc":"2.0","id":"mcpg:1","result":{}}')  # nothing is waiting
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.request, "tools/call", None)
        with anyio.fail_after(TIMEOUT_S):
            await wire.written.wait()
        rid = wire.lines[0]["id"]
        assert not _take(lane, b'{"jsonrpc":"2.0","id":1,"result":{}}')  # an SDK id
        assert not _take(lane, b'{"jsonrpc":"2.0","id":"mcpg:999","result":{}}')  # an id never sent
        # A request from the upstream that happens to reuse the id is the session's, not an answer.
        assert not _take(lane, json.dumps({"jsonrpc": "2.0", "id": rid, "method": "roots/list"}).encode())
        assert not _take(lane, b'{"jsonrpc":"2.0","id":"mcpg:' + b"[" * 5000)  # undecodable: the session reports it
        assert _take(lane, json.dumps({"jsonrpc": "2.0", "id": rid, "result": {}}).encode())
        tg.cancel_scope.cancel()


async def test_an_error_answer_raises_as_the_session_would() -> None:
    wire = Wire()
    lane = RawLane(wire.write)
    error = {"code": -32602, "message": "bad arguments", "data": {"field": "text"}}
    e = await _answered(lane, wire, {"jsonrpc": "2.0", "error": error})
    assert isinstance(e, MCPError)
    assert (e.error.code, e.error.message, e.error.data) == (-32602, "bad arguments", {"field": "text"})


@pytest.mark.parametrize(
    "answer",
    [
        {"jsonrpc": "2.0", "result": ["not", "an", "object"]},
        {"jsonrpc": "1.0", "result": {}},
        {"jsonrpc": "2.0", "error": {"code": "x", "message": "m"}},
        {"jsonrpc": "2.0"},
    ],
)
async def test_an_answer_that_is_not_json_rpc_is_invalid(answer: dict[str, Any]) -> None:
    wire = Wire()
    assert isinstance(await _answered(RawLane(wire.write), wire, answer), InvalidAnswer)


async def test_closing_ends_the_waiting_requests_and_refuses_new_ones() -> None:
    wire = Wire()
    lane = RawLane(wire.write)
    got: list[BaseException] = []

    async def ask() -> None:
        try:
            await lane.request("tools/call", None, timeout=TIMEOUT_S)
        except MCPError as e:
            got.append(e)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask)
        with anyio.fail_after(TIMEOUT_S):
            await wire.written.wait()
        assert lane._timer is not None  # armed for the request's deadline
        lane.close()
    assert isinstance(got[0], MCPError) and got[0].error.code == types.CONNECTION_CLOSED
    assert lane._timer is None  # disarmed: nothing is left to time out
    with pytest.raises(MCPError, match="Connection closed"):
        await lane.request("tools/call", None)


async def test_an_abandoned_request_tells_the_upstream_it_is_cancelled() -> None:
    wire = Wire()
    lane = RawLane(wire.write)
    with anyio.move_on_after(0.05):
        await lane.request("tools/call", None)
    sent, cancelled = wire.lines
    assert cancelled == {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": sent["id"]}}
    assert not _take(lane, json.dumps({"jsonrpc": "2.0", "id": sent["id"], "result": {}}).encode())  # a late answer


async def test_a_request_past_its_deadline_times_out_and_is_cancelled_upstream() -> None:
    wire = Wire()
    lane = RawLane(wire.write)
    with pytest.raises(TimeoutError):
        await lane.request("tools/call", None, timeout=0.05)
    sent, cancelled = wire.lines
    assert cancelled == {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": sent["id"]}}
    assert not _take(lane, json.dumps({"jsonrpc": "2.0", "id": sent["id"], "result": {}}).encode())  # a late answer
    assert lane._timer is None  # nothing left to watch: the timer is not armed again


async def test_one_timer_serves_every_deadline_in_order() -> None:
    # A long request is waiting when a short one comes: the short one's earlier deadline re-arms the lane's one
    # timer; it times out alone, and the long one is answered after it.
    wire = Wire()
    lane = RawLane(wire.write)
    got: dict[str, Any] = {}
    short_done = anyio.Event()

    async def ask(name: str, timeout: float) -> None:
        try:
            got[name] = await lane.request("tools/call", {"name": name}, timeout=timeout)
        except TimeoutError as e:
            got[name] = e
        if name == "short":
            short_done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask, "long", TIMEOUT_S)
        with anyio.fail_after(TIMEOUT_S):
            while len(wire.lines) < 1:
                await wire.written.wait()
                wire.written = anyio.Event()
        long_at = lane._timer_at
        tg.start_soon(ask, "short", 0.05)
        with anyio.fail_after(TIMEOUT_S):
            await short_done.wait()
        assert isinstance(got["short"], TimeoutError)
        assert lane._timer_at == long_at  # armed again for the long request's deadline
        long_id = next(line["id"] for line in wire.lines if line.get("params", {}).get("name") == "long")
        assert _take(lane, json.dumps({"jsonrpc": "2.0", "id": long_id, "result": {"ok": True}}).encode())
    assert got["long"] == {"ok": True}
    cancelled = [line["params"]["requestId"] for line in wire.lines if line.get("method") == "notifications/cancelled"]
    short_id = next(line["id"] for line in wire.lines if line.get("params", {}).get("name") == "short")
    assert cancelled == [short_id]


async def test_a_line_the_transport_takes_at_once_is_not_written_again() -> None:
    wire = Wire()
    taken: list[bytes] = []
    handed = anyio.Event()

    def nowait(data: bytes) -> bool:
        taken.append(data)
        handed.set()
        return True

    lane = RawLane(wire.write, nowait)
    got: list[Any] = []

    async def ask() -> None:
        got.append(await lane.request("tools/call", {"name": "x"}, timeout=TIMEOUT_S))

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask)
        with anyio.fail_after(TIMEOUT_S):
            await handed.wait()
        assert wire.lines == []  # the awaited write was not used
        rid = json.loads(taken[0])["id"]
        assert _take(lane, json.dumps({"jsonrpc": "2.0", "id": rid, "result": {}}).encode())
    assert got == [{}]


async def test_a_write_held_up_by_back_pressure_is_bounded_by_the_deadline() -> None:
    # The transport cannot take the line now (write_nowait says so) and the awaited write never finishes (an
    # upstream that stopped reading): the request still ends at its deadline.
    never = anyio.Event()
    lines: list[bytes] = []

    async def stuck(data: bytes) -> None:
        lines.append(data)
        if len(lines) == 1:
            await never.wait()

    lane = RawLane(stuck, lambda data: False)
    with anyio.fail_after(TIMEOUT_S), pytest.raises(TimeoutError):
        await lane.request("tools/call", None, timeout=0.05)
    assert json.loads(lines[-1])["method"] == "notifications/cancelled"  # told, once the write gave way


# ---------------------------------------------------------------------- through a real stdio upstream
class _Hooks:
    async def catalog_changed(self, upstream: str, kinds: frozenset[str]) -> None: ...
    async def state_changed(self, upstream: str, kind: EventKind, details: dict[str, Any]) -> None: ...
    async def to_client(self, upstream: str, message: Ask | Notice) -> Any:
        if isinstance(message, Progress):  # what the registry does with a call's progress: its relay gets it
            await message.relay(message.progress, message.total, message.message)
        return None


def _call(name: str, arguments: dict[str, Any]) -> types.CallToolRequest:
    return types.CallToolRequest(params=types.CallToolRequestParams(name=name, arguments=arguments))


async def test_forwarded_calls_take_the_lane_and_a_call_with_progress_the_session(tmp_path: Path) -> None:
    log = tmp_path / "recorder.jsonl"
    settings = make_settings({"up": recorder_upstream(log)})
    conn = UpstreamConnection("up", settings.upstreams["up"], _Hooks())
    progress: list[float] = []

    async def relay(p: float, total: float | None, message: str | None) -> None:
        progress.append(p)

    async with anyio.create_task_group() as tg:
        tg.start_soon(conn.run)
        assert await conn.wait_ready(TIMEOUT_S)
        lane = conn._lane
        assert lane is not None
        result = await conn.request(_call("echo", {"text": "through the lane"}))
        assert result["content"][0]["text"] == "through the lane" and lane.requests == 1
        # Progress needs the SDK session's token and relay: that call does not take the lane.
        await conn.request(_call("slow", {"seconds": 0.05, "steps": 2}), on_progress=relay)
        assert lane.requests == 1 and progress
        # A call abandoned at its deadline is cancelled upstream, under its lane id.
        with pytest.raises(UpstreamTimeout):
            await conn.request(_call("slow", {"seconds": 5, "steps": 1}), timeout=0.3)
        with anyio.fail_after(TIMEOUT_S):
            while not any('"cancelled"' in line for line in _lines(log)):  # noqa: ASYNC110 - a file, no event
                await anyio.sleep(POLL_S)
        (cancelled,) = [json.loads(line) for line in _lines(log) if '"cancelled"' in line]
        assert str(cancelled["id"]).startswith(LANE_ID_PREFIX)
        conn.stop()
        tg.cancel_scope.cancel()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


_RESULTS: list[Any] = [
    {"content": []},
    {"content": [{"type": "text", "text": "hi"}], "isError": False, "_meta": {"k": 1}},
    {"content": [{"type": "text", "text": "hi"}], "structuredContent": {"a": [1, 2]}},
    {"content": [{"type": "image", "data": "aGk=", "mimeType": "image/png"}]},
    {"content": [{"type": "resource_link", "uri": "file:///x", "name": "x"}]},
    {"content": [{"type": "resource", "resource": {"uri": "file:///x", "text": "t"}}]},
    {"content": [{"type": "text"}]},  # no text
    {"content": [{"type": "nope", "text": "x"}]},
    {"content": "not a list"},
    {"content": [{"type": "text", "text": 5}]},
    {"isError": "yes", "content": []},
    {},
    {"tools": []},
    {"content": [], "resultType": "complete"},
]


@pytest.mark.parametrize("method", ["tools/call", "tools/list", "resources/read", "prompts/get", "ping", "x/unknown"])
@pytest.mark.parametrize("version", ["2025-11-25", "2026-07-28", "2025-06-18", "1999-01-01"])
def test_the_lane_checks_a_result_as_validate_server_result_does(method: str, version: str) -> None:
    # Validating without the dump validate_server_result makes (and drops) gives the same verdict on every result.
    from mcp_types import methods
    from pydantic import ValidationError

    from mcp_guard.upstream.raw_lane import as_negotiated

    for result in _RESULTS:
        expected: type[Exception] | None = None
        try:
            methods.validate_server_result(method, version, result)
        except (KeyError, ValidationError, ValueError) as e:
            expected = type(e)
        got: type[Exception] | None = None
        try:
            as_negotiated(method, version, dict(result))
        except (ValidationError, ValueError) as e:
            got = type(e)
        assert got == (None if expected is KeyError else expected), (method, version, result)
