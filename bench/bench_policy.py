"""Policy evaluation latency: the embedded engine (regorus, in-process) and a real OPA server over REST.

    python bench/bench_policy.py              # 5000 decisions per engine
    python bench/bench_policy.py --n 50       # a smoke run
    python bench/bench_policy.py --opa-url http://127.0.0.1:8181   # use a running OPA (bundle is pushed)

Both engines evaluate the default bundle (policies/rego) on the same inputs: the 100-odd documents of
the differential corpus (tests/policy/policy_corpus.py: allowed and denied calls, listings, argument
checks, malformed inputs), cycled in order. A latency is one ``await engine.evaluate_document(doc)``
as the proxy sees it: for the embedded engine JSON encoding, evaluation and decision validation; for
OPA the HTTP round trip over a kept-alive connection with ``strict-builtin-errors=true`` too. Calls
are sequential (one in flight), after a warm-up. Without an opa binary (scripts/install-opa.sh) the OPA
row is reported as skipped. Prints a table and writes the numbers as JSON to bench/results/.
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


def load_corpus() -> list[dict[str, Any]]:
    sys.path.insert(0, str(REPO / "tests" / "policy"))
    try:
        from policy_corpus import corpus
    finally:
        sys.path.pop(0)
    return [doc for _, doc in corpus()]


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
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
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


async def measure(engine: RegoEngine, docs: list[dict[str, Any]], n: int, warmup: int) -> tuple[list[int], int]:
    for i in range(warmup):
        await engine.evaluate_document(docs[i % len(docs)])
    samples: list[int] = []
    allowed = 0
    clock = time.perf_counter_ns
    for i in range(n):
        doc = docs[i % len(docs)]
        start = clock()
        decision = await engine.evaluate_document(doc)
        samples.append(clock() - start)
        if decision.code is not None:
            raise RuntimeError(f"engine failed on corpus input {i % len(docs)}: {decision.reasons}")
        allowed += decision.allow
    return samples, allowed


async def bench_engine(engine_name: str, docs: list[dict[str, Any]], n: int, warmup: int,
                       opa_url: str | None) -> dict[str, Any]:
    policy: dict[str, Any] = {"engine": engine_name, "bundle": str(BUNDLE), "hot_reload": False}
    if engine_name == "opa":
        policy.update(opa_url=opa_url, push_bundle=True, timeout_ms=5000)
    settings = parse_settings({"policy": policy})
    async with open_engine(settings, watch=False) as engine:
        samples, allowed = await measure(engine, docs, n, warmup)
        revision = engine.revision
    return {"engine": engine_name, **summary_us(samples), "allowed": allowed, "revision": revision,
            "target_median_us": TARGETS_US[engine_name]}


def render(rows: list[dict[str, Any]]) -> str:
    head = f"{'engine':<10} {'n':>7} {'median µs':>10} {'p90 µs':>9} {'p99 µs':>9} {'max µs':>9} {'target':>14}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"{r['engine']:<10} skipped: {r['skipped']}")
            continue
        verdict = "ok" if r["median_us"] <= r["target_median_us"] else "MISSED"
        target = f"≤{r['target_median_us']:.0f} {verdict}"
        lines.append(
            f"{r['engine']:<10} {r['n']:>7} {r['median_us']:>10.1f} {r['p90_us']:>9.1f} {r['p99_us']:>9.1f} "
            f"{r['max_us']:>9.1f} {target:>14}"
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
    docs = load_corpus()
    rows: list[dict[str, Any]] = []
    for name in [e.strip() for e in args.engines.split(",") if e.strip()]:
        if name == "embedded":
            rows.append(anyio.run(bench_engine, "embedded", docs, args.n, warmup, None))
        elif name == "opa":
            if args.opa_url:
                rows.append(anyio.run(bench_engine, "opa", docs, args.n, warmup, args.opa_url))
                continue
            binary = find_opa()
            if binary is None:
                rows.append({"engine": "opa", "skipped": "no opa binary (run scripts/install-opa.sh)"})
                continue
            proc, url = start_opa(binary)
            try:
                rows.append(anyio.run(bench_engine, "opa", docs, args.n, warmup, url))
            finally:
                stop(proc)
        else:
            ap.error(f"unknown engine {name!r}")
    print(render(rows))
    report = {
        "bench": "policy",
        "corpus_size": len(docs),
        "warmup": warmup,
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
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
