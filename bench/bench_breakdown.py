"""Where the added latency goes: the stdio call path with parts of the pipeline switched off.

    python bench/bench_breakdown.py
    python bench/bench_breakdown.py --variants ";sdk-front;sdk-upstream" --http-variants -
    python bench/bench_breakdown.py --throughput 32 --policy allow-all --variants ";sse-front"

Each variant is ``mcp-guard run`` under bench/ablate.py with some switches (see that file: e.g.
``no-policy``, ``no-audit``, ``inline-audit``, ``uvloop``); all variants run at once and are called in
interleaved blocks, like bench_latency, so they share the machine's noise. A diagnostic: the headline
numbers come from bench_latency, which runs the unmodified proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from bench.bench_latency import TEXT, _interleave, _row, http_clients
from bench.rawclient import CallTemplate, StdioClient

DEFAULT_VARIANTS = (
    "",  # the real proxy
    "no-policy",
    "no-audit",
    "no-audit-wait",
    "no-secrets",
    "no-audit,no-secrets,no-policy",
    "inline-audit,audit-fast-path",
    "uvloop",
    "gc-tune",
    "inline-audit,audit-fast-path,uvloop,gc-tune",
)
HTTP_VARIANTS = (
    "",
    "sse-front",
    "h11",
    "uvloop",
    "gc-tune",
    "sse-front,h11",
)


async def _run(
    directory: Path, variants: tuple[str, ...], policy: str, calls: int, block: int, warmup: int
) -> list[dict[str, Any]]:
    env = common.child_env()
    direct = await StdioClient.spawn([sys.executable, str(common.RECORDER)], env=env, cwd=str(common.REPO))
    proxies: dict[str, StdioClient] = {}
    logs = []
    try:
        await direct.initialize()
        for i, v in enumerate(variants):
            cfg = common.write_config(directory / f"v{i}", {common.UPSTREAM: common.recorder_upstream()}, policy=policy)
            log = (directory / f"v{i}.log").open("w")
            logs.append(log)
            c = await StdioClient.spawn(
                common.proxy_argv(cfg, ablate=v or None), env=env, cwd=str(common.REPO), stderr=log
            )
            await c.initialize()
            proxies[v or "(none: the real proxy)"] = c
        t_direct = CallTemplate("echo", {"text": TEXT})
        t_proxy = CallTemplate(f"{common.UPSTREAM}__echo", {"text": TEXT})

        def caller(c: StdioClient) -> Any:
            return lambda: c.call(t_proxy)

        d_lat, p_lat, cpu = await _interleave(
            lambda: direct.call(t_direct),
            {k: (caller(c), c.proc.pid) for k, c in proxies.items()},
            calls,
            block,
            warmup,
        )
    finally:
        await direct.close()
        for c in proxies.values():
            await c.close()
        for log in logs:
            log.close()
    return [_row(k, d_lat, p_lat[k], cpu[k]) for k in proxies]


def _run_http(
    directory: Path, variants: tuple[str, ...], policy: str, calls: int, block: int, warmup: int
) -> list[dict[str, Any]]:
    """The HTTP front (stdio recorder upstream) under each variant; the direct column is the recorder over
    HTTP, so only the proxied columns compare."""
    with ExitStack() as stack:
        _up, up_url = stack.enter_context(common.http_upstream(directory / "http-upstream.log"))
        urls: dict[str, tuple[str, int]] = {}
        for i, v in enumerate(variants):
            cfg = common.write_config(directory / f"h{i}", {common.UPSTREAM: common.recorder_upstream()}, policy=policy)
            proc, url = stack.enter_context(common.http_proxy(cfg, directory / f"h{i}.log", ablate=v or None))
            urls[v or "(none: the real proxy)"] = (url, proc.pid)
        rows = asyncio.run(http_clients(up_url, urls, calls, block, warmup))
    for r in rows:
        r["path"] = r["path"].rsplit("policy ", 1)[1]
    return rows


def run(
    variants: tuple[str, ...] = DEFAULT_VARIANTS,
    policy: str = "default",
    calls: int = 2000,
    block: int = 50,
    warmup: int = 200,
    http_variants: tuple[str, ...] = HTTP_VARIANTS,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-breakdown-") as tmp:
        rows = asyncio.run(_run(Path(tmp), variants, policy, calls, block, warmup))
        http_rows = _run_http(Path(tmp), http_variants, policy, calls, block, warmup) if http_variants else []
    return {"policy": policy, "calls": calls, "rows": rows, "http_rows": http_rows}


def throughput(
    variants: tuple[str, ...], clients: int = 32, duration: float = 6.0, warmup: float = 1.0, policy: str = "default"
) -> list[dict[str, Any]]:
    """bench_throughput's load (``clients`` HTTP sessions, closed loop) against the HTTP front under each
    variant, one after the other."""
    from bench.bench_throughput import load

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-breakdown-tp-") as tmp:
        for i, v in enumerate(variants):
            cfg = common.write_config(Path(tmp) / f"t{i}", {common.UPSTREAM: common.recorder_upstream()}, policy=policy)
            with common.http_proxy(cfg, Path(tmp) / f"t{i}.log", ablate=v or None) as (_proc, url):
                row = load(url, clients, duration, warmup)
            row["variant"] = v or "(none: the real proxy)"
            row["policy"] = policy
            rows.append(row)
            print(f"  {row['variant']}: {row['calls_per_s']:.0f} calls/s", file=sys.stderr)
    return rows


def throughput_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'variant':<66}{'policy':>10}{'calls/s':>9}{'p50':>10}{'p99':>10}{'errors':>7}"]
    for r in rows:
        lines.append(
            f"{r['variant']:<66}{r['policy']:>10}{r['calls_per_s']:>9.0f}{r['median_ms']:>7.1f} ms"
            f"{r['p99_ms']:>7.1f} ms{r['errors']:>7}"
        )
    return "\n".join(lines)


def table(result: dict[str, Any]) -> str:
    lines = [
        f"stdio front → stdio upstream\n{'switched off / changed':<36}{'added p50':>11}{'added p99':>11}"
        f"{'CPU/call':>10}{'Δ CPU':>9}"
    ]
    base = result["rows"][0].get("proxy_cpu_us_per_call", 0.0)
    for r in result["rows"]:
        cpu = r.get("proxy_cpu_us_per_call", float("nan"))
        lines.append(
            f"{r['path']:<36}{r['added_median_ms']:>8.3f} ms{r['added_p99_ms']:>8.3f} ms"
            f"{cpu:>7.0f} µs{cpu - base:>+7.0f} µs"
        )
    if result.get("http_rows"):
        lines.append(
            f"HTTP front → stdio upstream (one client, sequential)\n{'changed':<36}{'proxy p50':>11}"
            f"{'proxy p99':>11}{'CPU/call':>10}{'Δ CPU':>9}"
        )
        base = result["http_rows"][0].get("proxy_cpu_us_per_call", 0.0)
        for r in result["http_rows"]:
            cpu = r.get("proxy_cpu_us_per_call", float("nan"))
            lines.append(
                f"{r['path']:<36}{r['proxy_median_ms']:>8.3f} ms{r['proxy_p99_ms']:>8.3f} ms"
                f"{cpu:>7.0f} µs{cpu - base:>+7.0f} µs"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", help="';'-separated switch sets (',' inside a set); '' is the real proxy")
    parser.add_argument("--http-variants", help="the same for the HTTP front ('-' for none)")
    parser.add_argument("--policy", choices=("default", "allow-all"), default="default")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument(
        "--throughput",
        type=int,
        metavar="CLIENTS",
        help="instead: HTTP throughput at CLIENTS clients under each --variants set",
    )
    parser.add_argument("--duration", type=float, default=6.0, help="with --throughput: seconds per variant")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if args.throughput:
        tp_variants = tuple(args.variants.split(";")) if args.variants is not None else HTTP_VARIANTS
        rows = throughput(tp_variants, args.throughput, args.duration, policy=args.policy)
        print(throughput_table(rows))
        if not args.no_save:
            saved = common.save("bench_breakdown_throughput", {"machine": common.machine_info(), "rows": rows})
            print(f"wrote {saved}")
        return 0
    variants = tuple(args.variants.split(";")) if args.variants is not None else DEFAULT_VARIANTS
    http_variants = (
        HTTP_VARIANTS
        if args.http_variants is None
        else (() if args.http_variants == "-" else tuple(args.http_variants.split(";")))
    )
    result = run(variants, args.policy, args.calls, http_variants=http_variants)
    print(table(result))
    if not args.no_save:
        print(f"wrote {common.save('bench_breakdown', {'machine': common.machine_info(), **result})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
