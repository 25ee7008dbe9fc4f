"""/metrics scraped by a real Prometheus server, and /readyz following a real OPA server, against a real
``mcp-guard run --transport http`` process.

Prometheus is Debian's ``prometheus`` package (``apt-get install prometheus``; .ci/run installs it): the
binary is ``$MCP_GUARD_PROMETHEUS`` or ``prometheus`` on PATH. Without it these tests FAIL, saying how to
install it; MCP_GUARD_SKIP_PROMETHEUS=1 skips them deliberately. ``promtool check metrics`` (same package)
lints the page as Prometheus' maintainers would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from e2e_support import API_KEY, POLL_S, http_guard, recorder

from http_harness import http_client
from prom_text import parse, value_of

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "policy"))
from opa_support import opa_binary

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

# Allow everything but calling the recorder's "add" tool (listings stay allowed, so "add" is callable and denied).
DENY_ADD_REGO = """package mcp_guard

import rego.v1

default decision := {"allow": false, "reasons": ["e2e: add is not allowed"]}

decision := {"allow": true, "reasons": ["e2e: ok"]} if not adding

adding if {
\tinput.action == "tools/call"
\tinput.tool == "add"
}
"""


def prometheus_binary() -> str:
    if os.environ.get("MCP_GUARD_SKIP_PROMETHEUS") == "1":
        pytest.skip("MCP_GUARD_SKIP_PROMETHEUS=1: real Prometheus server tests skipped on request")
    for c in (os.environ.get("MCP_GUARD_PROMETHEUS"), shutil.which("prometheus")):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    pytest.fail(
        "no prometheus binary: `apt-get install prometheus` (Debian; .ci/run does it), or set "
        "MCP_GUARD_PROMETHEUS=/path/to/prometheus; MCP_GUARD_SKIP_PROMETHEUS=1 skips these tests"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def write_config(tmp: Path, *, policy: str, rego: str = DENY_ADD_REGO) -> Path:
    bundle = tmp / "bundle"
    bundle.mkdir(exist_ok=True)
    (bundle / "policy.rego").write_text(rego)
    (bundle / "data.json").write_text("{}")
    table = recorder()
    cfg = tmp / "mcp-guard.toml"
    cfg.write_text(
        "\n".join(
            [
                "[server]",
                'principal = "agent"',
                "",
                "[policy]",
                f"bundle = {json.dumps(str(bundle))}",
                policy,
                "",
                "[audit]",
                f"path = {json.dumps(str(tmp / 'audit.db'))}",
                f"state_path = {json.dumps(str(tmp / 'state.db'))}",
                "",
                "[principals.agent]",
                f'api_key_sha256 = "{hashlib.sha256(API_KEY.encode()).hexdigest()}"',
                "",
                "[upstreams.rec]",
                f"command = {json.dumps(table['command'])}",
                f"args = {json.dumps(table['args'])}",
                "",
            ]
        )
    )
    return cfg


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def query(self, promql: str) -> list[dict[str, Any]]:
        status, body = get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert status == 200, f"query {promql!r}: HTTP {status}: {body[:300]!r}"
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    """``start(target)``: a Prometheus server on loopback scraping ``target`` (host:port) every second."""
    binary = prometheus_binary()
    started: list[subprocess.Popen[bytes]] = []

    def start(target: str) -> Prometheus:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: mcp-guard\n    static_configs:\n"
            f"      - targets: [{json.dumps(target)}]\n"
        )
        log = tmp_path / "prometheus.log"
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
            cwd=tmp_path,
        )
        started.append(proc)
        prom = Prometheus(proc, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + 60
        while get(prom.url + "/-/ready")[0] != 200:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready within 60 s:\n{log.read_text()[-3000:]}")
            time.sleep(POLL_S)  # a condition poll under a deadline
        return prom

    yield start
    for proc in started:
        stop(proc)


def _by_decision(result: list[dict[str, Any]]) -> dict[tuple[str, str, str], float]:
    """(tool, decision, reason) -> value of every mcp_guard_calls_total series Prometheus holds."""
    return {
        (r["metric"]["tool"], r["metric"]["decision"], r["metric"].get("reason", "")): float(r["value"][1])
        for r in result
    }


async def _until(prom: Prometheus, promql: str, want: Any, within: float = 60.0) -> list[dict[str, Any]]:
    """Query until ``want(result)`` holds (bounded); the last answer is in the failure message."""
    result: list[dict[str, Any]] = []
    with anyio.move_on_after(within):
        while True:
            result = prom.query(promql)
            if want(result):
                return result
            await anyio.sleep(0.2)
    raise AssertionError(f"{promql}: still {result} after {within} s\n{prom.log.read_text()[-2000:]}")


async def test_a_real_prometheus_scrapes_calls_by_decision(tmp_path: Path, prometheus_for: Any) -> None:
    cfg = write_config(tmp_path, policy='engine = "embedded"')
    with http_guard(cfg, tmp_path / "guard.log") as url:
        base = url.removesuffix("/mcp")
        target = urllib.parse.urlsplit(base).netloc
        async with http_client(url, API_KEY) as client:
            for _ in range(2):
                assert not (await client.call_tool("rec__echo", {"text": "hi"})).is_error
            assert (await client.call_tool("rec__add", {"a": 1, "b": 2})).is_error  # denied by the policy

            prom = prometheus_for(target)
            result = await _until(
                prom,
                "mcp_guard_calls_total",
                lambda r: _by_decision(r) == {("echo", "allow", ""): 2, ("add", "deny", "policy"): 1},
            )
            assert {r["metric"]["server"] for r in result} == {"rec"}

            # More calls: the next scrapes follow.
            await client.call_tool("rec__echo", {"text": "again"})
            await client.call_tool("rec__add", {"a": 1, "b": 2})
            await _until(
                prom,
                "sum by (decision) (mcp_guard_calls_total)",
                lambda r: {x["metric"]["decision"]: float(x["value"][1]) for x in r} == {"allow": 3, "deny": 2},
            )

        (up,) = prom.query('up{job="mcp-guard"}')
        assert up["value"][1] == "1"
        status, body = get(prom.url + "/api/v1/targets")
        (active,) = json.loads(body)["data"]["activeTargets"]
        assert (active["health"], active["lastError"]) == ("up", "")
        for promql, want in [
            ('mcp_guard_upstream_up{server="rec"}', "1"),
            ("mcp_guard_policy_ready", "1"),
            ("mcp_guard_audit_ready", "1"),
            ('mcp_guard_call_duration_seconds_count{action="tools/call",decision="allow"}', "3"),
        ]:
            await _until(prom, promql, lambda r, want=want: len(r) == 1 and r[0]["value"][1] == want)
        (revision,) = prom.query("mcp_guard_policy_revision_info")
        assert revision["metric"]["engine"] == "embedded" and revision["metric"]["revision"]
        (committed,) = prom.query("mcp_guard_audit_events_committed_total")
        assert float(committed["value"][1]) >= 5  # at least a decision row per call

        # The same page, linted by promtool and read by the strict parser.
        status, page = get(base + "/metrics")
        assert status == 200
        families = parse(page.decode())
        assert (
            value_of(families, "mcp_guard_calls_total", server="rec", tool="add", decision="deny", reason="policy") == 2
        )
        # the repeated echo "hi" and add(1, 2) were answered from the decision cache (on by default)
        assert value_of(families, "mcp_guard_policy_decision_cache_hits_total") >= 2
        assert value_of(families, "mcp_guard_policy_decision_cache_entries") >= 3
        (hits,) = prom.query("mcp_guard_policy_decision_cache_hits_total")
        assert float(hits["value"][1]) >= 2
        promtool = shutil.which("promtool", path=str(Path(prometheus_binary()).parent)) or shutil.which("promtool")
        assert promtool, "promtool ships with the prometheus package"
        with anyio.fail_after(30):
            lint = await anyio.run_process([promtool, "check", "metrics"], input=page, check=False)
        assert lint.returncode == 0 and not lint.stdout.strip(), (lint.stdout + lint.stderr).decode()


@dataclass
class Opa:
    binary: str
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "run", "--server", "--addr", f"127.0.0.1:{self.port}", "--log-level", "error"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


async def _ready_status(base: str, want: int, within: float = 60.0) -> dict[str, Any]:
    status, body = 0, b""
    with anyio.move_on_after(within):
        while True:
            status, body = get(base + "/readyz")
            if status == want:
                return dict(json.loads(body))
            await anyio.sleep(POLL_S)
    raise AssertionError(f"/readyz still {status} {body[:500]!r} after {within} s")


@pytest.mark.opa
async def test_readyz_follows_a_real_opa_server_down_up_and_down(tmp_path: Path) -> None:
    opa = Opa(opa_binary(), free_port())
    policy = f'engine = "opa"\nopa_url = "http://127.0.0.1:{opa.port}"\npush_bundle = true'
    cfg = write_config(tmp_path, policy=policy)
    try:
        with http_guard(cfg, tmp_path / "guard.log") as url:  # OPA down at start is not a crash
            base = url.removesuffix("/mcp")
            body = await _ready_status(base, 503)
            assert body["policy"]["ready"] is False and body["audit"]["ready"] is True
            assert body["upstreams"]["rec"]["state"] in ("starting", "ready")
            assert value_of(parse(get(base + "/metrics")[1].decode()), "mcp_guard_policy_ready") == 0

            opa.start()  # the engine reconnects and pushes its bundle by itself
            body = await _ready_status(base, 200)
            assert body["policy"]["engine"] == "opa" and body["policy"]["revision"]
            async with http_client(url, API_KEY) as client:
                assert not (await client.call_tool("rec__echo", {"text": "hi"})).is_error

                opa.stop()  # the next call finds OPA gone: denied engine_error, and the replica is unready
                assert (await client.call_tool("rec__echo", {"text": "hi"})).is_error
                body = await _ready_status(base, 503)
                assert body["policy"]["ready"] is False
            families = parse(get(base + "/metrics")[1].decode())
            assert (
                value_of(families, "mcp_guard_calls_total", server="rec", tool="echo", decision="allow", reason="") == 1
            )
            assert (
                value_of(
                    families, "mcp_guard_calls_total", server="rec", tool="echo", decision="deny", reason="engine_error"
                )
                == 1
            )
    finally:
        opa.stop()
