"""Throughput and latency over streamable HTTP with 1, 8, 32 and 128 concurrent clients.

    python bench/bench_throughput.py                  # 8 s per level
    python bench/bench_throughput.py --duration 1     # a quick look

``mcp-guard run --transport http`` in front of the recorder test upstream (stdio; tool ``echo``), with the
real pipeline (embedded Rego on the default bundle, both audit commits). The load comes from
bench/loadgen.py in a separate process: raw keep-alive HTTP/1.1 clients, one MCP session each on the
2025-11-25 era (initialize, then ``mcp-session-id`` on every call), each calling back to back
(closed loop). Also reported: the same at 32 clients on the stateless 2026-07-28 era — from a client that declares
no capability (the input-required bridge leaves its calls in their request) and from one that declares sampling,
elicitation and roots (its calls bridged: "2026 asking") — the proxy's and
upstream's CPU use during each level, and the proxy's CPU per call (its CPU over the level's whole load run
divided by every call answered in it, warm-up included; the clients' handshakes are in the CPU, not in the
calls, so the figure errs high by a little).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from bench import common

LEVELS = (1, 8, 32, 128)
LOADGEN = Path(__file__).resolve().parent / "loadgen.py"
ERA_LABELS = {"legacy": "2025-11-25", "modern": "2026-07-28", "modern-asking": "2026 asking"}
"""The table's name for each loadgen era (``modern-asking``: a 2026-07-28 client that declares sampling, elicitation
and roots, so the input-required bridge takes its calls; ``modern`` declares none and is not bridged)."""


def load(
    url: str,
    clients: int,
    duration: float,
    warmup: float,
    era: str = "legacy",
    max_calls: int | None = None,
    api_key: str | None = common.API_KEY,
    tool: str = f"{common.UPSTREAM}__echo",
) -> dict[str, Any]:
    argv = [
        sys.executable,
        str(LOADGEN),
        "--url",
        url,
        "--clients",
        str(clients),
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
        "--era",
        era,
        "--tool",
        tool,
    ]
    if api_key:
        argv += ["--api-key", api_key]
    if max_calls is not None:
        argv += ["--max-calls", str(max_calls)]
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        cwd=common.REPO,
        env=common.child_env(),
        timeout=duration + warmup + 120,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += common.cpu_seconds(pid)
    return total


def run(
    levels: tuple[int, ...] = LEVELS,
    duration: float = 8.0,
    warmup: float = 2.0,
    policy: str = "default",
    modern_at: int | None = 32,
    max_calls: int | None = None,
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        # (128 keep-alive clients idle between calls, or connecting all at once, are within the slowloris guard's
        # defaults: only connections partway through a head count against http_max_pending_heads.)
        cfg = common.write_config(Path(tmp), {common.UPSTREAM: common.recorder_upstream()}, policy=policy)
        with common.http_proxy(cfg, Path(tmp) / "proxy.log") as (proc, url):
            upstream_pids = common.children_of(proc.pid)
            plan = [("legacy", c) for c in levels]
            if modern_at is not None:  # a client that declares no capability, and one whose calls are bridged
                plan += [("modern", modern_at), ("modern-asking", modern_at)]
            for era, clients in plan:
                before = (_cpu([proc.pid]), _cpu(upstream_pids), time.perf_counter())
                row = load(url, clients, duration, warmup, era=era, max_calls=max_calls)
                after = (_cpu([proc.pid]), _cpu(upstream_pids), time.perf_counter())
                wall = after[2] - before[2]
                row["proxy_cpu_pct"] = (after[0] - before[0]) / wall * 100
                row["upstream_cpu_pct"] = (after[1] - before[1]) / wall * 100
                if row.get("completed"):
                    row["proxy_cpu_us_per_call"] = (after[0] - before[0]) / row["completed"] * 1e6
                row["proxy_rss_mb"] = common.rss_mb(proc.pid)
                rows.append(row)
                print(f"  done: {era} x{clients}: {row['calls_per_s']:.0f} calls/s", file=sys.stderr)
    return {"policy": policy, "upstream": "stdio recorder", "duration_s": duration, "warmup_s": warmup, "rows": rows}


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{'clients':>8} {'era':>11} {'calls/s':>9} {'p50':>10} {'p90':>10} {'p99':>10} {'errors':>7} "
        f"{'proxy CPU':>10} {'upstream CPU':>13} {'CPU/call':>10}"
    ]
    for r in result["rows"]:
        era = ERA_LABELS[r["era"]]
        lines.append(
            f"{r['clients']:>8} {era:>11} {r['calls_per_s']:>9.0f} {r['median_ms']:>7.2f} ms "
            f"{r['p90_ms']:>7.2f} ms {r['p99_ms']:>7.2f} ms {r['errors']:>7} {r['proxy_cpu_pct']:>9.0f}% "
            f"{r['upstream_cpu_pct']:>12.0f}% {r.get('proxy_cpu_us_per_call', float('nan')):>7.0f} µs"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="comma-separated client counts")
    parser.add_argument("--policy", choices=("default", "allow-all"), default="default")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    result = run(tuple(int(x) for x in args.levels.split(",")), args.duration, args.warmup, args.policy)
    print(table(result))
    if not args.no_save:
        print(f"wrote {common.save('bench_throughput', {'machine': common.machine_info(), **result})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
