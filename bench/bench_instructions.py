"""Instructions per ``tools/call`` of the whole proxy (stdio or HTTP front), counted by valgrind's callgrind: a figure
the machine's load does not move.

    python bench/bench_instructions.py                          # this tree, default bundle, 200 calls
    python bench/bench_instructions.py /tmp/before .            # two trees (checkouts or git worktrees)
    python bench/bench_instructions.py --policy allow-all --ablate no-audit    # a variant (bench/ablate.py)
    python bench/bench_instructions.py /tmp/before . --path http             # the HTTP front, one client
    python bench/bench_instructions.py --path http --era modern              # ... a 2026-07-28 (stateless) one
    python bench/bench_instructions.py --path http --era modern-asking       # ... one that can be asked (bridged)
    python -m bench --only instructions                         # default bundle and allow-all

Why: CPU per call on this machine moves by ±40 % from hour to hour with the host's load, so a step worth 2 % needs
dozens of interleaved blocks to show (bench_trees.py) and still comes with wide quartiles. The instructions a call
executes in user space are counted exactly: the same tree gives the same count within ~1 % (run to run: a SQLite
checkpoint, a cache TTL or a collector pass falls into the window or not), whatever else the machine is doing. They
are not time — a cache miss, a syscall's work in the kernel (callgrind counts user space only: a ``pwrite`` of the
WAL is one instruction here) and waiting are not in them — so they complement the CPU benches and never replace
them; the split by library says where the instructions go (the interpreter, SQLite, JSON, pydantic, hashing, libc).

How: each proxy is ``mcp-guard run`` (stdio front — or with ``--path http`` the HTTP front and one sequential client
on one keep-alive connection, a 2025-11-25 session or with ``--era modern`` 2026-07-28 requests (``modern-asking``: of
a client that declares sampling, elicitation and roots, whose calls the input-required bridge takes) — the recorder
over stdio, default bundle unless ``--policy``, audit on), the tree's ``src`` first on ``PYTHONPATH``, run under
``valgrind --tool=callgrind --instr-atstart=no`` with ``PYTHONHASHSEED=0``; one sequential client makes ``--warmup``
calls, switches collection on (``callgrind_control -i on``), makes ``--calls`` calls, switches it off and dumps. The
policy and state budgets are raised for the run (the program runs ~50× slower under valgrind; a 250 ms policy budget
would deny calls). Needs Debian's ``valgrind`` package (``callgrind_control``, ``callgrind_annotate``). Prints a table
and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from bench.rawclient import ASKING_CAPABILITIES, CallTemplate, HttpClient, StdioClient, check_result, modern_meta

TOOLS = ("valgrind", "callgrind_control", "callgrind_annotate")
# The libraries the split names (the object file's name starts so); everything else is "other".
LIBRARIES = (
    ("python", "libpython"),
    ("sqlite", "libsqlite3"),
    ("json", "_json."),
    ("pydantic", "_pydantic_core"),
    ("crypto", "libcrypto"),
    ("libc", "libc."),
    ("uvloop", "loop."),
)
_BUDGETS = {"[policy]": "timeout_ms = 60000", "[audit]": "state_timeout_ms = 60000"}
_ANNOTATED = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+.*\[(?P<object>[^\]]+)\]\s*$")
_CONTROL_TIMEOUT_S = 120.0  # a callgrind_control request waits for the program's next basic block
_START_WITHIN_S = 300.0  # an HTTP proxy under valgrind takes tens of seconds to listen
TEMPLATE = CallTemplate(f"{common.UPSTREAM}__echo", {"text": "hello from the benchmark"})
# The same call as a 2026-07-28 request: self-contained, its envelope in its own _meta.
MODERN_TEMPLATE = CallTemplate(f"{common.UPSTREAM}__echo", {"text": "hello from the benchmark"}, meta=modern_meta())
# ... from a client that declares sampling, elicitation and roots: the input-required bridge takes its calls.
ASKING_TEMPLATE = CallTemplate(
    f"{common.UPSTREAM}__echo", {"text": "hello from the benchmark"}, meta=modern_meta(ASKING_CAPABILITIES)
)
ERAS = ("legacy", "modern", "modern-asking")


def template_for(era: str) -> CallTemplate:
    """The counted call of an era (:data:`ERAS`)."""
    return {"legacy": TEMPLATE, "modern": MODERN_TEMPLATE, "modern-asking": ASKING_TEMPLATE}[era]


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def slow_config(directory: Path, policy: str) -> Path:
    """The bench's usual config, with the budgets a proxy slowed ~20-50× (valgrind, a tracer) needs."""
    cfg = common.write_config(directory, {common.UPSTREAM: common.recorder_upstream()}, policy=policy)
    lines = []
    for line in cfg.read_text().splitlines():
        lines.append(line)
        if line in _BUDGETS:
            lines.append(_BUDGETS[line])
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def _control(*argv: str) -> None:
    subprocess.run(["callgrind_control", *argv], check=True, capture_output=True, timeout=_CONTROL_TIMEOUT_S)


def _argv(directory: Path, cfg: Path, ablate: str, *front: str) -> list[str]:
    program = [str(common.REPO / "bench" / "ablate.py"), ablate, "--"] if ablate else ["-m", "mcp_guard"]
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={directory / 'callgrind.out'}",
        sys.executable,
        *program,
        "run",
        "--config",
        str(cfg),
        *front,
    ]


async def _counted(pid: int, calls: int, call: Callable[[], Awaitable[None]]) -> None:
    """``calls`` calls with collection on, then the counts dumped."""
    await asyncio.to_thread(_control, "-i", "on", str(pid))
    for _ in range(calls):
        await call()
    await asyncio.to_thread(_control, "-i", "off", str(pid))
    await asyncio.to_thread(_control, "-d", str(pid))


async def _count_stdio(
    tree: Path, directory: Path, cfg: Path, ablate: str, env: dict[str, str], calls: int, warmup: int
) -> None:
    """The stdio front: one sequential client over the proxy's stdin/stdout."""
    with (directory / "proxy.log").open("w") as err:
        argv = _argv(directory, cfg, ablate, "--log-level", "warning")
        client = await StdioClient.spawn(argv, env=env, cwd=str(tree), stderr=err)

    async def one() -> None:
        check_result(await client.call(TEMPLATE))

    try:
        await client.initialize()
        for _ in range(warmup):
            await one()
        await _counted(client.proc.pid, calls, one)
    finally:
        await client.close(timeout=300)


def _count_http(
    tree: Path, directory: Path, cfg: Path, ablate: str, env: dict[str, str], calls: int, warmup: int, era: str
) -> None:
    """The HTTP front: one sequential client on one keep-alive connection, a 2025-11-25 session (``legacy``) or
    self-contained 2026-07-28 requests (``modern``)."""
    log = directory / "proxy.log"
    argv = _argv(directory, cfg, ablate, "--log-level", "info", "--transport", "http", "--port", "0")
    with log.open("w") as err:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, cwd=tree, env=env
        )
    try:
        url = common.wait_for_log_url(proc, log, '"http.listening"', _START_WITHIN_S)
        http_calls(url, era, warmup, lambda one: _counted(proc.pid, calls, one))
    finally:
        common.stop_process(proc, timeout=300)


def http_calls(
    url: str, era: str, warmup: int, counted: Callable[[Callable[[], Awaitable[None]]], Awaitable[None]]
) -> None:
    """One sequential client on one keep-alive connection to ``url`` (a 2025-11-25 session, or 2026-07-28 requests:
    :func:`template_for`): ``warmup`` calls, then ``counted(one)`` — the caller's counting around its calls."""

    async def calls_over_http() -> None:
        client = HttpClient(url, era="legacy" if era == "legacy" else "modern", api_key=common.API_KEY)
        await client.connect()
        await client.initialize()
        template = template_for(era)
        headers = client.call_headers(template)

        async def one() -> None:
            check_result(await client.call(template, headers))

        for _ in range(warmup):
            await one()
        await counted(one)
        await client.close()

    asyncio.run(calls_over_http())


def _count(
    tree: Path, directory: Path, policy: str, ablate: str, calls: int, warmup: int, path: str, era: str = "legacy"
) -> None:
    """One proxy of ``tree`` under callgrind, its ``calls`` calls counted into ``directory`` (:func:`_read`)."""
    cfg = slow_config(directory, policy)
    env = common.child_env(PYTHONPATH=str(tree / "src"), PYTHONHASHSEED="0")
    if path == "http":
        _count_http(tree, directory, cfg, ablate, env, calls, warmup, era)
    else:
        asyncio.run(_count_stdio(tree, directory, cfg, ablate, env, calls, warmup))


def _read(tree: Path, directory: Path, calls: int) -> dict[str, Any]:
    """The counts :func:`_count` left in ``directory``: instructions per call, split by library."""
    dumps = sorted(p for p in directory.glob("callgrind.out*") if p.stat().st_size > 0)
    counted = [(_total(p), p) for p in dumps]
    total, dump = max(counted, default=(0, None))
    if dump is None or total == 0:
        raise RuntimeError(f"{tree}: callgrind wrote no counts ({[p.name for p in dumps]})")
    split = _split(dump)
    return {
        "tree": str(tree),
        "instructions_per_call": total / calls,
        "by_library_per_call": {k: v / calls for k, v in split.items()},
    }


def _total(dump: Path) -> int:
    """The dump's event total: the larger of its ``summary:`` and ``totals:`` lines (a dump may give 0 in one)."""
    found = [
        int(line.split()[1])
        for line in dump.read_text(errors="replace").splitlines()
        if line.startswith(("summary:", "totals:"))
    ]
    return max(found, default=0)


def _split(dump: Path) -> dict[str, int]:
    """Instructions of ``dump`` by library (:data:`LIBRARIES`), from callgrind_annotate's per-function listing."""
    listing = subprocess.run(
        ["callgrind_annotate", "--threshold=100", str(dump)], capture_output=True, text=True, check=True, timeout=300
    ).stdout
    split: Counter[str] = Counter()
    for line in listing.splitlines():
        m = _ANNOTATED.match(line)
        if m is None:
            continue
        name = os.path.basename(m.group("object"))
        lib = next((label for label, prefix in LIBRARIES if name.startswith(prefix)), "other")
        split[lib] += int(m.group(1).replace(",", ""))
    return dict(split)


def run(
    trees: list[Path], policy: str, ablate: str, calls: int, warmup: int, path: str = "stdio", era: str = "legacy"
) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        for i, tree in enumerate(trees):
            where = Path(tmp) / f"tree{i}"
            where.mkdir()
            _count(tree, where, policy, ablate, calls, warmup, path, era)
            rows.append(_read(tree, where, calls))
    report: dict[str, Any] = {"path": path, "policy": policy, "ablate": ablate or None, "calls": calls, "trees": rows}
    if path == "http":
        report["era"] = era
    if len(rows) == 2:
        before, after = rows[0]["instructions_per_call"], rows[1]["instructions_per_call"]
        report["difference_per_call"] = after - before
        report["difference_percent"] = 100 * (after - before) / before
    return report


def table(report: dict[str, Any]) -> str:
    labels = [label for label, _ in LIBRARIES] + ["other"]
    head = f"{'tree':<28} {'instr/call':>11} " + " ".join(f"{label:>9}" for label in labels)
    lines = [
        f"instructions per tools/call ({report.get('path', 'stdio')} front"
        + (f" ({report['era']} era)" if report.get("era") else "")
        + f", {report['policy']} bundle"
        + (f", ablate {report['ablate']}" if report["ablate"] else "")
        + f", {report['calls']} calls counted; K = thousand)",
        head,
    ]
    for row in report["trees"]:
        split = row["by_library_per_call"]
        cells = " ".join(f"{split.get(label, 0) / 1000:>8.0f}K" for label in labels)
        lines.append(f"{row['tree'][-28:]:<28} {row['instructions_per_call'] / 1000:>10,.0f}K {cells}")
    if "difference_per_call" in report:
        lines.append(
            f"later − earlier: {report['difference_per_call'] / 1000:+,.1f}K instructions per call "
            f"({report['difference_percent']:+.1f} %)"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", type=Path, nargs="*", help="zero (this tree), one or two source trees")
    parser.add_argument("--path", choices=("stdio", "http"), default="stdio", help="the front: stdio, or HTTP")
    parser.add_argument(
        "--era",
        choices=ERAS,
        default="legacy",
        help="HTTP: a 2025-11-25 session, 2026-07-28 requests of a client that declares no capability (modern), "
        "or of one that declares sampling, elicitation and roots (modern-asking: bridged)",
    )
    parser.add_argument("--policy", choices=("default", "allow-all"), default="default")
    parser.add_argument("--ablate", default="", help="bench/ablate.py switches for every proxy (comma-separated)")
    parser.add_argument("--calls", type=int, default=200, help="calls counted")
    parser.add_argument("--warmup", type=int, default=100, help="calls before counting")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    trees = [t.resolve() for t in args.trees] or [common.REPO]
    if len(trees) > 2:
        parser.error("at most two trees")
    for tree in trees:
        if not (tree / "src" / "mcp_guard").is_dir():
            parser.error(f"{tree}: not an mcp-guard source tree (no src/mcp_guard)")
    if args.calls < 1 or args.warmup < 0:
        parser.error("--calls must be at least 1 and --warmup not negative")
    missing = missing_tools()
    if missing:
        print(f"bench_instructions: {', '.join(missing)} not found (Debian's valgrind package)", file=sys.stderr)
        return 2
    report = {
        "machine": common.machine_info(),
        **run(trees, args.policy, args.ablate, args.calls, args.warmup, args.path, args.era),
    }
    print(table(report))
    if not args.no_save:
        print(f"wrote {common.save('instructions', report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
