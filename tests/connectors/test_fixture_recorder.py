"""The recorder fixture server, driven over real stdio with the SDK client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from connector_harness import connect, fixture_params, wait_until
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.anyio


def _text(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


def _log_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


async def test_tools_and_call_log(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    async with connect(fixture_params("recorder", env={"RECORDER_LOG": str(log)})) as s:
        names = {t.name for t in (await s.list_tools()).tools}
        assert {
            "echo",
            "add",
            "slow",
            "fail",
            "raise_error",
            "crash",
            "hang",
            "log",
            "sample",
            "elicit",
            "env",
            "big",
        } <= names
        assert _log_lines(log) == []  # list calls are not logged by default
        assert _text(await s.call_tool("echo", {"text": "hello"})) == "hello"
        added = await s.call_tool("add", {"a": 2, "b": 40})
        assert added.structured_content == {"sum": 42}
        lines = _log_lines(log)
        assert [(e["name"], e["arguments"]) for e in lines] == [
            ("echo", {"text": "hello"}),
            ("add", {"a": 2, "b": 40}),
        ]


async def test_errors(tmp_path: Path) -> None:
    async with connect(fixture_params("recorder")) as s:
        failed = await s.call_tool("fail", {})
        assert failed.is_error and _text(failed) == "intentional failure"
        with pytest.raises(MCPError) as err:
            await s.call_tool("raise_error", {})
        assert err.value.code == -32001
        with pytest.raises(MCPError):
            await s.call_tool("no_such_tool", {})
        bad = await s.call_tool("add", {"a": "x", "b": 1})
        assert bad.is_error


async def test_big_and_env() -> None:
    async with connect(fixture_params("recorder", env={"MARKER_VAR": "m1"})) as s:
        assert len(_text(await s.call_tool("big", {"n": 100_000}))) == 100_000
        env = json.loads(_text(await s.call_tool("env", {})))
        assert env["MARKER_VAR"] == "m1"
        assert "PATH" in env


async def test_progress_notifications() -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with connect(fixture_params("recorder")) as s:
        result = await s.call_tool("slow", {"seconds": 0.1, "steps": 3}, progress_callback=on_progress)
        assert not result.is_error
    assert [p for p, _, _ in seen] == [1, 2, 3]
    assert all(t == 3 for _, t, _ in seen)


async def test_cancellation_reaches_handler(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    async with connect(fixture_params("recorder", env={"RECORDER_LOG": str(log)})) as s:
        with pytest.raises(MCPError):  # the client's read timeout abandons the call and sends a cancel
            await s.call_tool("hang", {}, read_timeout_seconds=0.5)
        await wait_until(lambda: any(e.get("event") == "cancelled" for e in _log_lines(log)))
        # The server is still healthy afterwards.
        assert _text(await s.call_tool("echo", {"text": "alive"})) == "alive"


async def test_sampling_and_elicitation_callbacks() -> None:
    prompts: list[str] = []

    async def sampling(
        ctx: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        content = params.messages[0].content
        assert isinstance(content, types.TextContent)
        prompts.append(content.text)
        return types.CreateMessageResult(role="assistant", content=types.TextContent(text="sampled!"), model="m")

    async def elicitation(ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"answer": f"re: {params.message}"})

    async with connect(fixture_params("recorder"), sampling_callback=sampling, elicitation_callback=elicitation) as s:
        assert _text(await s.call_tool("sample", {"prompt": "write a haiku"})) == "sampled!"
        assert prompts == ["write a haiku"]
        answer = json.loads(_text(await s.call_tool("elicit", {"message": "your name?"})))
        assert answer == {"action": "accept", "content": {"answer": "re: your name?"}}


async def test_logging_notification() -> None:
    got: list[types.LoggingMessageNotificationParams] = []
    arrived = anyio.Event()

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        got.append(params)
        arrived.set()

    async with connect(fixture_params("recorder"), logging_callback=on_log) as s:
        assert _text(await s.call_tool("log", {"level": "warning", "message": "careful"})) == "logged"
        with anyio.fail_after(5):
            await arrived.wait()
    assert got[0].level == "warning" and got[0].data == "careful"


async def test_crash_ends_the_call() -> None:
    async with connect(fixture_params("recorder")) as s:
        with pytest.raises(MCPError):
            await s.call_tool("crash", {"code": 7}, read_timeout_seconds=10)


async def test_pagination() -> None:
    async with connect(fixture_params("recorder", "--many", "120")) as s:
        names: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            page = await s.list_tools(params=types.PaginatedRequestParams(cursor=cursor))
            names += [t.name for t in page.tools]
            pages += 1
            cursor = page.next_cursor
            if cursor is None:
                break
        assert pages == 3 and len(names) == 14 + 120 and len(set(names)) == len(names)  # 14 base tools (grow incl.)
        resources = await s.list_resources()
        assert resources.next_cursor is not None
        assert _text(await s.call_tool("tool_0119", {})) == "tool_0119"


async def test_resources_and_prompt() -> None:
    async with connect(fixture_params("recorder")) as s:
        info = await s.read_resource("rec://info")
        block = info.contents[0]
        assert isinstance(block, types.TextResourceContents)
        assert json.loads(block.text)["server"] == "recorder"
        templates = await s.list_resource_templates()
        assert templates.resource_templates[0].uri_template == "rec://item/{id}"
        item = (await s.read_resource("rec://item/abc")).contents[0]
        assert isinstance(item, types.TextResourceContents) and json.loads(item.text)["id"] == "abc"
        prompt = await s.get_prompt("greet", {"name": "Ada"})
        msg = prompt.messages[0].content
        assert isinstance(msg, types.TextContent) and "Ada" in msg.text
