"""A light closed-loop load generator for streamable HTTP MCP servers (run it in its own process).

    python bench/loadgen.py --url http://127.0.0.1:8765/mcp --clients 32 --duration 10 --api-key KEY

Each client is one keep-alive HTTP/1.1 connection; on the 2025-11-25 era (``--era legacy``) it opens its own MCP
session first (initialize + notifications/initialized), on 2026-07-28 (``--era modern``) every request is
self-contained (from a client that declares no capability; ``--era modern-asking``: one that declares sampling,
elicitation and roots, so its calls go through the input-required bridge). Clients call ``tools/call`` back to back
with a pre-built body; calls that complete during the warm-up are not counted. Prints one JSON object: calls,
errors, calls/s, p50/p90/p99 latency, and ``completed`` — every answered call, warm-up included (what the proxy's
CPU over the whole run is divided by).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import raise_fd_limit, summary_ms
from bench.rawclient import (
    ASKING_CAPABILITIES,
    CallTemplate,
    HttpClient,
    ProtocolError,
    check_result,
    modern_meta,
)


async def run(
    url: str,
    era: str,
    clients: int,
    duration: float,
    warmup: float,
    tool: str,
    text: str,
    api_key: str | None,
    max_calls: int | None,
) -> dict[str, Any]:
    meta = {"legacy": None, "modern": modern_meta(), "modern-asking": modern_meta(ASKING_CAPABILITIES)}[era]
    template = CallTemplate(tool, {"text": text}, meta=meta)
    latencies: list[float] = []
    errors: list[str] = []
    conns = [HttpClient(url, era="legacy" if era == "legacy" else "modern", api_key=api_key) for _ in range(clients)]
    setup_started = time.perf_counter()
    await asyncio.gather(*(c.initialize() for c in conns))
    setup_s = time.perf_counter() - setup_started
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration
    measured_calls = 0
    completed = 0

    async def client(c: HttpClient) -> None:
        nonlocal measured_calls, completed
        extra = c.call_headers(template)
        while True:
            t = time.perf_counter()
            if t >= stop_at or (max_calls is not None and measured_calls >= max_calls):
                return
            try:
                check_result(await c.call(template, extra))
            except (ProtocolError, OSError, ValueError, asyncio.IncompleteReadError) as e:
                errors.append(str(e)[:300])
                await c.close()
                if len(errors) > 1000:
                    return
                continue
            done = time.perf_counter()
            completed += 1
            if t >= measure_from:
                latencies.append(done - t)
                measured_calls += 1

    await asyncio.gather(*(client(c) for c in conns))
    elapsed = min(time.perf_counter(), stop_at) - measure_from
    for c in conns:
        await c.close()
    return {
        "clients": clients,
        "era": era,
        "seconds": elapsed,
        "calls": len(latencies),
        "completed": completed,
        "calls_per_s": len(latencies) / elapsed if elapsed > 0 else float("nan"),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "setup_s": setup_s,
        **summary_ms(latencies),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--era", choices=("legacy", "modern", "modern-asking"), default="legacy")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--tool", default="everything__echo")
    parser.add_argument("--text", default="hello from the benchmark")
    parser.add_argument("--api-key")
    parser.add_argument("--max-calls", type=int, help="stop after this many measured calls (smoke runs)")
    args = parser.parse_args()
    raise_fd_limit()
    result = asyncio.run(
        run(
            args.url,
            args.era,
            args.clients,
            args.duration,
            args.warmup,
            args.tool,
            args.text,
            args.api_key,
            args.max_calls,
        )
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
