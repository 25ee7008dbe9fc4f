"""Result policy benchmark: what asking the policy about a ``tools/call`` result adds to a call
(mcp_guard.pipeline.result_policy).

    python bench/bench_result.py            # the full run (about half a minute)
    python bench/bench_result.py --n 300    # a smoke run

The pipeline stages in front of a recording upstream (no network, no audit store: a RecordingSink, the
in-memory state store), embedded engine, principal ``local-agent`` calling ``time__get_current_time``; the
shipped bundle with its per-tool rate limit raised. Scenarios:

* ``no stage, upstream alone`` / ``stage alone, no result rule`` — ResultPolicy by itself around a do-nothing
  upstream, off (the shipped bundle), against the upstream called directly (10× the calls);
* ``stage removed`` — the whole stage list without ResultPolicy: the floor;
* ``no result rule`` — the shipped bundle as it is (it never mentions ``tools/result``, so the stage only
  checks that and passes the result on): should equal the floor;
* ``result rule, plain result`` — the shipped bundle plus policies/examples/results/results.rego, asked
  through ``decision_with_results``: one more policy evaluation per call, and the card-number pattern run
  over a ~200-byte result that has none;
* ``result rule, redacted result`` — the same, the result holding a card number (copied and rewritten).

Each scenario runs ``--repeat`` times, interleaved with the others; the run with the least CPU per call is
reported (CPU time of this process: the work itself, which other load on a shared machine disturbs far
less than the wall-clock wait, also shown). Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
import mcp_types as types

from mcp_guard.logging import configure_logging
from mcp_guard.pipeline.build import pipeline_stages
from mcp_guard.pipeline.chain import build_chain
from mcp_guard.pipeline.context import CallContext, CallNext, Outcome
from mcp_guard.pipeline.result_policy import ResultPolicy, ResultUse
from mcp_guard.pipeline.secret_source import NO_SECRETS
from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.settings import parse_settings
from mcp_guard.state import MemoryState
from mcp_guard.testing import RecordingSink, RecordingUpstream, idle_registry
from mcp_guard.types import Decision, Principal, SessionInfo, ToolInfo

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
PLAIN = "The current time in UTC is 2026-11-25T12:00:00Z; the next maintenance window opens at 14:00 and " * 2
CARD = "The invoice was paid with card 4111 1111 1111 1111 on 2026-11-25; the receipt went to the customer. " * 2


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(n: int, op: Callable[[int], Awaitable[object]]) -> dict[str, Any]:
    waits: list[float] = []
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        t = time.perf_counter()
        await op(i)
        waits.append(time.perf_counter() - t)
    seconds = time.perf_counter() - started
    return {
        "calls": n,
        "calls_per_s": n / seconds,
        # this process's CPU per call: the work itself, much less disturbed by other load on the machine
        "cpu_us_per_call": (time.process_time() - cpu) / n * 1e6,
        "wait_median_us": statistics.median(waits) * 1e6,
        "wait_p99_us": percentile(waits, 0.99) * 1e6,
    }


def _bundle(tmp: Path, *, results: bool) -> Path:
    """The shipped bundle, rate limit raised, tests removed; with the example result rule dropped in."""
    root = tmp / ("results" if results else "plain")
    shutil.copytree(REPO / "policies" / "rego", root)
    data = json.loads((root / "data.json").read_text())
    data["mcp_guard_config"]["limits"]["rate"][0]["limit"] = 10**9
    (root / "data.json").write_text(json.dumps(data))
    for test in root.rglob("*_test.rego"):
        test.unlink()
    if results:
        shutil.copy(REPO / "policies" / "examples" / "results" / "results.rego", root / "mcp_guard" / "results.rego")
    return root


CTX = CallContext(
    action="tools/call",
    principal=Principal("local-agent", ("developer",)),
    session=SessionInfo("bench-session", "http"),
    server="time",
    target="get_current_time",
    exposed="time__get_current_time",
    arguments={"timezone": "UTC"},
    request=types.CallToolRequest(
        params=types.CallToolRequestParams(name="get_current_time", arguments={"timezone": "UTC"})
    ),
    tool_info=ToolInfo(annotations={"readOnlyHint": True}),
)


def _chain(engine: EmbeddedEngine, text: str, *, stage: bool) -> CallNext:
    settings = parse_settings({"upstreams": {"time": {"command": "never"}}}, source="<bench>")
    stages = pipeline_stages(
        engine=engine, sink=RecordingSink(), registry=idle_registry(settings), secrets=NO_SECRETS, state=MemoryState()
    )
    if not stage:
        stages = [s for s in stages if not isinstance(s, ResultPolicy)]
    outcome = Outcome(result={"content": [{"type": "text", "text": text}], "isError": False})
    return build_chain(stages, RecordingUpstream(outcome))


async def pipeline_run(
    bundle: Path, decision: str, text: str, n: int, *, stage: bool = True, redacts: bool = False
) -> dict[str, Any]:
    engine = EmbeddedEngine(load_bundle(bundle), decision=decision, timeout_ms=10_000)
    chain = _chain(engine, text, stage=stage)
    redacted = 0

    async def one(_i: int) -> None:
        nonlocal redacted
        outcome = await chain(CTX)
        assert not outcome.denied and outcome.result is not None, outcome.denial
        redacted += "[redacted]" in outcome.result["content"][0]["text"]

    for i in range(20):  # warm up
        await one(i)
    redacted = 0
    measured = await timed(n, one)
    assert redacted == (n if redacts else 0), f"{redacted} of {n} results redacted"  # the scenario is what it says
    return {**measured, "redacted_results": redacted}


async def stage_alone(bundle: Path, n: int, *, stage: bool) -> dict[str, Any]:
    """The stage by itself when off (the shipped bundle): ResultPolicy around a do-nothing upstream, against
    the upstream called directly — the whole cost of having the stage in the list when no rule uses it."""
    engine = EmbeddedEngine(load_bundle(bundle), timeout_ms=10_000)
    upstream = RecordingUpstream(Outcome(result={"content": [{"type": "text", "text": PLAIN}], "isError": False}))
    stages = [ResultPolicy(engine, MemoryState(), ResultUse(engine), max_bytes=65536)] if stage else []
    chain = build_chain(stages, upstream)
    ctx = replace(CTX, decision=Decision(allow=True))

    async def one(_i: int) -> None:
        await chain(ctx)
        upstream.seen.clear()

    return await timed(n, one)


async def run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    n = args.n
    plain, with_rule = _bundle(directory, results=False), _bundle(directory, results=True)
    default, combined = "mcp_guard/decision", "mcp_guard/decision_with_results"
    scenarios: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
        ("no stage, upstream alone", lambda: stage_alone(plain, n * 10, stage=False)),
        ("stage alone, no result rule", lambda: stage_alone(plain, n * 10, stage=True)),
        ("stage removed", lambda: pipeline_run(plain, default, PLAIN, n, stage=False)),
        ("no result rule", lambda: pipeline_run(plain, default, PLAIN, n)),
        ("result rule, plain result", lambda: pipeline_run(with_rule, combined, PLAIN, n)),
        ("result rule, redacted result", lambda: pipeline_run(with_rule, combined, CARD, n, redacts=True)),
    ]
    results: dict[str, Any] = {}
    for _ in range(args.repeat):  # interleaved, so drift in machine load hits every scenario alike
        for name, scenario in scenarios:
            results.setdefault(name, {"runs": []})["runs"].append(await scenario())
    for name, r in results.items():
        r.update(min(r["runs"], key=lambda x: x["cpu_us_per_call"]))
        print(f"  done: {name}", file=sys.stderr)
    return results


def table(results: dict[str, Any]) -> str:
    lines = [f"{'scenario (best of runs)':<32}{'CPU/call':>12}{'calls/s':>12}{'wait median':>16}{'wait p99':>14}"]
    for name, r in results.items():
        lines.append(
            f"{name:<32}{r['cpu_us_per_call']:>9.1f} µs{r['calls_per_s']:>12,.0f}"
            f"{r['wait_median_us']:>13.1f} µs{r['wait_p99_us']:>11.0f} µs"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2_000, help="calls per scenario run (default 2000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario; the best is reported")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/*.json")
    args = parser.parse_args()
    configure_logging("info")  # as `mcp-guard run` logs by default (per-call debug lines are off)
    with tempfile.TemporaryDirectory(prefix="bench-result-") as tmp:
        results = anyio.run(run, args, Path(tmp))
    print(table(results))
    report = {
        "bench": "result",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "args": vars(args),
        "results": results,
    }
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"bench_result-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
