"""Policy evaluation latency: the embedded engine (regorus, in-process) and a real OPA server over REST.

    python bench/bench_policy.py              # 5000 decisions per engine
    python bench/bench_policy.py --n 50       # a smoke run
    python bench/bench_policy.py --opa-url http://127.0.0.1:8181   # use a running OPA (bundle is pushed)

Both engines evaluate the default bundle (policies/rego) on the same inputs, in two workloads:

* ``typical``: what an agent session mostly sends — allowed calls with ids and short strings
  (tickets, a SELECT, an allowlisted URL, a path under the root), listing checks and a few denies;
* ``corpus``: all 100-odd documents of the differential corpus (tests/policy/policy_corpus.py),
  heavy on argument checks (paths, URLs, SQL), malformed inputs and denies.

Inputs are cycled in order. A latency is one ``await engine.evaluate_document(doc)`` as the proxy
sees it: for the embedded engine JSON encoding, evaluation and decision validation; for OPA the HTTP
round trip over a kept-alive connection with ``strict-builtin-errors=true``. Calls are sequential
(one in flight), after a warm-up. For the embedded engine the CPU time of the evaluating thread is
reported too: on a busy machine wall time includes waiting for a core, CPU time does not. Without an
opa binary (scripts/install-opa.sh) the OPA rows are reported as skipped. Prints a table and writes
the numbers as JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from mcp_guard.policy import RegoEngine, open_engine
from mcp_guard.settings import parse_settings

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
BUNDLE = REPO / "policies" / "rego"
TARGETS_US = {"embedded": 200.0, "opa": 1500.0}  # median targets (issue 3)


TYPICAL = [
    "alice list_tickets",
    "alice get_ticket",
    "alice create_ticket",
    "alice close_ticket",
    "alice ticket resource",
    "alice triage prompt",
    "bob get_ticket",
    "bob sql 0",
    "bob sql 3",
    "bob list_tables",
    "bob describe_table",
    "bob read path 0",
    "dev git status",
    "alice fetch 0",
    "dev echo",
    "anyone time",
    "list alice create_ticket",
    "list alice delete_ticket",
    "list bob query",
    "list alice query",
    "list resources",
    "alice delete_ticket",
    "no roles",
]


def load_workloads() -> dict[str, list[dict[str, Any]]]:
    sys.path.insert(0, str(REPO / "tests" / "policy"))
    try:
        from policy_corpus import corpus
    finally:
        sys.path.pop(0)
    cases = dict(corpus())
    return {"typical": [cases[name] for name in TYPICAL], "corpus": list(cases.values())}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def summary_us(ns: Sequence[int]) -> dict[str, float]:
    us = [v / 1000 for v in ns]
    return {
        "n": len(us),
        "median_us": percentile(us, 0.5),
        "p90_us": percentile(us, 0.9),
        "p99_us": percentile(us, 0.99),
        "max_us": max(us) if us else float("nan"),
        "mean_us": sum(us) / len(us) if us else float("nan"),
    }


def find_opa() -> str | None:
    cache = Path(os.environ.get("MCP_GUARD_CACHE", Path.home() / ".cache" / "mcp-guard"))
    for c in (os.environ.get("MCP_GUARD_OPA"), shutil.which("opa"), str(cache / "bin" / "opa")):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return None


def start_opa(binary: str, within: float = 30.0) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [binary, "run", "--server", "--addr", f"127.0.0.1:{port}", "--log-level", "error", "--disable-telemetry"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"opa exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    stop(proc)
    raise RuntimeError("opa did not become healthy")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def measure(
    engine: RegoEngine, docs: list[dict[str, Any]], n: int, warmup: int
) -> tuple[list[int], list[int], int]:
    for i in range(warmup):
        await engine.evaluate_document(docs[i % len(docs)])
    wall: list[int] = []
    cpu: list[int] = []
    allowed = 0
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    for i in range(n):
        doc = docs[i % len(docs)]
        start, start_cpu = clock(), cpu_clock()
        decision = await engine.evaluate_document(doc)
        wall.append(clock() - start)
        cpu.append(cpu_clock() - start_cpu)
        if decision.code is not None:
            raise RuntimeError(f"engine failed on input {i % len(docs)}: {decision.reasons}")
        allowed += decision.allow
    return wall, cpu, allowed


async def bench_engine(
    engine_name: str, workloads: dict[str, list[dict[str, Any]]], n: int, warmup: int, opa_url: str | None
) -> list[dict[str, Any]]:
    # the engine alone: the decision cache (bench_decision_cache.py) would answer the cycled inputs from memory
    policy: dict[str, Any] = {
        "engine": engine_name,
        "bundle": str(BUNDLE),
        "hot_reload": False,
        "decision_cache": {"enabled": False},
    }
    if engine_name == "opa":
        policy.update(opa_url=opa_url, push_bundle=True, timeout_ms=5000)
    settings = parse_settings({"policy": policy})
    rows = []
    async with open_engine(settings, watch=False) as engine:
        for workload, docs in workloads.items():
            wall, cpu, allowed = await measure(engine, docs, n, warmup)
            row = {
                "engine": engine_name,
                "workload": workload,
                **summary_us(wall),
                "allowed": allowed,
                "revision": engine.revision,
                "target_median_us": TARGETS_US[engine_name],
            }
            if engine_name == "embedded":
                row["cpu"] = summary_us(cpu)
            rows.append(row)
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'engine':<9} {'workload':<8} {'n':>6} {'median µs':>10} {'p90 µs':>8} {'p99 µs':>8} {'max µs':>8} "
        f"{'cpu median µs':>14} {'target':>12}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"{r['engine']:<9} skipped: {r['skipped']}")
            continue
        verdict = "ok" if r["median_us"] <= r["target_median_us"] else "MISSED"
        target = f"≤{r['target_median_us']:.0f} {verdict}"
        cpu = f"{r['cpu']['median_us']:.1f}" if "cpu" in r else "-"
        lines.append(
            f"{r['engine']:<9} {r['workload']:<8} {r['n']:>6} {r['median_us']:>10.1f} {r['p90_us']:>8.1f} "
            f"{r['p99_us']:>8.1f} {r['max_us']:>8.1f} {cpu:>14} {target:>12}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=5000, help="decisions measured per engine (default 5000)")
    ap.add_argument("--warmup", type=int, default=None, help="unmeasured decisions first (default min(n, 500))")
    ap.add_argument("--engines", default="embedded,opa", help="comma-separated: embedded,opa")
    ap.add_argument("--opa-url", help="use this OPA server instead of starting one (the bundle is pushed to it)")
    ap.add_argument("--no-save", action="store_true", help="do not write bench/results/policy-*.json")
    args = ap.parse_args(argv)
    warmup = min(args.n, 500) if args.warmup is None else args.warmup
    workloads = load_workloads()
    rows: list[dict[str, Any]] = []
    for name in [e.strip() for e in args.engines.split(",") if e.strip()]:
        if name == "embedded":
            rows += anyio.run(bench_engine, "embedded", workloads, args.n, warmup, None)
        elif name == "opa":
            if args.opa_url:
                rows += anyio.run(bench_engine, "opa", workloads, args.n, warmup, args.opa_url)
                continue
            binary = find_opa()
            if binary is None:
                rows.append({"engine": "opa", "skipped": "no opa binary (run scripts/install-opa.sh)"})
                continue
            proc, url = start_opa(binary)
            try:
                rows += anyio.run(bench_engine, "opa", workloads, args.n, warmup, url)
            finally:
                stop(proc)
        else:
            ap.error(f"unknown engine {name!r}")
    print(render(rows))
    report = {
        "bench": "policy",
        "workload_sizes": {k: len(v) for k, v in workloads.items()},
        "warmup": warmup,
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg": list(os.getloadavg()),
        },
        "results": rows,
    }
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"policy-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
