"""/healthz, /readyz and /metrics on the HTTP front: no key needed, nothing secret shown, readiness that follows
the policy engine and the audit store (a real SQLite writer) both ways, and call counts that match the calls.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest

from guard_harness import TIMEOUT_S, make_settings, recorder_upstream, running_guard, wait_for
from http_harness import http_client, http_front
from mcp_guard.app import Guard
from mcp_guard.audit import AuditWriter, events, open_sqlite_sink
from mcp_guard.errors import AuditError
from mcp_guard.frontend.ops import PROBLEM_MAX, OpsSources, readiness, safe_text
from mcp_guard.pipeline.observe import CallMetrics
from mcp_guard.secrets.manager import SecretManager
from mcp_guard.secrets.redact import Scrubber
from mcp_guard.settings import Settings, parse_settings
from mcp_guard.testing import FunctionEngine, RecordingSink
from mcp_guard.types import Decision, EventKind, PolicyInput
from prom_text import parse, value_of

pytestmark = pytest.mark.anyio

KEY = "ops-test-key-0123456789"
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}


def _settings(**server: Any) -> Settings:
    return make_settings(
        {"rec": recorder_upstream()},
        server=server,
        principals={"alice": {"roles": ["support"], "api_key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}},
    )


class HealthEngine(FunctionEngine):
    """An engine that reports health (EngineHealth) and can be told it lost its backend."""

    def __init__(self) -> None:
        super().__init__(self._decide)
        self.ready = True
        self.problem: str | None = None

    @staticmethod
    def _decide(i: PolicyInput) -> Decision:
        if i.tool == "add":
            return Decision(allow=False, reasons=("no adding",), revision="test")
        return Decision(allow=True, reasons=("ok",), revision="test")


def _base(url: str) -> str:
    return url.removesuffix("/mcp")


@asynccontextmanager
async def _served(guard_cm: Any) -> AsyncIterator[tuple[Guard, str, httpx2.AsyncClient]]:
    async with guard_cm as guard, http_front(guard) as url, httpx2.AsyncClient(timeout=10) as http:
        yield guard, _base(url), http


# --------------------------------------------------------------------------- the endpoints
async def test_probes_need_no_key_while_mcp_still_does() -> None:
    async with _served(running_guard(_settings())) as (_guard, base, http):
        r = await http.get(base + "/healthz")
        assert (r.status_code, r.json()) == (200, {"status": "alive"})
        assert r.headers["cache-control"] == "no-store"
        r = await http.get(base + "/readyz")
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "ready"
        assert body["policy"] == {"ready": True, "engine": "embedded", "revision": "test"}
        assert body["audit"] == {"ready": True, "backend": "sqlite"}  # a test sink reports nothing more
        assert body["upstreams"] == {
            "rec": {"state": "ready", "up": True, "restarts": 0, "protocol_version": "2025-11-25"}
        }
        r = await http.get(base + "/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
        families = parse(r.text)
        assert value_of(families, "mcp_guard_upstream_up", server="rec") == 1
        started = value_of(families, "process_start_time_seconds")
        assert started is not None and time.time() - 3600 < started <= time.time()
        assert (value_of(families, "process_cpu_seconds_total") or 0) > 0

        assert (await http.post(base + "/mcp", json=INIT, headers=HEADERS)).status_code == 401
        r = await http.post(base + "/readyz")
        assert (r.status_code, r.headers["allow"]) == (405, "GET, HEAD")
        r = await http.head(base + "/healthz")
        assert r.status_code == 200 and r.content == b""


async def test_metrics_off_is_a_404_and_probes_stay() -> None:
    async with _served(running_guard(_settings(metrics=False))) as (_guard, base, http):
        assert (await http.get(base + "/metrics")).status_code == 404
        assert (await http.get(base + "/healthz")).status_code == 200
        assert (await http.get(base + "/readyz")).status_code == 200


async def test_host_rule_refuses_rebinding_names_accepts_ip_literals_and_keeps_mcp_strict() -> None:
    async with _served(running_guard(_settings(allowed_hosts=["mcp.internal:*"]))) as (_guard, base, http):
        for host, status in [
            ("evil.example:8765", 421),  # a DNS-rebinding page sends its own name
            ("evil.example", 421),
            ("10.0.3.7:8765", 200),  # a load balancer, the kubelet, Prometheus by IP
            ("[fd00::7]:8765", 200),
            ("localhost:1234", 200),
            ("mcp.internal:8765", 200),  # a configured name
        ]:
            for path in ("/healthz", "/readyz", "/metrics"):
                r = await http.get(base + path, headers={"Host": host})
                assert r.status_code == status, (host, path, r.status_code)
        auth = {"Authorization": f"Bearer {KEY}"}
        r = await http.post(base + "/mcp", json=INIT, headers={**HEADERS, **auth, "Host": "10.0.3.7:8765"})
        assert r.status_code == 421  # /mcp keeps the MCP transport's own check


async def test_metrics_count_calls_sessions_and_the_revision() -> None:
    engine = HealthEngine()
    async with _served(running_guard(_settings(), engine=engine)) as (_guard, base, http):
        async with http_client(base + "/mcp", KEY) as client:
            for _ in range(3):
                await client.call_tool("rec__echo", {"text": "hi"})
            await client.call_tool("rec__add", {"a": 1, "b": 2})
            live = parse((await http.get(base + "/metrics")).text)
            assert value_of(live, "mcp_guard_sessions", transport="http") == 1
        families = parse((await http.get(base + "/metrics")).text)

    calls = families["mcp_guard_calls_total"].samples
    assert calls == {
        ("mcp_guard_calls_total", (("decision", "allow"), ("reason", ""), ("server", "rec"), ("tool", "echo"))): 3,
        ("mcp_guard_calls_total", (("decision", "deny"), ("reason", "policy"), ("server", "rec"), ("tool", "add"))): 1,
    }
    assert (
        value_of(families, "mcp_guard_call_duration_seconds_count", server="rec", action="tools/call", decision="allow")
        == 3
    )
    assert value_of(families, "mcp_guard_audit_commit_wait_seconds_count") == 3 * 2 + 1  # allow+result rows, 1 deny row
    assert value_of(families, "mcp_guard_policy_revision_info", engine="embedded", revision="test") == 1
    assert value_of(families, "mcp_guard_policy_ready") == 1
    assert value_of(families, "mcp_guard_upstream_restarts_total", server="rec") == 0
    assert value_of(families, "mcp_guard_sessions", transport="http") == 0  # closed


# --------------------------------------------------------------------------- readiness follows the parts
async def test_readyz_follows_the_policy_engine_both_ways() -> None:
    engine = HealthEngine()
    async with _served(running_guard(_settings(), engine=engine)) as (_guard, base, http):
        assert (await http.get(base + "/readyz")).status_code == 200
        engine.ready, engine.problem = False, "OPA at http://opa:s3cret@10.0.0.9:8181 is unreachable"
        r = await http.get(base + "/readyz")
        assert r.status_code == 503
        policy = r.json()["policy"]
        assert policy["ready"] is False and "unreachable" in policy["problem"] and "s3cret" not in r.text
        assert value_of(parse((await http.get(base + "/metrics")).text), "mcp_guard_policy_ready") == 0
        engine.ready, engine.problem = True, None
        assert (await http.get(base + "/readyz")).status_code == 200


def _writer_guard(settings: Settings, writer: AuditWriter) -> Any:
    @asynccontextmanager
    async def run() -> AsyncIterator[Guard]:
        guard = Guard(settings, engine=HealthEngine(), sink=writer)
        async with guard.running():
            assert not await guard.registry.wait_ready(TIMEOUT_S)
            yield guard

    return run()


def _row() -> Any:
    return events.config_event(EventKind.CONFIG_RELOAD, "<test>")


async def test_readyz_follows_a_real_audit_writer_locked_then_free_then_removed(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    async with (
        open_sqlite_sink(db, busy_timeout=0.1, record_timeout=2.0) as writer,
        _served(_writer_guard(_settings(), writer)) as (_guard, base, http),
    ):
        r = await http.get(base + "/readyz")
        assert r.status_code == 200 and r.json()["audit"] == {"ready": True, "backend": "sqlite", "queued": 0}

        # Another process holds the database's write lock: the next transaction fails, the store is not ready.
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(AuditError):
            await writer.record(_row())
        r = await http.get(base + "/readyz")
        assert r.status_code == 503 and r.json()["status"] == "not_ready"
        assert r.json()["audit"]["ready"] is False and "locked" in r.json()["audit"]["problem"]
        metrics = parse((await http.get(base + "/metrics")).text)
        assert value_of(metrics, "mcp_guard_audit_ready") == 0
        assert (value_of(metrics, "mcp_guard_audit_events_failed_total") or 0) >= 1

        locker.execute("ROLLBACK")
        locker.close()
        await writer.record(_row())  # the next commit succeeds: ready again
        assert (await http.get(base + "/readyz")).status_code == 200
        metrics = parse((await http.get(base + "/metrics")).text)
        assert value_of(metrics, "mcp_guard_audit_ready") == 1
        assert (value_of(metrics, "mcp_guard_audit_events_committed_total") or 0) >= 1

        db.unlink()  # gone for good: not ready, and it stays so
        r = await http.get(base + "/readyz")
        assert r.status_code == 503 and "removed" in r.json()["audit"]["problem"]
        with pytest.raises(AuditError):
            await writer.record(_row())
        assert (await http.get(base + "/readyz")).status_code == 503


async def test_a_down_upstream_is_listed_but_does_not_make_the_replica_unready() -> None:
    settings = make_settings(
        {"rec": recorder_upstream(), "gone": {"command": "/nonexistent/mcp-server", "restart_backoff_s": 0.1}},
        principals={"alice": {"api_key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}},
    )
    async with _served(running_guard(settings, wait=False)) as (guard, base, http):
        await wait_for(
            lambda: (
                guard.registry.connections["gone"].state == "down"
                and guard.registry.connections["rec"].state == "ready"
            ),
            TIMEOUT_S,
        )
        r = await http.get(base + "/readyz")
        assert r.status_code == 200
        gone = r.json()["upstreams"]["gone"]
        assert gone["up"] is False and gone["state"] == "down" and "command not found" in gone["problem"]
        assert value_of(parse((await http.get(base + "/metrics")).text), "mcp_guard_upstream_up", server="gone") == 0


# --------------------------------------------------------------------------- nothing secret
LEAKY = """
import json, os, sys
err = {"code": -32000, "message": "bad credentials: " + os.environ["LEAK_TOKEN"] + " for postgres://app:pw123@db/x"}
for line in sys.stdin:  # every request (server/discover, then initialize) is refused the same way
    msg = json.loads(line)
    if "id" in msg:
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "error": err}) + "\\n")
        sys.stdout.flush()
"""
TOKEN = "tok-9f8e7d6c5b4a3210-secret"


async def test_an_upstream_error_holding_its_injected_secret_is_scrubbed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MG_OPS_TOKEN", TOKEN)
    settings = parse_settings(
        {
            "secrets": {"leak_token": {"provider": "env", "name": "MG_OPS_TOKEN"}},
            "upstreams": {
                "leaky": {
                    "command": sys.executable,
                    "args": ["-c", LEAKY],
                    "inject_env": {"LEAK_TOKEN": "leak_token"},
                    "restart_backoff_s": 5.0,
                }
            },
        },
        source=str(tmp_path / "cfg.toml"),
        base_dir=str(tmp_path),
    )
    guard = Guard(settings, engine=HealthEngine(), sink=RecordingSink(), secrets=SecretManager(settings))
    async with guard.running(), http_front(guard) as url, httpx2.AsyncClient(timeout=10) as http:
        leaky = guard.registry.connections["leaky"]
        await wait_for(lambda: leaky.state == "down" and bool(leaky.last_error), TIMEOUT_S)
        assert TOKEN in (leaky.last_error or "")  # the raw text does hold it
        r = await http.get(_base(url) + "/readyz")
        problem = r.json()["upstreams"]["leaky"]["problem"]
        assert "bad credentials" in problem and "[REDACTED:leak_token]" in problem
        assert TOKEN not in r.text and "pw123" not in r.text
        assert TOKEN not in (await http.get(_base(url) + "/metrics")).text


def test_safe_text_masks_values_shapes_and_url_passwords_and_is_short() -> None:
    scrub = Scrubber([("api", "value-of-the-api-secret")]).scrub_text
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
    text = (
        f"failed with value-of-the-api-secret, {jwt}, postgresql://app:hunter2@db:5432/audit "
        "and password=opensesame token: abc123"
    )
    out = safe_text(text, scrub)
    for secret in ("value-of-the-api-secret", jwt, "hunter2", "opensesame", "abc123"):
        assert secret not in out
    assert "[REDACTED:api]" in out and "postgresql://[REDACTED]@db:5432/audit" in out
    assert len(safe_text("x" * 1000, scrub)) == PROBLEM_MAX


def test_readiness_without_http_lists_what_it_read() -> None:
    class Up:
        def __init__(self, name: str, state: str, error: str | None, version: str | None = None) -> None:
            self.name, self.state, self.restarts, self.last_error = name, state, 2, error
            self.protocol_version = version

    src = OpsSources(
        calls=CallMetrics(),
        engine=HealthEngine(),
        engine_name="opa",
        audit=RecordingSink(),
        audit_backend="sqlite",
        upstreams=lambda: [Up("b", "down", "exit 1"), Up("a", "ready", None, "2026-07-28")],
        session_transports=lambda: [],
        scrub=lambda s: s,
    )
    r = readiness(src)
    assert r.ready
    assert list(r.body["upstreams"]) == ["a", "b"]
    assert r.body["upstreams"]["b"] == {"state": "down", "up": False, "restarts": 2, "problem": "exit 1"}
    assert r.body["upstreams"]["a"]["protocol_version"] == "2026-07-28"  # the era it is spoken to in
    assert json.loads(json.dumps(r.body)) == r.body


def test_metrics_show_reloads_stage_times_and_the_approvals_hook() -> None:
    from mcp_guard.frontend.ops import metrics_text

    calls = CallMetrics()
    calls.stages.observe(("Authorize",), 0.0002)
    base: dict[str, Any] = {
        "calls": calls,
        "engine": HealthEngine(),
        "engine_name": "embedded",
        "audit": RecordingSink(),
        "audit_backend": "sqlite",
        "upstreams": lambda: [],
        "session_transports": lambda: [],
        "scrub": lambda s: s,
    }
    without = parse(metrics_text(OpsSources(**base)))
    assert "mcp_guard_approvals_pending" not in without and "mcp_guard_config_reloads_total" not in without
    page = parse(metrics_text(OpsSources(**base, approvals_pending=lambda: 3, reloads={("ok",): 2, ("rejected",): 1})))
    assert value_of(page, "mcp_guard_approvals_pending") == 3
    assert value_of(page, "mcp_guard_config_reloads_total", status="ok") == 2
    assert value_of(page, "mcp_guard_config_reloads_total", status="rejected") == 1
    assert value_of(page, "mcp_guard_stage_duration_seconds_count", stage="Authorize") == 1


def test_metrics_show_the_decision_cache_when_the_engine_has_one(tmp_path: Path) -> None:
    from mcp_guard.frontend.ops import metrics_text
    from mcp_guard.policy.bundle import load_bundle
    from mcp_guard.policy.cache import CachedEngine
    from mcp_guard.policy.embedded import EmbeddedEngine
    from mcp_guard.settings import DecisionCacheSettings

    (tmp_path / "t.rego").write_text('package t\n\nimport rego.v1\n\ndecision := {"allow": input.x > 0}\n')
    engine = CachedEngine(
        EmbeddedEngine(load_bundle(tmp_path), decision="t/decision"), DecisionCacheSettings(size=2, ttl_s=60)
    )
    for x in (1, 1, 2, 3, 3, 3):  # hits: 1, 3, 3; x=1 pushed out by x=3
        engine.evaluate_sync({"x": x})
    engine.evaluate_sync({"x": "a" * 20_000})  # over max_key_bytes: asked, not kept
    base: dict[str, Any] = {
        "calls": CallMetrics(),
        "engine_name": "embedded",
        "audit": RecordingSink(),
        "audit_backend": "sqlite",
        "upstreams": lambda: [],
        "session_transports": lambda: [],
        "scrub": lambda s: s,
    }
    page = parse(metrics_text(OpsSources(engine=engine, **base)))
    assert value_of(page, "mcp_guard_policy_decision_cache_hits_total") == 3
    assert value_of(page, "mcp_guard_policy_decision_cache_misses_total") == 3
    assert value_of(page, "mcp_guard_policy_decision_cache_uncacheable_total") == 1
    assert value_of(page, "mcp_guard_policy_decision_cache_removals_total", reason="evicted") == 1
    assert value_of(page, "mcp_guard_policy_decision_cache_removals_total", reason="expired") == 0
    assert value_of(page, "mcp_guard_policy_decision_cache_entries") == 2
    engine.reload(load_bundle(tmp_path))  # the same files: a reload still drops what the old load decided
    page = parse(metrics_text(OpsSources(engine=engine, **base)))
    assert value_of(page, "mcp_guard_policy_decision_cache_removals_total", reason="invalidated") == 2
    assert value_of(page, "mcp_guard_policy_decision_cache_entries") == 0
    # no cache (an engine without one, or [policy.decision_cache] enabled = false): no family at all
    without = parse(metrics_text(OpsSources(engine=engine.inner, **base)))
    assert not any(name.startswith("mcp_guard_policy_decision_cache") for name in without)
