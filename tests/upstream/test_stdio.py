"""The upstream stdio transport keeps the last stderr lines of its child, scrubbed and bounded."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from guard_harness import client_of, make_settings, running_guard, text_of
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


ROGUE = str(Path(__file__).resolve().parents[1] / "fixtures" / "rogue.py")


@pytest.mark.parametrize(
    ("tool", "says"),
    [
        ("huge", "larger than 65536 bytes"),
        ("truncated", "not valid JSON-RPC"),
        ("deep", "not valid JSON-RPC"),
    ],
)
async def test_an_oversized_or_malformed_answer_fails_its_call_at_once(tool: str, says: str) -> None:
    """Not at the per-call timeout (300 s here): the deadline below is far shorter than that."""
    rogue = {
        "command": sys.executable,
        "args": [ROGUE],
        "env": {"ROGUE_HUGE_BYTES": str(1 << 20)},
        "timeout_s": 300.0,
        "max_response_bytes": 65536,
    }
    async with running_guard(make_settings({"rogue": rogue})) as guard, client_of(guard) as client:
        with anyio.fail_after(60):
            r = await client.call_tool(f"rogue__{tool}", {})
            assert r.is_error and text_of(r).startswith("mcp-guard: ") and says in text_of(r), text_of(r)
            assert "x" * 100 not in text_of(r) and "[[[[" not in text_of(r)  # the answer's text is withheld
            assert text_of(await client.call_tool("rogue__ok", {"text": "still fine"})) == "still fine"


async def test_a_line_is_written_at_once_until_the_child_stops_reading() -> None:
    # send_nowait hands lines to the pipe while the child reads them; once a child that does not read lets the
    # pipe and the transport's queue fill, it declines (nothing written) and send_bytes, which waits, must take
    # the line; after the stream is closed it declines too.
    idle = "import signal; signal.pause()"  # reads nothing and waits until killed
    async with open_stdio_transport(sys.executable, ["-c", idle], env=minimal_environment()) as (
        _read,
        write,
        _exit,
        proc,
    ):
        assert write.send_nowait(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        line = b"x" * 60_000 + b"\n"
        written = 0
        while write.send_nowait(line):  # the pipe (64 KiB) fills, then the transport queues one line
            written += 1
            assert written < 100, "a child that reads nothing cannot take 6 MB"
        assert written >= 1 and write._raw.transport.get_write_buffer_size() > 0
        proc.kill()
    await write.aclose()
    assert not write.send_nowait(b"{}\n")
