"""Light MCP clients for load generation: raw JSON-RPC over a child's stdio, raw HTTP/1.1 keep-alive.

The SDK's own client costs 1–3 ms of CPU per HTTP call, more than the proxy under test; these clients
send pre-built bodies (only the request id changes) and parse only the answer they wait for, so the
client's share of a measurement stays small and — since the same client measures the direct path and
the path through mcp-guard — cancels out of the "added latency" figures.

Protocol eras (streamable HTTP):

* ``legacy`` (2025-11-25): ``initialize`` → ``mcp-session-id`` → ``notifications/initialized``, then
  every request carries the session id and ``mcp-protocol-version``.
* ``modern`` (2026-07-28): no handshake, no session; every request is self-contained, with the
  ``_meta`` envelope (protocol version, client info and capabilities) and the ``mcp-method`` /
  ``mcp-name`` routing headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

LEGACY_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"
CLIENT_INFO = {"name": "mcp-guard-bench", "version": "1.0"}
_INIT_PARAMS = {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO}


class ProtocolError(RuntimeError):
    pass


class CallTemplate:
    """A ``tools/call`` body with everything but the id pre-encoded."""

    def __init__(self, tool: str, arguments: Mapping[str, Any], *, meta: Mapping[str, Any] | None = None) -> None:
        params: dict[str, Any] = {"name": tool, "arguments": dict(arguments)}
        if meta:
            params["_meta"] = dict(meta)
        self.tool = tool
        self._head = b'{"jsonrpc":"2.0","id":'
        self._tail = b',"method":"tools/call","params":' + json.dumps(params, separators=(",", ":")).encode() + b"}"

    def body(self, request_id: int) -> bytes:
        return self._head + str(request_id).encode() + self._tail


ASKING_CAPABILITIES: dict[str, Any] = {"sampling": {}, "elicitation": {}, "roots": {}}
"""What a 2026-07-28 client declares when it can answer an upstream's questions (its calls are then bridged)."""


def modern_meta(capabilities: dict[str, Any] | None = None) -> dict[str, Any]:
    """A 2026-07-28 request's envelope; by default a client that declares no capability (it can be asked nothing)."""
    return {
        "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
        "io.modelcontextprotocol/clientInfo": CLIENT_INFO,
        "io.modelcontextprotocol/clientCapabilities": capabilities or {},
    }


def check_result(msg: dict[str, Any]) -> dict[str, Any]:
    """The result of a JSON-RPC answer; a JSON-RPC error or a tool error (denied, upstream down…) raises."""
    if "error" in msg:
        raise ProtocolError(f"JSON-RPC error: {msg['error']}")
    result = msg.get("result")
    if not isinstance(result, dict):
        raise ProtocolError(f"no result in {msg!r}"[:500])
    if result.get("isError"):
        raise ProtocolError(f"tool error: {json.dumps(result)[:500]}")
    return result


# ---------------------------------------------------------------------- stdio
class StdioClient:
    """An MCP client over a child process's stdin/stdout (newline-delimited JSON-RPC)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._next_id = 0

    @classmethod
    async def spawn(
        cls, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None, stderr: Any = None
    ) -> StdioClient:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr if stderr is not None else asyncio.subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            limit=64 * 1024 * 1024,
        )
        return cls(proc)

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def send_raw(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + b"\n")
        await self.proc.stdin.drain()

    async def wait_for(self, request_id: int) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                raise ProtocolError(f"the server closed its stdout (exit code {self.proc.returncode})")
            msg = json.loads(line)
            if msg.get("id") == request_id and ("result" in msg or "error" in msg):
                return dict(msg)
            if "method" in msg and "id" in msg:  # a request to us (ping, …): answer empty
                await self.send_raw(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {}}).encode())

    async def request(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        rid = self.next_id()
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            body["params"] = dict(params)
        await self.send_raw(json.dumps(body).encode())
        return await self.wait_for(rid)

    async def initialize(self) -> dict[str, Any]:
        answer = check_result(await self.request("initialize", _INIT_PARAMS))
        await self.send_raw(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
        return answer

    async def call(self, template: CallTemplate) -> dict[str, Any]:
        rid = self.next_id()
        await self.send_raw(template.body(rid))
        return await self.wait_for(rid)

    async def close(self, timeout: float = 10.0) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            if self.proc.returncode is None:
                self.proc.terminate()
                try:
                    await asyncio.wait_for(self.proc.wait(), timeout)
                except TimeoutError:
                    self.proc.kill()
                    await self.proc.wait()


# ---------------------------------------------------------------------- HTTP
IDLE_RECONNECT_S = 3.0  # below uvicorn's default keep-alive timeout (5 s)


class HttpClient:
    """One keep-alive HTTP/1.1 connection speaking streamable HTTP (one MCP session on the legacy era)."""

    def __init__(self, url: str, *, era: str = "legacy", api_key: str | None = None) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path or "/mcp"
        self.era = era
        self.session_id: str | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._next_id = 0
        self._used = 0.0  # time.monotonic() of the last exchange on the open connection
        base = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            "Accept: application/json, text/event-stream",
        ]
        if api_key:
            base.append(f"Authorization: Bearer {api_key}")
        self._base = base

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=64 * 1024 * 1024)

    def _head(self, extra: Sequence[str]) -> bytes:
        lines = list(self._base)
        if self.era == "modern":
            lines.append(f"mcp-protocol-version: {MODERN_VERSION}")
        elif self.session_id is not None:
            lines.append(f"mcp-session-id: {self.session_id}")
            lines.append(f"mcp-protocol-version: {LEGACY_VERSION}")
        lines.extend(extra)
        return ("\r\n".join(lines) + "\r\n").encode()

    async def _exchange(self, head: bytes, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self._writer is not None and time.monotonic() - self._used > IDLE_RECONNECT_S:
            # uvicorn closes a keep-alive connection idle for 5 s; a path waiting for its turn in an
            # interleaved run (another path's long warm-up on a loaded machine) would find it closed.
            self._writer.close()
            self._writer = None
        if self._writer is None:
            await self.connect()
        self._used = time.monotonic()
        assert self._reader is not None and self._writer is not None
        self._writer.write(head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        status_line = await self._reader.readline()
        if not status_line:
            raise ProtocolError("the server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        headers: dict[str, str] = {}
        while True:
            line = await self._reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            data = await self._reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int((await self._reader.readline()).split(b";", 1)[0], 16)
                if size == 0:
                    while (await self._reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(await self._reader.readexactly(size))
                await self._reader.readexactly(2)
            data = b"".join(chunks)
        else:
            data = b""
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, data

    @staticmethod
    def _answer(headers: Mapping[str, str], data: bytes, request_id: int) -> dict[str, Any]:
        if headers.get("content-type", "").startswith("text/event-stream"):
            for line in data.split(b"\n"):
                if line.startswith(b"data:"):
                    payload = line[5:].strip()
                    if not payload:
                        continue
                    msg = json.loads(payload)
                    if isinstance(msg, dict) and msg.get("id") == request_id:
                        return msg
            raise ProtocolError(f"no answer to request {request_id} in the event stream: {data[:300]!r}")
        msg = json.loads(data)
        if not isinstance(msg, dict):
            raise ProtocolError(f"unexpected body {data[:300]!r}")
        return msg

    async def post(self, body: bytes, request_id: int | None, extra: Sequence[str] = ()) -> dict[str, Any]:
        status, headers, data = await self._exchange(self._head(extra), body)
        if request_id is None:
            if status >= 300:
                raise ProtocolError(f"HTTP {status}: {data[:300]!r}")
            return {}
        if status >= 400 and not data:
            raise ProtocolError(f"HTTP {status}")
        if "mcp-session-id" in headers and self.session_id is None:
            self.session_id = headers["mcp-session-id"]
        try:
            return self._answer(headers, data, request_id)
        except (ValueError, ProtocolError) as e:
            raise ProtocolError(f"HTTP {status}: {e}") from None

    async def request(
        self, method: str, params: Mapping[str, Any] | None = None, extra: Sequence[str] = ()
    ) -> dict[str, Any]:
        rid = self.next_id()
        p = dict(params or {})
        if self.era == "modern":
            p["_meta"] = {**modern_meta(), **p.get("_meta", {})}
            extra = [f"mcp-method: {method}", *extra]
        body = json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": p}).encode()
        return await self.post(body, rid, extra)

    async def initialize(self) -> None:
        """Open an MCP session (legacy era); nothing to do on the modern era."""
        if self.era == "modern":
            return
        check_result(await self.request("initialize", _INIT_PARAMS))
        if self.session_id is None:
            raise ProtocolError("the server did not give an mcp-session-id")
        await self.post(b'{"jsonrpc":"2.0","method":"notifications/initialized"}', None)

    def call_headers(self, template: CallTemplate) -> list[str]:
        return ["mcp-method: tools/call", f"mcp-name: {template.tool}"] if self.era == "modern" else []

    async def call(self, template: CallTemplate, extra: Sequence[str]) -> dict[str, Any]:
        rid = self.next_id()
        return await self.post(template.body(rid), rid, extra)

    async def open_get_stream(self) -> None:
        """Open the session's standalone GET stream (server→client notifications) and leave it open:
        read the response head only. The connection is dedicated to it from then on."""
        assert self.session_id is not None
        if self._writer is None:
            await self.connect()
        assert self._reader is not None and self._writer is not None
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Accept: text/event-stream",
            f"mcp-session-id: {self.session_id}",
            f"mcp-protocol-version: {LEGACY_VERSION}",
        ]
        lines += [h for h in self._base if h.startswith("Authorization:")]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        status_line = await self._reader.readline()
        status = int(status_line.split(b" ", 2)[1]) if status_line else 0
        if status != 200:
            raise ProtocolError(f"GET stream refused: {status_line!r}")
        while (await self._reader.readline()) not in (b"\r\n", b"\n", b""):
            pass

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


def env_api_key() -> str | None:
    return os.environ.get("MCP_GUARD_BENCH_KEY")
