"""The upstream stdio transport keeps the last stderr lines of its child, scrubbed and bounded."""

from __future__ import annotations

import sys

import anyio
import pytest

from mcp_guard.upstream.stdio import STDERR_TAIL_LINES, StderrTail, minimal_environment, open_stdio_transport

pytestmark = pytest.mark.anyio

CHILD = """
import sys
for i in range(50):
    print(f"line {i} token=SECRET-{i}", file=sys.stderr)
sys.stderr.write("last words without a newline")
sys.stderr.flush()
sys.exit(3)
"""


async def test_the_tail_holds_the_last_scrubbed_lines_once_the_child_is_gone() -> None:
    tail = StderrTail()
    async with open_stdio_transport(
        sys.executable,
        ["-c", CHILD],
        env=minimal_environment(),
        name="child",
        scrub=lambda s: s.replace("SECRET", "[REDACTED]"),
        stderr_tail=tail,
    ) as (_read, _write, exit_info, _proc):
        with anyio.fail_after(20):
            await exit_info.event.wait()
    assert exit_info.returncode == 3
    lines = list(tail)
    assert len(lines) == STDERR_TAIL_LINES
    assert lines[-1] == "last words without a newline"
    assert lines[0] == "line 31 token=[REDACTED]-31" and lines[-2] == "line 49 token=[REDACTED]-49"
    assert not any("SECRET" in line for line in lines)


async def test_one_tail_spans_restarts() -> None:
    tail = StderrTail(maxlen=3)
    for word in ("first", "second"):
        async with open_stdio_transport(
            sys.executable,
            ["-c", f"import sys; print({word!r}, file=sys.stderr)"],
            env=minimal_environment(),
            stderr_tail=tail,
        ) as (_r, _w, exit_info, _p):
            with anyio.fail_after(20):
                await exit_info.event.wait()
    assert list(tail) == ["first", "second"]
