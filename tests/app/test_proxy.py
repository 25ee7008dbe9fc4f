"""The proxy core through in-memory client streams, with real recorder subprocesses upstream."""

from __future__ import annotations

from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError

from guard_harness import client_of, make_settings, read_log, recorder_upstream, running_guard, text_of, wait_for
from mcp_guard.testing import FunctionEngine, RecordingSink
from mcp_guard.types import Decision, PolicyInput

pytestmark = pytest.mark.anyio


async def test_lists_namespaced_and_calls_each_upstream(tmp_path: Path) -> None:
    settings = make_settings({"a": recorder_upstream(tmp_path / "a.log"), "b": recorder_upstream(tmp_path / "b.log")})
    async with running_guard(settings) as guard, client_of(guard) as client:
        tools = (await client.list_tools()).tools
        names = {t.name for t in tools}
        assert {"a__echo", "b__echo", "a__add", "b__slow"} <= names
        r = await client.call_tool("a__echo", {"text": "hi a"})
        assert text_of(r) == "hi a" and not r.is_error
        r = await client.call_tool("b__add", {"a": 2, "b": 3})
        assert r.structured_content == {"sum": 5}
    assert [e["name"] for e in read_log(tmp_path / "a.log")] == ["echo"]
    assert [e["name"] for e in read_log(tmp_path / "b.log")] == ["add"]


async def test_pagination_downstream_and_upstream(tmp_path: Path) -> None:
    up = recorder_upstream(RECORDER_MANY="120", RECORDER_PAGE_SIZE="25")
    settings = make_settings({"r": up}, server={"page_size": 50})
    async with running_guard(settings) as guard, client_of(guard) as client:
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            page = await client.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
            seen += [t.name for t in page.tools]
            pages += 1
            cursor = page.next_cursor
            if not cursor:
                break
        assert pages >= 3
        assert len(seen) == len(set(seen))
        assert sum(n.startswith("r__tool_") for n in seen) == 120
        with pytest.raises(MCPError):
            await client.list_tools(params=types.PaginatedRequestParams(cursor="garbage"))


async def test_resources_templates_prompts_namespaced(tmp_path: Path) -> None:
    settings = make_settings({"rec": recorder_upstream()})
    async with running_guard(settings) as guard, client_of(guard) as client:
        res = (await client.list_resources()).resources
        uris = {str(r.uri) for r in res}
        assert "mcpg://rec/rec://info" in uris
        read = await client.read_resource("mcpg://rec/rec://info")
        assert read.contents and str(read.contents[0].uri) == "mcpg://rec/rec://info"
        tpls = (await client.list_resource_templates()).resource_templates
        assert any(t.uri_template == "mcpg://rec/rec://item/{id}" for t in tpls)
        item = await client.read_resource("mcpg://rec/rec://item/7")
        assert item.contents
        prompts = (await client.list_prompts()).prompts
        assert [p.name for p in prompts] == ["rec__greet"]
        got = await client.get_prompt("rec__greet", {"name": "Ada"})
        assert "Ada" in str(got.messages[0].content)
        with pytest.raises(MCPError):
            await client.read_resource("rec://info")  # not namespaced


async def test_unknown_tool_is_a_clear_error(tmp_path: Path) -> None:
    settings = make_settings({"rec": recorder_upstream()})
    sink = RecordingSink()
    async with running_guard(settings, sink=sink) as guard, client_of(guard) as client:
        for name in ("nope", "rec__nope", "other__echo"):
            r = await client.call_tool(name, {})
            assert r.is_error and "does not exist" in text_of(r)
    assert len([e for e in sink.of_kind("call.decision") if e.decision == "deny"]) == 3


async def test_deny_never_reaches_upstream_and_reasons_are_readable(tmp_path: Path) -> None:
    log = tmp_path / "rec.log"

    def decide(i: PolicyInput) -> Decision:
        if i.action == "tools/call" and i.tool == "echo":
            return Decision(allow=False, reasons=("echo is not for you",))
        return Decision(allow=True)

    engine = FunctionEngine(decide)
    sink = RecordingSink()
    settings = make_settings({"rec": recorder_upstream(log)})
    async with running_guard(settings, engine=engine, sink=sink) as guard, client_of(guard) as client:
        r = await client.call_tool("rec__echo", {"text": "x"})
        assert r.is_error and "echo is not for you" in text_of(r)
        r = await client.call_tool("rec__add", {"a": 1, "b": 1})
        assert not r.is_error
    assert [e["name"] for e in read_log(log)] == ["add"]
    call_inputs = [i for i in engine.inputs if i.action == "tools/call"]
    assert call_inputs[0].server == "rec" and call_inputs[0].tool_info is not None
    assert call_inputs[0].tool_info.definition_sha256
    kinds = sink.kinds()
    assert "session.start" in kinds
    assert [e.decision for e in sink.of_kind("call.decision")] == ["deny", "allow"]
    assert len(sink.of_kind("call.result")) == 1


async def test_visibility_hides_what_policy_never_allows(tmp_path: Path) -> None:
    def decide(i: PolicyInput) -> Decision:
        return Decision(allow=i.tool in ("echo", "greet", "rec://info"))

    settings = make_settings({"rec": recorder_upstream()})
    async with running_guard(settings, engine=FunctionEngine(decide)) as guard, client_of(guard) as client:
        assert [t.name for t in (await client.list_tools()).tools] == ["rec__echo"]
        assert [p.name for p in (await client.list_prompts()).prompts] == ["rec__greet"]
        assert [str(r.uri) for r in (await client.list_resources()).resources] == ["mcpg://rec/rec://info"]


async def test_upstream_errors_pass_through(tmp_path: Path) -> None:
    settings = make_settings({"rec": recorder_upstream()})
    async with running_guard(settings) as guard, client_of(guard) as client:
        r = await client.call_tool("rec__fail", {})
        assert r.is_error
        with pytest.raises(MCPError) as ei:
            await client.call_tool("rec__raise_error", {})
        assert ei.value.error.code == -32001


async def test_progress_and_logging_forwarded(tmp_path: Path) -> None:
    settings = make_settings({"rec": recorder_upstream()})
    progress: list[float] = []
    logs: list[types.LoggingMessageNotificationParams] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(p)

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async with running_guard(settings) as guard, client_of(guard, logging_callback=on_log) as client:
        r = await client.call_tool("rec__slow", {"seconds": 0.2, "steps": 4}, progress_callback=on_progress)
        assert not r.is_error
        assert len(progress) >= 3
        await client.call_tool("rec__log", {"level": "warning", "message": "careful"})
        await wait_for(lambda: bool(logs))
        assert "careful" in str(logs[0].data)


async def test_sampling_and_elicitation_reach_the_calling_client(tmp_path: Path) -> None:
    settings = make_settings({"rec": recorder_upstream()})

    async def sampling(
        ctx: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(text="model says 42"), model="test-model"
        )

    async def elicit(ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"answer": "yes"})

    async with (
        running_guard(settings) as guard,
        client_of(guard, sampling_callback=sampling, elicitation_callback=elicit) as client,
    ):
        r = await client.call_tool("rec__sample", {"prompt": "what?"})
        assert "model says 42" in text_of(r), text_of(r)
        r = await client.call_tool("rec__elicit", {"message": "ok?"})
        assert "accept" in text_of(r) and "yes" in text_of(r)


async def test_cancellation_cancels_upstream_call(tmp_path: Path) -> None:
    log = tmp_path / "rec.log"
    settings = make_settings({"rec": recorder_upstream(log)})
    async with running_guard(settings) as guard, client_of(guard) as client:
        with anyio.move_on_after(0.5):
            await client.call_tool("rec__hang", {})
        await wait_for(lambda: any(e.get("event") == "cancelled" for e in read_log(log)))


async def test_timeout_is_clean_and_proxy_keeps_serving(tmp_path: Path) -> None:
    up = recorder_upstream() | {"timeout_s": 0.5}
    settings = make_settings({"rec": up})
    async with running_guard(settings) as guard, client_of(guard) as client:
        r = await client.call_tool("rec__hang", {})
        assert r.is_error and "did not answer" in text_of(r)
        r = await client.call_tool("rec__echo", {"text": "still here"})
        assert text_of(r) == "still here"


async def test_crash_restart_and_isolation(tmp_path: Path) -> None:
    sink = RecordingSink()
    settings = make_settings({"a": recorder_upstream(), "b": recorder_upstream()})
    async with running_guard(settings, sink=sink) as guard, client_of(guard) as client:
        r = await client.call_tool("a__crash", {"code": 3})
        assert r.is_error and "mcp-guard" in text_of(r)
        assert text_of(await client.call_tool("b__echo", {"text": "b ok"})) == "b ok"
        await wait_for(lambda: "upstream.restart" in sink.kinds(), within=15)
        await wait_for(lambda: guard.registry.connections["a"].state == "ready", within=15)
        assert text_of(await client.call_tool("a__echo", {"text": "a back"})) == "a back"
    assert "upstream.crash" in sink.kinds()


async def test_missing_command_leaves_others_serving(tmp_path: Path) -> None:
    settings = make_settings(
        {
            "good": recorder_upstream(),
            "bad": {"command": "/nonexistent/mcp-server-xyz", "restart_backoff_s": 5},
        }
    )
    async with running_guard(settings, wait=False) as guard:
        problems = await guard.registry.wait_ready(10)
        assert set(problems) == {"bad"} and "not found" in problems["bad"]
        async with client_of(guard) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert "good__echo" in names and not any(n.startswith("bad__") for n in names)
            r = await client.call_tool("good__echo", {"text": "fine"})
            assert text_of(r) == "fine"


async def test_child_gets_minimal_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_ONLY_SECRET", "do-not-leak")
    up = recorder_upstream(EXTRA_FOR_CHILD="given")
    settings = make_settings({"rec": up})
    async with running_guard(settings) as guard, client_of(guard) as client:
        env = text_of(await client.call_tool("rec__env", {}))
        assert "PROXY_ONLY_SECRET" not in env and "do-not-leak" not in env
        assert "EXTRA_FOR_CHILD" in env


async def test_one_upstream_can_be_exposed_without_namespace(tmp_path: Path) -> None:
    settings = make_settings({"rec": recorder_upstream() | {"namespace": False}, "b": recorder_upstream()})
    async with running_guard(settings) as guard, client_of(guard) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"echo", "add", "b__echo"} <= names and "rec__echo" not in names
        assert text_of(await client.call_tool("echo", {"text": "bare"})) == "bare"
        assert text_of(await client.call_tool("b__echo", {"text": "spaced"})) == "spaced"
        uris = {str(r.uri) for r in (await client.list_resources()).resources}
        assert {"rec://info", "mcpg://b/rec://info"} <= uris
        assert (await client.read_resource("rec://info")).contents[0].uri == "rec://info"
        assert "greet" in {p.name for p in (await client.list_prompts()).prompts}
        assert "Lin" in str((await client.get_prompt("greet", {"name": "Lin"})).messages[0].content)


def test_at_most_one_bare_upstream() -> None:
    from mcp_guard.errors import ConfigError

    with pytest.raises(ConfigError, match="at most one upstream"):
        make_settings(
            {"a": recorder_upstream() | {"namespace": False}, "b": recorder_upstream() | {"namespace": False}}
        )


async def test_roots_are_not_offered_to_upstreams_unless_opted_in(tmp_path: Path) -> None:
    settings = make_settings({"rec": recorder_upstream(RECORDER_LOG_METHODS="*", RECORDER_LOG=str(tmp_path / "l"))})
    async with running_guard(settings) as guard, client_of(guard) as client:
        await client.call_tool("rec__echo", {"text": "x"})
    init = next(e for e in read_log(tmp_path / "l") if e.get("method") == "initialize")
    assert "roots" not in init["params"]["capabilities"] and "sampling" in init["params"]["capabilities"]
