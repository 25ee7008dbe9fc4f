"""Shared state on PostgreSQL beside SQLite: what rate limits and flows cost a call when replicas share them.

    python bench/bench_pg_state.py                      # the full run (about a minute)
    python bench/bench_pg_state.py --n 200              # a smoke run
    python bench/bench_pg_state.py --dsn postgresql://postgres@127.0.0.1:5432/postgres

A fresh database is created on the server ``--dsn`` names (dropped at the end); the SQLite rows use a fresh
file. Each scenario runs on both backends, awaited from the event loop as the pipeline does:

* ``admit 1 limit`` / ``admit 3 limits``: one caller, back to back — the wait a rate-limited call adds;
* ``usage 2 keys``: the read that fills ``context.usage``;
* ``flow read + record``: the two flow operations of a call when the bundle uses flows;
* ``admit C=16``: 16 tasks of one process at once (SQLite: one connection, a lock; PostgreSQL: a pool of 4);
* ``admit 3 replicas``: three processes, 8 tasks each, on one counter (the scale-out case; SQLite: one file).

Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import psycopg
from psycopg import conninfo

from mcp_guard.state import FlowCall, FlowRef, Limit, SQLiteState, StateStore
from mcp_guard.state.postgres import PostgresState

RESULTS = Path(__file__).resolve().parent / "results"
SRC = Path(__file__).resolve().parents[1] / "src"
LIMITS_1 = [Limit("tool_calls|agent|tickets|create_ticket", 10**9, 60.0)]
LIMITS_3 = [*LIMITS_1, Limit("all|agent", 10**9, 3600.0), Limit("tickets", 10**9, 1.0)]
BACKENDS = ("sqlite", "postgres")

_WORKER = """
import anyio, json, sys, time
from mcp_guard.state import Limit, SQLiteState
from mcp_guard.state.postgres import PostgresState

async def main(kind, where, n, tasks):
    store = PostgresState(where, timeout_s=30.0) if kind == "postgres" else SQLiteState(where, timeout_s=30.0)
    await store.start()
    waits = []
    async def one():
        for _ in range(n):
            t = time.perf_counter()
            await store.admit([Limit("shared", 10**9, 60.0)])
            waits.append(time.perf_counter() - t)
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(one)
    print(json.dumps({"waits": waits, "seconds": time.perf_counter() - started}))
    await store.aclose()

anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
"""


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
    }


async def _timed(n: int, op: Callable[[int], Awaitable[object]]) -> dict[str, float]:
    for i in range(min(50, n)):  # warm-up: connections made, statements prepared
        await op(-1 - i)
    waits = []
    started = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        await op(i)
        waits.append(time.perf_counter() - t)
    return {**_ms(waits), "ops_per_s": round(n / (time.perf_counter() - started))}


async def _concurrent(n: int, tasks: int, op: Callable[[], Awaitable[object]]) -> dict[str, float]:
    waits: list[float] = []

    async def one() -> None:
        for _ in range(n):
            t = time.perf_counter()
            await op()
            waits.append(time.perf_counter() - t)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(one)
    return {**_ms(waits), "ops_per_s": round(len(waits) / (time.perf_counter() - started))}


@asynccontextmanager
async def _store(kind: str, where: str) -> AsyncIterator[StateStore]:
    store: SQLiteState | PostgresState = (
        PostgresState(where, timeout_s=30.0) if kind == "postgres" else SQLiteState(where, timeout_s=30.0)
    )
    await store.start()
    try:
        yield store
    finally:
        await store.aclose()


def _flow_call(i: int) -> FlowCall:
    labels = ("private",) if i % 10 == 0 else ()
    return FlowCall(f"d{i}", "tools/call", "tickets", "get_ticket", "allow", labels, "2026-01-01T00:00:00Z")


async def _scenarios(kind: str, where: str, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with _store(kind, where) as store:
        out["admit 1 limit"] = await _timed(n, lambda _i: store.admit(LIMITS_1))
        out["admit 3 limits"] = await _timed(n, lambda _i: store.admit(LIMITS_3))
        out["usage 2 keys"] = await _timed(n, lambda _i: store.usage([b.bucket for b in LIMITS_3[:2]]))

        async def flow_call(i: int) -> None:
            ref = FlowRef(f"flow-{i % 50}", "agent")
            await store.flow(ref.id)
            await store.record_call(ref, _flow_call(i))

        out["flow read + record"] = await _timed(n, flow_call)
        out["admit C=16"] = await _concurrent(max(1, n // 16), 16, lambda: store.admit(LIMITS_1))
    return out


def _replicas(kind: str, where: str, n: int) -> dict[str, float]:
    argv = [sys.executable, "-c", _WORKER, kind, where, str(n), "8"]
    env = {"PYTHONPATH": str(SRC)}
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, env=env) for _ in range(3)]
    results = [json.loads(p.communicate(timeout=600)[0]) for p in procs]
    waits = [w for r in results for w in r["waits"]]
    seconds = max(r["seconds"] for r in results)
    return {**_ms(waits), "ops_per_s": round(len(waits) / seconds)}


def _fresh_database(dsn: str) -> tuple[str, str]:
    name = f"mcpg_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, conninfo.make_conninfo(dsn, dbname=name)


def _drop_database(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def table(report: dict[str, Any]) -> str:
    rows = ["| scenario | SQLite median / p99 ms, ops/s | PostgreSQL median / p99 ms, ops/s |", "|---|---|---|"]
    for scenario in report["sqlite"]:
        cells = []
        for kind in BACKENDS:
            r = report[kind][scenario]
            cells.append(f"{r['median_ms']:.3f} / {r['p99_ms']:.3f}, {r['ops_per_s']:,}")
        rows.append(f"| {scenario} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4000, help="operations per scenario (default 4000)")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres", help="a role with CREATEDB")
    args = parser.parse_args()
    name, dsn = _fresh_database(args.dsn)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            report: dict[str, Any] = {
                "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "machine": {"python": platform.python_version(), "platform": platform.platform()},
                "n": args.n,
            }
            for kind, where in (("sqlite", str(Path(tmp) / "state.db")), ("postgres", dsn)):
                report[kind] = anyio.run(_scenarios, kind, where, args.n)
                report[kind]["admit 3 replicas"] = _replicas(kind, where, max(1, args.n // 8))
    finally:
        _drop_database(args.dsn, name)
    print(table(report))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"pg_state-{report['when'].replace(':', '')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
