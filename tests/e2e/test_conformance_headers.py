"""The 2026-07-28 HTTP transport's intermediary rules, on the wire, against a real mcp-guard process.

Raw HTTP requests (no SDK client, so nothing is fixed up on the way) to ``mcp-guard run --transport http`` in front
of two real upstreams: the conformance fixture (exact names; its ``test_x_mcp_header`` tool mirrors ``region``
into ``Mcp-Param-Region``) and the recorder (namespaced; its call log shows what reached it, ``_meta`` included).

- ``MCP-Protocol-Version``, ``Mcp-Method``, ``Mcp-Name`` and declared ``Mcp-Param-*`` headers that disagree with
  the body: HTTP 400, JSON-RPC -32020, and neither the upstream nor the audit trail (so no policy) saw the call;
- checking ``Mcp-Param-*`` costs no listing: no ``tools.list`` audit row per call;
- listings are ``cacheScope: private`` with a ``ttlMs`` and sorted by name;
- ``_meta.traceparent`` reaches the upstream;
- a client hanging up mid-call cancels the upstream request (``notifications/cancelled``).
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from e2e_support import API_KEY, POLL_S, REPO, http_guard, recorder, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

VERSION = "2026-07-28"
HEADER_MISMATCH = -32020
FIXTURE = REPO / "tests" / "conformance" / "conformance_fixture.py"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    upstreams = {
        "conf": {"command": sys.executable, "args": [str(FIXTURE), "--transport", "stdio"], "namespace": False},
        "rec": recorder(tmp_path / "rec.log"),
    }
    cfg = write_config(tmp_path, upstreams)
    with http_guard(cfg, tmp_path / "guard.log") as url:
        yield url, tmp_path


def _meta() -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": VERSION,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw-e2e", "version": "1"},
    }


def _headers(method: str, name: str | None = None, **extra: str) -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": VERSION,
        "Mcp-Method": method,
    }
    if name is not None:
        headers["Mcp-Name"] = name
    return {**headers, **extra}


def _message(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC response in a JSON body or the last ``data:`` line of an SSE body."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        message: dict[str, Any] = json.loads([d for d in data if d][-1])
        return message
    body: dict[str, Any] = response.json()
    return body


async def _post(url: str, method: str, params: dict[str, Any], headers: dict[str, str]) -> httpx2.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": method,
        "params": {**params, "_meta": {**_meta(), **params.get("_meta", {})}},
    }
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30.0)) as http:
        return await http.post(url, json=body, headers=headers)


def _audit(tmp: Path, kind: str) -> list[tuple[str | None, str | None]]:
    with sqlite3.connect(tmp / "audit.db") as db:
        rows = db.execute("SELECT tool, decision FROM audit_events WHERE kind = ? ORDER BY seq", (kind,)).fetchall()
    return [(r[0], r[1]) for r in rows]


def _calls(tmp: Path) -> list[dict[str, Any]]:
    log = tmp / "rec.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.parametrize(
    ("what", "headers", "meta"),
    [
        ("Mcp-Method", _headers("tools/list", "rec__echo"), {}),
        ("Mcp-Name", _headers("tools/call", "rec__add"), {}),
        ("MCP-Protocol-Version", _headers("tools/call", "rec__echo"), {"io.modelcontextprotocol/protocolVersion": "x"}),
    ],
)
async def test_a_routing_header_that_disagrees_with_the_body_is_refused_before_policy(
    proxy: tuple[str, Path], what: str, headers: dict[str, str], meta: dict[str, str]
) -> None:
    url, tmp = proxy
    response = await _post(
        url, "tools/call", {"name": "rec__echo", "arguments": {"text": "hi"}, "_meta": meta}, headers
    )
    assert response.status_code == 400, (what, response.text)
    message = _message(response)
    assert message["error"]["code"] == HEADER_MISMATCH, message
    # Nothing downstream of the transport saw it: no decision, no upstream call. A good call proves the log works.
    assert _audit(tmp, "call.decision") == []
    good = await _post(
        url, "tools/call", {"name": "rec__echo", "arguments": {"text": "ok"}}, _headers("tools/call", "rec__echo")
    )
    assert good.status_code == 200, good.text
    assert [c.get("arguments") for c in _calls(tmp) if c.get("method") == "tools/call"] == [{"text": "ok"}]
    assert _audit(tmp, "call.decision") == [("echo", "allow")]


async def test_mcp_param_headers_are_checked_against_the_arguments_without_a_listing(proxy: tuple[str, Path]) -> None:
    url, tmp = proxy
    args = {"name": "test_x_mcp_header", "arguments": {"region": "eu-west-1"}}
    wrong = await _post(
        url, "tools/call", args, _headers("tools/call", "test_x_mcp_header", **{"Mcp-Param-Region": "us"})
    )
    assert wrong.status_code == 400, wrong.text
    assert _message(wrong)["error"]["code"] == HEADER_MISMATCH
    missing = await _post(url, "tools/call", args, _headers("tools/call", "test_x_mcp_header"))
    assert missing.status_code == 400 and _message(missing)["error"]["code"] == HEADER_MISMATCH
    assert _audit(tmp, "call.decision") == []

    # Matching header, plus one no schema declares (not checked, not refused).
    extra = {"Mcp-Param-Region": "eu-west-1", "Mcp-Param-Unknown": "x"}
    right = await _post(url, "tools/call", args, _headers("tools/call", "test_x_mcp_header", **extra))
    assert right.status_code == 200, right.text
    assert "error" not in _message(right), right.text
    assert _audit(tmp, "call.decision") == [("test_x_mcp_header", "allow")]

    # The header checks listed nothing: the only tools.list row is the one an explicit listing makes.
    listed = await _post(url, "tools/list", {}, _headers("tools/list"))
    assert listed.status_code == 200
    with anyio.fail_after(15):
        while not _audit(tmp, "tools.list"):  # noqa: ASYNC110 - written by another process
            await anyio.sleep(POLL_S)
    assert len(_audit(tmp, "tools.list")) == 1


async def test_listings_are_private_short_lived_and_sorted(proxy: tuple[str, Path]) -> None:
    url, _ = proxy
    for method, key, field in [
        ("tools/list", "tools", "name"),
        ("prompts/list", "prompts", "name"),
        ("resources/list", "resources", "uri"),
        ("resources/templates/list", "resourceTemplates", "uriTemplate"),
    ]:
        response = await _post(url, method, {}, _headers(method))
        assert response.status_code == 200, response.text
        result = _message(response)["result"]
        assert result["cacheScope"] == "private", (method, result)
        assert result["ttlMs"] == 0, (method, result)
        names = [entry[field] for entry in result[key]]
        assert len(names) >= 2 and names == sorted(names), (method, names)


async def test_a_traceparent_in_meta_reaches_the_upstream(proxy: tuple[str, Path]) -> None:
    url, tmp = proxy
    params = {"name": "rec__echo", "arguments": {"text": "traced"}, "_meta": {"traceparent": TRACEPARENT}}
    response = await _post(url, "tools/call", params, _headers("tools/call", "rec__echo"))
    assert response.status_code == 200, response.text
    [call] = [c for c in _calls(tmp) if c.get("method") == "tools/call"]
    assert call["params"]["_meta"]["traceparent"] == TRACEPARENT


async def test_a_client_closing_its_stream_cancels_the_upstream_call(proxy: tuple[str, Path]) -> None:
    # A stateless client cancels by hanging up: the proxy must pass that on (notifications/cancelled upstream).
    url, tmp = proxy
    params = {"name": "rec__hang", "arguments": {}, "_meta": _meta()}
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}
    async with (
        httpx2.AsyncClient(timeout=httpx2.Timeout(30.0)) as http,
        http.stream("POST", url, json=body, headers=_headers("tools/call", "rec__hang")) as response,
    ):
        assert response.status_code == 200
        with anyio.fail_after(15):
            while not any(c.get("name") == "hang" for c in _calls(tmp)):  # noqa: ASYNC110 - another process
                await anyio.sleep(POLL_S)
    # the response stream is closed here, mid-call
    with anyio.fail_after(15):
        while not any(c.get("event") == "cancelled" for c in _calls(tmp)):  # noqa: ASYNC110 - another process
            await anyio.sleep(POLL_S)
