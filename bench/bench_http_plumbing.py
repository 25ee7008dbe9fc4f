"""A 2025-11-25 session's ``tools/call`` through the HTTP front's session manager alone, in-process: what the front
costs between the ASGI call and its handler and between the result and the answer's ASGI messages.

    PYTHONPATH=/path/to/tree/src python bench/bench_http_plumbing.py --calls 2000 --blocks 7

A trivial low-level ``Server`` (one tool answering a fixed text: no upstream, no policy, no audit) behind
``JsonFirstSessionManager`` with the direct path on (``frontend/direct_call.py``); one session is opened
(initialize, initialized, a listing so the front knows it) and then sequential ``tools/call`` POSTs are handed to
the ASGI app as raw messages, each answer collected from ``send``. Reported: the process's CPU per call, the lowest
and the median over the blocks. uvicorn, authentication and the ops routes are left out (bench_trees.py measures the
whole proxy). To compare two trees, alternate runs with each tree's ``src`` first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import anyio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mcp_types as types
from mcp.server.connection import Connection
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings

from mcp_guard.frontend.json_first import JsonFirstSessionManager

_CONNECTIONS: dict[str, Connection] = {}


class _Sessions:
    """The sessions' SDK connections, as the front's session table knows them once a request went through a handler."""

    def connection_of(self, sdk_session_id: str) -> Connection | None:
        return _CONNECTIONS.get(sdk_session_id)


def _known(ctx: Any) -> None:
    conn: Connection = ctx.session._connection
    if conn.session_id:
        _CONNECTIONS[conn.session_id] = conn


async def _list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
    _known(ctx)
    return types.ListToolsResult(tools=[])


async def _call_tool(ctx: Any, params: types.CallToolRequestParams) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": "ok"}], "isError": False}


def _app() -> tuple[JsonFirstSessionManager, StreamableHTTPASGIApp]:
    # Passed as mcp-guard passes its handlers (frontend/handlers.py): a raw result dict, relayed unvalidated.
    handlers: dict[str, Any] = {"on_list_tools": _list_tools, "on_call_tool": _call_tool}
    server: Server[Any] = Server("plumbing", **handlers)
    server.middleware = []
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=["127.0.0.1:*"], allowed_origins=["http://127.0.0.1:*"]
    )
    manager = JsonFirstSessionManager(app=server, security_settings=security, connections=_Sessions())
    return manager, StreamableHTTPASGIApp(manager)


_HEADERS = {
    "host": "127.0.0.1:8000",
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "user-agent": "bench",
}


async def _post(
    app: StreamableHTTPASGIApp, headers: dict[str, str], body: dict[str, Any]
) -> list[MutableMapping[str, Any]]:
    raw = json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/mcp",
        "raw_path": b"/mcp",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in {**headers, "content-length": str(len(raw))}.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    pending = [{"type": "http.request", "body": raw, "more_body": False}]
    out: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: MutableMapping[str, Any]) -> None:
        out.append(message)

    await app(scope, receive, send)
    return out


async def _run(calls: int, blocks: int) -> list[float]:
    manager, app = _app()
    async with manager.run():
        params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}
        out = await _post(app, _HEADERS, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params})
        session = dict(out[0]["headers"])[b"mcp-session-id"].decode()
        headers = {**_HEADERS, "mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
        await _post(app, headers, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        await _post(app, headers, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        body: dict[str, Any] = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "hello from the benchmark"}},
        }
        out = await _post(app, headers, body)
        assert out[0]["status"] == 200 and b'"ok"' in out[1]["body"], out
        per_call = []
        for _ in range(blocks):
            gc.collect()
            started = time.process_time()
            for i in range(calls):
                body["id"] = i + 10
                await _post(app, headers, body)
            per_call.append((time.process_time() - started) / calls * 1e6)
        return per_call


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per block")
    parser.add_argument("--blocks", type=int, default=7)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # (the front runs on uvloop where it is installed)
        per_call = anyio.run(_run, args.calls, args.blocks)
    else:
        per_call = uvloop.run(_run(args.calls, args.blocks))
    print(f"µs CPU/call: lowest {min(per_call):.1f}, median {statistics.median(per_call):.1f} ({args.blocks} blocks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
