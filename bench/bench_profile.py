"""Profile the proxy's hot path: the stdio call path and the HTTP call path, under pyinstrument.

    python bench/bench_profile.py            # writes bench/results/profile-{stdio,http}-*.txt (+ .html)

Needs ``pip install pyinstrument`` (not a project dependency; ``--cprofile`` uses the standard library
instead). The stdio profile covers N sequential ``tools/call`` through ``mcp-guard run`` (stdio front,
recorder upstream over stdio); the HTTP profile covers bench/loadgen.py at 32 clients against
``mcp-guard run --transport http`` (same upstream). Both on the default bundle with the audit store on.
"""

from __future__ import annotations

import argparse
import asyncio
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

PROFILER = Path(__file__).resolve().parent / "profile_proxy.py"


def _profiled(cfg: Path, out: Path, cprofile: bool, *run_args: str, log_level: str = "warning") -> list[str]:
    return [
        sys.executable,
        str(PROFILER),
        "--out",
        str(out),
        *(["--cprofile"] if cprofile else []),
        "--",
        "run",
        "--config",
        str(cfg),
        "--log-level",
        log_level,
        *run_args,
    ]


async def _stdio(cfg: Path, out: Path, calls: int, cprofile: bool, log: Path) -> None:
    with log.open("w") as err:
        c = await StdioClient.spawn(
            _profiled(cfg, out, cprofile), env=common.child_env(), cwd=str(common.REPO), stderr=err
        )
        try:
            await c.initialize()
            t = CallTemplate(f"{common.UPSTREAM}__echo", {"text": "hello from the benchmark"})
            for _ in range(calls):
                check_result(await c.call(t))
        finally:
            await c.close(timeout=120)


def profile_stdio(
    directory: Path, out: Path, calls: int = 3000, cprofile: bool = False, policy: str = "default"
) -> Path:
    cfg = common.write_config(directory / "stdio", {common.UPSTREAM: common.recorder_upstream()}, policy=policy)
    asyncio.run(_stdio(cfg, out, calls, cprofile, directory / "stdio.log"))
    return out


def profile_http(
    directory: Path, out: Path, seconds: float = 8.0, clients: int = 32, cprofile: bool = False, policy: str = "default"
) -> tuple[Path, dict[str, Any]]:
    cfg = common.write_config(directory / "http", {common.UPSTREAM: common.recorder_upstream()}, policy=policy)
    log = directory / "http.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            _profiled(cfg, out, cprofile, "--transport", "http", "--port", "0", log_level="info"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=common.REPO,
            env=common.child_env(),
        )
        try:
            url = common.wait_for_log_url(proc, log, '"http.listening"', 60)
            row = load(url, clients, seconds, 1.0)
        finally:
            common.stop_process(proc, timeout=120)
    deadline = time.monotonic() + 60
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return out, row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="stdio: sequential calls profiled")
    parser.add_argument("--seconds", type=float, default=8.0, help="HTTP: seconds of load profiled")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--policy", choices=("default", "allow-all"), default="default")
    parser.add_argument("--only", choices=("stdio", "http"))
    args = parser.parse_args()
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        if args.only in (None, "stdio"):
            out = profile_stdio(
                Path(tmp), common.RESULTS / f"profile-stdio-{stamp}.txt", args.calls, args.cprofile, args.policy
            )
            print(f"stdio profile: {out}")
        if args.only in (None, "http"):
            out, row = profile_http(
                Path(tmp),
                common.RESULTS / f"profile-http-{stamp}.txt",
                args.seconds,
                args.clients,
                args.cprofile,
                args.policy,
            )
            print(f"HTTP profile: {out} ({row['calls_per_s']:.0f} calls/s under the profiler)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
