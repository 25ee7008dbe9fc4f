"""The whole benchmark suite in one run: ``python -m bench`` (``make bench``).

    python -m bench                 # everything, a few minutes
    python -m bench --quick         # tiny counts: checks every bench runs, numbers mean little
    python -m bench --only latency,memory

Sections (each also runs on its own: ``python bench/bench_<name>.py --help``):

  latency     added latency per tools/call vs the same upstream called directly (stdio→stdio, HTTP→HTTP)
  throughput  calls/s and p50/p99 over streamable HTTP at 1, 8, 32, 128 concurrent clients
  policy      policy evaluation alone, both engines (bench/bench_policy.py)
  audit       audit store throughput and commit wait alone (bench/bench_audit.py)
  stages      the in-process pipeline per optional stage, unused and used: CPU per call (bench/bench_stages.py)
  memory      proxy RSS with 1,000 open HTTP sessions, and with 20 upstreams
  breakdown   (opt-in: --only breakdown, or --all) the stdio path with pipeline parts switched off
  instructions (opt-in: --only instructions, or --all) instructions per stdio call under valgrind's callgrind,
              default bundle and allow-all: the count the machine's load does not move (bench_instructions.py)

Prints the tables, a markdown summary against the targets of issue #19 (and issue 8's memory target), and
writes everything as JSON (plus the markdown) to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    bench_breakdown,
    bench_instructions,
    bench_latency,
    bench_memory,
    bench_stages,
    bench_throughput,
    common,
)

SECTIONS = ("latency", "throughput", "policy", "audit", "stages", "memory")
OPT_IN = ("breakdown", "instructions")
HERE = Path(__file__).resolve().parent

# Issue #19's targets: stdio → stdio tools/call with the default bundle and audit on ...
TARGET_ADDED_P50_MS = 0.5
TARGET_ADDED_P99_MS = 2.0
# ... and the HTTP front, 32 concurrent keep-alive clients, one worker (the proxy is one process here).
TARGET_CALLS_PER_S = 2500.0
TARGET_P99_MS = 30.0
TARGET_CPU_US_PER_CALL = 400.0
# Issue 8's memory target (1,000 open HTTP sessions); #19 sets none.
TARGET_RSS_MB = 300.0


def _sub_bench(script: str, args: list[str], pattern: str, save: bool, timeout: float) -> dict[str, Any]:
    """Run another helper's bench script as it is meant to be run; keep its table and its JSON."""
    started = time.time()
    argv = [sys.executable, str(HERE / script), *args, *([] if save else ["--no-save"])]
    out = subprocess.run(
        argv, capture_output=True, text=True, cwd=common.REPO, env=common.child_env(), timeout=timeout, check=False
    )
    result: dict[str, Any] = {"argv": argv[1:], "exit_code": out.returncode, "stdout": out.stdout}
    if out.returncode != 0:
        result["stderr"] = out.stderr[-3000:]
    if save:
        fresh = [p for p in common.RESULTS.glob(pattern) if p.stat().st_mtime >= started - 1]
        if fresh:
            newest = max(fresh, key=lambda p: p.stat().st_mtime)
            result["json_file"] = str(newest)
            result["report"] = json.loads(newest.read_text())
    return result


def _instructions(quick: bool) -> dict[str, Any]:
    """bench_instructions on this tree, the default bundle and allow-all."""
    calls, warmup = (5, 3) if quick else (200, 100)
    return {
        policy: bench_instructions.run([common.REPO], policy, "", calls, warmup) for policy in ("default", "allow-all")
    }


def run_sections(sections: list[str], quick: bool, save: bool) -> dict[str, Any]:
    report: dict[str, Any] = {
        "machine": common.machine_info(),
        "quick": quick,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    jobs: dict[str, Callable[[], dict[str, Any]]] = {
        "latency": lambda: (
            bench_latency.run(calls=100, block=25, warmup=20)
            if quick
            else bench_latency.run(calls=3000, block=50, warmup=300)
        ),
        "throughput": lambda: (
            bench_throughput.run(levels=(1, 8), duration=0.5, warmup=0.2, modern_at=8, max_calls=50)
            if quick
            else bench_throughput.run()
        ),
        "policy": lambda: _sub_bench(
            "bench_policy.py", ["--n", "50" if quick else "5000"], "policy-*.json", save and not quick, 600
        ),
        "audit": lambda: _sub_bench(
            "bench_audit.py",
            ["--n", "500", "--seconds", "0.2", "--repeat", "1"] if quick else [],
            "bench_audit-*.json",
            save and not quick,
            1200,
        ),
        "stages": lambda: bench_stages.run(blocks=2, calls=20, warmup=5) if quick else bench_stages.run(),
        "memory": lambda: bench_memory.run(n_sessions=20, n_upstreams=2) if quick else bench_memory.run(),
        "breakdown": lambda: (
            bench_breakdown.run(
                variants=("", "no-audit,no-secrets,no-policy"),
                calls=50,
                block=25,
                warmup=10,
                http_variants=("", "sse-front"),
            )
            if quick
            else bench_breakdown.run()
        ),
        "instructions": lambda: _instructions(quick),
    }
    failed: list[str] = []
    for name in sections:
        print(f"== {name} …", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            report[name] = jobs[name]()
        except Exception as e:  # one broken section must not hide the others' numbers
            failed.append(name)
            report[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
        report[name + "_seconds"] = round(time.perf_counter() - started, 1)
    report["failed"] = failed
    return report


def tables(report: dict[str, Any]) -> str:
    out: list[str] = []
    for name in (*SECTIONS, *OPT_IN):
        if name not in report:
            continue
        section = report[name]
        out.append(f"\n## {name}")
        if "error" in section:
            out.append(f"FAILED: {section['error']}")
        elif name == "latency":
            out.append(bench_latency.table(section))
        elif name == "throughput":
            out.append(bench_throughput.table(section))
        elif name == "stages":
            out.append(bench_stages.table(section))
        elif name == "memory":
            out.append(bench_memory.table(section))
        elif name == "breakdown":
            out.append(bench_breakdown.table(section))
        elif name == "instructions":
            out.extend(bench_instructions.table(part) for part in section.values())
        else:
            out.append(section.get("stdout", "").rstrip())
            if section.get("exit_code"):
                out.append(f"(exit code {section['exit_code']}) {section.get('stderr', '')[-500:]}")
    return "\n".join(out)


def _ok(good: bool) -> str:
    return "met" if good else "**not met**"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_gb']} GB, Python {m['python']}, {m['platform']}; "
        f"{report['when']}{' — QUICK RUN, numbers not meaningful' if report['quick'] else ''}.",
        "",
        "| measure | result | target |",
        "|---|---|---|",
    ]
    lat = report.get("latency", {})
    for row in lat.get("rows", []):
        target = ""
        if row["path"].startswith("stdio") and "default" in row["path"]:
            good = row["added_median_ms"] <= TARGET_ADDED_P50_MS and row["added_p99_ms"] <= TARGET_ADDED_P99_MS
            target = f"p50 ≤ {TARGET_ADDED_P50_MS:g} ms, p99 ≤ {TARGET_ADDED_P99_MS:g} ms: {_ok(good)}"
        lines.append(
            f"| added latency, {row['path']} | median {row['added_median_ms']:.2f} ms, "
            f"p99 {row['added_p99_ms']:.2f} ms "
            f"(direct {row['direct_median_ms']:.2f} → proxied {row['proxy_median_ms']:.2f} ms; proxy CPU "
            f"{row.get('proxy_cpu_us_per_call', float('nan')):.0f} µs/call) | {target} |"
        )
    tp = report.get("throughput", {})
    for row in tp.get("rows", []):
        era = {
            "legacy": "2025-11-25 sessions",
            "modern": "2026-07-28 stateless, a client that declares no capability",
            "modern-asking": "2026-07-28 stateless, a client that declares what it can answer: bridged",
        }[row["era"]]
        target = ""
        cpu = row.get("proxy_cpu_us_per_call", float("nan"))
        if row["clients"] == 32 and row["era"] == "legacy":
            good = (
                row["calls_per_s"] >= TARGET_CALLS_PER_S
                and row["p99_ms"] < TARGET_P99_MS
                and cpu <= TARGET_CPU_US_PER_CALL  # NaN (not measured) is not met
            )
            target = (
                f"≥ {TARGET_CALLS_PER_S:,.0f}/s, p99 < {TARGET_P99_MS:g} ms, ≤ {TARGET_CPU_US_PER_CALL:g} µs "
                f"proxy CPU/call (one worker): {_ok(good)}"
            )
        lines.append(
            f"| HTTP front, {row['clients']} clients ({era}; stdio upstream) | "
            f"{row['calls_per_s']:,.0f} calls/s, "
            f"p50 {row['median_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, {row['errors']} errors; "
            f"proxy CPU {cpu:.0f} µs/call | {target} |"
        )
    pol = report.get("policy", {}).get("report", {})
    for row in pol.get("results", []):
        if row.get("skipped"):
            lines.append(f"| policy eval, {row['engine']} | skipped: {row['skipped']} | |")
            continue
        tgt = row.get("target_median_us")
        verdict = f"≤ {tgt:g} µs median: {_ok(row['median_us'] <= tgt)}" if tgt else ""
        lines.append(
            f"| policy eval, {row['engine']} ({row.get('workload', 'corpus')}) | median "
            f"{row['median_us']:.0f} µs, p99 {row['p99_us']:.0f} µs | {verdict} |"
        )
    aud = report.get("audit", {}).get("report", {}).get("results", {})
    for name, row in aud.items():
        if not isinstance(row, dict) or ("events_per_s" not in row and "wait_median_ms" not in row):
            continue
        parts = []
        if "events_per_s" in row:
            parts.append(f"{row['events_per_s']:,.0f} events/s")
        if "wait_median_ms" in row:
            parts.append(f"commit wait median {row['wait_median_ms']:.2f} ms, p99 {row['wait_p99_ms']:.2f} ms")
        lines.append(f"| audit, {name} | {', '.join(parts)} | |")
    if report.get("stages", {}).get("rows"):
        lines += bench_stages.markdown_rows(report["stages"])
    mem = report.get("memory", {})
    if "sessions" in mem:
        s = mem["sessions"]
        lines.append(
            f"| proxy RSS, {s['sessions']:,} open HTTP sessions (GET streams open) | {s['rss_mb']:.0f} MB "
            f"(idle {s['rss_before_mb']:.0f} MB, {s['per_session_kb']:.0f} KB/session) | "
            f"≤ {TARGET_RSS_MB:g} MB: {_ok(s['rss_mb'] <= TARGET_RSS_MB)} |"
        )
    if "upstreams" in mem:
        u = mem["upstreams"]
        lines.append(
            f"| proxy RSS, {u['upstreams']} stdio upstreams | {u['rss_mb']:.0f} MB (+ "
            f"{u['children_rss_mb']:.0f} MB in the {u['children']} upstream processes) | |"
        )
    bd = report.get("breakdown", {})
    if bd.get("rows"):
        base = bd["rows"][0]
        lines += [
            "",
            f"Where the stdio path's time goes ({bd['policy']} bundle; each row is the proxy with that part "
            "switched off or changed, run side by side):",
            "",
            "| variant | added median | added p99 | proxy CPU/call |",
            "|---|---|---|---|",
        ]
        for r in bd["rows"]:
            cpu = r.get("proxy_cpu_us_per_call", float("nan"))
            delta = "" if r is base else f" ({cpu - base.get('proxy_cpu_us_per_call', 0.0):+.0f})"
            lines.append(
                f"| {r['path']} | {r['added_median_ms']:.2f} ms | {r['added_p99_ms']:.2f} ms | {cpu:.0f} µs{delta} |"
            )
    if bd.get("http_rows"):
        base = bd["http_rows"][0]
        lines += [
            "",
            "HTTP front (stdio upstream, one client), with the changes proposed for the HTTP front:",
            "",
            "| variant | proxied median | proxied p99 | proxy CPU/call |",
            "|---|---|---|---|",
        ]
        for r in bd["http_rows"]:
            cpu = r.get("proxy_cpu_us_per_call", float("nan"))
            delta = "" if r is base else f" ({cpu - base.get('proxy_cpu_us_per_call', 0.0):+.0f})"
            lines.append(
                f"| {r['path']} | {r['proxy_median_ms']:.2f} ms | {r['proxy_p99_ms']:.2f} ms | {cpu:.0f} µs{delta} |"
            )
    lines += [
        "",
        "Policy on the latency/throughput paths: the default bundle (policies/rego; its per-tool rate "
        "limit raised for the run, calls still counted), principal `local-agent` (role developer) calling "
        "`everything__echo` of the "
        "recorder test upstream; the allow-all rows use a one-rule bundle. Audit: both commits on the path "
        "(decision row before forwarding, outcome row before answering).",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts (smoke run)")
    parser.add_argument("--only", help=f"comma-separated sections ({', '.join((*SECTIONS, *OPT_IN))})")
    parser.add_argument("--all", action="store_true", help="every section, the opt-in ones too")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    parser.add_argument("--out", type=Path, help="also write the combined JSON report here")
    args = parser.parse_args()
    sections = [s.strip() for s in args.only.split(",")] if args.only else list(SECTIONS)
    if args.all:
        sections = [*SECTIONS, *OPT_IN]
    unknown = set(sections) - {*SECTIONS, *OPT_IN}
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    report = run_sections(sections, args.quick, save=not args.no_save)
    print(tables(report))
    md = markdown(report)
    print("\n## summary (markdown)\n" + md)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if not args.no_save:
        path = common.save("bench", report)
        (common.RESULTS / "latest.md").write_text(md + "\n")
        print(f"\nwrote {path} and {common.RESULTS / 'latest.md'}")
    if report["failed"]:
        print(f"\nFAILED sections: {', '.join(report['failed'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
