"""State store benchmark: what the rate-limit stage adds to a call (mcp_guard.state).

    python bench/bench_state.py            # the full run (about half a minute)
    python bench/bench_state.py --n 500    # a smoke run

A rate-limited call with declared limits costs one ``usage`` read (before the policy) and one ``admit``
(after it); a call whose decision carries no ``rate_limit`` and a bundle with no declarations cost
nothing. Scenarios, each on a fresh SQLite file, awaited from the event loop as the pipeline does
(one connection per store):

* ``admit 1 limit`` / ``admit 3 limits``: one caller, back to back; the wait per call (inline on the loop:
  the store runs an uncontended transaction there and only moves to its worker thread when it would wait).
* ``admit 1 limit, thread``: the same with every operation in the worker thread (``inline=False``, what
  every call paid before): the cost of the thread hop.
* ``usage 2 keys``: the read that fills ``context.usage``.
* ``admit C=16``: 16 tasks of one process admitting at once (they queue on the store's connection).
* ``admit 4 processes``: four processes on one file, each one caller (``BEGIN IMMEDIATE`` contention).
* ``memory admit``: the in-process store, for the floor (no SQLite).

Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from mcp_guard.state import Limit, MemoryState, SQLiteState, StateStore

RESULTS = Path(__file__).resolve().parent / "results"
SRC = Path(__file__).resolve().parents[1] / "src"
LIMITS_1 = [Limit("tool_calls|agent|tickets|create_ticket", 10**9, 60.0)]
LIMITS_3 = [*LIMITS_1, Limit("all|agent", 10**9, 3600.0), Limit("tickets", 10**9, 1.0)]

_WORKER = """
import anyio, json, sys, time
from mcp_guard.state import Limit, SQLiteState

async def main(path, n):
    store = SQLiteState(path, timeout_s=30.0)
    await store.start()
    waits = []
    for i in range(n):
        t = time.perf_counter()
        await store.admit([Limit("shared", 10**9, 60.0)])
        waits.append(time.perf_counter() - t)
    await store.aclose()
    print(json.dumps(waits))

anyio.run(main, sys.argv[1], int(sys.argv[2]))
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(waits: list[float], seconds: float, calls: int) -> dict[str, Any]:
    return {
        "calls": calls,
        "calls_per_s": calls / seconds,
        "wait_median_us": statistics.median(waits) * 1e6,
        "wait_p99_us": percentile(waits, 0.99) * 1e6,
    }


async def sequential(store: StateStore, n: int, op: Callable[[StateStore], Awaitable[object]]) -> dict[str, Any]:
    waits: list[float] = []
    started = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        await op(store)
        waits.append(time.perf_counter() - t)
    return summary(waits, time.perf_counter() - started, n)


async def concurrent(store: StateStore, n: int, tasks: int) -> dict[str, Any]:
    waits: list[float] = []

    async def caller(k: int) -> None:
        for _ in range(k):
            t = time.perf_counter()
            await store.admit(LIMITS_1)
            waits.append(time.perf_counter() - t)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(caller, n // tasks)
    return summary(waits, time.perf_counter() - started, len(waits))


def processes(path: Path, n: int, workers: int) -> dict[str, Any]:
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(path), str(n // workers)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(SRC)},
        )
        for _ in range(workers)
    ]
    waits = [w for p in procs for w in json.loads(p.communicate(timeout=600)[0])]
    return summary(waits, time.perf_counter() - started, len(waits))


async def with_sqlite(
    directory: Path, name: str, run: Callable[[SQLiteState], Awaitable[dict[str, Any]]], *, inline: bool = True
) -> Any:
    store = SQLiteState(directory / f"{name}.db", timeout_s=30.0, inline=inline)
    await store.start()
    try:
        return await run(store)
    finally:
        await store.aclose()


async def run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    n = args.n
    results: dict[str, Any] = {}
    scenarios: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
        (
            "admit 1 limit",
            lambda: with_sqlite(directory, "a1", lambda s: sequential(s, n, lambda x: x.admit(LIMITS_1))),
        ),
        (
            "admit 1 limit, thread",
            lambda: with_sqlite(
                directory, "a1t", lambda s: sequential(s, n, lambda x: x.admit(LIMITS_1)), inline=False
            ),
        ),
        (
            "admit 3 limits",
            lambda: with_sqlite(directory, "a3", lambda s: sequential(s, n, lambda x: x.admit(LIMITS_3))),
        ),
        (
            "usage 2 keys",
            lambda: with_sqlite(
                directory, "u2", lambda s: sequential(s, n, lambda x: x.usage([b.bucket for b in LIMITS_3[:2]]))
            ),
        ),
        ("admit C=16", lambda: with_sqlite(directory, "c16", lambda s: concurrent(s, n, 16))),
        ("memory admit", lambda: sequential(MemoryState(), n, lambda x: x.admit(LIMITS_1))),
    ]
    for name, scenario in scenarios:
        runs = [await scenario() for _ in range(args.repeat)]
        results[name] = {**min(runs, key=lambda r: r["wait_median_us"]), "runs": runs}
        print(f"  done: {name}", file=sys.stderr)
    path = directory / "p4.db"
    prepared = SQLiteState(path)
    await prepared.start()
    await prepared.aclose()
    runs = [await anyio.to_thread.run_sync(processes, path, n, 4) for _ in range(args.repeat)]
    results["admit 4 processes"] = {**min(runs, key=lambda r: r["wait_median_us"]), "runs": runs}
    return results


def table(results: dict[str, Any]) -> str:
    lines = [f"{'scenario (best of runs)':<26}{'calls/s':>12}{'wait median':>16}{'wait p99':>14}"]
    for name, r in results.items():
        lines.append(f"{name:<26}{r['calls_per_s']:>12,.0f}{r['wait_median_us']:>13.0f} µs{r['wait_p99_us']:>11.0f} µs")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5_000, help="calls per scenario (default 5000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario; the best is reported")
    parser.add_argument("--dir", type=Path, help="where the state files go (default: a temporary directory)")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/*.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-state-") as tmp:
        directory = args.dir or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        results = anyio.run(run, args, directory)
    print(table(results))
    report = {
        "bench": "state",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": results,
    }
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"bench_state-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
