"""The decision cache (policy/cache.py) against the bare embedded engine, side by side in one process.

    python bench/bench_decision_cache.py            # 3 rounds of 2000 decisions per workload and engine
    python bench/bench_decision_cache.py --n 50 --rounds 1 --no-save   # a smoke run

Both engines hold the shipped default bundle (policies/rego). A decision is one ``evaluate_sync(doc)`` — the
synchronous part of ``await engine.evaluate(...)``: for the bare engine JSON encoding, regorus and decision
validation; for the cache the key (the read fields as JSON) and, on a miss, the same as the bare engine.
Workloads, each evaluated by both engines in alternating blocks of 100 (so machine load hits both alike):

* ``repeat``: the bench call (local-agent, ``everything__echo``, same message) with what changes between real
  calls changing — session, time, usage counter, flow id and history — all hits after the first;
* ``distinct``: the same call with a new message every time — every one a miss (what the key costs);
* ``corpus``: tests/policy/decision_corpus.py (generated principals, tools, paths, URLs, SQL, flows; about a
  third of them repeat a read set).

Reports the median and p99 wall time and the median thread CPU time per decision, and the hit rate.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.cache import CachedEngine
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.settings import DecisionCacheSettings
from mcp_guard.types import Decision
from mcp_guard.urlhost import url_table

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
BLOCK = 100


def _call(i: int, message: str) -> dict[str, Any]:
    arguments = {"message": message}
    return {
        "action": "tools/call",
        "principal": {"id": "local-agent", "roles": ["developer"], "attributes": {}},
        "session": {"id": f"s{i % 7}", "transport": "stdio"},
        "server": "everything",
        "tool": "echo",
        "arguments": arguments,
        "tool_info": {"annotations": {}, "definition_sha256": "d" * 64, "pinned": True, "suspicious": []},
        "context": {
            "time": f"2026-12-01T03:00:{i % 60:02d}.{i:06d}Z",
            "secrets_seen": [],
            "usage": {"tool_calls|local-agent|everything|echo": i % 300},
            "urls": url_table(arguments),
            "flow": {"id": f"f{i % 7}", "labels": [], "labeled_by": {}, "history": [{"decision_id": f"d{i}"}]},
        },
    }


def workloads(n: int) -> dict[str, list[dict[str, Any]]]:
    sys.path.insert(0, str(REPO / "tests" / "policy"))
    from decision_corpus import generated_inputs

    return {
        "repeat": [_call(i, "hello") for i in range(n)],
        "distinct": [_call(i, f"hello {i}") for i in range(n)],
        "corpus": generated_inputs(n),
    }


def _time(evaluate: Callable[[dict[str, Any]], Decision], docs: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    wall, cpu = [], []
    for doc in docs:
        w, c = time.perf_counter_ns(), time.thread_time_ns()
        evaluate(doc)
        cpu.append(time.thread_time_ns() - c)
        wall.append(time.perf_counter_ns() - w)
    return wall, cpu


def run(n: int, rounds: int) -> list[dict[str, Any]]:
    bundle = load_bundle(REPO / "policies" / "rego")
    rows = []
    for name, docs in workloads(n).items():
        samples: dict[str, tuple[list[int], list[int]]] = {"engine alone": ([], []), "decision cache": ([], [])}
        hits = misses = 0
        for _ in range(rounds):
            bare = EmbeddedEngine(bundle, timeout_ms=60_000)
            cached = CachedEngine(EmbeddedEngine(bundle, timeout_ms=60_000), DecisionCacheSettings())
            engines = {"engine alone": bare.evaluate_sync, "decision cache": cached.evaluate_sync}
            _time(bare.evaluate_sync, docs[:20])  # warm-up (the cache starts empty each round)
            for start in range(0, len(docs), BLOCK):
                block = [copy.deepcopy(d) for d in docs[start : start + BLOCK]]
                for label, evaluate in engines.items():
                    wall, cpu = _time(evaluate, block)
                    samples[label][0].extend(wall)
                    samples[label][1].extend(cpu)
            hits, misses = hits + cached.stats.hits, misses + cached.stats.misses + cached.stats.uncacheable
        for label, (wall, cpu) in samples.items():
            wall.sort()
            rows.append(
                {
                    "workload": name,
                    "engine": label,
                    "n": len(wall),
                    "median_us": statistics.median(wall) / 1000,
                    "p99_us": wall[int(len(wall) * 0.99) - 1] / 1000,
                    "cpu_median_us": statistics.median(cpu) / 1000,
                    "hit_rate": hits / (hits + misses) if label == "decision cache" else None,
                }
            )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| workload | engine | decisions | median µs | p99 µs | CPU median µs | hit rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rate = f"{r['hit_rate']:.0%}" if r["hit_rate"] is not None else ""
        lines.append(
            f"| {r['workload']} | {r['engine']} | {r['n']} | {r['median_us']:.1f} | {r['p99_us']:.1f} | "
            f"{r['cpu_median_us']:.1f} | {rate} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2_000, help="decisions per workload and round (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each with a fresh cache (default 3)")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/*.json")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # no per-analysis info lines
    rows = run(args.n, args.rounds)
    print(table(rows))
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"bench_decision_cache-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
        report = {
            "bench": "decision_cache",
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg": list(os.getloadavg()),
            "results": rows,
        }
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
