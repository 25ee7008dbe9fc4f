"""Memory: the proxy's resident set with 1,000 open client sessions over HTTP, and with 20 upstreams.

    python bench/bench_memory.py                  # 1000 sessions, 20 upstreams
    python bench/bench_memory.py --sessions 50 --upstreams 3

Sessions
    ``mcp-guard run --transport http`` (one recorder upstream over stdio, default bundle). N clients each
    open an MCP session on the 2025-11-25 era (initialize, notifications/initialized), make one
    ``tools/call``, and open the session's standalone GET stream (as the SDK's client does), which stays
    connected: N sessions and N open connections. RSS of the proxy process before and after.
Upstreams
    ``mcp-guard run`` (stdio front) with U recorder upstreams; RSS of the proxy once all are ready (and,
    separately, of the U child processes), after one call to each.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from bench.rawclient import CallTemplate, HttpClient, StdioClient, check_result

TARGET_MB = 300.0


async def _open_sessions(url: str, n: int, parallel: int = 50) -> tuple[list[HttpClient], float]:
    """``n`` sessions, each with one call made and its GET stream open; returns the stream holders."""
    template = CallTemplate(f"{common.UPSTREAM}__echo", {"text": "hello"})
    streams: list[HttpClient] = []
    sem = asyncio.Semaphore(parallel)

    async def one() -> None:
        async with sem:
            c = HttpClient(url, era="legacy", api_key=common.API_KEY)
            await c.initialize()
            check_result(await c.call(template, ()))
            holder = HttpClient(url, era="legacy", api_key=common.API_KEY)
            holder.session_id = c.session_id
            await holder.open_get_stream()
            await c.close()
            streams.append(holder)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return streams, time.perf_counter() - started


def sessions(directory: Path, n: int, policy: str = "default") -> dict[str, Any]:
    common.raise_fd_limit()
    cfg = common.write_config(directory / "sessions", {common.UPSTREAM: common.recorder_upstream()}, policy=policy)
    with common.http_proxy(cfg, directory / "sessions.log") as (proc, url):

        async def go() -> dict[str, Any]:
            warm = HttpClient(url, era="legacy", api_key=common.API_KEY)
            await warm.initialize()
            check_result(await warm.call(CallTemplate(f"{common.UPSTREAM}__echo", {"text": "hi"}), ()))
            await warm.close()
            base = common.rss_mb(proc.pid)
            streams, took = await _open_sessions(url, n)
            await asyncio.sleep(1.0)  # let the proxy settle (no assertion depends on it)
            after = common.rss_mb(proc.pid)
            for s in streams:
                await s.close()
            return {
                "sessions": n,
                "rss_before_mb": base,
                "rss_mb": after,
                "per_session_kb": (after - base) * 1024 / max(n, 1),
                "setup_s": took,
                "target_mb": TARGET_MB,
                "open_connections": len(streams),
            }

        return asyncio.run(go())


def upstreams(directory: Path, n: int, policy: str = "default") -> dict[str, Any]:
    names = [f"{common.UPSTREAM}{i:02d}" if i else common.UPSTREAM for i in range(n)]
    cfg = common.write_config(
        directory / "upstreams", {name: common.recorder_upstream() for name in names}, policy=policy
    )

    async def go() -> dict[str, Any]:
        with (directory / "upstreams.log").open("w") as err:
            c = await StdioClient.spawn(
                common.proxy_argv(cfg), env=common.child_env(), cwd=str(common.REPO), stderr=err
            )
            try:
                await c.initialize()
                ok = 0
                for name in names:
                    # only "everything" is granted by the default bundle's developer role; others may be denied
                    answer = await c.call(CallTemplate(f"{name}__echo", {"text": "hi"}))
                    ok += "result" in answer
                pid = c.proc.pid
                children = common.children_of(pid)
                return {
                    "upstreams": n,
                    "rss_mb": common.rss_mb(pid),
                    "children": len(children),
                    "children_rss_mb": sum(common.rss_mb(p) for p in children),
                    "answered": ok,
                }
            finally:
                await c.close(timeout=30)

    return asyncio.run(go())


def run(n_sessions: int = 1000, n_upstreams: int = 20, policy: str = "default") -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        return {
            "sessions": sessions(Path(tmp), n_sessions, policy),
            "upstreams": upstreams(Path(tmp), n_upstreams, policy),
        }


def table(result: dict[str, Any]) -> str:
    s, u = result["sessions"], result["upstreams"]
    return "\n".join(
        [
            f"{s['sessions']} HTTP sessions (each with its GET stream open): proxy RSS {s['rss_mb']:.0f} MB "
            f"(idle {s['rss_before_mb']:.0f} MB, +{s['per_session_kb']:.0f} KB/session; "
            f"target ≤{s['target_mb']:.0f} MB); "
            f"opened in {s['setup_s']:.1f} s",
            f"{u['upstreams']} stdio upstreams: proxy RSS {u['rss_mb']:.0f} MB "
            f"(the {u['children']} upstream processes: {u['children_rss_mb']:.0f} MB together)",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--upstreams", type=int, default=20)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    result = run(args.sessions, args.upstreams)
    print(table(result))
    if not args.no_save:
        print(f"wrote {common.save('bench_memory', {'machine': common.machine_info(), **result})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
