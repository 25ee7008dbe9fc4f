"""The side-by-side benches run to the end with every call answered: bench_trees.py (the repo against itself, stdio
and HTTP), bench_modern_plumbing.py and bench_stdio_plumbing.py (both paths, in-process), bench_http_plumbing.py (the
session manager's path, in-process). No timing is asserted
(speed is shown by the benches); each checks its own calls (``check_result``, the loadgen's error count)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(*argv: str) -> str:
    proc = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_trees_stdio_compares_two_trees_block_by_block() -> None:
    out = _run("bench/bench_trees.py", ".", ".", "--blocks", "2", "--calls", "20", "--no-save")
    assert out.count("µs CPU/call") == 2 and "later lower in" in out and "/2" in out, out


def test_trees_http_answers_every_call_in_both_trees() -> None:
    argv = ["bench/bench_trees.py", ".", ".", "--path", "http", "--rounds", "1", "--seconds", "1", "--clients", "4"]
    out = _run(*argv, "--no-save")
    summary = [line for line in out.splitlines() if "(medians of the runs)" in line]
    assert len(summary) == 2 and all(", 0 errors" in line for line in summary), out


def test_the_plumbing_benches_run_both_paths() -> None:
    assert _run("bench/bench_modern_plumbing.py", "--requests", "64", "--blocks", "2").strip()
    assert _run("bench/bench_stdio_plumbing.py", "--calls", "50", "--blocks", "2").strip()
    assert _run("bench/bench_http_plumbing.py", "--calls", "50", "--blocks", "2").strip()


def test_instructions_counts_two_trees_under_callgrind() -> None:
    """Needs Debian's valgrind (.ci/run installs it): a missing tool fails here, it is not skipped."""
    out = _run("bench/bench_instructions.py", ".", ".", "--calls", "3", "--warmup", "2", "--no-save")
    rows = [line for line in out.splitlines() if "K " in line and line.strip().split()[1].endswith("K")]
    assert len(rows) == 2 and "later − earlier:" in out, out


@pytest.mark.parametrize(
    ("front", "argv"),
    [("stdio front", []), ("http (modern-asking era) front", ["--path", "http", "--era", "modern-asking"])],
    ids=["stdio", "http-2026-bridged"],
)
def test_opcodes_counts_a_calls_bytecodes_by_function(front: str, argv: list[str]) -> None:
    out = _run("bench/bench_opcodes.py", *argv, "--calls", "3", "--warmup", "2", "--top", "60", "--no-save")
    head, *rows = out.strip().splitlines()
    assert head.startswith(f"bytecodes per tools/call ({front}, default bundle, 3 calls counted): "), out
    assert float(head.rsplit(": ", 1)[1].replace(",", "")) > 1000, out  # a call runs thousands of them
    assert any("mcp_guard/" in row for row in rows), out  # the proxy's own code is named
    if argv:  # the client declared what it can answer: its calls went through the input-required bridge
        assert any("input_required.py" in row for row in rows), out


def test_timeline_times_each_point_of_a_call_in_order() -> None:
    """Every wrapped point is reached, in a call's order (the default bundle reads and records its flow, so each
    point is on the path): a renamed internal, or a point no call reaches any more, fails here."""
    out = _run("bench/bench_timeline.py", "--calls", "6", "--warmup", "2", "--no-save")
    head, _columns, *rows = out.strip().splitlines()
    assert head.startswith("a stdio tools/call through the proxy, default bundle: ") and " of 5 timed calls" in head, (
        out
    )
    assert [row.rsplit(None, 3)[0] for row in rows] == [
        "line taken >",
        "line taken <",
        "flow read >",
        "flow read <",
        "state batch >",
        "state batch <",
        "audit row >",
        "audit row <",
        "to upstream >",
        "to upstream <",
        "upstream answer >",
        "upstream answer <",
        "audit row >",
        "audit row <",
        "answer written >",
        "answer written <",
    ], out
