"""Two source trees of mcp-guard side by side, interleaved in one run: what a range of commits changed.

    git worktree add /tmp/before <commit>
    python bench/bench_trees.py /tmp/before .                  # stdio, default bundle
    python bench/bench_trees.py /tmp/before . --path http --era modern --rounds 4
    python bench/bench_trees.py /tmp/before . --policy allow-all --blocks 10

Why: this machine's speed moves by 2× within hours (the host's load), so two full ``make bench`` runs cannot
be compared; a change is shown by running both trees at once under the same noise. Each tree's ``src`` is put
first on ``PYTHONPATH`` of its proxy (the same interpreter and installed packages for both).

* ``--path stdio``: both proxies up at once (stdio front, the recorder upstream over stdio), one sequential
  client each; blocks of ``--calls`` calls alternate between them (the order flipped each round). Per block, the
  proxy's CPU per call (``/proc``, its threads included); per tree the latency p50/p99 of every call and the
  median CPU per call; the block-by-block difference (the later tree minus the earlier), median and quartiles,
  and in how many pairs the later tree used less.
* ``--path http``: one proxy at a time (HTTP front, ``--clients`` raw keep-alive clients of bench/loadgen.py for
  ``--seconds``), the trees alternating run by run (the order flipped each round): calls/s, p99 and CPU per call
  per run and their medians. Separate runs are noisier than the stdio blocks; use several rounds.

Not part of ``make bench`` (it needs a second tree); prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from bench.bench_throughput import load
from bench.rawclient import CallTemplate, StdioClient, check_result

WARMUP_CALLS = 300


def _tree_env(tree: Path) -> dict[str, str]:
    return common.child_env(PYTHONPATH=str(tree / "src"))


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return (ordered[len(ordered) // 4], statistics.median(ordered), ordered[(3 * len(ordered)) // 4])


async def _stdio(trees: list[Path], directory: Path, policy: str, blocks: int, calls: int) -> dict[str, Any]:
    clients: list[StdioClient] = []
    for i, tree in enumerate(trees):
        cfg = common.write_config(directory / f"tree{i}", {common.UPSTREAM: common.recorder_upstream()}, policy=policy)
        argv = [sys.executable, "-m", "mcp_guard", "run", "--config", str(cfg), "--log-level", "warning"]
        client = await StdioClient.spawn(argv, env=_tree_env(tree), cwd=str(tree), stderr=subprocess.DEVNULL)
        await client.initialize()
        clients.append(client)
    template = CallTemplate(f"{common.UPSTREAM}__echo", {"text": "hello from the benchmark"})
    try:
        for client in clients:
            for _ in range(WARMUP_CALLS):
                check_result(await client.call(template))
        latencies: list[list[float]] = [[] for _ in trees]
        cpu: list[list[float]] = [[] for _ in trees]
        for b in range(blocks):
            for i in range(len(trees)) if b % 2 == 0 else reversed(range(len(trees))):
                client = clients[i]
                before = common.cpu_seconds(client.proc.pid)
                for _ in range(calls):
                    started = time.perf_counter()
                    check_result(await client.call(template))
                    latencies[i].append(time.perf_counter() - started)
                cpu[i].append((common.cpu_seconds(client.proc.pid) - before) / calls * 1e6)
    finally:
        for client in clients:
            await client.close(timeout=60)
    diff = [new - old for old, new in zip(cpu[0], cpu[1], strict=True)]
    return {
        "trees": [
            {"tree": str(t), **common.summary_ms(latencies[i]), "cpu_us_per_call": statistics.median(cpu[i])}
            for i, t in enumerate(trees)
        ],
        "cpu_diff_us": _quartiles(diff),
        "later_lower": sum(d < 0 for d in diff),
        "pairs": len(diff),
    }


def _http_run(tree: Path, directory: Path, policy: str, clients: int, seconds: float, era: str) -> dict[str, Any]:
    cfg = common.write_config(directory, {common.UPSTREAM: common.recorder_upstream()}, policy=policy)
    log = directory / "proxy.log"
    argv = common.proxy_argv(cfg, "--transport", "http", "--port", "0", log_level="info")
    with log.open("w") as err:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, cwd=tree, env=_tree_env(tree)
        )
        try:
            url = common.wait_for_log_url(proc, log, '"http.listening"', 60)
            load(url, clients, 1.5, 0.5, era=era)
            before = common.cpu_seconds(proc.pid)
            row = load(url, clients, seconds, 1.0, era=era)
            spent = common.cpu_seconds(proc.pid) - before
        finally:
            common.stop_process(proc, timeout=60)
    return {**row, "cpu_us_per_call": spent / max(1, row["calls"]) * 1e6}


def _http(trees: list[Path], directory: Path, policy: str, rounds: int, **load_args: Any) -> dict[str, Any]:
    runs: list[list[dict[str, Any]]] = [[] for _ in trees]
    for r in range(rounds):
        for i in range(len(trees)) if r % 2 == 0 else reversed(range(len(trees))):
            run_dir = directory / f"tree{i}-round{r}"
            runs[i].append(_http_run(trees[i], run_dir, policy, **load_args))
            row = runs[i][-1]
            print(
                f"  {trees[i]} round {r}: {row['calls_per_s']:.0f} calls/s, p99 {row['p99_ms']:.1f} ms, "
                f"{row['cpu_us_per_call']:.0f} µs CPU/call, {row['errors']} errors",
                flush=True,
            )
    return {
        "trees": [
            {
                "tree": str(t),
                "calls_per_s": statistics.median(r["calls_per_s"] for r in runs[i]),
                "p99_ms": statistics.median(r["p99_ms"] for r in runs[i]),
                "cpu_us_per_call": statistics.median(r["cpu_us_per_call"] for r in runs[i]),
                "errors": sum(r["errors"] for r in runs[i]),
                "runs": runs[i],
            }
            for i, t in enumerate(trees)
        ]
    }


def _print(report: dict[str, Any]) -> None:
    for t in report["trees"]:
        if report["path"] == "stdio":
            print(
                f"{t['tree']}: p50 {t['median_ms']:.3f} ms, p99 {t['p99_ms']:.3f} ms, "
                f"{t['cpu_us_per_call']:.0f} µs CPU/call"
            )
        else:
            print(
                f"{t['tree']}: {t['calls_per_s']:.0f} calls/s, p99 {t['p99_ms']:.1f} ms, "
                f"{t['cpu_us_per_call']:.0f} µs CPU/call, {t['errors']} errors (medians of the runs)"
            )
    if report["path"] == "stdio":
        q1, med, q3 = report["cpu_diff_us"]
        print(
            f"later − earlier CPU/call per block pair: median {med:+.0f} µs [{q1:+.0f}, {q3:+.0f}]; "
            f"later lower in {report['later_lower']}/{report['pairs']}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("earlier", type=Path, help="the first source tree (a checkout or git worktree)")
    parser.add_argument("later", type=Path, help="the second source tree")
    parser.add_argument("--path", choices=("stdio", "http"), default="stdio")
    parser.add_argument("--policy", choices=("default", "allow-all"), default="default")
    parser.add_argument("--blocks", type=int, default=12, help="stdio: block pairs")
    parser.add_argument("--calls", type=int, default=300, help="stdio: calls per block")
    parser.add_argument("--rounds", type=int, default=4, help="http: runs per tree")
    parser.add_argument("--clients", type=int, default=32, help="http: concurrent clients")
    parser.add_argument("--seconds", type=float, default=6.0, help="http: seconds per run")
    parser.add_argument(
        "--era",
        choices=("legacy", "modern", "modern-asking"),
        default="legacy",
        help="http: protocol era (modern-asking: a 2026-07-28 client that declares sampling, elicitation and roots)",
    )
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    trees = [args.earlier.resolve(), args.later.resolve()]
    for tree in trees:
        if not (tree / "src" / "mcp_guard").is_dir():
            parser.error(f"{tree}: not an mcp-guard source tree (no src/mcp_guard)")
    with tempfile.TemporaryDirectory(prefix="bench-trees-") as tmp:
        if args.path == "stdio":
            report = asyncio.run(_stdio(trees, Path(tmp), args.policy, args.blocks, args.calls))
        else:
            report = _http(
                trees,
                Path(tmp),
                args.policy,
                args.rounds,
                clients=args.clients,
                seconds=args.seconds,
                era=args.era,
            )
    report = {"path": args.path, "policy": args.policy, "machine": common.machine_info(), **report}
    _print(report)
    if not args.no_save:
        print(f"wrote {common.save('trees', report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
