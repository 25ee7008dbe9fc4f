"""The admin API over a real HTTP front: authenticated like /mcp, roles from [console], approvals decided over HTTP.

A 2025-11-25 client's call parks on an approval; the API lists it, refuses those who may not decide it (401
without credentials, 403 for a viewer, for a principal without the role, and for the requester), and an
operator's POST releases the call, which then runs exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest

from guard_harness import make_settings, read_log, recorder_upstream, running_guard, text_of
from http_harness import http_client
from mcp_guard.frontend.auth import key_digest
from mcp_guard.testing import FunctionEngine, RecordingSink
from mcp_guard.types import Decision, PolicyInput

pytestmark = pytest.mark.anyio

KEYS = {"agent": "agent-key-0123456789", "bob": "bob-key-0123456789", "vera": "vera-key-0123456789", "eve": "eve-0123"}
ROLES = {"agent": ["support", "boss"], "bob": ["boss", "secops"], "vera": ["auditor"], "eve": []}
APPROVAL = {"reason": "echo needs a look", "approvers": ["role:secops", "role:boss"], "ttl_s": 60}


def _decide(inp: PolicyInput) -> Decision:
    if inp.action == "tools/call" and inp.tool == "echo":
        return Decision(allow=True, obligations={"approval": APPROVAL}, revision="r1")
    return Decision(allow=True, revision="r1")


@dataclass
class Admin:
    base: str
    mcp: str
    sink: RecordingSink
    log: Path

    def client(self, who: str | None = None) -> httpx2.AsyncClient:
        headers = {"Authorization": f"Bearer {KEYS[who]}"} if who else {}
        return httpx2.AsyncClient(base_url=self.base, headers=headers, timeout=httpx2.Timeout(20.0))


@asynccontextmanager
async def _admin(tmp_path: Path) -> AsyncIterator[Admin]:
    settings = make_settings(
        {"rec": recorder_upstream(tmp_path / "rec.log")},
        principals={pid: {"api_key_sha256": key_digest(KEYS[pid]), "roles": ROLES[pid]} for pid in KEYS},
        console={"operator_role": "boss", "viewer_role": "auditor"},
    )
    sink = RecordingSink()
    async with running_guard(settings, engine=FunctionEngine(_decide), sink=sink) as guard, guard.http_served() as url:
        yield Admin(url.removesuffix("/mcp"), url, sink, tmp_path / "rec.log")


async def _pending(admin: Admin) -> dict[str, Any]:
    async with admin.client("vera") as c:
        with anyio.fail_after(20):
            while True:
                r = await c.get("/admin/api/approvals", params={"status": "pending"})
                assert r.status_code == 200, r.text
                if r.json()["approvals"]:
                    return dict(r.json()["approvals"][0])
                await anyio.sleep(0.02)


async def test_operators_approve_over_http_and_everyone_else_is_refused(tmp_path: Path) -> None:
    async with _admin(tmp_path) as admin, anyio.create_task_group() as tg:
        results: list[types.CallToolResult] = []

        async def call() -> None:
            async with http_client(admin.mcp, KEYS["agent"], read_timeout_seconds=60) as client:
                results.append(await client.call_tool("rec__echo", {"text": "hello"}))

        tg.start_soon(call)
        approval = await _pending(admin)
        assert approval["principal"] == "agent" and approval["tool"] == "echo"
        assert approval["arguments"] == {"text": "hello"} and approval["approvers"] == APPROVAL["approvers"]
        path = f"/admin/api/approvals/{approval['id']}"

        async with admin.client() as anon:
            assert (await anon.get("/admin/api/approvals")).status_code == 401
            assert (await anon.post(f"{path}/approve")).status_code == 401
        async with httpx2.AsyncClient(base_url=admin.base, headers={"Authorization": "Bearer wrong"}) as bad:
            assert (await bad.get("/admin/api/approvals")).status_code == 401
        assert admin.sink.of_kind("auth.reject"), "a refused admin request is audited like /mcp"
        async with admin.client("eve") as eve:
            assert (await eve.get("/admin/api/approvals")).status_code == 403
        async with admin.client("vera") as vera:
            shown = await vera.get(path)
            assert shown.status_code == 200 and shown.json()["id"] == approval["id"]
            assert (await vera.post(f"{path}/approve")).status_code == 403, "a viewer reads, never acts"
        async with admin.client("agent") as agent:
            own = await agent.post(f"{path}/approve", json={"comment": "me"})
            assert own.status_code == 403 and "own approval" in own.json()["error"]
        async with admin.client("bob") as bob:
            assert (await bob.post(f"{path}/approve", content=b"{not json")).status_code == 400
            assert (await bob.post("/admin/api/approvals/nope/approve")).status_code == 404
            assert (await bob.get("/admin/api/approvals", params={"status": "bogus"})).status_code == 400
            ok = await bob.post(f"{path}/approve", json={"comment": "fine"})
            assert ok.status_code == 200, ok.text
            assert ok.json()["status"] == "granted" and ok.json()["decided_by"] == "bob"
            again = await bob.post(f"{path}/deny")
            assert again.status_code == 409
        with anyio.fail_after(20):
            while not results:  # noqa: ASYNC110 - the call runs in another task
                await anyio.sleep(0.02)

    [result] = results
    assert not result.is_error and "hello" in text_of(result)
    assert [e["arguments"]["text"] for e in read_log(admin.log) if e.get("name") == "echo"] == ["hello"]
    granted = admin.sink.of_kind("approval.granted")
    assert len(granted) == 1 and granted[0].principal == "bob" and granted[0].details["source"] == "api"  # type: ignore[index]
    kinds = [str(e.kind) for e in admin.sink.events if str(e.kind).startswith("approval.")]
    assert kinds == ["approval.requested", "approval.granted", "approval.executed"]
