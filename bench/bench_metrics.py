"""What metrics cost: the Observe stage per call, the audit-wait timer, and a scrape.

    python bench/bench_metrics.py              # the full run (about half a minute)
    python bench/bench_metrics.py --n 20000    # a smoke run

In-process, one event loop, no I/O: the figures are the metrics code alone, which an end-to-end
run (``bench/bench_breakdown.py --variants ";no-metrics"``) cannot resolve under its noise. Rows:

* ``Observe stage``: a chain ``[Observe] → terminal`` against ``[] → terminal`` (the terminal answers at
  once); the difference is what the stage adds to every call — one more await, two clock reads, the
  dict and histogram updates.
* ``an empty stage``: ``[pass-through] → terminal`` against ``[] → terminal``: what any stage costs, so
  the Observe row minus this one is the metrics work itself.
* ``full pipeline``: every real stage (in-memory sink and state, a Python policy function) with and
  without Observe and the audit timer: the share of metrics in the pipeline's own cost.
* ``TimedSink.record``: a sink whose record() returns at once, wrapped and bare.
* ``CallMetrics.observe``: the bookkeeping alone.
* ``prometheus_client`` (when importable): ``Counter.labels(...).inc()`` plus ``Histogram.labels(...).observe()``,
  the same bookkeeping done by the library — the reason the counters are hand-written.
* ``scrape``: rendering /metrics with S upstreams x T tools x 3 outcomes populated (``--servers``, ``--tools``).

Blocks of the paired variants are interleaved and the median block is reported. Prints a table and
writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pipeline_harness import NullSink, without_metrics
from mcp_guard.frontend.ops import OpsSources, metrics_text
from mcp_guard.pipeline.build import pipeline_stages
from mcp_guard.pipeline.chain import build_chain
from mcp_guard.pipeline.context import CallContext, CallNext, Interceptor, Outcome
from mcp_guard.pipeline.observe import CallMetrics, Observe, TimedSink
from mcp_guard.pipeline.secret_source import NO_SECRETS
from mcp_guard.settings import parse_settings
from mcp_guard.state import MemoryState
from mcp_guard.testing import RecordingSink, allow_all, idle_registry
from mcp_guard.types import AuditEvent, Decision, EventKind, Principal, ReasonCode, SessionInfo

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = parse_settings({"upstreams": {"rec": {"command": "never-started"}}}, source="<bench>")
RESULT = Outcome(result={"content": [{"type": "text", "text": "ok"}], "isError": False}, decision=Decision(allow=True))


def _ctx() -> CallContext:
    args = {"text": "hi"}
    return CallContext(
        action="tools/call",
        principal=Principal("agent", ("developer",)),
        session=SessionInfo("s1", "memory"),
        server="rec",
        target="echo",
        exposed="rec__echo",
        arguments=args,
        request=types.CallToolRequest(params=types.CallToolRequestParams(name="echo", arguments=args)),
    )


async def _terminal(_ctx: CallContext) -> Outcome:
    return RESULT


async def _passthrough(ctx: CallContext, call_next: CallNext) -> Outcome:
    """A stage that does nothing: what any stage costs (one more await in the chain)."""
    return await call_next(ctx)


async def _paired(
    variants: dict[str, Callable[[], Awaitable[object]]], n: int, blocks: int
) -> dict[str, dict[str, float]]:
    """ns per call of each variant: ``blocks`` interleaved blocks of n/blocks calls; median and best block."""
    per: dict[str, list[float]] = {k: [] for k in variants}
    size = max(1, n // blocks)
    for _ in range(blocks):
        for name, fn in variants.items():
            started = time.perf_counter()
            for _ in range(size):
                await fn()
            per[name].append((time.perf_counter() - started) / size * 1e9)
    return {k: {"median_ns": statistics.median(v), "best_ns": min(v)} for k, v in per.items()}


def _pipeline(observe: bool) -> Any:
    metrics = CallMetrics()
    stages = pipeline_stages(
        engine=allow_all(),
        sink=NullSink(),
        registry=idle_registry(SETTINGS),
        secrets=NO_SECRETS,
        state=MemoryState(),
        metrics=metrics,
    )
    if not observe:  # the no-metrics ablation: no Observe stage, the audit stages write to the bare sink
        stages = without_metrics(stages)
    return build_chain(stages, _terminal)


def _prometheus_client(n: int) -> dict[str, float] | str:
    try:
        import prometheus_client as pc
    except ImportError:
        return "not installed"
    registry = pc.CollectorRegistry()
    calls = pc.Counter("calls", "c", ("server", "tool", "decision", "reason"), registry=registry)
    duration = pc.Histogram("dur", "d", ("server", "action", "decision"), registry=registry)
    started = time.perf_counter()
    for _ in range(n):
        calls.labels("rec", "echo", "allow", "").inc()
        duration.labels("rec", "tools/call", "allow").observe(0.001)
    from importlib.metadata import version

    return {"median_ns": (time.perf_counter() - started) / n * 1e9, "version": version("prometheus_client")}  # type: ignore[dict-item]


def _scrape(servers: int, tools: int, repeat: int) -> dict[str, Any]:
    m = CallMetrics(max_tool_labels=tools)
    ctx = _ctx()
    deny = Outcome(decision=Decision(allow=False, reasons=("no",)))
    limited = Outcome(decision=Decision.deny(ReasonCode.RATE_LIMITED, "retry after 1 s"))
    from dataclasses import replace

    for s in range(servers):
        for t in range(tools):
            c = replace(ctx, server=f"server{s}", target=f"tool_{t}")
            for outcome in (RESULT, deny, limited):
                m.observe(c, outcome, 0.003)
    src = OpsSources(
        calls=m,
        engine=allow_all(),
        engine_name="embedded",
        audit=RecordingSink(),
        audit_backend="sqlite",
        upstreams=lambda: [],
        session_transports=lambda: [],
        scrub=lambda t: t,
    )
    times = []
    page = ""
    for _ in range(repeat):
        started = time.perf_counter()
        page = metrics_text(src)
        times.append(time.perf_counter() - started)
    return {
        "servers": servers,
        "tools_per_server": tools,
        "series_calls_total": len(m.calls),
        "lines": page.count("\n"),
        "bytes": len(page.encode()),
        "render_ms_median": statistics.median(times) * 1e3,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    n, blocks = args.n, args.blocks
    ctx = _ctx()
    results: dict[str, Any] = {}

    observed = build_chain([Observe(CallMetrics())], _terminal)
    passing = build_chain([_passthrough], _terminal)
    bare = build_chain(list[Interceptor](), _terminal)
    results["Observe stage"] = await _paired({"with": lambda: observed(ctx), "without": lambda: bare(ctx)}, n, blocks)
    results["an empty stage"] = await _paired({"with": lambda: passing(ctx), "without": lambda: bare(ctx)}, n, blocks)

    full, stripped = _pipeline(True), _pipeline(False)
    results["full pipeline"] = await _paired(
        {"with": lambda: full(ctx), "without": lambda: stripped(ctx)}, n // 5, blocks
    )

    sink = NullSink()
    timed = TimedSink(sink, CallMetrics().audit_wait)
    event = AuditEvent(kind=EventKind.CONFIG_LOAD)
    results["TimedSink.record"] = await _paired(
        {"with": lambda: timed.record(event), "without": lambda: sink.record(event)}, n, blocks
    )

    m = CallMetrics()
    started = time.perf_counter()
    for _ in range(n):
        m.observe(ctx, RESULT, 0.001)
    results["CallMetrics.observe"] = {"median_ns": (time.perf_counter() - started) / n * 1e9}
    results["prometheus_client"] = _prometheus_client(n)
    results["scrape"] = _scrape(args.servers, args.tools, args.scrapes)
    return results


def _added(row: dict[str, Any]) -> str:
    w, wo = row["with"]["median_ns"], row["without"]["median_ns"]
    return f"{w:>10.0f} ns {wo:>10.0f} ns {w - wo:>+10.0f} ns"


def table(results: dict[str, Any]) -> str:
    lines = [f"{'per call (median block)':<28}{'with':>13}{'without':>14}{'added':>14}"]
    for name in ("Observe stage", "an empty stage", "full pipeline", "TimedSink.record"):
        lines.append(f"{name:<28}{_added(results[name])}")
    lines.append(f"{'CallMetrics.observe':<28}{results['CallMetrics.observe']['median_ns']:>10.0f} ns")
    pc = results["prometheus_client"]
    pc_text = pc if isinstance(pc, str) else f"{pc['median_ns']:>10.0f} ns (prometheus_client {pc['version']})"
    lines.append(f"{'prometheus_client same work':<28}{pc_text}")
    s = results["scrape"]
    lines.append(
        f"scrape: {s['servers']} upstreams x {s['tools_per_server']} tools x 3 outcomes = "
        f"{s['series_calls_total']} call series, {s['lines']} lines, {s['bytes'] / 1024:.0f} KiB, "
        f"rendered in {s['render_ms_median']:.1f} ms (median)"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300_000, help="calls per micro-bench (default 300000)")
    parser.add_argument("--blocks", type=int, default=15, help="interleaved blocks per pair (default 15)")
    parser.add_argument("--servers", type=int, default=10, help="upstreams in the scrape bench")
    parser.add_argument("--tools", type=int, default=200, help="tools per upstream in the scrape bench")
    parser.add_argument("--scrapes", type=int, default=20, help="scrapes rendered")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/*.json")
    args = parser.parse_args()
    results = anyio.run(run, args)
    print(table(results))
    report = {
        "bench": "metrics",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "args": vars(args),
        "results": results,
    }
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"bench_metrics-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
