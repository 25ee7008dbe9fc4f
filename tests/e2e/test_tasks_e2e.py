"""The tasks extension (io.modelcontextprotocol/tasks) through a real ``mcp-guard run --transport http`` process.

The upstream is the conformance fixture (it runs every tool synchronously), spoken to in each era: in 2025-11-25
its tools' own definitions say which may run as tasks (``execution.taskSupport``); in 2026-07-28 a Tool carries no
such field, and ``[upstreams.conf] tasks`` / ``task_tools`` say it. The policy denies ``failing_job`` and redacts
``secret-…`` words from every result, and two principals hold keys. Raw 2026-07-28 HTTP requests (no SDK client
fixes anything up), the same in both eras:

- alice's task-augmented call is answered with a task at once, polls to ``completed``, and the inlined result has
  passed the result policy (redacted);
- bob's ``tasks/get`` / ``tasks/cancel`` of alice's task get exactly the unknown-task answer, before and after it
  finished, and change nothing;
- a denied call is answered at once as a plain denied call (no task); without the extension a task-required tool
  is refused (-32021) and a task-optional one runs synchronously;
- a task whose upstream asks the user waits ``input_required`` until its owner's ``tasks/update`` (bob's is
  refused as unknown);
- a cancelled task settles ``cancelled``; the audit holds one decision row and one outcome row per task, found by
  the task's id (``details.call_id``).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from e2e_support import POLL_S, REPO, http_guard

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

VERSION = "2026-07-28"
TASKS = "io.modelcontextprotocol/tasks"
FIXTURE = REPO / "tests" / "conformance" / "conformance_fixture.py"
KEYS = {"alice": "tasks-e2e-alice-key-81a3", "bob": "tasks-e2e-bob-key-5c2e"}
POLICY = """package mcp_guard

import rego.v1

default decision := {"allow": true, "reasons": ["tasks e2e: allowed"], "obligations": {}}

decision := {"allow": false, "reasons": ["failing_job is not allowed here"], "obligations": {}} if {
	input.action == "tools/call"
	input.tool == "failing_job"
}

redact_secrets := {"redact": {"patterns": ["secret-[a-z]+"]}}

decision := {"allow": true, "reasons": ["result checked"], "obligations": redact_secrets} if {
	input.action == "tools/result"
}
"""


# How mcp-guard learns which of the fixture's tools run as tasks, per era it speaks to the fixture in.
ERAS = {
    # the handshake era: each tool's own definition (execution.taskSupport), no config
    "2025-11-25": "",
    # the 2026-07-28 era: a Tool has no execution field, so the operator says it — every tool may run as a task,
    # except greet; the two the fixture declares required (in the other era) must
    "2026-07-28": 'tasks = "optional"\n'
    'task_tools = { greet = "forbidden", failing_job = "required", required_task_job = "required" }\n',
}


@pytest.fixture(params=sorted(ERAS))
def proxy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    era: str = request.param
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "tasks.rego").write_text(POLICY)
    lines = [
        f"[policy]\nbundle = {json.dumps(str(bundle))}\n",
        f"[audit]\npath = {json.dumps(str(tmp_path / 'audit.db'))}\n",
        *(
            f'[principals.{who}]\napi_key_sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\n'
            for who, key in KEYS.items()
        ),
        f"[upstreams.conf]\ncommand = {json.dumps(sys.executable)}\n"
        f'args = [{json.dumps(str(FIXTURE))}, "--transport", "stdio"]\nnamespace = false\n'
        f"protocol = {json.dumps(era)}\n{ERAS[era]}",
    ]
    cfg = tmp_path / "mcp-guard.toml"
    cfg.write_text("\n".join(lines))
    with http_guard(cfg, tmp_path / "guard.log") as url:
        yield url, tmp_path
    assert _upstream_version(tmp_path) == era, "the upstream was not spoken to in the era under test"


def _message(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC response in a JSON body or the last ``data:`` line of an SSE body."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        message: dict[str, Any] = json.loads([d for d in data if d][-1])
        return message
    body: dict[str, Any] = response.json()
    return body


async def _rpc(url: str, who: str, method: str, params: dict[str, Any], *, tasks: bool = True) -> dict[str, Any]:
    """One 2026-07-28 request as ``who``; declares elicitation, and the tasks extension unless ``tasks`` is false."""
    caps: dict[str, Any] = {"elicitation": {}, **({"extensions": {TASKS: {}}} if tasks else {})}
    meta = {
        "io.modelcontextprotocol/protocolVersion": VERSION,
        "io.modelcontextprotocol/clientCapabilities": caps,
        "io.modelcontextprotocol/clientInfo": {"name": "tasks-e2e", "version": "1"},
    }
    headers = {
        "Authorization": f"Bearer {KEYS[who]}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": VERSION,
        "Mcp-Method": method,
    }
    if method == "tools/call":
        headers["Mcp-Name"] = params["name"]
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}}
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30.0)) as http:
        return _message(await http.post(url, json=body, headers=headers))


async def _tools(url: str) -> None:
    with anyio.fail_after(60):
        while True:
            listed = await _rpc(url, "alice", "tools/list", {})
            names = {t["name"] for t in listed.get("result", {}).get("tools", [])}
            if {"slow_compute", "failing_job"} <= names:
                return
            await anyio.sleep(POLL_S)


async def _settled(url: str, task_id: str) -> dict[str, Any]:
    with anyio.fail_after(30):
        while True:
            got: dict[str, Any] = (await _rpc(url, "alice", "tasks/get", {"taskId": task_id}))["result"]
            if got["status"] in ("completed", "failed", "cancelled"):
                return got
            await anyio.sleep(POLL_S)


def _rows(tmp: Path, call_id: str) -> list[tuple[str, str | None]]:
    with sqlite3.connect(tmp / "audit.db") as db:
        rows = db.execute(
            "SELECT kind, decision FROM audit_events WHERE json_extract(details, '$.call_id') = ? ORDER BY seq",
            (call_id,),
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


def _upstream_version(tmp: Path) -> str:
    """The protocol version mcp-guard negotiated with the fixture (its ``upstream.start`` audit row)."""
    with sqlite3.connect(tmp / "audit.db") as db:
        row = db.execute(
            "SELECT json_extract(details, '$.protocol_version') FROM audit_events WHERE kind = 'upstream.start'"
        ).fetchone()
    assert row is not None, "no upstream.start row"
    return str(row[0])


def _text(result: dict[str, Any]) -> str:
    return "".join(b.get("text", "") for b in result.get("content", []))


async def test_a_task_started_by_alice_is_hers_alone(proxy: tuple[str, Path]) -> None:
    url, tmp = proxy
    await _tools(url)

    created = await _rpc(
        url, "alice", "tools/call", {"name": "slow_compute", "arguments": {"seconds": 1, "label": "secret-plans"}}
    )
    task = created["result"]
    assert task["resultType"] == "task" and task["status"] == "working", created
    task_id = task["taskId"]

    unknown = await _rpc(url, "bob", "tasks/get", {"taskId": "0" * 32})
    for method in ("tasks/get", "tasks/cancel"):
        theirs = await _rpc(url, "bob", method, {"taskId": task_id})
        assert "result" not in theirs, f"bob's {method} of alice's task was answered: {theirs}"
        assert theirs["error"]["code"] == unknown["error"]["code"] == -32602
        assert theirs["error"]["message"].replace(task_id, "ID") == unknown["error"]["message"].replace("0" * 32, "ID")

    done = await _settled(url, task_id)
    assert done["status"] == "completed", done  # bob's cancel did not reach it
    text = _text(done["result"])
    assert "[redacted]" in text and "secret-plans" not in text, "the result policy ran before the result was kept"
    after = await _rpc(url, "bob", "tasks/get", {"taskId": task_id})
    assert after["error"]["code"] == -32602 and "result" not in after

    without = await _rpc(url, "alice", "tasks/get", {"taskId": task_id}, tasks=False)
    assert without["error"]["code"] == -32021, "the task methods need the extension"

    # audited as one call: its allow row and its outcome row (the outcome row names no decision of its own)
    assert _rows(tmp, task_id) == [("call.decision", "allow"), ("call.result", None)]


async def test_a_denied_call_is_answered_at_once_and_a_cancelled_task_settles(proxy: tuple[str, Path]) -> None:
    url, tmp = proxy
    await _tools(url)

    refused = await _rpc(url, "alice", "tools/call", {"name": "required_task_job", "arguments": {}}, tasks=False)
    assert refused["error"]["code"] == -32021, "a task-required tool needs the extension"
    assert refused["error"]["data"]["requiredCapabilities"] == {"extensions": {TASKS: {}}}
    plain = await _rpc(url, "alice", "tools/call", {"name": "slow_compute", "arguments": {"seconds": 0}}, tasks=False)
    assert "taskId" not in plain["result"] and _text(plain["result"]).startswith("Computed"), "optional: synchronous"
    sync = await _rpc(url, "alice", "tools/call", {"name": "greet", "arguments": {"name": "Ada"}})
    assert "taskId" not in sync["result"] and _text(sync["result"]) == "Hello, Ada!", "forbidden: never a task"

    denied = (await _rpc(url, "alice", "tools/call", {"name": "failing_job", "arguments": {}}))["result"]
    assert "taskId" not in denied and denied["isError"] is True, denied
    assert "failing_job is not allowed here" in _text(denied)

    task_id = (await _rpc(url, "alice", "tools/call", {"name": "slow_compute", "arguments": {"seconds": 60}}))[
        "result"
    ]["taskId"]
    ack = await _rpc(url, "alice", "tasks/cancel", {"taskId": task_id})
    assert ack["result"].get("resultType") == "complete" and "status" not in ack["result"]
    assert (await _settled(url, task_id))["status"] == "cancelled"
    with anyio.fail_after(30):
        while True:  # the cancelled row is written as the call unwinds, after the task settled
            if ("call.cancelled", None) in _rows(tmp, task_id):
                break
            await anyio.sleep(POLL_S)
    assert _rows(tmp, task_id) == [("call.decision", "allow"), ("call.cancelled", None)]


async def test_a_task_waiting_for_input_is_answered_by_its_owner_only(proxy: tuple[str, Path]) -> None:
    url, _tmp = proxy
    await _tools(url)
    created = await _rpc(url, "alice", "tools/call", {"name": "confirm_delete", "arguments": {"filename": "a.txt"}})
    task_id = created["result"]["taskId"]
    with anyio.fail_after(30):
        while True:  # the upstream's elicitation is parked on the task
            got = (await _rpc(url, "alice", "tasks/get", {"taskId": task_id}))["result"]
            if got["status"] == "input_required":
                break
            await anyio.sleep(POLL_S)
    (key, question), *_ = got["inputRequests"].items()
    assert question["method"] == "elicitation/create" and "a.txt" in question["params"]["message"]
    answer = {"inputResponses": {key: {"action": "accept", "content": {"confirm": True}}}}
    theirs = await _rpc(url, "bob", "tasks/update", {"taskId": task_id, **answer})
    assert theirs["error"]["code"] == -32602
    assert (await _rpc(url, "alice", "tasks/get", {"taskId": task_id}))["result"]["status"] == "input_required"
    ack = await _rpc(url, "alice", "tasks/update", {"taskId": task_id, **answer})
    assert ack["result"].get("resultType") == "complete"
    done = await _settled(url, task_id)
    assert done["status"] == "completed" and _text(done["result"]).startswith("Deleted a.txt"), done
