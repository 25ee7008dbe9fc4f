"""The OPA engine's failure modes against a fake OPA (an aiohttp server we control).

The same paths are exercised against a real OPA server in tests/e2e/test_opa_engine.py; here each
answer is scripted, so timing and odd answers are deterministic.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

import mcp_guard.policy.opa as opa_module
from mcp_guard.errors import PolicyError
from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.opa import OpaEngine, connect, push_bundle

pytestmark = pytest.mark.anyio


@dataclass
class FakeOpa:
    url: str = ""
    answer: Any = None  # (status, body) or "hang"
    queries: list[tuple[str, str, Any]] = field(default_factory=list)
    policies: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    reject: dict[str, str] = field(default_factory=dict)  # policy id -> error message while a dependency is missing
    release: anyio.Event = field(default_factory=anyio.Event)


FAKE = web.AppKey("fake", FakeOpa)


async def _handler(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE]
    path = request.path
    if request.method == "POST" and path.startswith("/v1/data/"):
        fake.queries.append((path, request.query_string, await request.json()))
        if fake.answer == "hang":
            await fake.release.wait()
        status, body = fake.answer
        if isinstance(body, str):
            return web.Response(status=status, text=body, content_type="text/html")
        return web.json_response(body, status=status)
    if request.method == "PUT" and path.startswith("/v1/policies/"):
        pid = path.removeprefix("/v1/policies/")
        needs = fake.reject.get(pid)
        if needs and needs not in fake.policies:
            problem = {"message": f"undefined function {needs}", "location": {"file": pid, "row": 3, "col": 2}}
            err = {
                "code": "invalid_parameter",
                "message": "error(s) occurred while compiling module(s)",
                "errors": [problem],
            }
            return web.json_response(err, status=400)
        fake.policies[pid] = await request.text()
        return web.json_response({})
    if request.method == "PUT" and path.startswith("/v1/data/"):
        fake.data[path.removeprefix("/v1/data/")] = await request.json()
        return web.Response(status=204)
    if request.method == "GET" and path == "/v1/policies/":
        return web.json_response({"result": [{"id": pid} for pid in fake.policies]})
    if request.method == "DELETE" and path.startswith("/v1/policies/"):
        fake.policies.pop(path.removeprefix("/v1/policies/"), None)
        return web.json_response({})
    return web.json_response({"code": "not_found"}, status=404)


@pytest.fixture
async def fake_opa() -> AsyncIterator[FakeOpa]:
    fake = FakeOpa()
    app = web.Application()
    app[FAKE] = fake
    app.router.add_route("*", "/{tail:.*}", _handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}"
    try:
        yield fake
    finally:
        fake.release.set()
        await runner.cleanup()


async def evaluate(fake: FakeOpa, timeout_ms: int = 250, decision: str = "mcp_guard/decision") -> Any:
    async with connect(fake.url) as client:
        engine = OpaEngine(client, decision=decision, timeout_ms=timeout_ms, revision="rev1")
        return await engine.evaluate_document({"action": "tools/call"})


async def test_allow_and_query_shape(fake_opa: FakeOpa) -> None:
    fake_opa.answer = (200, {"result": {"allow": True, "reasons": ["ok"], "obligations": {"secrets": ["s"]}}})
    d = await evaluate(fake_opa, decision="a.b/decision")
    assert d.allow is True and d.reasons == ("ok",) and d.obligations == {"secrets": ["s"]} and d.revision == "rev1"
    path, query, body = fake_opa.queries[0]
    assert path == "/v1/data/a/b/decision"
    assert query == "strict-builtin-errors=true"
    assert body == {"input": {"action": "tools/call"}}


async def test_200_without_result_is_policy_undefined(fake_opa: FakeOpa) -> None:
    fake_opa.answer = (200, {})
    d = await evaluate(fake_opa)
    assert d.allow is False and d.code == "policy_undefined"


@pytest.mark.parametrize("result", [True, "allow", [1], {"allow": "yes"}, {"reasons": []}])
async def test_bad_result_is_result_invalid(fake_opa: FakeOpa, result: Any) -> None:
    fake_opa.answer = (200, {"result": result})
    d = await evaluate(fake_opa)
    assert d.allow is False and d.code == "result_invalid"


@pytest.mark.parametrize("status", [500, 400, 404])
async def test_http_error_is_engine_error(fake_opa: FakeOpa, status: int) -> None:
    fake_opa.answer = (status, {"code": "internal_error", "message": "to_number: invalid syntax"})
    d = await evaluate(fake_opa)
    assert d.allow is False and d.code == "engine_error" and f"HTTP {status}" in d.reasons[1]


async def test_unreadable_body_is_engine_error(fake_opa: FakeOpa) -> None:
    fake_opa.answer = (200, "<html>proxy error</html>")
    d = await evaluate(fake_opa)
    assert d.allow is False and d.code == "engine_error"


async def test_slow_server_is_timeout(fake_opa: FakeOpa) -> None:
    fake_opa.answer = "hang"
    with anyio.fail_after(10):
        d = await evaluate(fake_opa, timeout_ms=50)
    assert d.allow is False and d.code == "timeout" and "50 ms" in d.reasons[1]


async def test_unreachable_is_engine_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with connect(f"http://127.0.0.1:{port}") as client:
        d = await OpaEngine(client, timeout_ms=2000).evaluate_document({})
    assert d.allow is False and d.code == "engine_error" and "unreachable" in d.reasons[1]


async def test_non_json_input_is_engine_error(fake_opa: FakeOpa) -> None:
    fake_opa.answer = (200, {"result": {"allow": True}})
    async with connect(fake_opa.url) as client:
        d = await OpaEngine(client).evaluate_document({"x": float("inf")})
    assert d.code == "engine_error" and fake_opa.queries == []


@pytest.mark.parametrize("url", ["ftp://x:1", "http://", "http://h:1/prefix"])
async def test_bad_url_is_policy_error(url: str) -> None:
    with pytest.raises(PolicyError, match=r"policy\.opa_url"):
        async with connect(url):
            pass


def _bundle(tmp_path: Path) -> Path:
    (tmp_path / "a.rego").write_text("package p\n\nimport rego.v1\n\nx := helper(1)\n")
    (tmp_path / "z.rego").write_text("package p\n\nimport rego.v1\n\nhelper(n) := n + 1\n")
    (tmp_path / "data.json").write_text('{"cfg": {"k": 1}}')
    return tmp_path


async def test_push_uploads_data_and_policies_in_dependency_order(fake_opa: FakeOpa, tmp_path: Path) -> None:
    bundle = load_bundle(_bundle(tmp_path))
    fake_opa.reject = {"mcp-guard/a.rego": "mcp-guard/z.rego"}  # a.rego calls a function z.rego defines
    fake_opa.policies["mcp-guard/old.rego"] = "package p\n"  # left over from an earlier push
    fake_opa.policies["someone-else.rego"] = "package q\n"
    async with connect(fake_opa.url) as client:
        await push_bundle(client, bundle)
    assert fake_opa.data == {"cfg": {"k": 1}}
    assert set(fake_opa.policies) == {"mcp-guard/a.rego", "mcp-guard/z.rego", "someone-else.rego"}
    assert fake_opa.policies["mcp-guard/a.rego"] == (tmp_path / "a.rego").read_text()  # sent as written


async def test_push_rejected_policy_names_file(fake_opa: FakeOpa, tmp_path: Path) -> None:
    bundle = load_bundle(_bundle(tmp_path))
    fake_opa.reject = {"mcp-guard/a.rego": "never-there"}
    async with connect(fake_opa.url) as client:
        with pytest.raises(PolicyError, match=r"a\.rego: OPA rejected the policy: .*undefined function"):
            await push_bundle(client, bundle)


async def test_push_to_unreachable_server_is_policy_error(tmp_path: Path) -> None:
    bundle = load_bundle(_bundle(tmp_path))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with connect(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(PolicyError, match="cannot push the bundle"):
            await push_bundle(client, bundle)


# ------------------------------------------------------------------ readiness: OPA down and back


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def fake_opa_on(port: int) -> AsyncIterator[FakeOpa]:
    fake = FakeOpa(url=f"http://127.0.0.1:{port}")
    app = web.Application()
    app[FAKE] = fake
    app.router.add_route("*", "/{tail:.*}", _handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield fake
    finally:
        fake.release.set()
        await runner.cleanup()


async def wait_ready(engine: OpaEngine) -> None:
    with anyio.fail_after(10):
        while not engine.ready:  # noqa: ASYNC110 - the state changes when the fake server comes up
            await anyio.sleep(0.01)


@pytest.fixture
def fast_reconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(opa_module, "RECONNECT_MIN_S", 0.01)
    monkeypatch.setattr(opa_module, "RECONNECT_MAX_S", 0.05)


async def test_refused_connection_makes_the_engine_not_ready() -> None:
    async with connect(f"http://127.0.0.1:{closed_port()}") as client:
        engine = OpaEngine(client, revision="rev1")
        assert engine.ready is True
        d = await engine.evaluate_document({})
        assert d.code == "engine_error" and "OPA unreachable" in d.reasons[1]
        assert engine.ready is False and "OPA unreachable" in (engine.problem or "")
        d = await engine.evaluate_document({})  # no network while not ready
        assert d.code == "engine_error" and "is not ready: OPA unreachable" in d.reasons[1] and d.revision == "rev1"


async def test_maintain_reconnects_and_pushes_the_bundle(fast_reconnect: None, tmp_path: Path) -> None:
    port = closed_port()
    bundle = load_bundle(_bundle(tmp_path))
    recovered: list[str] = []

    async def on_recovered() -> None:
        recovered.append(engine.revision)

    async with connect(f"http://127.0.0.1:{port}") as client, anyio.create_task_group() as tg:
        engine = OpaEngine(client, bundle=bundle, ready=False, revision=bundle.revision)
        assert (await engine.evaluate_document({})).code == "engine_error"
        tg.start_soon(engine.maintain, on_recovered)
        async with fake_opa_on(port) as fake:
            fake.answer = (200, {"result": {"allow": True}})
            await wait_ready(engine)
            assert set(fake.policies) == {"mcp-guard/a.rego", "mcp-guard/z.rego"} and fake.data == {"cfg": {"k": 1}}
            assert (await engine.evaluate_document({})).allow is True
        assert recovered == [bundle.revision]
        # the server goes away: the next query notices, the engine is not ready until it is back
        assert (await engine.evaluate_document({})).code == "engine_error" and not engine.ready
        async with fake_opa_on(port) as fake:
            fake.answer = (200, {"result": {"allow": True}})
            await wait_ready(engine)
            assert "mcp-guard/a.rego" in fake.policies  # pushed again: a restarted OPA has lost it
        tg.cancel_scope.cancel()
    assert recovered == [bundle.revision, bundle.revision]


async def test_bundle_rejected_on_reconnect_keeps_denying_with_the_reason(fast_reconnect: None, tmp_path: Path) -> None:
    port = closed_port()
    bundle = load_bundle(_bundle(tmp_path))
    async with connect(f"http://127.0.0.1:{port}") as client, anyio.create_task_group() as tg:
        engine = OpaEngine(client, bundle=bundle, ready=False)
        tg.start_soon(engine.maintain)
        async with fake_opa_on(port) as fake:
            fake.reject = {"mcp-guard/a.rego": "never-there"}
            with anyio.fail_after(10):
                while "OPA rejected the policy" not in (engine.problem or ""):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            d = await engine.evaluate_document({})
            assert not engine.ready and d.code == "engine_error" and "undefined function never-there" in d.reasons[1]
        tg.cancel_scope.cancel()
