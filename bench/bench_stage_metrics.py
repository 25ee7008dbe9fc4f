"""What the optional observability costs per call: per-stage timing and trace spans, against neither.

    python bench/bench_stage_metrics.py              # the full run
    python bench/bench_stage_metrics.py --n 5000     # a smoke run

In-process, one event loop, no I/O: every real stage (in-memory sink and state, allow-all policy) ending
in a terminal that answers at once, so the figures are the pipeline's own cost. Variants, interleaved in
blocks (the median block is reported):

* ``off``: the default pipeline (no stage timers, no tracing stage: the tracing module is not imported).
* ``stage_metrics``: ``[telemetry] stage_metrics = true`` — every stage but Observe wrapped in a timer.
* ``traces``: a tracer from the OpenTelemetry SDK exporting to a processor that drops spans (the cost of
  making the spans, not of shipping them; the batch exporter ships them off the call path).

Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_metrics import RESULTS, SETTINGS, _ctx, _paired, _terminal
from bench.pipeline_harness import NullSink, traces_dropped
from mcp_guard.pipeline.build import build_pipeline
from mcp_guard.pipeline.observe import CallMetrics
from mcp_guard.pipeline.secret_source import NO_SECRETS
from mcp_guard.state import MemoryState
from mcp_guard.testing import allow_all, idle_registry


def _chain(*, stage_metrics: bool = False, tracer: Any = None) -> Any:
    chain = build_pipeline(
        engine=allow_all(),
        sink=NullSink(),
        registry=idle_registry(SETTINGS),
        secrets=NO_SECRETS,
        state=MemoryState(),
        metrics=CallMetrics(),
        stage_metrics=stage_metrics,
        tracer=tracer,
    )
    return chain


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import mcp_guard.pipeline.forward as forward

    ctx = _ctx()

    async def answer(self: Any, c: Any) -> Any:
        return await _terminal(c)

    forward.Forward.__call__ = answer  # type: ignore[method-assign,assignment]  # no upstream: the pipeline's own cost
    chains = {
        "off": _chain(),
        "stage_metrics": _chain(stage_metrics=True),
        "traces": _chain(tracer=traces_dropped()),
    }
    variants: dict[str, Callable[[], Awaitable[object]]] = {name: partial(c, ctx) for name, c in chains.items()}
    return await _paired(variants, args.n, args.blocks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=60_000, help="calls per variant")
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--no-save", action="store_true", help="print only; write no JSON")
    args = parser.parse_args()
    results = anyio.run(run, args)
    off = results["off"]["median_ns"]
    print(f"{'variant':<16}{'µs/call':>10}{'added µs':>10}")
    for name, r in results.items():
        print(f"{name:<16}{r['median_ns'] / 1e3:>10.1f}{(r['median_ns'] - off) / 1e3:>10.1f}")
    if args.no_save:
        return
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"stage_metrics-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(
        json.dumps({"machine": platform.platform(), "n": args.n, "results": results}, indent=2, sort_keys=True)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
