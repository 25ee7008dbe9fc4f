"""``subscriptions/listen`` through a real mcp-guard process: stateless clients hear of upstream changes they may see.

mcp-guard (``run --transport http``) fronts the ``growing`` fixture (tests/fixtures/growing.py), whose ``grow(name)``
tool adds a tool at run time and announces ``tools/list_changed``. Two principals open a listen stream over raw
HTTP (SSE): alice may list every tool, bob may not list tools whose name starts with ``secret``.

- alice grows ``secret_plan``: alice's stream gets ``notifications/tools/list_changed``; bob's gets nothing. To
  see "nothing" without waiting for it, bob also subscribed to the fixture's resource: alice then ``touch``-es it,
  and bob's first frame after the acknowledgement must be that ``notifications/resources/updated`` (frames of one
  stream arrive in order, and the upstream announced the tool before the touch);
- alice grows ``public_tool``: both streams get ``tools/list_changed``; bob's refetched list shows ``public_tool``
  and no secret;
- every frame carries the subscription id (the listen request's JSON-RPC id).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from e2e_support import REPO, http_guard

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

VERSION = "2026-07-28"
GROWING = REPO / "tests" / "fixtures" / "growing.py"
KEYS = {"alice": "e2e-alice-key-91b7c3", "bob": "e2e-bob-key-5d20aa"}
SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
POLICY = """package mcp_guard

import rego.v1

default decision := {"allow": true, "reasons": ["e2e: allowed"], "obligations": {}}

decision := {"allow": false, "reasons": ["bob may not see secret tools"], "obligations": {}} if {
	input.principal.id == "bob"
	startswith(input.tool, "secret")
}
"""


def _config(tmp: Path) -> Path:
    (tmp / "bundle").mkdir()
    (tmp / "bundle" / "policy.rego").write_text(POLICY)
    lines = ["[policy]", f"bundle = {json.dumps(str(tmp / 'bundle'))}", "", "[audit]"]
    lines += [f"path = {json.dumps(str(tmp / 'audit.db'))}", ""]
    for who, key in KEYS.items():
        lines += [f"[principals.{who}]", f'api_key_sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"', ""]
    lines += ["[upstreams.grow]", f"command = {json.dumps(sys.executable)}", f"args = [{json.dumps(str(GROWING))}]"]
    lines += ['new_tools = "trust"']  # grown tools are listed at once; review of new tools is tested elsewhere
    cfg = tmp / "mcp-guard.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def _headers(who: str, method: str, name: str | None = None) -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {KEYS[who]}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": VERSION,
        "Mcp-Method": method,
    }
    return {**headers, "Mcp-Name": name} if name else headers


def _body(request_id: int | str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": VERSION,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "listen-e2e", "version": "1"},
    }
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": meta}}


async def _request(url: str, who: str, method: str, params: dict[str, Any], name: str | None = None) -> Any:
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30.0)) as http:
        response = await http.post(url, json=_body(1, method, params), headers=_headers(who, method, name))
    assert response.status_code == 200, response.text
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        return json.loads([d for d in data if d][-1])["result"]
    return response.json()["result"]


@asynccontextmanager
async def _listen(
    url: str, who: str, subscription: str, uris: list[str]
) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
    """A listen stream of ``who`` (tool list changes, updates of ``uris``): yields its frames as they arrive."""
    params: dict[str, Any] = {"notifications": {"toolsListChanged": True, "resourceSubscriptions": uris}}
    async with (
        httpx2.AsyncClient(timeout=httpx2.Timeout(60.0)) as http,
        http.stream(
            "POST",
            url,
            json=_body(subscription, "subscriptions/listen", params),
            headers=_headers(who, "subscriptions/listen"),
        ) as response,
    ):
        assert response.status_code == 200

        async def frames() -> AsyncIterator[dict[str, Any]]:
            async for line in response.aiter_lines():
                if line.startswith("data:") and line[5:].strip():
                    yield json.loads(line[5:])

        yield frames()


async def _next(frames: AsyncIterator[dict[str, Any]], within: float = 20.0) -> dict[str, Any]:
    with anyio.fail_after(within):
        return await anext(frames)


def _tool_names(result: dict[str, Any]) -> list[str]:
    return [t["name"] for t in result["tools"]]


async def test_a_subscribed_client_hears_of_tools_it_may_see_and_nothing_else(tmp_path: Path) -> None:
    with http_guard(_config(tmp_path), tmp_path / "guard.log") as url:
        [status] = [r["uri"] for r in (await _request(url, "bob", "resources/list", {}))["resources"]]
        async with _listen(url, "alice", "alice-sub", []) as alice, _listen(url, "bob", "bob-sub", [status]) as bob:
            for frames, sub, uris in ((alice, "alice-sub", None), (bob, "bob-sub", [status])):
                ack = await _next(frames)
                assert ack["method"] == "notifications/subscriptions/acknowledged", ack
                expected = {"toolsListChanged": True, **({"resourceSubscriptions": uris} if uris else {})}
                assert ack["params"]["notifications"] == expected
                assert ack["params"]["_meta"][SUBSCRIPTION_ID] == sub

            await _call(url, "grow__grow", {"name": "secret_plan"})
            changed = await _next(alice)
            assert changed["method"] == "notifications/tools/list_changed"
            assert changed["params"]["_meta"][SUBSCRIPTION_ID] == "alice-sub"
            assert "grow__secret_plan" in _tool_names(await _request(url, "alice", "tools/list", {}))

            await _call(url, "grow__touch", {})
            first = await _next(bob)  # not a tools/list_changed: bob never heard of secret_plan
            assert first["method"] == "notifications/resources/updated", first
            assert first["params"]["uri"] == status
            assert first["params"]["_meta"][SUBSCRIPTION_ID] == "bob-sub"

            await _call(url, "grow__grow", {"name": "public_tool"})
            for frames, sub in ((alice, "alice-sub"), (bob, "bob-sub")):
                frame = await _next(frames)
                assert frame["method"] == "notifications/tools/list_changed", frame
                assert frame["params"]["_meta"][SUBSCRIPTION_ID] == sub
            assert _tool_names(await _request(url, "bob", "tools/list", {})) == [
                "grow__grow",
                "grow__public_tool",
                "grow__touch",
            ]
            alice_sees = _tool_names(await _request(url, "alice", "tools/list", {}))
            assert alice_sees == ["grow__grow", "grow__public_tool", "grow__secret_plan", "grow__touch"]


async def _call(url: str, tool: str, arguments: dict[str, Any]) -> None:
    result = await _request(url, "alice", "tools/call", {"name": tool, "arguments": arguments}, tool)
    assert not result.get("isError"), result
