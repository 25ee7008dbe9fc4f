"""The OPA backend against a real OPA server (``opa run --server``), and parity with the embedded engine.

The binary comes from scripts/install-opa.sh (see tests/policy/opa_support.py: without it these tests
FAIL, saying how to build it; MCP_GUARD_SKIP_OPA=1 skips them deliberately).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

import mcp_guard.policy as policy
import mcp_guard.policy.opa as opa_module
from mcp_guard.errors import PolicyError
from mcp_guard.policy import ReloadEvent, open_engine
from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.policy.opa import OpaEngine, connect, push_bundle
from mcp_guard.policy.runner import run_tests_embedded, run_tests_opa
from mcp_guard.settings import parse_settings
from mcp_guard.types import Decision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "policy"))
from opa_support import opa_binary
from policy_corpus import corpus

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.opa]

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "policies" / "rego"
POLL_S = 0.05


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OpaServer:
    proc: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_opa(*paths: Path, port: int | None = None) -> OpaServer:
    binary = opa_binary()
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            binary,
            "run",
            "--server",
            "--addr",
            f"127.0.0.1:{port}",
            "--log-level",
            "error",
            "--disable-telemetry",
            *map(str, paths),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = OpaServer(proc, url)
    deadline = time.monotonic() + 30
    while not _healthy(url):
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"opa exited with {proc.returncode}: {err}")
        if time.monotonic() > deadline:
            server.stop()
            pytest.fail("opa did not become healthy within 30 s")
        time.sleep(POLL_S)  # polling a condition under a deadline
    return server


@pytest.fixture
def opa() -> Iterator[OpaServer]:
    server = start_opa()
    try:
        yield server
    finally:
        server.stop()


def settings_for(url: str, **policy: Any) -> Any:
    return parse_settings({"policy": {"engine": "opa", "opa_url": url, "bundle": str(BUNDLE), **policy}})


def _same(d: Decision) -> tuple[bool, tuple[str, ...], dict[str, Any], str | None]:
    return d.allow, d.reasons, dict(d.obligations), d.code


async def test_parity_with_embedded_on_corpus(opa: OpaServer) -> None:
    cases = corpus()
    assert len(cases) >= 60
    embedded = EmbeddedEngine(load_bundle(BUNDLE))
    async with open_engine(settings_for(opa.url, push_bundle=True), watch=False) as engine:
        assert engine.revision == embedded.revision
        mismatches = []
        allowed = 0
        for name, doc in cases:
            remote = await engine.evaluate_document(doc)
            local = await embedded.evaluate_document(doc)
            assert remote.code is None, (name, remote)
            allowed += remote.allow
            if _same(remote) != _same(local):
                mismatches.append((name, _same(remote), _same(local)))
    assert mismatches == []
    # the corpus exercises both outcomes in earnest
    assert 20 <= allowed <= len(cases) - 20


async def test_bundle_preloaded_by_opa_run(tmp_path: Path) -> None:
    server = start_opa(BUNDLE)
    try:
        async with open_engine(settings_for(server.url), watch=False) as engine:
            assert engine.revision.startswith("opa:")
            doc = corpus()[0][1]
            d = await engine.evaluate_document(doc)
            assert d.allow is True and d.revision == engine.revision
    finally:
        server.stop()


async def test_stopped_server_is_engine_error(opa: OpaServer) -> None:
    async with open_engine(settings_for(opa.url, push_bundle=True), watch=False) as engine:
        doc = corpus()[0][1]
        assert (await engine.evaluate_document(doc)).allow is True
        opa.stop()
        d = await engine.evaluate_document(doc)
    assert d.allow is False and d.code == "engine_error" and d.reasons[0] == "engine_error"


@pytest.fixture
def fast_reconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(opa_module, "RECONNECT_MIN_S", 0.05)
    monkeypatch.setattr(opa_module, "RECONNECT_MAX_S", 0.2)


async def wait_ready(engine: Any) -> None:
    """Poll the engine's readiness (it changes when another process, OPA, comes up), with a deadline."""
    with anyio.fail_after(30):
        while not engine.ready:  # noqa: ASYNC110 - the state lives in another process
            await anyio.sleep(POLL_S)


async def start_opa_async(port: int) -> OpaServer:
    return await anyio.to_thread.run_sync(lambda: start_opa(port=port))


async def test_down_at_start_denies_then_recovers_and_repushes_after_a_restart(fast_reconnect: None) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    doc = corpus()[0][1]
    events: list[ReloadEvent] = []

    async def listener(e: ReloadEvent) -> None:
        events.append(e)

    async with open_engine(settings_for(url, push_bundle=True, hot_reload=False), on_reload=listener) as engine:
        # started although OPA is down: not ready, every decision an engine_error naming the problem
        assert engine.ready is False and url in (engine.problem or "")
        d = await engine.evaluate_document(doc)
        assert d.allow is False and d.code == "engine_error" and "is not ready" in d.reasons[1]
        server = await start_opa_async(port)
        try:
            await wait_ready(engine)  # reconnected and pushed the bundle by itself
            assert engine.problem is None and engine.revision == load_bundle(BUNDLE).revision
            assert (await engine.evaluate_document(doc)).allow is True
            assert [e.status for e in events] == ["loaded"] and events[0].revision == engine.revision
            # OPA restarts empty: the next query finds the connection gone, the bundle is pushed again
            server.stop()
            assert (await engine.evaluate_document(doc)).code == "engine_error"
            assert engine.ready is False
            server = await start_opa_async(port)
            await wait_ready(engine)
            assert (await engine.evaluate_document(doc)).allow is True
            assert len(events) == 2
        finally:
            server.stop()


async def test_down_at_start_without_push_recovers_to_what_opa_serves(fast_reconnect: None) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with open_engine(settings_for(url), watch=False) as engine:
        assert engine.ready is False and engine.revision == ""
        assert (await engine.evaluate_document(corpus()[0][1])).code == "engine_error"
        server = await anyio.to_thread.run_sync(lambda: start_opa(BUNDLE, port=port))
        try:
            await wait_ready(engine)
            assert engine.revision.startswith("opa:")
            assert (await engine.evaluate_document(corpus()[0][1])).allow is True
        finally:
            server.stop()


async def test_bundle_opa_rejects_at_start_is_policy_error(opa: OpaServer, tmp_path: Path) -> None:
    """Only an unreachable OPA is tolerated at start; a bundle OPA refuses is a start-up error."""
    (tmp_path / "p.rego").write_text('package p\n\ndecision := {"allow": nofunc(1)}\n')
    s = parse_settings({"policy": {"engine": "opa", "opa_url": opa.url, "bundle": str(tmp_path), "push_bundle": True}})
    with pytest.raises(PolicyError, match=r"p\.rego: OPA rejected the policy: .*undefined function nofunc"):
        async with open_engine(s, watch=False):
            pass


async def test_proxy_starts_with_opa_down_denies_audited_and_recovers(fast_reconnect: None, tmp_path: Path) -> None:
    """Through the whole proxy: up with OPA stopped, engine_error denies audited, then allows, no restart."""
    from guard_harness import client_of, make_settings, recorder_upstream, text_of
    from mcp_guard.app import Guard

    port = free_port()
    settings = make_settings(
        {"everything": recorder_upstream()},
        policy={
            "engine": "opa",
            "opa_url": f"http://127.0.0.1:{port}",
            "bundle": str(BUNDLE),
            "push_bundle": True,
            "hot_reload": False,
        },
        audit={"path": str(tmp_path / "audit.db"), "state_path": str(tmp_path / "state.db")},
    )
    async with Guard.open(settings) as guard:
        assert not (await guard.registry.wait_ready(20))
        async with client_of(guard) as client:
            denied = await client.call_tool("everything__echo", {"text": "hi"})
            assert denied.is_error and "engine_error" in text_of(denied)
            server = await start_opa_async(port)
            try:
                with anyio.fail_after(30):
                    while True:  # polling a condition under a deadline
                        result = await client.call_tool("everything__echo", {"text": "hi"})
                        if not result.is_error:
                            break
                        await anyio.sleep(POLL_S)
                assert "hi" in text_of(result)
            finally:
                server.stop()
    with sqlite3.connect(tmp_path / "audit.db") as db:
        rows = db.execute(
            "SELECT decision, reasons FROM audit_events WHERE kind = 'call.decision' ORDER BY seq"
        ).fetchall()
        kinds = [k for (k,) in db.execute("SELECT kind FROM audit_events ORDER BY seq")]
    assert rows[0][0] == "deny" and json.loads(rows[0][1])[0] == "engine_error"
    assert rows[-1][0] == "allow"
    assert kinds.count("policy.load") >= 2  # at start (not ready), and when OPA came back


async def test_wrong_package_path_is_policy_undefined(opa: OpaServer) -> None:
    async with open_engine(settings_for(opa.url, push_bundle=True, decision="no_such/decision"), watch=False) as e:
        d = await e.evaluate_document(corpus()[0][1])
    assert d.allow is False and d.code == "policy_undefined"


async def test_builtin_error_is_engine_error(opa: OpaServer, tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text(
        "package strict\n\n"
        'deny contains "bad number" if to_number(input.n) > 5\n\n'
        'decision := {"allow": count(deny) == 0}\n'
    )
    async with connect(opa.url) as client:
        await push_bundle(client, load_bundle(tmp_path))
        engine = OpaEngine(client, decision="strict/decision", timeout_ms=5000)
        ok = await engine.evaluate_document({"n": "3"})
        broken = await engine.evaluate_document({"n": "not a number"})
    # without strict-builtin-errors OPA would make the deny rule undefined and allow the call
    assert ok.allow is True
    assert broken.allow is False and broken.code == "engine_error"


async def test_result_invalid_from_real_server(opa: OpaServer, tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text('package odd\n\ndecision := {"allow": "yes"}\n\nlisty := [1]\n')
    async with connect(opa.url) as client:
        await push_bundle(client, load_bundle(tmp_path))
        d1 = await OpaEngine(client, decision="odd/decision").evaluate_document({})
        d2 = await OpaEngine(client, decision="odd/listy").evaluate_document({})
    assert d1.code == "result_invalid" and d2.code == "result_invalid"


async def test_timeout(opa: OpaServer, tmp_path: Path) -> None:
    # a decision that takes OPA seconds, against a 20 ms budget
    (tmp_path / "slow.rego").write_text(
        "package slow\n\n"
        'decision := {"allow": n > 0} if {\n'
        "\tn := count([x | some x in numbers.range(1, 30000000); x % 7 == 0])\n"
        "}\n"
    )
    async with connect(opa.url) as client:
        await push_bundle(client, load_bundle(tmp_path))
        d = await OpaEngine(client, decision="slow/decision", timeout_ms=20).evaluate_document({})
    assert d.allow is False and d.code == "timeout"


async def test_push_rejects_bad_bundle_naming_file(opa: OpaServer, tmp_path: Path) -> None:
    (tmp_path / "good.rego").write_text('package x\n\ndecision := {"allow": false}\n')
    (tmp_path / "broken.rego").write_text("package x\n\ndecision := {\n")
    async with connect(opa.url) as client:
        with pytest.raises(PolicyError, match=r"broken\.rego"):
            await push_bundle(client, load_bundle(tmp_path))


async def test_push_removes_stale_policies(opa: OpaServer, tmp_path: Path) -> None:
    (tmp_path / "a.rego").write_text("package x\n\na := 1\n")
    (tmp_path / "b.rego").write_text("package x\n\nb := 2\n")
    async with connect(opa.url) as client:
        await push_bundle(client, load_bundle(tmp_path))
        assert {"mcp-guard/a.rego", "mcp-guard/b.rego"} <= set(await client.get_policies_list())
        (tmp_path / "b.rego").unlink()
        await push_bundle(client, load_bundle(tmp_path))
        ids = set(await client.get_policies_list())
    assert "mcp-guard/a.rego" in ids and "mcp-guard/b.rego" not in ids


async def test_policy_test_runner_on_real_opa(opa: OpaServer) -> None:
    bundle = load_bundle(BUNDLE)
    async with connect(opa.url) as client:
        report = await run_tests_opa(client, bundle, bundle_loaded=True)
        # the test files were removed again afterwards
        ids = await client.get_policies_list()
    assert report.ok and report.passed == len(bundle.test_rules()) > 50
    assert not any(pid.endswith("_test.rego") for pid in ids)


async def test_policy_test_runner_against_preloaded_server() -> None:
    bundle = load_bundle(BUNDLE)
    # OPA serves the policies and data (no tests) itself; the runner adds only the test files
    server = start_opa(*(f.path for f in bundle.policies + bundle.data_files))
    try:
        async with connect(server.url) as client:
            report = await run_tests_opa(client, bundle, bundle_loaded=False)
            ids = await client.get_policies_list()
        assert report.ok, [o for o in report.outcomes if o.status != "PASS"]
        assert not any(pid.startswith("mcp-guard-test/") for pid in ids)
    finally:
        server.stop()


def test_policy_test_matches_opa_test() -> None:
    """`mcp-guard policy test` (embedded) and `opa test` agree test by test on the default bundle."""
    binary = opa_binary()
    out = subprocess.run(
        [binary, "test", "--format", "json", str(BUNDLE)], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr
    opa_results = {f"{r['package']}.{r['name']}": not r.get("fail", False) for r in json.loads(out.stdout)}
    ours = {o.rule.ref: o.status == "PASS" for o in run_tests_embedded(load_bundle(BUNDLE)).outcomes}
    assert ours == opa_results
    assert len(ours) > 50


async def test_hot_reload_pushes_to_opa(opa: OpaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy, "RELOAD_INTERVAL_S", 0.05)
    (tmp_path / "p.rego").write_text('package live\n\ndecision := {"allow": false, "reasons": ["v1"]}\n')
    events: list[ReloadEvent] = []
    changed = anyio.Event()

    async def listener(e: ReloadEvent) -> None:
        events.append(e)
        changed.set()

    settings = parse_settings(
        {
            "policy": {
                "engine": "opa",
                "opa_url": opa.url,
                "bundle": str(tmp_path),
                "decision": "live/decision",
                "push_bundle": True,
                "hot_reload": True,
            }
        }
    )
    async with open_engine(settings, on_reload=listener) as engine:
        assert (await engine.evaluate_document({})).reasons == ("v1",)
        (tmp_path / "p.rego").write_text('package live\n\ndecision := {"allow": true, "reasons": ["v2"]}\n')
        with anyio.fail_after(10):
            await changed.wait()
        assert events[0].status == "loaded" and engine.revision == events[0].revision
        d = await engine.evaluate_document({})
    assert d.allow is True and d.reasons == ("v2",) and d.revision == events[0].revision


def test_cli_policy_test_and_eval_with_opa_engine(
    opa: OpaServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mcp_guard.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[policy]\nengine = "opa"\nopa_url = "{opa.url}"\nbundle = "{BUNDLE}"\npush_bundle = true\n'
        "hot_reload = false\n"
    )
    assert main(["policy", "test", "-v", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "data.mcp_guard.test_default_deny_without_roles: PASS (" in out and "FAIL" not in out
    assert main(["policy", "test", "-v", "-r", "test_default_deny", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "test_default_deny_without_roles: PASS" in out and "test_path_" not in out
    name, doc = corpus()[0]
    (tmp_path / "in.json").write_text(json.dumps(doc))
    assert main(["policy", "eval", "-c", str(cfg), "-i", str(tmp_path / "in.json")]) == 0, name
    assert json.loads(capsys.readouterr().out)["allow"] is True


async def test_overlay_is_pushed_to_opa_and_survives_a_test_run(opa: OpaServer, tmp_path: Path) -> None:
    """OPA decides with data.json merged with [policy] data_overlay; its tests run on the shipped data,
    and the merged data is what OPA holds again afterwards."""
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    (bundle_dir / "p.rego").write_text(
        'package site\n\ndecision := {"allow": data.site.open == true, "reasons": [data.site.name]}\n'
    )
    (bundle_dir / "p_test.rego").write_text('package site\n\ntest_shipped if decision.reasons == ["shipped"]\n')
    (bundle_dir / "data.json").write_text('{"site": {"open": false, "name": "shipped"}}')
    (tmp_path / "site.json").write_text('{"site": {"open": true, "name": "site"}}')
    settings = parse_settings(
        {
            "policy": {
                "engine": "opa",
                "opa_url": opa.url,
                "bundle": "bundle",
                "decision": "site/decision",
                "push_bundle": True,
                "hot_reload": False,
                "data_overlay": ["site.json"],
            }
        },
        base_dir=str(tmp_path),
    )
    async with open_engine(settings) as engine:  # run_tests_on_start: the shipped test passes
        d = await engine.evaluate_document({})
        assert d.allow is True and d.reasons == ("site",)
        merged = load_bundle(bundle_dir, overlays=[tmp_path / "site.json"])
        async with connect(opa.url) as client:
            report = await run_tests_opa(client, merged, bundle_loaded=True)
        assert report.ok, report.outcomes
        assert (await engine.evaluate_document({})).reasons == ("site",)


def test_cli_policy_test_on_opa_explains_a_failure_regorus_reproduces(
    opa: OpaServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mcp_guard.cli import main

    root = tmp_path / "bundle"
    root.mkdir()
    (root / "t.rego").write_text('package t\n\ndecision := {"allow": false, "reasons": ["v1"]}\n')
    (root / "t_test.rego").write_text('package t\n\ntest_reason if decision.reasons == ["v2"]\n\ntest_ok if true\n')
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[policy]\nengine = "opa"\nopa_url = "{opa.url}"\nbundle = "{root}"\npush_bundle = true\n')
    assert main(["policy", "test", "-c", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "data.t.test_reason: FAIL" in out
    assert 't_test.rego:3:16: false: decision.reasons == ["v2"] (left = ["v1"], right = ["v2"])' in out
