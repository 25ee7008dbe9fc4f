"""What the state store costs a governed call with the shipped bundle: CPU per call and SQL per call.

    python bench/bench_state_batch.py                    # A/B: this tree vs ``--base`` (default: none)
    python bench/bench_state_batch.py --base /tmp/main/src --pairs 3 --n 3000

One run = one fresh process: the pipeline stages (bench/bench_flow.py's set-up: the embedded engine behind
the decision cache, as ``mcp-guard run`` has it; a recording upstream; no audit store) on a fresh SQLite
state file, the shipped bundle with its per-tool rate limit raised, calls alternating
``tickets__get_ticket`` (labels the flow private) and ``time__get_current_time``. It reports process CPU
seconds per call and, from ``sqlite3``'s trace callback on the store's connection, SQL statements and
transactions (``BEGIN``) per call. With ``--base`` the same run is made with another source tree first on
``sys.path`` (e.g. main's ``src``, unpacked with ``git archive``), alternating, so both share the noise;
``--ablate per-op-state`` runs this tree with the state batch switched off (bench/ablate.py).

``--store-only`` times the state store's share alone, the same way (one process per run): per call the flow
read and either the one batch (``apply([Record, Admit])``, this tree) or the four operations of before
(``usage``, ``flow``, ``record_call``, ``admit`` — the calls a base tree without ``apply`` makes);
``--pg DSN`` runs that on PostgreSQL (wall time per call shows the round trips; SQL counts are SQLite's only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_CHILD = r"""
import asyncio, json, sys, tempfile, time
from dataclasses import replace
from pathlib import Path
sys.path.insert(0, {repo!r})
if {ablate!r}:
    from bench.ablate import apply
    apply(set({ablate!r}.split(",")))
from bench import bench_flow as bf
from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.cache import CachedEngine
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.settings import DecisionCacheSettings
from mcp_guard.state import SQLiteState
from mcp_guard.types import SessionInfo

async def main():
    n = {n}
    with tempfile.TemporaryDirectory() as d:
        bundle = bf._bundle(Path(d), flows=True)
        store = SQLiteState(Path(d) / "s.db", timeout_s=30.0)
        await store.start()
        engine = CachedEngine(EmbeddedEngine(load_bundle(bundle), timeout_ms=10_000), DecisionCacheSettings())
        chain = bf._chain(engine, store)
        seen = []
        async def one(i):
            ctx = bf.CALLS[i % 2]
            out = await chain(replace(ctx, session=SessionInfo(f"s{{i // 200}}", "http")))
            assert not out.denied, out.denial
        for i in range(200):
            await one(i)
        store._db.set_trace_callback(seen.append)
        for i in range(200, 400):
            await one(i)
        store._db.set_trace_callback(None)
        # sqlite3's trace reports a statement again for each trigger it runs (a flow's version bump): once each
        seen[:] = [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]]
        stmts, begins = len(seen) / 200, sum(s.startswith("BEGIN") for s in seen) / 200
        t0 = time.process_time()
        for i in range(400, 400 + n):
            await one(i)
        cpu = (time.process_time() - t0) / n
        await store.aclose()
    print(json.dumps({{"cpu_us": cpu * 1e6, "statements": stmts, "transactions": begins,
                      "sample": seen[:40]}}))

asyncio.run(main())
"""


_STORE_CHILD = r"""
import asyncio, json, sys, tempfile, time
from pathlib import Path
from mcp_guard.state import FlowCall, FlowRef, Limit, SQLiteState
try:
    from mcp_guard.state import Admit, Record
except ImportError:  # a tree from before batches
    Admit = Record = None

async def main():
    n, dsn = {n}, {dsn!r}
    with tempfile.TemporaryDirectory() as d:
        if dsn:
            from mcp_guard.state.postgres import PostgresState
            store = PostgresState(dsn, timeout_s=30.0)
        else:
            store = SQLiteState(Path(d) / "s.db", timeout_s=30.0)
        await store.start()
        run = time.time_ns()
        limits = [(Limit(f"tool_calls|a|{{tool}}", 10**9, 60.0),) for tool in ("tickets|get_ticket", "time|now")]
        seen = []
        async def one(i):
            ref = FlowRef(f"f-{{run}}-{{i // 200}}", "a")
            labels = ("private",) if i % 2 else ()
            call = FlowCall(f"d{{i}}", "tools/call", "tickets", "t", "allow", labels, "2026-01-01T00:00:00Z")
            lim = limits[i % 2]
            if Admit is not None:
                await store.flow(ref.id)
                await store.apply([Record(ref, call), Admit(lim)])
            else:
                await store.usage([lim[0].bucket])
                await store.flow(ref.id)
                await store.record_call(ref, call)
                await store.admit(list(lim))
        for i in range(200):
            await one(i)
        db = getattr(store, "_db", None)
        if db is not None:
            db.set_trace_callback(seen.append)
        for i in range(200, 400):
            await one(i)
        if db is not None:
            db.set_trace_callback(None)
        # sqlite3's trace reports a statement again for each trigger it runs (a flow's version bump): once each
        seen[:] = [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]]
        stmts, begins = len(seen) / 200, sum(s.startswith("BEGIN") for s in seen) / 200
        t0, w0 = time.process_time(), time.perf_counter()
        for i in range(400, 400 + n):
            await one(i)
        cpu, wall = (time.process_time() - t0) / n, (time.perf_counter() - w0) / n
        await store.aclose()
    print(json.dumps({{"cpu_us": cpu * 1e6, "wall_us": wall * 1e6, "statements": stmts, "transactions": begins,
                      "sample": seen[:20]}}))

asyncio.run(main())
"""


def run_once(n: int, src: Path | None, ablate: str, *, store_only: bool = False, pg: str = "") -> dict[str, object]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = f"{src}{os.pathsep}{env.get('PYTHONPATH', '')}"
    code = _STORE_CHILD.format(n=n, dsn=pg) if store_only else _CHILD.format(repo=str(REPO), ablate=ablate, n=n)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(REPO), capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="timed calls per run (default 3000)")
    parser.add_argument("--pairs", type=int, default=3, help="alternating runs per variant (default 3)")
    parser.add_argument("--base", type=Path, help="another source tree (its src) to compare against")
    parser.add_argument("--ablate", default="", help="bench/ablate.py switches for a second variant of this tree")
    parser.add_argument("--show-sql", action="store_true", help="print the statements of the first traced calls")
    parser.add_argument("--store-only", action="store_true", help="time the state store's operations alone")
    parser.add_argument("--pg", default="", help="with --store-only: a PostgreSQL DSN instead of a SQLite file")
    args = parser.parse_args()
    variants: dict[str, tuple[Path | None, str]] = {"this tree": (None, "")}
    if args.base is not None:
        variants["base"] = (args.base, "")
    if args.ablate:
        variants[f"ablate {args.ablate}"] = (None, args.ablate)
    runs: dict[str, list[dict[str, object]]] = {k: [] for k in variants}
    for _ in range(args.pairs):
        for name, (src, ablate) in variants.items():
            runs[name].append(run_once(args.n, src, ablate, store_only=args.store_only, pg=args.pg))
    for name, rs in runs.items():
        cpus = [float(str(r["cpu_us"])) for r in rs]
        walls = [float(str(r.get("wall_us", 0.0))) for r in rs]
        print(
            f"{name:<28} CPU/call {statistics.median(cpus):7.1f} µs (runs {', '.join(f'{c:.0f}' for c in cpus)})"
            f"  SQL/call {rs[0]['statements']:.2f}  transactions/call {rs[0]['transactions']:.2f}"
            + (f"  wall/call {statistics.median(walls):.0f} µs" if any(walls) else "")
        )
        if args.show_sql:
            sample = rs[0]["sample"]
            assert isinstance(sample, list)
            print("\n".join(f"    {s}" for s in sample))
    return 0


if __name__ == "__main__":
    sys.exit(main())
