"""Where a stdio ``tools/call``'s wall time goes inside the proxy, piece by piece (a diagnostic, not in ``make bench``).

    python bench/bench_timeline.py                       # default bundle, 1,000 calls timed
    python bench/bench_timeline.py --policy allow-all --calls 500

Why: the instruction and bytecode counts (bench_instructions.py, bench_opcodes.py) say what a call executes, not
when: which of its work stands between the client's line and the request reaching the upstream, and which between
the upstream's answer and the client's. This times a call's way through the proxy at fixed points — the line
taken by the direct path, the flow read, the state batch, each audit row's commit, the request handed to the
upstream's pipe, the upstream's answer, the answer's write — and prints the median time between consecutive
points over the timed calls (the points' own cost, a wrapper call each, is in the figures: ~1 µs a point).

How: the proxy (stdio front, the recorder over stdio, audit on) runs under this script's ``--proxy`` mode, which
wraps the methods at those points with a timestamp before and after (``time.perf_counter_ns``), keeps them in
memory and writes them when told (SIGUSR2). One sequential client makes ``--warmup`` calls, then the timed ones.
A call's points are the marks from its line being taken to the next line being taken; the table uses the calls
with the most common sequence of points (a call that met a checkpoint or a WAL restart shows up in the p90
column). The wrapped names are mcp-guard's own internals (private ones among them): a rename breaks this script,
and tests/bench/test_bench_side_by_side.py runs it, so that shows.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import inspect
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from bench.bench_instructions import template_for
from bench.rawclient import StdioClient, check_result

_SELF = Path(__file__).resolve()
_WRITE_WITHIN_S = 60.0

# (module, class, method, point name): a call passes them in about this order. Async methods are timed to their
# return (their awaits included); the answer's write is timed around the pipe write.
POINTS: tuple[tuple[str, str, str, str], ...] = (
    ("mcp_guard.frontend.stdio_direct", "StdioDirect", "take", "line taken"),
    ("mcp_guard.state.sqlite", "SQLiteState", "flow", "flow read"),
    ("mcp_guard.state.sqlite", "SQLiteState", "apply", "state batch"),
    ("mcp_guard.audit.writer", "AuditWriter", "record", "audit row"),
    ("mcp_guard.upstream.stdio", "_ChildWriteStream", "send_nowait", "to upstream"),
    ("mcp_guard.upstream.stdio", "_ChildReadStream", "_feed", "upstream answer"),
    ("mcp_guard.frontend.stdio_direct", "StdioDirect", "_write", "answer written"),
)
_FIRST = POINTS[0][3]


def _wrapped(method: Callable[..., Any], name: str, marks: list[tuple[str, int]]) -> Callable[..., Any]:
    clock, add = time.perf_counter_ns, marks.append
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            add((name + " >", clock()))
            try:
                return await method(*args, **kwargs)
            finally:
                add((name + " <", clock()))

        return timed_async

    @functools.wraps(method)
    def timed(*args: Any, **kwargs: Any) -> Any:
        add((name + " >", clock()))
        try:
            return method(*args, **kwargs)
        finally:
            add((name + " <", clock()))

    return timed


def _serve(out: Path, argv: list[str]) -> int:
    """The proxy with its points wrapped; the marks are written to ``out`` on SIGUSR2 (and kept from then on)."""
    marks: list[tuple[str, int]] = []
    for module, cls_name, method, name in POINTS:
        cls = getattr(importlib.import_module(module), cls_name)
        setattr(cls, method, _wrapped(getattr(cls, method), name, marks))

    def write(*_: Any) -> None:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(marks))
        tmp.replace(out)

    def start(*_: Any) -> None:
        marks.clear()

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, write)
    from mcp_guard.cli import main as guard_main

    return guard_main(argv)


def calls_of(marks: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """The marks cut into calls: each from a ``line taken`` mark to the next (the last, unfinished one dropped)."""
    calls: list[list[tuple[str, int]]] = []
    current: list[tuple[str, int]] | None = None
    for point, ns in marks:
        if point == _FIRST + " >":
            if current is not None:
                calls.append(current)
            current = []
        if current is not None:
            current.append((point, ns))
    return calls


def segments(calls: list[list[tuple[str, int]]]) -> dict[str, Any]:
    """The calls with the most common sequence of points: per point, the median and p90 µs since the point before."""
    if not calls:
        raise RuntimeError("no call was timed")
    sequences = Counter(tuple(point for point, _ in call) for call in calls)
    sequence, n = sequences.most_common(1)[0]
    kept = [call for call in calls if tuple(point for point, _ in call) == sequence]
    rows = []
    for i, point in enumerate(sequence):
        steps = [(call[i][1] - call[i - 1][1]) / 1000 if i else 0.0 for call in kept]
        rows.append({"point": point, "median_us": statistics.median(steps), "p90_us": _p90(steps)})
    return {"calls": len(calls), "calls_in_table": n, "points": rows}


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]


async def _time_stdio(directory: Path, policy: str, calls: int, warmup: int) -> list[tuple[str, int]]:
    cfg = common.write_config(directory, {common.UPSTREAM: common.recorder_upstream()}, policy=policy)
    out = directory / "marks.json"
    argv = [sys.executable, str(_SELF), "--proxy", str(out), "--", "run", "--config", str(cfg)]
    with (directory / "proxy.log").open("w") as err:
        client = await StdioClient.spawn(
            [*argv, "--log-level", "warning"], env=common.child_env(), cwd=str(common.REPO), stderr=err
        )
    try:
        await client.initialize()
        template = template_for("legacy")
        for _ in range(warmup):
            check_result(await client.call(template))
        os.kill(client.proc.pid, signal.SIGUSR1)
        for _ in range(calls):
            check_result(await client.call(template))
        os.kill(client.proc.pid, signal.SIGUSR2)
        await asyncio.to_thread(common.wait_for_file, out, _WRITE_WITHIN_S, "marks")
    finally:
        await client.close(timeout=60)
    marks: list[tuple[str, int]] = [(str(p), int(t)) for p, t in json.loads(out.read_text())]
    return marks


def run(policy: str, calls: int, warmup: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-timeline-") as tmp:
        marks = asyncio.run(_time_stdio(Path(tmp), policy, calls, warmup))
    return {"path": "stdio", "policy": policy, **segments(calls_of(marks))}


def table(report: dict[str, Any]) -> str:
    lines = [
        f"a stdio tools/call through the proxy, {report['policy']} bundle: {report['calls_in_table']} of "
        f"{report['calls']} timed calls share the most common sequence (µs since the point before)",
        f"{'point':<24}{'median':>10}{'p90':>10}{'sum of medians':>18}",
    ]
    total = 0.0
    for row in report["points"]:
        total += row["median_us"]
        lines.append(f"{row['point']:<24}{row['median_us']:>10.1f}{row['p90_us']:>10.1f}{total:>18.1f}")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--proxy":  # the proxy with its points wrapped (see _time_stdio)
        rest = sys.argv[3:]
        return _serve(Path(sys.argv[2]), rest[1:] if rest[:1] == ["--"] else rest)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", choices=("default", "allow-all"), default="default")
    parser.add_argument("--calls", type=int, default=1000, help="calls timed")
    parser.add_argument("--warmup", type=int, default=200, help="calls before timing")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if args.calls < 2 or args.warmup < 0:
        parser.error("--calls must be at least 2 and --warmup not negative")
    report = {"machine": common.machine_info(), **run(args.policy, args.calls, args.warmup)}
    print(table(report))
    if not args.no_save:
        print(f"wrote {common.save('timeline', report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
