"""Added latency per ``tools/call``: the same upstream called directly and through mcp-guard, interleaved.

    python bench/bench_latency.py              # stdio and HTTP, a few thousand calls each
    python bench/bench_latency.py --calls 200  # a smoke run

stdio
    The recorder test upstream (tests/fixtures/recorder.py, tool ``echo``) is started twice: once as a
    direct child of this process, once behind ``mcp-guard run`` (stdio front, stdio upstream). Calls
    go one at a time, in alternating blocks (direct, proxy with the default bundle, proxy with an
    allow-all bundle, …) so drifts in machine load hit every column alike.
HTTP
    The recorder served over streamable HTTP (bench/http_upstream.py) is called directly and through
    ``mcp-guard run --transport http`` (HTTP front, HTTP upstream), on the 2025-11-25 era (an MCP
    session per client, keep-alive connection).

The proxy runs its real pipeline: secrets inspection, the embedded Rego engine (regorus), both audit
commits (the decision row before forwarding, the outcome row before answering) to SQLite. "added" is
proxy minus direct at the same percentile. The proxy's CPU time per call is read from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from bench.rawclient import CallTemplate, HttpClient, StdioClient, check_result

POLICIES = ("default", "allow-all")
TEXT = "hello from the benchmark"


async def _timed_block(call: Callable[[], Awaitable[dict[str, Any]]], n: int, out: list[float]) -> None:
    for _ in range(n):
        t = time.perf_counter()
        check_result(await call())
        out.append(time.perf_counter() - t)


def _row(name: str, direct: list[float], proxied: list[float], cpu_s: float | None) -> dict[str, Any]:
    d, p = common.summary_ms(direct), common.summary_ms(proxied)
    row = {
        "path": name,
        "direct_median_ms": d["median_ms"],
        "direct_p99_ms": d["p99_ms"],
        "proxy_median_ms": p["median_ms"],
        "proxy_p99_ms": p["p99_ms"],
        "added_median_ms": p["median_ms"] - d["median_ms"],
        "added_p99_ms": p["p99_ms"] - d["p99_ms"],
        "calls": p["n"],
    }
    if cpu_s is not None and proxied:
        row["proxy_cpu_us_per_call"] = cpu_s / len(proxied) * 1e6
    return row


async def _interleave(
    direct: Callable[[], Awaitable[dict[str, Any]]],
    proxies: dict[str, tuple[Callable[[], Awaitable[dict[str, Any]]], int]],
    calls: int,
    block: int,
    warmup: int,
) -> tuple[list[float], dict[str, list[float]], dict[str, float]]:
    """Warm every path up, then alternate blocks of ``block`` calls until each path made ``calls``."""
    scratch: list[float] = []
    await _timed_block(direct, warmup, scratch)
    for call, _pid in proxies.values():
        await _timed_block(call, warmup, scratch)
    d_lat: list[float] = []
    p_lat: dict[str, list[float]] = {k: [] for k in proxies}
    cpu: dict[str, float] = dict.fromkeys(proxies, 0.0)
    done = 0
    while done < calls:
        n = min(block, calls - done)
        await _timed_block(direct, n, d_lat)
        for name, (call, pid) in proxies.items():
            before = common.cpu_seconds(pid)
            await _timed_block(call, n, p_lat[name])
            cpu[name] += common.cpu_seconds(pid) - before
        done += n
    return d_lat, p_lat, cpu


async def stdio_paths(
    tmp: Path, calls: int, block: int, warmup: int, policies: tuple[str, ...]
) -> list[dict[str, Any]]:
    env = common.child_env()
    direct = await StdioClient.spawn([sys.executable, str(common.RECORDER)], env=env, cwd=str(common.REPO))
    proxies: dict[str, StdioClient] = {}
    logs = []
    try:
        await direct.initialize()
        for pol in policies:
            cfg = common.write_config(tmp / f"stdio-{pol}", {common.UPSTREAM: common.recorder_upstream()}, policy=pol)
            log = (tmp / f"stdio-{pol}.log").open("w")
            logs.append(log)
            proxies[pol] = await StdioClient.spawn(common.proxy_argv(cfg), env=env, cwd=str(common.REPO), stderr=log)
            await proxies[pol].initialize()
        t_direct = CallTemplate("echo", {"text": TEXT})
        t_proxy = CallTemplate(f"{common.UPSTREAM}__echo", {"text": TEXT})

        def proxy_call(c: StdioClient) -> Callable[[], Awaitable[dict[str, Any]]]:
            return lambda: c.call(t_proxy)

        d_lat, p_lat, cpu = await _interleave(
            lambda: direct.call(t_direct),
            {pol: (proxy_call(c), c.proc.pid) for pol, c in proxies.items()},
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
    return [_row(f"stdio → stdio, policy {pol}", d_lat, p_lat[pol], cpu[pol]) for pol in policies]


async def _http_session(url: str, api_key: str | None) -> HttpClient:
    c = HttpClient(url, era="legacy", api_key=api_key)
    await c.initialize()
    return c


async def http_clients(
    upstream_url: str, proxy_urls: dict[str, tuple[str, int]], calls: int, block: int, warmup: int
) -> list[dict[str, Any]]:
    direct = await _http_session(upstream_url, None)
    proxies = {pol: await _http_session(url, common.API_KEY) for pol, (url, _pid) in proxy_urls.items()}
    try:
        t_direct = CallTemplate("echo", {"text": TEXT})
        t_proxy = CallTemplate(f"{common.UPSTREAM}__echo", {"text": TEXT})

        def proxy_call(c: HttpClient) -> Callable[[], Awaitable[dict[str, Any]]]:
            return lambda: c.call(t_proxy, ())

        d_lat, p_lat, cpu = await _interleave(
            lambda: direct.call(t_direct, ()),
            {pol: (proxy_call(c), proxy_urls[pol][1]) for pol, c in proxies.items()},
            calls,
            block,
            warmup,
        )
    finally:
        await direct.close()
        for c in proxies.values():
            await c.close()
    return [_row(f"HTTP → HTTP, policy {pol}", d_lat, p_lat[pol], cpu[pol]) for pol in proxy_urls]


def http_paths(tmp: Path, calls: int, block: int, warmup: int, policies: tuple[str, ...]) -> list[dict[str, Any]]:
    with ExitStack() as stack:
        _up, up_url = stack.enter_context(common.http_upstream(tmp / "http-upstream.log"))
        proxy_urls: dict[str, tuple[str, int]] = {}
        for pol in policies:
            cfg = common.write_config(
                tmp / f"http-{pol}",
                {common.UPSTREAM: {"transport": "http", "url": up_url, "timeout_s": 30}},
                policy=pol,
            )
            proc, url = stack.enter_context(common.http_proxy(cfg, tmp / f"http-{pol}.log"))
            proxy_urls[pol] = (url, proc.pid)
        return asyncio.run(http_clients(up_url, proxy_urls, calls, block, warmup))


def run(
    calls: int = 3000,
    block: int = 50,
    warmup: int = 200,
    policies: tuple[str, ...] = POLICIES,
    transports: tuple[str, ...] = ("stdio", "http"),
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        if "stdio" in transports:
            rows += asyncio.run(stdio_paths(Path(tmp), calls, block, warmup, policies))
        if "http" in transports:
            rows += http_paths(Path(tmp), calls, block, warmup, policies)
    return {"calls": calls, "block": block, "warmup": warmup, "rows": rows}


def table(result: dict[str, Any]) -> str:
    cols = [
        ("direct p50", "direct_median_ms"),
        ("direct p99", "direct_p99_ms"),
        ("proxy p50", "proxy_median_ms"),
        ("proxy p99", "proxy_p99_ms"),
        ("added p50", "added_median_ms"),
        ("added p99", "added_p99_ms"),
    ]
    lines = [f"{'path':<34}" + "".join(f"{h:>12}" for h, _ in cols) + f"{'proxy CPU/call':>16}"]
    for r in result["rows"]:
        cpu = f"{r['proxy_cpu_us_per_call']:.0f} µs" if "proxy_cpu_us_per_call" in r else "-"
        lines.append(f"{r['path']:<34}" + "".join(f"{r[k]:>9.3f} ms" for _, k in cols) + f"{cpu:>16}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="measured calls per path")
    parser.add_argument("--block", type=int, default=50, help="calls per path before switching paths")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--policy", choices=POLICIES, action="append", help="bundle(s) to run (default: both)")
    parser.add_argument("--transport", choices=("stdio", "http"), action="append")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    result = run(
        args.calls, args.block, args.warmup, tuple(args.policy or POLICIES), tuple(args.transport or ("stdio", "http"))
    )
    print(table(result))
    if not args.no_save:
        print(f"wrote {common.save('bench_latency', {'machine': common.machine_info(), **result})}")
    else:
        print(json.dumps(result)[:0], end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
