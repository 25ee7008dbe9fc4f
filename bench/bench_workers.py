"""HTTP throughput with ``mcp-guard run --workers N``, for each N in turn, alternating, in one run.

    python bench/bench_workers.py                        # --workers 1 and 2, each twice, 32 clients, 6 s
    python bench/bench_workers.py --workers 1,2,4 --rounds 1 --duration 3
    python bench/bench_workers.py --duration 1 --warmup 0.5 --rounds 1 --no-save   # a smoke run

The proxy is the real one (default bundle, audit on, the recorder as a stdio upstream per worker); the load
is bench_throughput's (``loadgen.py`` in its own process: CLIENTS closed-loop 2025-11-25 sessions, each on
one keep-alive connection, so each session stays on the worker that accepted its connection). The N values
alternate round by round so machine load hits them alike. On a machine with C free cores, N above C only
adds contention: the figure to read is the ratio at N ≤ cores.
"""

from __future__ import annotations

import argparse
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


def _serve(cfg: Path, log: Path, workers: int) -> subprocess.Popen[bytes]:
    argv = common.proxy_argv(cfg, "--transport", "http", "--port", "0", "--workers", str(workers), log_level="info")
    with log.open("w") as err:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=common.REPO,
            env=common.child_env(),
        )


def _url_when_all_listen(proc: subprocess.Popen[bytes], log: Path, workers: int, within: float = 90.0) -> str:
    url = common.wait_for_log_url(proc, log, '"http.listening"', within)
    deadline = time.monotonic() + within
    while sum('"http.listening"' in line for line in log.read_text().splitlines()) < workers:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"not every worker listens:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return url


def run(counts: list[int], rounds: int, clients: int, duration: float, warmup: float) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        for r in range(rounds):
            for n in counts:
                where = Path(tmp) / f"r{r}w{n}"
                cfg = common.write_config(where, {common.UPSTREAM: common.recorder_upstream()})
                proc = _serve(cfg, where / "proxy.log", n)
                try:
                    row = load(_url_when_all_listen(proc, where / "proxy.log", n), clients, duration, warmup)
                finally:
                    common.stop_process(proc)
                row |= {"workers": n, "round": r}
                rows.append(row)
                print(f"  round {r}, {n} worker(s): {row['calls_per_s']:.0f} calls/s", file=sys.stderr)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'workers':>7}{'round':>6}{'calls/s':>9}{'p50':>10}{'p99':>10}{'errors':>7}"]
    for r in rows:
        lines.append(
            f"{r['workers']:>7}{r['round']:>6}{r['calls_per_s']:>9.0f}{r['median_ms']:>7.1f} ms"
            f"{r['p99_ms']:>7.1f} ms{r['errors']:>7}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    rows = run(counts, args.rounds, args.clients, args.duration, args.warmup)
    print(table(rows))
    if not args.no_save:
        print(f"wrote {common.save('bench_workers', {'machine': common.machine_info(), 'rows': rows})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
