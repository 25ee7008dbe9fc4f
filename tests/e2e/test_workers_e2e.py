"""``mcp-guard run --workers 2`` end to end: one port, two worker processes, one SQLite audit chain.

Many clients of both protocol eras call at once; every call is answered (none refused by two writers on one
audit file) and has its decision and outcome rows; 2025-11-25 session ids name their worker; SIGHUP reaches
both workers; a SIGKILLed worker is started again and serves; SIGTERM stops everything; ``audit verify``
passes on the shared chain. Nothing here is timed (throughput is bench/bench_breakdown.py's business).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from e2e_support import POLL_S, REPO, guard_argv, recorder, write_config
from test_scaleout_e2e import LEGACY, MODERN, Caller, Failed, free_port

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

CLIENTS_PER_ERA = 8
CALLS = 12


def _children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(p) for p in text.split()}


def _listening(log: Path) -> int:
    return sum('"http.listening"' in line for line in log.read_text().splitlines())


def _wait(condition: object, what: str, log: Path, within: float = 90.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(POLL_S)
    raise AssertionError(f"{what}:\n{log.read_text()[-3000:]}")


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql))


async def _round(url: str, tag: int) -> list[tuple[str | None, int, int]]:
    """Every client initialises (2025) or not (2026) and calls add CALLS times; the answered (session, a, b)."""
    answered: list[tuple[str | None, int, int]] = []
    failures: list[str] = []

    async def drive(caller: Caller, index: int) -> None:
        async with caller.http:
            await caller.initialize()
            for n in range(CALLS):
                try:
                    answer = await caller.call("rec__add", {"a": tag * 1000 + index, "b": n})
                except Failed as e:
                    failures.append(f"{caller.era} {index}: {e}")
                    continue
                assert not answer.result.get("isError"), answer.result
                answered.append((caller.session, tag * 1000 + index, n))

    async with anyio.create_task_group() as tg:
        for i, era in enumerate([LEGACY] * CLIENTS_PER_ERA + [MODERN] * CLIENTS_PER_ERA):
            tg.start_soon(drive, Caller(url, era, httpx2.AsyncClient(timeout=httpx2.Timeout(60.0))), i)
    assert failures == []
    return answered


def _every_call_has_its_rows(db: Path, answered: list[tuple[str | None, int, int]]) -> None:
    decisions = {
        str(did): json.loads(str(args))
        for did, args in _rows(
            db,
            "SELECT decision_id, arguments FROM audit_events "
            "WHERE kind = 'call.decision' AND tool = 'add' AND decision = 'allow'",
        )
    }
    outcomes = {str(r[0]) for r in _rows(db, "SELECT decision_id FROM audit_events WHERE kind = 'call.result'")}
    recorded = {(int(a["a"]), int(a["b"])) for did, a in decisions.items() if did in outcomes}
    assert {(a, b) for _, a, b in answered} <= recorded


@contextmanager
def supervisor(cfg: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``mcp-guard run --transport http --workers 2`` on ``port``; killed (with its workers) if still running."""
    argv = guard_argv(cfg, "--transport", "http", "--port", str(port), "--workers", "2", "--log-level", "info")
    with log.open("w") as err:
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()  # its workers get SIGTERM from the kernel (PR_SET_PDEATHSIG)
                proc.wait()


async def test_two_workers_share_the_port_and_the_audit_chain(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"rec": recorder()})
    db = tmp_path / "audit.db"
    port = free_port()
    log = tmp_path / "guard.log"
    url = f"http://127.0.0.1:{port}/mcp"
    with supervisor(cfg, port, log) as proc:
        _wait(lambda: _listening(log) >= 2, "both workers listening", log)
        workers = _children(proc.pid)
        assert len(workers) == 2

        answered = await _round(url, 1)
        assert len(answered) == 2 * CLIENTS_PER_ERA * CALLS
        sessions = {s for s, _, _ in answered if s is not None}
        assert len(sessions) == CLIENTS_PER_ERA and all(re.fullmatch(r"w[01]-[0-9a-f]+", s) for s in sessions)
        # the audit names each session as its client does (a row can be matched to the Mcp-Session-Id); decision
        # rows are committed before the call is forwarded, so they are all there
        audited = {r[0] for r in _rows(db, "SELECT DISTINCT session_id FROM audit_events WHERE kind = 'call.decision'")}
        assert sessions <= audited

        # SIGHUP to the supervisor reaches both workers (each audits its reload)
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: len(_rows(db, "SELECT 1 FROM audit_events WHERE kind = 'config.reload'")) == 2, "reloads", log)

        # a worker that dies is started again, and the port keeps being served
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: len(_children(proc.pid) - {victim}) == 2 and _listening(log) >= 3, "worker restarted", log)
        answered += await _round(url, 2)
        _every_call_has_its_rows(db, answered)

        proc.send_signal(signal.SIGTERM)
        _wait(lambda: proc.poll() is not None, "supervisor stopped", log, within=60)
        assert proc.returncode == 0, log.read_text()[-3000:]

    with anyio.fail_after(120):
        verify = await anyio.run_process(
            [*guard_argv(cfg)[:3], "audit", "verify", "--config", str(cfg), "--json"], cwd=REPO, check=False
        )
    assert verify.returncode == 0, verify.stderr.decode()[-2000:]
    result = json.loads(verify.stdout)
    assert result["ok"] and result["rows"] == _rows(db, "SELECT count(*) FROM audit_events")[0][0]
