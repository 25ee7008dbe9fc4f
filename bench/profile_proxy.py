"""Run ``mcp-guard`` under a profiler, for finding the hot path's costs.

    python bench/profile_proxy.py --out prof.txt -- run --config cfg.toml --transport stdio

Wraps :func:`mcp_guard.cli.main` in pyinstrument (``pip install pyinstrument``; not a project
dependency) or, with ``--cprofile``, the standard library's cProfile. The report is written when the
proxy exits (stdin closed, SIGTERM or SIGINT). ``python -m bench --profile`` drives this for the stdio
and HTTP call paths and writes the reports to bench/results/.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import signal
import sys
from pathlib import Path
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where the report goes")
    parser.add_argument("--cprofile", action="store_true", help="use cProfile (deterministic, slower)")
    parser.add_argument("--interval", type=float, default=0.0002, help="pyinstrument sampling interval (s)")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- then mcp-guard arguments")
    args = parser.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv

    from mcp_guard.cli import main as guard_main

    # SIGTERM ends the proxy through its own handler; make sure the report is still written if the
    # signal arrives before that handler is installed.
    def _term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    if args.cprofile:
        prof = cProfile.Profile()
        try:
            prof.runcall(guard_main, argv)
        except KeyboardInterrupt:
            pass
        finally:
            prof.dump_stats(args.out.with_suffix(".pstats"))  # for pstats' callers/callees views
            with args.out.open("w") as f:
                stats = pstats.Stats(prof, stream=f)
                stats.sort_stats("cumulative").print_stats(80)
                stats.sort_stats("tottime").print_stats(60)
        return 0

    from pyinstrument import Profiler

    profiler = Profiler(interval=args.interval, async_mode="disabled")
    profiler.start()
    try:
        guard_main(argv)
    except KeyboardInterrupt:
        pass
    finally:
        profiler.stop()
        from pyinstrument.renderers import PstatsRenderer

        pst = args.out.with_suffix(".pstats")
        pst.write_bytes(profiler.output(PstatsRenderer()).encode("utf-8", "surrogateescape"))
        flat = io.StringIO()
        pstats.Stats(str(pst), stream=flat).sort_stats("tottime").print_stats(40)
        args.out.write_text(
            profiler.output_text(unicode=True, color=False, show_all=False)
            + "\n\nSelf time by function (wall clock, idle in epoll included):\n"
            + flat.getvalue()
        )
        args.out.with_suffix(".html").write_text(profiler.output_html())
    return 0


if __name__ == "__main__":
    sys.exit(main())
