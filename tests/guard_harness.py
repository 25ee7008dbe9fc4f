"""Run a Guard in-process, reached by an SDK client over in-memory streams (unit-test harness).

Upstreams are real subprocesses (usually tests/fixtures/recorder.py); the client side is the SDK's
``ClientSession``; the engine and audit sink are whatever the test passes (see mcp_guard.testing).
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.shared.memory import create_client_server_memory_streams

from mcp_guard.app import Guard
from mcp_guard.pipeline.authorize import Evaluator
from mcp_guard.settings import Settings, parse_settings
from mcp_guard.testing import RecordingSink, allow_all

REPO = Path(__file__).resolve().parents[1]
RECORDER = str(REPO / "tests" / "fixtures" / "recorder.py")
TIMEOUT_S = 20.0
POLL_S = 0.02  # interval of condition polls (always under a deadline)


RECORDER_CALLS: list[tuple[str, Any]] = [
    ("rec__echo", {"text": "plain"}),  # a result
    ("rec__fail", {}),  # a tool error (isError)
    ("rec__raise_error", {}),  # the upstream's own JSON-RPC error, passed on
    ("rec__nope", {}),  # an unknown tool: mcp-guard's deny result
    ("rec__echo", "not an object"),  # invalid params: the SDK's validation
]
"""``tools/call`` cases of the recorder upstream (served as ``rec``) that each end differently: the direct-path tests
run them on both paths (tests/frontend/test_direct_call.py, test_stdio_direct.py)."""


def recorder_upstream(log: Path | None = None, **env: str) -> dict[str, Any]:
    """An [upstreams.*] table that runs the recorder fixture."""
    e = {k: str(v) for k, v in env.items()}
    if log is not None:
        e["RECORDER_LOG"] = str(log)
    return {
        "command": sys.executable,
        "args": [RECORDER],
        "env": e,
        "timeout_s": 10.0,
        "restart_backoff_s": 0.1,
        "startup_timeout_s": 15.0,
    }


def make_settings(upstreams: dict[str, dict[str, Any]], **sections: Any) -> Settings:
    return parse_settings({"upstreams": upstreams, **sections}, source="<test>")


@asynccontextmanager
async def running_guard(
    settings: Settings,
    *,
    engine: Evaluator | None = None,
    sink: RecordingSink | None = None,
    wait: bool = True,
    principal: str | None = None,
) -> AsyncIterator[Guard]:
    guard = Guard(settings, engine=engine or allow_all(), sink=sink or RecordingSink(), principal=principal)
    async with guard.running():
        if wait:
            problems = await guard.registry.wait_ready(TIMEOUT_S)
            assert not problems, problems
        yield guard


@asynccontextmanager
async def client_of(guard: Guard, **session_kwargs: Any) -> AsyncIterator[ClientSession]:
    session_kwargs.setdefault("read_timeout_seconds", TIMEOUT_S)
    async with (
        create_client_server_memory_streams() as (client_streams, server_streams),
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(guard.serve_streams, server_streams[0], server_streams[1], "stdio")
        async with ClientSession(client_streams[0], client_streams[1], **session_kwargs) as session:
            await session.initialize()
            yield session
        tg.cancel_scope.cancel()


def text_of(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def wait_for(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Poll a condition that another process or task makes true, with a deadline."""
    with anyio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - state lives in another process or task
            await anyio.sleep(POLL_S)
