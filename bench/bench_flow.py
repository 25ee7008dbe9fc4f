"""Flow benchmark: what session information flow adds to a call (mcp_guard.pipeline.flow, mcp_guard.state).

    python bench/bench_flow.py            # the full run (about a minute)
    python bench/bench_flow.py --n 300    # a smoke run

With a bundle that uses flows, a call costs one flow read before the policy (``StateStore.flow``) and one
write (``record_call``: the allowed call, or the deny); the policy also evaluates the flow rules on a larger
input. A bundle that never mentions flows pays nothing. Scenarios:

* store alone, SQLite (a fresh file; the flow holds a full 32-call history and two labels) and the
  in-memory floor: ``flow read``, ``record_call``; ``uncached`` reads the file every time (the store's
  flow cache off), what a flow read costs after another process wrote the file;
* the pipeline stages in front of a recording upstream (no network, no audit store: a RecordingSink),
  with the embedded engine, calls alternating ``tickets__get_ticket`` (labels the flow private) and
  ``time__get_current_time`` (no label), a new session every 200 calls, as principal ``local-agent``:
  ``flows`` is the shipped bundle (flows.rego, the trifecta rule, labels), ``no flows`` the same with
  flows.rego and its data removed (mcp-guard then reads no flow), both with the per-tool rate limit
  raised; each on the SQLite state store (rate-limit counters and flows in one file) and on the
  in-memory one (what is left is the policy's share: flows.rego and the larger input).

Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pipeline_harness import idle_upstreams, tools_call
from mcp_guard.pipeline.build import pipeline_stages
from mcp_guard.pipeline.chain import build_chain
from mcp_guard.pipeline.context import CallNext
from mcp_guard.pipeline.flow import FlowUse
from mcp_guard.pipeline.secret_source import NO_SECRETS
from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.state import FlowCall, FlowRef, MemoryState, SQLiteState, StateStore
from mcp_guard.state.sqlite import FLOW_CACHE_SIZE
from mcp_guard.testing import RecordingSink, RecordingUpstream
from mcp_guard.types import SessionInfo

RESULTS = Path(__file__).resolve().parent / "results"
BUNDLE = Path(__file__).resolve().parents[1] / "policies" / "rego"
REF = FlowRef("f-bench", "local-agent")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(waits: list[float], seconds: float) -> dict[str, Any]:
    return {
        "calls": len(waits),
        "calls_per_s": len(waits) / seconds,
        "wait_median_us": statistics.median(waits) * 1e6,
        "wait_p99_us": percentile(waits, 0.99) * 1e6,
    }


async def timed(n: int, op: Callable[[int], Awaitable[object]]) -> dict[str, Any]:
    waits: list[float] = []
    started = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        await op(i)
        waits.append(time.perf_counter() - t)
    return summary(waits, time.perf_counter() - started)


def _call(i: int, labels: tuple[str, ...] = ()) -> FlowCall:
    return FlowCall(f"d{i}", "tools/call", "tickets", "get_ticket", "allow", labels, "2026-01-01T00:00:00Z")


async def _filled(store: StateStore) -> StateStore:
    await store.record_call(REF, _call(-1, ("private", "untrusted")))
    for i in range(40):
        await store.record_call(REF, _call(-2 - i))
    return store


# ---------------------------------------------------------------------- the pipeline
def _bundle(tmp: Path, *, flows: bool) -> Path:
    """The shipped bundle with its per-tool rate limit raised (a long run is not cut off; calls still count),
    and without flows: flows.rego, its tests and its data removed, decision.rego not using it."""
    root = tmp / ("flows" if flows else "no-flows")
    shutil.copytree(BUNDLE, root)
    data = json.loads((root / "data.json").read_text())
    data["mcp_guard_config"]["limits"]["rate"][0]["limit"] = 10**9
    for test in root.rglob("*_test.rego"):
        test.unlink()
    if not flows:
        (root / "mcp_guard" / "flows.rego").unlink()
        del data["mcp_guard_config"]["flows"]
        decision = root / "mcp_guard" / "decision.rego"
        text = decision.read_text().replace(
            'object.union(object.union({"secrets": sort(granted_secrets)}, rate_limit_obligation), labels_obligation)',
            'object.union({"secrets": sort(granted_secrets)}, rate_limit_obligation)',
        )
        decision.write_text(re.sub(r"^#   labels:.*\n", "", text, flags=re.M))
    (root / "data.json").write_text(json.dumps(data))
    return root


CALLS = (tools_call("tickets", "get_ticket", {"id": 7}), tools_call("time", "get_current_time", {"timezone": "UTC"}))


def _chain(engine: EmbeddedEngine, state: StateStore) -> CallNext:
    stages = pipeline_stages(
        engine=engine, sink=RecordingSink(), registry=idle_upstreams("tickets", "time"), secrets=NO_SECRETS, state=state
    )
    return build_chain(stages, RecordingUpstream())


async def pipeline_run(bundle: Path, state: StateStore, n: int) -> dict[str, Any]:
    engine = EmbeddedEngine(load_bundle(bundle), timeout_ms=10_000)
    chain = _chain(engine, state)
    sessions = [f"s{k}" for k in range(max(1, n // 200))]  # a fresh flow every 200 calls: histories stay real

    async def one(i: int) -> None:
        ctx = CALLS[i % 2]
        outcome = await chain(replace(ctx, session=SessionInfo(sessions[i // 200 % len(sessions)], "http")))
        assert not outcome.denied, outcome.denial

    for i in range(20):  # warm up
        await one(i)
    return {**await timed(n, one), "tracks_flows": FlowUse(engine)()}


async def with_sqlite(directory: Path, name: str, flow_cache: int = FLOW_CACHE_SIZE) -> SQLiteState:
    store = SQLiteState(directory / f"{name}.db", timeout_s=30.0, flow_cache=flow_cache)
    await store.start()
    return store


async def run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    n = args.n
    no_flows, with_flows = _bundle(directory, flows=False), _bundle(directory, flows=True)
    results: dict[str, Any] = {}

    async def store_read(kind: str) -> dict[str, Any]:
        cache = 0 if kind == "sqlite-uncached" else FLOW_CACHE_SIZE
        fresh = MemoryState() if kind == "memory" else await with_sqlite(directory, f"r{time.time_ns()}", cache)
        store = await _filled(fresh)
        try:
            return await timed(n, lambda _i: store.flow(REF.id))
        finally:
            await store.aclose()

    async def store_record(kind: str) -> dict[str, Any]:
        store = await _filled(MemoryState() if kind == "memory" else await with_sqlite(directory, f"w{time.time_ns()}"))
        try:
            return await timed(n, lambda i: store.record_call(REF, _call(i, ("private",) if i % 2 else ())))
        finally:
            await store.aclose()

    async def pipeline_sqlite(bundle: Path) -> dict[str, Any]:
        store = await with_sqlite(directory, f"p{time.time_ns()}")
        try:
            return await pipeline_run(bundle, store, n)
        finally:
            await store.aclose()

    scenarios: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
        ("flow read (SQLite)", lambda: store_read("sqlite")),
        ("flow read (SQLite, uncached)", lambda: store_read("sqlite-uncached")),
        ("record_call (SQLite)", lambda: store_record("sqlite")),
        ("flow read (memory)", lambda: store_read("memory")),
        ("record_call (memory)", lambda: store_record("memory")),
        ("pipeline, no flows, SQLite", lambda: pipeline_sqlite(no_flows)),
        ("pipeline, flows, SQLite", lambda: pipeline_sqlite(with_flows)),
        ("pipeline, no flows, memory", lambda: pipeline_run(no_flows, MemoryState(), n)),
        ("pipeline, flows, memory", lambda: pipeline_run(with_flows, MemoryState(), n)),
    ]
    for name, scenario in scenarios:
        runs = [await scenario() for _ in range(args.repeat)]
        results[name] = {**min(runs, key=lambda r: r["wait_median_us"]), "runs": runs}
        print(f"  done: {name}", file=sys.stderr)
    return results


def table(results: dict[str, Any]) -> str:
    lines = [f"{'scenario (best of runs)':<34}{'calls/s':>12}{'wait median':>16}{'wait p99':>14}"]
    for name, r in results.items():
        lines.append(f"{name:<34}{r['calls_per_s']:>12,.0f}{r['wait_median_us']:>13.0f} µs{r['wait_p99_us']:>11.0f} µs")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2_000, help="calls per scenario (default 2000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario; the best is reported")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/*.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-flow-") as tmp:
        results = anyio.run(run, args, Path(tmp))
    print(table(results))
    report = {
        "bench": "flow",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "args": vars(args),
        "results": results,
    }
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"bench_flow-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
