"""The stateless (2026-07-28) HTTP entry alone, in-process: what a ``tools/call`` POST costs around its handler.

    python bench/bench_modern_plumbing.py --requests 4000 --blocks 10

A trivial low-level ``Server`` (one tool answering a fixed text, no upstream, no policy, no audit) behind mcp-guard's
``JsonFirstSessionManager``; 32 concurrent loops each feed it ``tools/call`` POSTs as ASGI messages (no socket, no
HTTP parser). Blocks alternate between the direct path (``frontend/modern_direct.py``) and the SDK's modern entry
(``handle_modern_request``, as ``bench/ablate.py sdk-modern`` switches it), in one process; reported: the process's
CPU per request of each path, median and spread over the blocks, and the median of the paired differences. This is
the transport plumbing only — the whole proxy's figures come from bench_throughput.py and ablate.py.
"""

from __future__ import annotations

import argparse
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
from mcp.server.lowlevel import Server
from mcp.server.transport_security import TransportSecuritySettings

from bench.rawclient import modern_meta
from mcp_guard.frontend.json_first import JsonFirstSessionManager
from mcp_guard.frontend.modern_direct import ModernDirect

CLIENTS = 32


class _NoSessions:
    def connection_of(self, sdk_session_id: str) -> None:
        return None


_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}}


async def _list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[types.Tool(name="echo", input_schema=_SCHEMA)])


async def _call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text="ok")])


def _server() -> Server[Any]:
    # The tool's schema looked up as mcp-guard's server looks it up (not by a tools/list run per call).
    server: Server[Any] = Server(
        "plumbing", on_list_tools=_list_tools, on_call_tool=_call_tool, get_tool_input_schema=lambda _name: _SCHEMA
    )
    server.middleware = []
    return server


_BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "hello"}, "_meta": modern_meta()},
    }
).encode()
_HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"accept", b"application/json, text/event-stream"),
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_BODY)).encode()),
    (b"mcp-protocol-version", b"2026-07-28"),
    (b"mcp-method", b"tools/call"),
    (b"mcp-name", b"echo"),
]


async def _post(manager: JsonFirstSessionManager) -> None:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/mcp",
        "headers": _HEADERS,
        "query_string": b"",
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
        "scheme": "http",
        "http_version": "1.1",
        "root_path": "",
    }
    done = anyio.Event()
    sent: list[MutableMapping[str, Any]] = []
    fed = False

    async def receive() -> dict[str, Any]:
        nonlocal fed
        if not fed:
            fed = True
            return {"type": "http.request", "body": _BODY, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    await manager.handle_request(scope, receive, send)
    done.set()
    if sent[0]["status"] != 200 or b'"ok"' not in b"".join(m.get("body", b"") for m in sent):
        raise RuntimeError(f"unexpected answer: {sent!r}")


async def _block(manager: JsonFirstSessionManager, requests: int) -> float:
    """CPU seconds per request over ``requests`` POSTs from :data:`CLIENTS` concurrent loops."""
    per_client = requests // CLIENTS

    async def client() -> None:
        for _ in range(per_client):
            await _post(manager)

    start = time.process_time()
    async with anyio.create_task_group() as tg:
        for _ in range(CLIENTS):
            tg.start_soon(client)
    return (time.process_time() - start) / (per_client * CLIENTS)


async def run(requests: int, blocks: int) -> dict[str, Any]:
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    manager = JsonFirstSessionManager(_server(), connections=_NoSessions(), security_settings=security)
    real_takes = ModernDirect.takes
    results: dict[str, list[float]] = {"direct": [], "sdk": []}
    async with manager.run():
        await _block(manager, CLIENTS * 20)  # warm-up
        for i in range(blocks * 2):
            path = ("direct", "sdk")[(i + i // 2) % 2]  # direct, sdk, sdk, direct, direct, sdk, …
            ModernDirect.takes = real_takes if path == "direct" else (lambda *_a: False)  # type: ignore[method-assign]
            results[path].append(await _block(manager, requests) * 1e6)
    ModernDirect.takes = real_takes  # type: ignore[method-assign]
    diffs = [d - s for d, s in zip(results["direct"], results["sdk"], strict=True)]
    return {
        "requests_per_block": requests,
        "direct_us": results["direct"],
        "sdk_us": results["sdk"],
        "paired_diff_us_median": statistics.median(diffs),
        "lower_in": sum(d < 0 for d in diffs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests per block")
    parser.add_argument("--blocks", type=int, default=10, help="blocks per path")
    args = parser.parse_args()
    r = anyio.run(run, args.requests, args.blocks)
    for path in ("direct", "sdk"):
        v = r[f"{path}_us"]
        print(f"{path:>7}: median {statistics.median(v):6.1f} µs CPU/request  [{min(v):.1f}–{max(v):.1f}]")
    print(f"direct − sdk, paired: median {r['paired_diff_us_median']:+.1f} µs; lower in {r['lower_in']}/{args.blocks}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
