"""The tasks extension as mcp-guard serves it (mcp_guard.frontend.tasks): the table, the background run, the methods.

A fake request context stands in for the SDK's; a task's work is a plain coroutine function (the handlers hand it
the pipeline run). The real pipeline and front are exercised by tests/e2e/test_tasks_e2e.py and the conformance
suite through the proxy.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from guard_harness import POLL_S, make_settings, running_guard
from http_harness import http_front, sse_answer
from mcp_guard.channel import ClientMethod
from mcp_guard.frontend.tasks import (
    TASKS_EXTENSION,
    TaskChannel,
    TaskEnd,
    TaskParams,
    Tasks,
    TaskStatus,
    TaskSupport,
    TaskTable,
    for_upstream,
    negotiated,
    task_support,
)
from mcp_guard.settings import UpstreamSettings
from mcp_guard.testing import FunctionEngine, RecordingSink
from mcp_guard.types import Decision, EventKind, PolicyInput

pytestmark = pytest.mark.anyio

MODERN = "2026-07-28"
WITH_TASKS: dict[str, Any] = {"io.modelcontextprotocol/clientCapabilities": {"extensions": {TASKS_EXTENSION: {}}}}


def _ctx(meta: dict[str, Any] | None = None, *, version: str = MODERN, caps: Any = None, headers: Any = None) -> Any:
    request = SimpleNamespace(headers=headers) if headers is not None else None
    return SimpleNamespace(
        protocol_version=version,
        meta=WITH_TASKS if meta is None else meta,
        session=SimpleNamespace(client_capabilities=caps),
        request=request,
    )


def _p(task_id: str) -> TaskParams:
    return TaskParams.model_validate({"taskId": task_id})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def _tasks(table: TaskTable | None = None) -> AsyncIterator[Tasks]:
    tasks = Tasks(table)
    async with anyio.create_task_group() as tg:
        tasks.attach(tg)
        yield tasks
        tg.cancel_scope.cancel()


async def _until_finished(tasks: Tasks, task_id: str, owner: str = "alice") -> dict[str, Any]:
    with anyio.fail_after(10):
        while True:
            got = tasks.get(_ctx(), owner, _p(task_id))
            if got["status"] in ("completed", "failed", "cancelled"):
                return got
            await anyio.sleep(0.005)


async def _until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while True:
            if condition():
                return
            await anyio.sleep(0.005)


def _pending(tasks: Tasks, task_id: str = "t1") -> dict[str, Any]:
    got: dict[str, Any] = tasks.get(_ctx(), "alice", _p(task_id)).get("inputRequests", {})
    return got


# ---------------------------------------------------------------------------------------------------- the table


def test_a_task_is_found_only_by_its_owner() -> None:
    table = TaskTable()
    task = table.create("t1", "alice")
    assert task is not None
    assert table.find("t1", "alice") is task
    assert table.find("t1", "bob") is None  # the same answer as an unknown id
    assert table.find("nope", "alice") is None


def test_a_principal_has_room_for_a_bounded_number_of_tasks() -> None:
    table = TaskTable(max_per_principal=2)
    first, second = table.create("a", "alice"), table.create("b", "alice")
    assert first is not None and second is not None
    assert table.create("c", "alice") is None, "both running: no room"
    assert table.create("x", "bob") is not None, "the bound is per principal"
    table.finish(first, TaskStatus.COMPLETED, result={"content": []})
    assert table.create("c", "alice") is not None, "a finished task makes room"
    assert table.find("a", "alice") is None, "the oldest finished one was evicted"
    assert table.count("alice") == 2


def test_a_finished_task_is_forgotten_after_its_ttl() -> None:
    clock = Clock()
    table = TaskTable(ttl_s=60, clock=clock)
    task = table.create("t", "alice")
    assert task is not None
    clock.now += 3600
    assert table.find("t", "alice") is task, "a running task does not expire"
    table.finish(task, TaskStatus.COMPLETED, result={"content": []})
    clock.now += 59
    assert table.find("t", "alice") is task
    clock.now += 2
    assert table.find("t", "alice") is None


def test_a_task_settles_once() -> None:
    table = TaskTable()
    task = table.create("t", "alice")
    assert task is not None
    table.finish(task, TaskStatus.CANCELLED)
    table.finish(task, TaskStatus.COMPLETED, result={"content": []})
    assert task.status is TaskStatus.CANCELLED and task.result is None


def test_the_wire_shapes() -> None:
    table = TaskTable()
    task = table.create("t", "alice")
    assert task is not None
    env = task.envelope()
    assert env["taskId"] == "t" and env["status"] == "working"
    assert isinstance(env["ttlMs"], int) and isinstance(env["pollIntervalMs"], int)
    assert env["createdAt"].endswith("Z") and "result" not in task.detailed()
    table.finish(task, TaskStatus.FAILED, error={"code": -32603, "message": "boom"})
    assert task.detailed()["error"] == {"code": -32603, "message": "boom"} and "result" not in task.detailed()


# ---------------------------------------------------------------------------------------------------- negotiation


def test_negotiation_is_per_request_on_the_2026_era() -> None:
    assert negotiated(_ctx())
    assert not negotiated(_ctx({}))
    caps = types.ClientCapabilities(extensions={TASKS_EXTENSION: {}})
    assert negotiated(_ctx({}, caps=caps)), "the connection's capabilities count too"
    assert not negotiated(_ctx(version="2025-11-25")), "handshake-era clients are not offered tasks"


def test_task_support_reads_the_tool_definition() -> None:
    def tool(support: str | None) -> types.Tool:
        execution = types.ToolExecution(task_support=support) if support else None  # type: ignore[arg-type]
        return types.Tool(name="t", input_schema={"type": "object"}, execution=execution)

    assert task_support(tool(None)) is TaskSupport.FORBIDDEN
    assert task_support(tool("optional")) is TaskSupport.OPTIONAL
    assert task_support(tool("required")) is TaskSupport.REQUIRED
    assert task_support(tool("optional"), _upstream()) is TaskSupport.OPTIONAL, "unset config: as the tool says"


def _upstream(**keys: Any) -> UpstreamSettings:
    return UpstreamSettings(command="srv", **keys)


def test_the_upstreams_config_decides_for_tools_that_declare_nothing() -> None:
    # A 2026-07-28 upstream's Tool has no execution field: only the operator's config can offer its tools as tasks.
    stateless = types.Tool(name="slow", input_schema={"type": "object"})
    other = types.Tool(name="quick", input_schema={"type": "object"})
    assert task_support(stateless, _upstream()) is TaskSupport.FORBIDDEN
    assert task_support(stateless, _upstream(tasks="optional")) is TaskSupport.OPTIONAL
    per_tool = _upstream(tasks="optional", task_tools={"slow": "required", "gone": "forbidden"})
    assert task_support(stateless, per_tool) is TaskSupport.REQUIRED, "a task_tools entry wins over tasks"
    assert task_support(other, per_tool) is TaskSupport.OPTIONAL, "a tool without an entry gets the upstream's"
    assert task_support(other, _upstream(task_tools={"slow": "optional"})) is TaskSupport.FORBIDDEN


def test_the_config_overrides_a_handshake_tools_own_declaration() -> None:
    declared = types.Tool(
        name="job", input_schema={"type": "object"}, execution=types.ToolExecution(task_support="required")
    )
    assert task_support(declared, _upstream(tasks="forbidden")) is TaskSupport.FORBIDDEN
    assert task_support(declared, _upstream(task_tools={"job": "optional"})) is TaskSupport.OPTIONAL


def test_the_tasks_extension_is_never_declared_upstream() -> None:
    # mcp-guard serves tasks at the front; an upstream that could answer with its own task handle must not.
    caps = {"elicitation": {}, "extensions": {TASKS_EXTENSION: {}, "example.org/other": {"x": 1}}}
    assert for_upstream(caps) == {"elicitation": {}, "extensions": {"example.org/other": {"x": 1}}}
    assert for_upstream({"extensions": {TASKS_EXTENSION: {}}}) == {}
    assert for_upstream({"sampling": {}}) == {"sampling": {}}


# ---------------------------------------------------------------------------------------------------- running


async def test_an_admitted_call_is_answered_with_its_task_and_completes_later() -> None:
    release = anyio.Event()

    async def work(_channel: TaskChannel) -> TaskEnd:
        admitted.set()
        await release.wait()
        return TaskEnd(result={"content": [{"type": "text", "text": "done"}]})

    async with _tasks() as tasks:
        admitted = anyio.Event()
        with anyio.fail_after(10):
            task = await tasks.start("t1", "alice", admitted, work)
        assert not isinstance(task, TaskEnd)
        assert tasks.get(_ctx(), "alice", _p("t1"))["status"] == "working"
        release.set()
        done = await _until_finished(tasks, "t1")
        assert done["status"] == "completed" and done["result"]["content"][0]["text"] == "done"


async def test_a_call_refused_before_admission_is_answered_at_once_and_leaves_no_task() -> None:
    async def work(_channel: TaskChannel) -> TaskEnd:
        return TaskEnd(result={"content": [{"type": "text", "text": "Denied"}], "isError": True})

    async with _tasks() as tasks:
        with anyio.fail_after(10):
            end = await tasks.start("t1", "alice", anyio.Event(), work)
        assert isinstance(end, TaskEnd) and end.result is not None and end.result["isError"] is True
        with pytest.raises(MCPError) as e:
            tasks.get(_ctx(), "alice", _p("t1"))
        assert e.value.error.code == types.INVALID_PARAMS


async def test_a_protocol_error_fails_the_task_and_a_tool_error_completes_it() -> None:
    async def protocol_error(_channel: TaskChannel) -> TaskEnd:
        admitted.set()
        return TaskEnd(error=types.ErrorData(code=types.INTERNAL_ERROR, message="upstream broke"))

    async with _tasks() as tasks:
        admitted = anyio.Event()
        await tasks.start("t1", "alice", admitted, protocol_error)
        failed = await _until_finished(tasks, "t1")
        assert failed["status"] == "failed" and failed["error"]["message"] == "upstream broke"
        assert "result" not in failed


async def test_cancel_cancels_the_call_and_is_an_empty_ack() -> None:
    cancelled = anyio.Event()

    async def work(_channel: TaskChannel) -> TaskEnd:
        admitted.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError("unreachable")

    async with _tasks() as tasks:
        admitted = anyio.Event()
        await tasks.start("t1", "alice", admitted, work)
        assert tasks.cancel(_ctx(), "alice", _p("t1")) == {}
        with anyio.fail_after(10):
            await cancelled.wait()
        assert tasks.get(_ctx(), "alice", _p("t1"))["status"] == "cancelled"
        assert tasks.cancel(_ctx(), "alice", _p("t1")) == {}, "cancelling a finished task is the same ack"


async def test_another_principal_gets_the_unknown_task_answer() -> None:
    async def work(_channel: TaskChannel) -> TaskEnd:
        admitted.set()
        return TaskEnd(result={"content": []})

    async with _tasks() as tasks:
        admitted = anyio.Event()
        await tasks.start("t1", "alice", admitted, work)

        for method in (tasks.get, tasks.cancel):
            with pytest.raises(MCPError) as theirs:
                method(_ctx(), "bob", _p("t1"))
            with pytest.raises(MCPError) as unknown:
                method(_ctx(), "bob", _p("no-such-task"))
            assert theirs.value.error.code == unknown.value.error.code == types.INVALID_PARAMS
        with pytest.raises(MCPError) as theirs:
            await tasks.update(_ctx(), "bob", _p("t1"))
        with pytest.raises(MCPError) as unknown:
            await tasks.update(_ctx(), "bob", _p("no-such-task"))
        assert theirs.value.error.code == unknown.value.error.code == types.INVALID_PARAMS
        assert (await _until_finished(tasks, "t1"))["status"] == "completed", "bob's cancel did not touch it"


async def test_the_methods_need_the_extension_and_a_matching_name_header() -> None:
    async with _tasks() as tasks:
        with pytest.raises(MCPError) as e:
            tasks.get(_ctx({}), "alice", _p("t1"))
        assert e.value.error.code == types.MISSING_REQUIRED_CLIENT_CAPABILITY
        assert e.value.error.data == {"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}}
        with pytest.raises(MCPError) as e:
            tasks.get(_ctx(headers={"mcp-name": "other"}), "alice", _p("t1"))
        assert e.value.error.code == types.HEADER_MISMATCH
        with pytest.raises(MCPError) as e:
            tasks.get(_ctx(headers={"mcp-name": " t1 "}), "alice", _p("t1"))
        assert e.value.error.code == types.INVALID_PARAMS, "a matching header (whitespace aside) passes to the lookup"


async def test_a_principal_with_all_its_tasks_running_is_refused() -> None:
    async def work(_channel: TaskChannel) -> TaskEnd:
        admitted.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async with _tasks(TaskTable(max_per_principal=1)) as tasks:
        admitted = anyio.Event()
        await tasks.start("t1", "alice", admitted, work)
        with pytest.raises(MCPError) as e:
            await tasks.start("t2", "alice", anyio.Event(), work)
        assert "too many running tasks" in e.value.error.message


async def test_a_question_of_the_call_waits_on_the_task_until_tasks_update_answers_it() -> None:
    caps = types.ClientCapabilities(elicitation=types.ElicitationCapability())
    answers: list[Any] = []

    async def work(channel: TaskChannel) -> TaskEnd:
        admitted.set()
        async with anyio.create_task_group() as tg:  # an upstream asking two things at once

            async def ask(text: str) -> None:
                answers.append(await channel.request(ClientMethod.ELICITATION, {"message": text}))

            tg.start_soon(ask, "name?")
            tg.start_soon(ask, "sure?")
        return TaskEnd(result={"content": [{"type": "text", "text": "asked"}]})

    async with _tasks() as tasks:
        admitted = anyio.Event()
        await tasks.start("t1", "alice", admitted, work, caps)
        await _until(lambda: len(_pending(tasks)) == 2)
        got = _pending(tasks)
        assert tasks.get(_ctx(), "alice", _p("t1"))["status"] == "input_required"
        first, second = sorted(got)
        assert {str(q["params"]["message"]) for q in got.values()} == {"name?", "sure?"}
        assert {q["method"] for q in got.values()} == {"elicitation/create"}
        update = TaskParams.model_validate(
            {"taskId": "t1", "inputResponses": {first: {"action": "accept"}, "unknown-key": {"x": 1}}}
        )
        assert await tasks.update(_ctx(), "alice", update) == {}
        await _until(lambda: first not in _pending(tasks))
        assert list(_pending(tasks)) == [second], "only the unanswered question is still pending"
        with pytest.raises(MCPError):
            await tasks.update(
                _ctx(), "bob", TaskParams.model_validate({"taskId": "t1", "inputResponses": {second: {}}})
            )
        await tasks.update(_ctx(), "alice", TaskParams.model_validate({"taskId": "t1", "inputResponses": {second: {}}}))
        assert (await _until_finished(tasks, "t1"))["status"] == "completed"
        assert sorted(a.get("action", "-") for a in answers) == ["-", "accept"]


async def test_a_question_the_tasks_client_cannot_answer_is_refused_at_once() -> None:
    async def work(channel: TaskChannel) -> TaskEnd:
        admitted.set()
        answer = await channel.request(ClientMethod.SAMPLING, {"messages": [], "maxTokens": 5})
        assert isinstance(answer, types.ErrorData)
        return TaskEnd(result={"content": [{"type": "text", "text": str(answer.code)}]})

    async with _tasks() as tasks:
        admitted = anyio.Event()
        await tasks.start("t1", "alice", admitted, work, types.ClientCapabilities())
        done = await _until_finished(tasks, "t1")
        assert done["result"]["content"][0]["text"] == str(types.MISSING_REQUIRED_CLIENT_CAPABILITY)


async def test_a_pending_question_is_released_when_the_task_is_cancelled() -> None:
    answers: list[Any] = []

    async def work(channel: TaskChannel) -> TaskEnd:
        admitted.set()
        with anyio.CancelScope(shield=True):  # as an upstream's callback runs: outside the call's scope
            answers.append(await channel.request(ClientMethod.ROOTS, {}))
        return TaskEnd(result={"content": []})

    caps = types.ClientCapabilities(roots=types.RootsCapability())
    async with _tasks() as tasks:
        admitted = anyio.Event()
        await tasks.start("t1", "alice", admitted, work, caps)
        await _until(lambda: tasks.get(_ctx(), "alice", _p("t1"))["status"] == "input_required")
        tasks.cancel(_ctx(), "alice", _p("t1"))
        await _until(lambda: bool(answers))
        assert isinstance(answers[0], types.ErrorData) and "ended" in answers[0].message
        assert tasks.get(_ctx(), "alice", _p("t1"))["status"] == "cancelled"


# ---------------------------------------------------------------------------------------------------- through the guard
CONFORMANCE_FIXTURE = str(Path(__file__).resolve().parents[1] / "conformance" / "conformance_fixture.py")
TASKS_CAPS = {"elicitation": {}, "extensions": {TASKS_EXTENSION: {}}}


async def _rpc(url: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": TASKS_CAPS,
        "io.modelcontextprotocol/clientInfo": {"name": "tasks-test", "version": "1"},
    }
    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": method,
        **({"Mcp-Name": params["name"]} if method == "tools/call" else {}),
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}}
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(20.0)) as http:
        return sse_answer(await http.post(url, json=body, headers=headers))


def _keeps_files(i: PolicyInput) -> Decision:
    """Allow, but never a confirmed deletion (a rule reading the answers of a task's question)."""
    confirmed = any((r.get("content") or {}).get("confirm") is True for r in (i.input_responses or {}).values())
    return Decision(allow=not confirmed, reasons=("deletions are not confirmed here",))


async def _task_when(url: str, task_id: str, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll ``tasks/get`` until ``ready`` holds (the task runs in the guard's task group)."""
    with anyio.fail_after(20):
        while not ready(got := (await _rpc(url, "tasks/get", {"taskId": task_id}))["result"]):  # noqa: ASYNC110 - polled as a client does
            await anyio.sleep(POLL_S)
    return got


async def test_a_tasks_update_is_put_to_the_policy_and_its_deny_ends_the_task() -> None:
    # A handshake-era upstream asks by elicitation/create, parked on the task; tasks/update answers it. (A 2026-07-28
    # upstream's tools carry no taskSupport, so they are never run as tasks; its rounds are re-decided in Forward.)
    settings = make_settings(
        {
            "conf": {
                "protocol": "2025-11-25",
                "command": sys.executable,
                "args": [CONFORMANCE_FIXTURE, "--transport", "stdio"],
                "namespace": False,
                "timeout_s": 10.0,
                "startup_timeout_s": 15.0,
            }
        },
        server={"require_auth": False},
    )
    sink = RecordingSink()
    engine = FunctionEngine(_keeps_files)
    async with running_guard(settings, engine=engine, sink=sink) as guard, http_front(guard) as url:
        for confirm, says in ((False, "Kept a.txt"), (True, "deletions are not confirmed here")):
            created = await _rpc(url, "tools/call", {"name": "confirm_delete", "arguments": {"filename": "a.txt"}})
            task_id = created["result"]["taskId"]
            asked = await _task_when(url, task_id, lambda got: bool(got.get("inputRequests")))
            [key] = asked["inputRequests"]
            answer = {key: {"action": "accept", "content": {"confirm": confirm}}}
            await _rpc(url, "tasks/update", {"taskId": task_id, "inputResponses": answer})
            done = await _task_when(url, task_id, lambda got: got["status"] != "working")
            assert done["status"] == "completed" and says in json.dumps(done["result"]), done
    assert [i.input_responses for i in engine.inputs if i.input_responses] == [
        {key: {"action": "accept", "content": {"confirm": False}}},
        {key: {"action": "accept", "content": {"confirm": True}}},
    ]
    denied = [e for e in sink.of_kind(EventKind.CALL_DECISION) if e.decision == "deny"]
    assert [(e.details or {}).get("input_round") for e in denied] == [1]
