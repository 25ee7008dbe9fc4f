"""Scale-out end to end: three ``mcp-guard run --transport http`` replicas on one PostgreSQL (audit + state), one
real OPA server, behind a real HAProxy (Debian's) that keeps 2025-11-25 sessions on their replica by
``Mcp-Session-Id``; 2026-07-28 requests are spread round robin.

1. A rate limit of 5 per minute holds across the three replicas (15 calls spread over all three: 5 run).
2. Under load from both eras, one replica is SIGKILLed. Its 2025-era sessions get a clean 404 from a
   surviving replica and re-initialise there; every other session keeps its replica (affinity); the
   stateless traffic continues; every answered call has its decision and outcome rows; the single chain
   verifies (``mcp-guard audit verify`` on the DSN).

The figures (calls/s, errors, failover time) are printed; the README quotes a run. Nothing here is timed.
The HAProxy configuration is the one in deploy/haproxy.cfg, with the replicas' ports filled in.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import psycopg
import pytest
from e2e_support import API_KEY, POLL_S, REPO, guard_argv, recorder, write_config
from test_opa_engine import start_opa

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.opa]

REPLICAS = 3
LEGACY_CLIENTS = 6  # 2025-11-25 sessions: two per replica (round robin on initialize)
MODERN_CLIENTS = 6  # 2026-07-28 stateless clients
LIMIT = 5
WARMUP_CALLS = 20  # answered calls per client before the kill
AFTER_CALLS = 10  # answered calls per client after the kill (after re-initialising, for 2025 sessions)
LEGACY, MODERN = "2025-11-25", "2026-07-28"
CLIENT_INFO = {"name": "scaleout-e2e", "version": "1"}
TEMPLATE = REPO / "deploy" / "haproxy.cfg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if not found:
        pytest.fail("no haproxy binary: apt-get install haproxy (.ci/run installs it)")
    return found


# ---------------------------------------------------------------------------------------------- set-up
def _bundle(tmp: Path) -> Path:
    """The default bundle with a role for the recorder's echo and add, and a limit of 5/min on echo."""
    bundle = tmp / "bundle"
    shutil.copytree(REPO / "policies" / "rego", bundle)
    data = json.loads((bundle / "data.json").read_text())
    cfg = data["mcp_guard_config"]
    cfg["roles"] = {"calculator": {"grants": [{"server": "rec", "tools": ["echo", "add"]}]}}
    cfg["principals"] = {"agent": ["calculator"]}
    cfg["limits"] = {
        "rate": [
            {"name": "echo", "by": ["principal", "server", "tool"], "limit": LIMIT, "window_s": 60, "tools": ["echo"]}
        ]
    }
    (bundle / "data.json").write_text(json.dumps(data))
    for test in bundle.rglob("*_test.rego"):
        test.unlink()  # their fixtures assume the default data.json
    return bundle


def _config(tmp: Path, dsn: str, opa_url: str, bundle: Path) -> Path:
    tmp.mkdir()
    cfg = write_config(tmp, {"rec": recorder(tmp / "recorder.log")}, bundle=bundle)
    text = cfg.read_text()
    audit = f"[audit]\npath = {json.dumps(str(tmp / 'audit.db'))}\n"
    policy = "[policy]\n"
    assert audit in text and policy in text
    text = text.replace(audit, f'[audit]\nbackend = "postgres"\ndsn = {json.dumps(dsn)}\n')
    text = text.replace(policy, f'[policy]\nengine = "opa"\nopa_url = {json.dumps(opa_url)}\n')
    cfg.write_text(text)
    return cfg


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    recorder_log: Path


def _listening_port(proc: subprocess.Popen[bytes], log: Path, within: float = 90.0) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mcp-guard exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        for line in log.read_text().splitlines():
            if '"http.listening"' in line:
                return int(str(json.loads(line)["url"]).rsplit(":", 1)[1].split("/")[0])
        time.sleep(POLL_S)  # polling a condition under a deadline
    raise AssertionError(f"mcp-guard did not start listening:\n{log.read_text()[-3000:]}")


@contextmanager
def replicas(tmp: Path, dsn: str, opa_url: str, bundle: Path) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for i in range(REPLICAS):
            name = f"g{i + 1}"
            cfg = _config(tmp / name, dsn, opa_url, bundle)
            log = tmp / f"{name}.log"
            proc = subprocess.Popen(
                guard_argv(cfg, "--transport", "http", "--port", "0", "--log-level", "info"),
                stdout=subprocess.DEVNULL,
                stderr=log.open("w"),
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            started.append(Replica(name, proc, 0, log, tmp / name / "recorder.log"))
        for r in started:
            r.port = _listening_port(r.proc, r.log)
        yield started
    finally:
        for r in started:
            if r.proc.poll() is None:
                r.proc.terminate()
        for r in started:
            try:
                r.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait()


def haproxy_config(port: int, servers: list[tuple[str, int]]) -> str:
    """deploy/haproxy.cfg with this test's listening port and replicas (and a header naming the replica)."""
    text = TEMPLATE.read_text()
    text = text.replace("bind :8080", f"bind 127.0.0.1:{port}")
    lines = [f"    server {name} 127.0.0.1:{p} check" for name, p in servers]
    start, end = text.index("    # servers: begin"), text.index("    # servers: end")
    text = text[:start] + "\n".join(lines) + "\n" + text[end:]
    # For the test only: which replica answered (affinity is checked on it).
    return text.replace("backend mcp_guard\n", "backend mcp_guard\n    http-response set-header X-Replica %s\n", 1)


@contextmanager
def haproxy(tmp: Path, servers: list[tuple[str, int]]) -> Iterator[str]:
    port = free_port()
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(haproxy_config(port, servers))
    log = tmp / "haproxy.log"
    check = subprocess.run([haproxy_binary(), "-c", "-f", str(cfg)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen([haproxy_binary(), "-db", "-f", str(cfg)], stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:  # up when every replica passed its health check
            try:
                up = {httpx2.get(f"{url}/healthz", timeout=2).headers.get("x-replica") for _ in range(2 * len(servers))}
                if up == {n for n, _ in servers}:
                    break
            except httpx2.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"haproxy did not route to every replica: {log.read_text()[-2000:]}"
            time.sleep(POLL_S)  # polling a condition under a deadline
        yield f"{url}/mcp"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


# ---------------------------------------------------------------------------------------------- clients
class Gone(Exception):
    """HTTP 404 on a 2025 session: the replica that held it is gone; initialise again."""


class Failed(Exception):
    """No answer: the load balancer or a replica failed the request (5xx, connection reset)."""


@dataclass
class Answer:
    replica: str
    result: dict[str, Any]


@dataclass
class Caller:
    """A raw streamable-HTTP MCP client of one era (one keep-alive connection through the load balancer)."""

    url: str
    era: str
    http: httpx2.AsyncClient
    session: str | None = None
    replicas: list[tuple[str | None, str]] = field(default_factory=list)  # (session, replica) of each answer
    next_id: int = 0

    async def tools(self) -> list[str]:
        """The tool names the replica lists now (first page)."""
        self.next_id += 1
        params = {"_meta": _modern_meta()} if self.era == MODERN else {}
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": "tools/list", "params": params}
        r = await self._post(body, self._headers("tools/list", None))
        return [t["name"] for t in _result(r, self.next_id)["tools"]] if r.status_code == 200 else []

    def _headers(self, method: str, name: str | None) -> dict[str, str]:
        h = {
            "Authorization": f"Bearer {API_KEY}",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        }
        if self.era == MODERN:
            h |= {"mcp-protocol-version": MODERN, "mcp-method": method} | ({"mcp-name": name} if name else {})
        elif self.session is not None:
            h |= {"mcp-session-id": self.session, "mcp-protocol-version": LEGACY}
        return h

    async def _post(self, body: dict[str, Any], headers: dict[str, str]) -> httpx2.Response:
        try:
            return await self.http.post(self.url, json=body, headers=headers)
        except httpx2.HTTPError as e:
            raise Failed(type(e).__name__) from None

    async def initialize(self) -> None:
        if self.era == MODERN:
            return
        self.session = None
        params = {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": CLIENT_INFO}
        r = await self._post(
            {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}, self._headers("", None)
        )
        if r.status_code != 200 or "mcp-session-id" not in r.headers:
            raise Failed(f"initialize: HTTP {r.status_code}")
        self.session = r.headers["mcp-session-id"]
        note = await self._post({"jsonrpc": "2.0", "method": "notifications/initialized"}, self._headers("", None))
        if note.status_code == 404:
            raise Gone
        if note.status_code >= 300:
            raise Failed(f"initialized: HTTP {note.status_code}")

    async def call(self, tool: str, arguments: dict[str, Any]) -> Answer:
        self.next_id += 1
        params: dict[str, Any] = {"name": tool, "arguments": arguments}
        if self.era == MODERN:
            params["_meta"] = _modern_meta()
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": "tools/call", "params": params}
        r = await self._post(body, self._headers("tools/call", tool))
        if r.status_code == 404 and self.era == LEGACY:
            raise Gone
        if r.status_code != 200:
            raise Failed(f"HTTP {r.status_code}")
        replica = r.headers.get("x-replica", "?")
        self.replicas.append((self.session, replica))
        return Answer(replica, _result(r, self.next_id))


def _modern_meta() -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientInfo": CLIENT_INFO,
        "io.modelcontextprotocol/clientCapabilities": {},
    }


async def _wait_for_upstreams(guards: list[Replica]) -> None:
    """Each replica lists the recorder's tools (its upstream is up), asked directly, not through the balancer."""
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30.0)) as http:
        for g in guards:
            caller = Caller(f"http://127.0.0.1:{g.port}/mcp", MODERN, http)
            with anyio.fail_after(60):
                while "rec__add" not in await caller.tools():  # noqa: ASYNC110 - no event to wait on
                    await anyio.sleep(POLL_S)


def _result(r: httpx2.Response, request_id: int) -> dict[str, Any]:
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        for line in r.text.splitlines():
            if line.startswith("data:") and line[5:].strip():
                msg = json.loads(line[5:])
                if msg.get("id") == request_id:
                    return dict(msg["result"])
        raise Failed(f"no answer in the event stream: {r.text[:200]}")
    return dict(r.json()["result"])


def callers(url: str) -> list[Caller]:
    eras = [LEGACY] * LEGACY_CLIENTS + [MODERN] * MODERN_CLIENTS
    return [Caller(url, era, httpx2.AsyncClient(timeout=httpx2.Timeout(30.0))) for era in eras]


@dataclass
class Load:
    """What the clients saw: answered calls (their arguments), errors and re-initialisations, with times."""

    killed_at: float = 0.0
    started: float = 0.0
    answered: list[tuple[str, int, int, float]] = field(default_factory=list)  # era, a, b, time
    errors: list[tuple[str, str, float]] = field(default_factory=list)  # era, what, time
    reinit: list[tuple[float, float]] = field(default_factory=list)  # (404 seen, first answer after) times
    killed: anyio.Event = field(default_factory=anyio.Event)
    before: int = 0  # clients done with their warm-up
    warm: anyio.Event = field(default_factory=anyio.Event)


async def _drive(caller: Caller, index: int, load: Load) -> None:
    """Call add without pause: past WARMUP_CALLS answers the client counts as warm (the replica is killed when
    every client is, mid-traffic), and it stops after AFTER_CALLS answers to calls sent since the kill."""
    n, after, gone_at, warm = 0, 0, None, False
    await caller.initialize()
    while after < AFTER_CALLS:
        if n >= WARMUP_CALLS and not warm:
            warm = True
            load.before += 1
            if load.before == len(LOAD_CLIENTS):
                load.warm.set()
        n += 1
        # Only a call sent after the kill counts towards AFTER_CALLS: one the victim answered just before dying
        # can still arrive after `killed` is set.
        sent_after_kill = load.killed.is_set()
        try:
            await caller.call("rec__add", {"a": index, "b": n})
        except Gone:
            load.errors.append((caller.era, "404 session gone", time.monotonic()))
            gone_at = gone_at or time.monotonic()
            await _reinitialize(caller, load)
            continue
        except Failed as e:
            load.errors.append((caller.era, str(e), time.monotonic()))
            continue
        now = time.monotonic()
        load.answered.append((caller.era, index, n, now))
        if gone_at is not None:
            load.reinit.append((gone_at, now))
            gone_at = None
        if sent_after_kill:
            after += 1


async def _reinitialize(caller: Caller, load: Load) -> None:
    while True:
        try:
            await caller.initialize()
            return
        except (Gone, Failed) as e:
            load.errors.append((caller.era, f"re-initialise: {e}", time.monotonic()))


LOAD_CLIENTS = range(LEGACY_CLIENTS + MODERN_CLIENTS)


def _rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return list(conn.execute(sql))


def _echoes(log: Path) -> int:
    if not log.exists():
        return 0
    return sum(json.loads(line).get("name") == "echo" for line in log.read_text().splitlines() if line.strip())


# ---------------------------------------------------------------------------------------------- the test
async def test_three_replicas_behind_haproxy_survive_losing_one(pg_dsn: str, tmp_path: Path) -> None:
    haproxy_binary()
    bundle = _bundle(tmp_path)
    opa = start_opa(bundle)
    try:
        with (
            replicas(tmp_path, pg_dsn, opa.url, bundle) as guards,
            haproxy(tmp_path, [(r.name, r.port) for r in guards]) as url,
        ):
            await _wait_for_upstreams(guards)
            await _rate_limit_holds_across_replicas(url, guards)
            load, callers_seen = await _load_with_a_replica_killed(url, guards[0])
        figures = _figures(load)
    finally:
        opa.stop()
    print("\nscale-out figures:", json.dumps(figures))  # quoted in the README
    assert all(t >= load.killed_at for *_, t in load.errors), load.errors  # no error before the kill
    _every_session_kept_its_replica_until_it_was_gone(callers_seen, killed=guards[0].name)
    _every_answered_call_has_its_rows(pg_dsn, load)
    _each_tool_was_pinned_once_for_the_deployment(pg_dsn)
    await _the_chain_verifies(tmp_path / "g2" / "mcp-guard.toml", pg_dsn)


async def _rate_limit_holds_across_replicas(url: str, guards: list[Replica]) -> None:
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30.0)) as http:
        caller = Caller(url, MODERN, http)
        answers = [await caller.call("rec__echo", {"text": f"e{i}"}) for i in range(3 * LIMIT)]
    ran = [a for a in answers if not a.result.get("isError")]
    refused = [a for a in answers if a.result.get("isError")]
    assert len(ran) == LIMIT, answers
    assert {a.replica for a in answers} == {g.name for g in guards}  # spread over every replica
    assert len({a.replica for a in ran}) > 1  # the 5 that ran were not all on one replica
    assert all("retry after" in json.dumps(a.result) for a in refused), refused[0]
    assert sum(_echoes(g.recorder_log) for g in guards) == LIMIT  # what reached the upstreams


async def _load_with_a_replica_killed(url: str, victim: Replica) -> tuple[Load, list[Caller]]:
    load = Load(started=time.monotonic())
    made = callers(url)
    try:
        with anyio.fail_after(300):
            async with anyio.create_task_group() as tg:
                for i, caller in enumerate(made):
                    tg.start_soon(_drive, caller, i, load)
                await load.warm.wait()
                victim.proc.send_signal(signal.SIGKILL)
                load.killed_at = time.monotonic()
                load.killed.set()
    finally:
        for c in made:
            await c.http.aclose()
    victim.proc.wait(timeout=10)
    return load, made


def _figures(load: Load) -> dict[str, Any]:
    elapsed = max(t for *_, t in load.answered) - load.started
    modern_errors = [t for era, _, t in load.errors if era == MODERN]
    return {
        "answered": len(load.answered),
        "calls_per_s": round(len(load.answered) / elapsed, 1),
        "errors": len(load.errors),
        "errors_stateless": len(modern_errors),
        "errors_by_kind": {k: sum(1 for _, w, _ in load.errors if w == k) for k in {w for _, w, _ in load.errors}},
        "sessions_reinitialised": len(load.reinit),
        "stateless_failover_s": round(max(modern_errors, default=load.killed_at) - load.killed_at, 3),
        "session_failover_s": round(max((done - load.killed_at for _, done in load.reinit), default=0.0), 3),
    }


def _every_session_kept_its_replica_until_it_was_gone(made: list[Caller], *, killed: str) -> None:
    legacy = [c for c in made if c.era == LEGACY]
    homes: dict[str, set[str]] = {}
    for c in legacy:
        for session, replica in c.replicas:
            assert session is not None
            homes.setdefault(session, set()).add(replica)
    assert all(len(r) == 1 for r in homes.values()), homes  # affinity: one replica per session
    first_homes = [c.replicas[0][1] for c in legacy]
    assert set(first_homes) == {"g1", "g2", "g3"}  # initialize spread over every replica
    for c in legacy:  # a session of the killed replica moved; the others never did
        moved = {replica for _, replica in c.replicas} != {c.replicas[0][1]}
        assert moved == (c.replicas[0][1] == killed), c.replicas
        assert c.replicas[-1][1] != killed
    modern = [c for c in made if c.era == MODERN]
    assert {r for c in modern for _, r in c.replicas[-AFTER_CALLS:]} == {"g2", "g3"}  # stateless continued


def _every_answered_call_has_its_rows(dsn: str, load: Load) -> None:
    decisions = {
        str(decision_id): json.loads(arguments)
        for decision_id, arguments in _rows(
            dsn,
            "SELECT decision_id, arguments FROM audit_events "
            "WHERE kind = 'call.decision' AND tool = 'add' AND decision = 'allow'",
        )
    }
    outcomes = {str(r[0]) for r in _rows(dsn, "SELECT decision_id FROM audit_events WHERE kind = 'call.result'")}
    recorded = {(int(a["a"]), int(a["b"])) for did, a in decisions.items() if did in outcomes}
    answered = {(a, b) for _, a, b, _ in load.answered}
    assert answered <= recorded, sorted(answered - recorded)[:10]


def _each_tool_was_pinned_once_for_the_deployment(dsn: str) -> None:
    """The replicas share one pin store: each tool pinned by exactly one of them (one tool.pinned row)."""
    pins = {str(r[0]) for r in _rows(dsn, "SELECT tool FROM tool_pins WHERE server = 'rec'")}
    pinned = [str(r[0]) for r in _rows(dsn, "SELECT tool FROM audit_events WHERE kind = 'tool.pinned'")]
    assert {"echo", "add"} <= pins
    assert sorted(pinned) == sorted(pins)


async def _the_chain_verifies(cfg: Path, dsn: str) -> None:
    argv = [sys.executable, "-m", "mcp_guard", "audit", "verify", "--config", str(cfg), "--json"]
    with anyio.fail_after(120):
        done = await anyio.run_process(argv, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    result = json.loads(done.stdout)
    rows = _rows(dsn, "SELECT count(*) FROM audit_events")[0][0]
    assert result["ok"] and result["rows"] == rows and result["warnings"] == []


# ---------------------------------------------------------------------------------------------- deploy/ as shipped
def test_the_shipped_haproxy_config_is_valid() -> None:
    done = subprocess.run([haproxy_binary(), "-c", "-f", str(TEMPLATE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_shipped_nginx_config_is_valid(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        pytest.fail("no nginx binary: apt-get install nginx-light (.ci/run installs it)")
    argv = [nginx, "-t", "-c", str(REPO / "deploy" / "nginx.conf"), "-p", f"{tmp_path}/"]
    argv += ["-g", f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "syntax is ok" in done.stderr, done.stderr
