"""Bytecodes per stdio ``tools/call`` by Python function: where the interpreter's share of a call goes.

    python bench/bench_opcodes.py                        # default bundle, 100 calls, the top 40 functions
    python bench/bench_opcodes.py --policy allow-all --calls 50 --top 60
    python bench/bench_opcodes.py --path http --era modern   # the HTTP front, one 2026-07-28 client

Why: the interpreter executes ~60 % of a call's instructions (bench_instructions.py), and neither callgrind (it
sees one C function, the eval loop) nor a sampling profiler (it sees time, moved by the host's load and by cold
caches) says which Python code they are spent on. This counts the bytecodes each Python function executes over
the counted calls: a figure that is the same from run to run and names the code — 2,022 of 17,554 bytecodes a call
in ``frozen.evolve`` and 25 ``Mapping`` checks a call in the decision cache were found this way (README, #19's
eighteenth step). Bytecodes are not instructions (a C call inside one can be large: a SQLite statement, a JSON
encode), so read it beside bench_instructions.py.

How: the proxy (stdio front — or with ``--path http`` the HTTP front and one sequential client on one keep-alive
connection, a 2025-11-25 session or with ``--era modern`` 2026-07-28 requests; the recorder over stdio, audit on) runs
under this script's ``--proxy`` mode, which installs a ``sys.settrace`` with opcode events on the main thread — the
event loop's — when told (SIGUSR1) and writes the counts when told again (SIGUSR2); the client makes ``--warmup``
calls, then the counted ones. Frames of the ``__init__`` and copiers that ``dataclasses`` and ``frozen.evolve`` write
at run time share one file name, so they are told apart by their class. Tracing slows the proxy ~20×: the policy and
state budgets are raised as bench_instructions.py raises them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from bench.bench_instructions import ERAS, http_calls, slow_config, template_for
from bench.rawclient import StdioClient, check_result

_WRITE_WITHIN_S = 60.0  # how long the client waits for the proxy to write its counts
_START_WITHIN_S = 120.0  # an HTTP proxy under the tracer takes seconds to listen
_SELF = Path(__file__).resolve()


def _where(frame: FrameType) -> str:
    """A function's name in the table: short file, first line, name (a generated one by its class)."""
    code = frame.f_code
    name = code.co_name
    if code.co_filename == "<string>":
        owner = frame.f_locals.get("self", frame.f_locals.get("old"))
        name = f"{name} of {type(owner).__name__}"
    short = code.co_filename
    for cut in ("site-packages/", "src/", "lib/python3.11/"):
        short = short.split(cut)[-1]
    return f"{short}:{code.co_firstlineno} {name}"


def _serve(out: Path, argv: list[str]) -> int:
    """The proxy, with opcode counting switched on by SIGUSR1 and written to ``out`` by SIGUSR2."""
    counts: Counter[str] = Counter()

    def local(frame: FrameType, event: str, _arg: Any) -> Any:
        if event == "opcode":
            counts[_where(frame)] += 1
        return local

    def enter(frame: FrameType, _event: str, _arg: Any) -> Any:
        frame.f_trace_opcodes = True
        return local

    def start(*_: Any) -> None:
        counts.clear()
        sys.settrace(enter)

    def stop(*_: Any) -> None:
        sys.settrace(None)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(counts)))
        tmp.replace(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    from mcp_guard.cli import main as guard_main

    return guard_main(argv)


def _count(directory: Path, policy: str, calls: int, warmup: int, path: str, era: str) -> dict[str, int]:
    cfg = slow_config(directory, policy)
    out = directory / "opcodes.json"
    argv = [sys.executable, str(_SELF), "--proxy", str(out), "--"]
    argv += ["run", "--config", str(cfg)]
    if path == "http":
        _count_http(directory, argv, out, calls, warmup, era)
    else:
        asyncio.run(_count_stdio(directory, argv, out, calls, warmup))
    counted: dict[str, int] = json.loads(out.read_text())
    return counted


async def _counted(pid: int, out: Path, calls: int, call: Callable[[], Awaitable[None]]) -> None:
    """``calls`` calls with the counter on, then the counts written to ``out``."""
    os.kill(pid, signal.SIGUSR1)
    for _ in range(calls):
        await call()
    os.kill(pid, signal.SIGUSR2)
    # the proxy writes its counts at its next bytecode after SIGUSR2
    await asyncio.to_thread(common.wait_for_file, out, _WRITE_WITHIN_S, "counts")


async def _count_stdio(directory: Path, argv: list[str], out: Path, calls: int, warmup: int) -> None:
    """The stdio front: one sequential client over the proxy's stdin/stdout."""
    with (directory / "proxy.log").open("w") as err:
        client = await StdioClient.spawn(
            [*argv, "--log-level", "warning"], env=common.child_env(), cwd=str(common.REPO), stderr=err
        )

    async def one() -> None:
        check_result(await client.call(template_for("legacy")))

    try:
        await client.initialize()
        for _ in range(warmup):
            await one()
        await _counted(client.proc.pid, out, calls, one)
    finally:
        await client.close(timeout=120)


def _count_http(directory: Path, argv: list[str], out: Path, calls: int, warmup: int, era: str) -> None:
    """The HTTP front: one sequential client on one keep-alive connection, a 2025-11-25 session (``legacy``) or
    self-contained 2026-07-28 requests (``modern``), as bench_instructions.py makes them."""
    log = directory / "proxy.log"
    argv = [*argv, "--log-level", "info", "--transport", "http", "--port", "0"]
    with log.open("w") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=str(common.REPO),
            env=common.child_env(),
        )
    try:
        url = common.wait_for_log_url(proc, log, '"http.listening"', _START_WITHIN_S)
        http_calls(url, era, warmup, lambda one: _counted(proc.pid, out, calls, one))
    finally:
        common.stop_process(proc, timeout=120)


def run(policy: str, calls: int, warmup: int, path: str = "stdio", era: str = "legacy") -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-opcodes-") as tmp:
        counts = _count(Path(tmp), policy, calls, warmup, path, era)
    by_file: Counter[str] = Counter()
    for where, n in counts.items():
        by_file[where.split(":")[0]] += n
    return {
        "path": path if path == "stdio" else f"http ({era} era)",
        "policy": policy,
        "calls": calls,
        "bytecodes_per_call": sum(counts.values()) / calls,
        "functions_per_call": {k: v / calls for k, v in Counter(counts).most_common()},
        "files_per_call": {k: v / calls for k, v in by_file.most_common()},
    }


def table(report: dict[str, Any], top: int) -> str:
    total = report["bytecodes_per_call"]
    lines = [
        f"bytecodes per tools/call ({report.get('path', 'stdio')} front, {report['policy']} bundle, "
        f"{report['calls']} calls counted): {total:,.0f}"
    ]
    lines.append(f"{'per call':>9} {'share':>6}  function")
    for where, n in list(report["functions_per_call"].items())[:top]:
        lines.append(f"{n:>9,.0f} {100 * n / total:>5.1f}%  {where}")
    lines.append(f"{'per call':>9} {'share':>6}  file")
    for where, n in list(report["files_per_call"].items())[: max(5, top // 3)]:
        lines.append(f"{n:>9,.0f} {100 * n / total:>5.1f}%  {where}")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--proxy":  # the proxy under the counter (see _count)
        rest = sys.argv[3:]
        return _serve(Path(sys.argv[2]), rest[1:] if rest[:1] == ["--"] else rest)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", choices=("stdio", "http"), default="stdio", help="the front: stdio, or HTTP")
    parser.add_argument("--era", choices=ERAS, default="legacy", help="with --path http (bench_instructions.py)")
    parser.add_argument("--policy", choices=("default", "allow-all"), default="default")
    parser.add_argument("--calls", type=int, default=100, help="calls counted")
    parser.add_argument("--warmup", type=int, default=100, help="calls before counting")
    parser.add_argument("--top", type=int, default=40, help="functions shown")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if args.calls < 1 or args.warmup < 0 or args.top < 1:
        parser.error("--calls and --top must be at least 1 and --warmup not negative")
    report = {"machine": common.machine_info(), **run(args.policy, args.calls, args.warmup, args.path, args.era)}
    print(table(report, args.top))
    if not args.no_save:
        print(f"wrote {common.save('opcodes', report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
