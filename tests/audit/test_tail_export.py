"""tail (filters, formatting, follow from another process) and export."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from audit_testkit import PYTHON, MemoryBackend, MemoryReader, child_env, event

from mcp_guard.audit import AuditWriter, open_sqlite_sink, schema
from mcp_guard.audit.chain import GENESIS_HASH, canonical_json, row_hash
from mcp_guard.audit.export import export
from mcp_guard.audit.reader import Filters, parse_since
from mcp_guard.audit.sqlite import open_sqlite_reader
from mcp_guard.audit.tail import LINE_WIDTH, format_line, tail
from mcp_guard.cli import main
from mcp_guard.types import AuditEvent, EventKind

pytestmark = pytest.mark.anyio

OLD = "2020-01-01T00:00:00.000000Z"


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    path = tmp_path / "audit.db"
    async with open_sqlite_sink(path) as store:
        await store.record(
            AuditEvent(
                kind="session.start",
                session_id="s1",
                principal="alice",
                ts=OLD,
                details={"client": {"name": "claude", "version": "1.0"}},
            )
        )
        await store.record(event(1))  # alice tickets/create_ticket allow
        await store.record(event(2, principal="bob", decision="deny", reasons=("destructive", "weekend")))
        await store.record(event(3, server="files", tool="delete", decision="deny", reasons=("no",)))
        await store.record(
            AuditEvent(
                kind="call.result",
                principal="alice",
                server="tickets",
                tool="create_ticket",
                result={"is_error": False, "bytes": 42, "sha256": "ab"},
            )
        )
        await store.record(AuditEvent(kind="upstream.crash", server="files", details={"error": "exit 1"}))
    return path


def run_tail(
    db: Path, filters: Filters | None = None, *, last: int | None = None, as_json: bool = True, colour: bool = False
) -> list[Any]:
    out = io.StringIO()
    with open_sqlite_reader(db) as reader:
        tail(reader, filters or Filters(), out, last=last, follow=False, as_json=as_json, colour=colour)
    lines = out.getvalue().splitlines()
    return [json.loads(line) for line in lines] if as_json else lines


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (Filters(), [1, 2, 3, 4, 5, 6]),
        (Filters(principal="bob"), [3]),
        (Filters(server="files"), [4, 6]),
        (Filters(tool="create_ticket"), [2, 3, 5]),
        (Filters(decision="deny"), [3, 4]),
        (Filters(decision="allow", principal="alice"), [2]),
        (Filters(kinds=("call.result",)), [5]),
        (Filters(kinds=("call.*",)), [2, 3, 4, 5]),
        (Filters(kinds=("session.start", "upstream.crash")), [1, 6]),
        (Filters(since="2021-01-01T00:00:00.000000Z"), [2, 3, 4, 5, 6]),
    ],
)
async def test_tail_filters(db: Path, filters: Filters, expected: list[int]) -> None:
    assert [e["seq"] for e in run_tail(db, filters)] == expected


async def test_tail_last_n(db: Path) -> None:
    assert [e["seq"] for e in run_tail(db, last=2)] == [5, 6]
    assert [e["seq"] for e in run_tail(db, Filters(decision="deny"), last=1)] == [4]
    assert run_tail(db, last=0) == []


async def test_tail_json_decodes_json_columns(db: Path) -> None:
    deny = run_tail(db, Filters(principal="bob"))[0]
    assert deny["reasons"] == ["destructive", "weekend"]
    assert deny["arguments"] == {"priority": 2, "title": "ticket 2"}
    assert set(deny) == set(schema.COLUMNS)


async def test_tail_lines_show_decision_and_reasons(db: Path) -> None:
    lines = run_tail(db, as_json=False)
    assert len(lines) == 6
    deny = next(line for line in lines if "bob" in line)
    assert "DENY" in deny and "destructive; weekend" in deny and "tickets/create_ticket" in deny
    assert "ALLOW" in lines[1] and "support may create tickets" in lines[1]
    assert "OK" in lines[4] and "42 bytes" in lines[4]
    assert "ERROR" in lines[5]
    assert "claude" in lines[0]
    assert all("\x1b[" not in line for line in lines)
    coloured = run_tail(db, Filters(principal="bob"), as_json=False, colour=True)[0]
    assert "\x1b[31" in coloured and "DENY" in coloured


async def test_format_line_keeps_one_line() -> None:
    row = {c: None for c in schema.COLUMNS} | {
        "seq": 1,
        "ts": OLD,
        "kind": "call.decision",
        "decision": "deny",
        "reasons": ["line\nbreak"],
    }
    assert "\n" not in format_line(row)


def test_format_line_escapes_what_clients_and_upstreams_chose() -> None:
    """A tool name with a newline and an OSC sequence cannot forge a line or reach the operator's terminal."""
    hostile = "echo\n2026-11-30T00:00:00.000Z  #99  call.decision  ALLOW\x1b]0;pwned\x07\u202e"
    row = {c: None for c in schema.COLUMNS} | {
        "seq": 1,
        "ts": OLD,
        "kind": "call.decision",
        "decision": "deny",
        "server": "up\r",
        "tool": hostile,
        "principal": "eve\x1b[2J",
        "reasons": ["bad\x9b31m"],
        "details": json.dumps({"client": "\x1b[31mred"}),
    }
    for colour in (False, True):
        line = format_line(row, colour=colour)
        assert "\n" not in line and "\r" not in line and "\x07" not in line and "\u202e" not in line
        assert "\x9b" not in line
        # The only ESC bytes are the colours format_line itself adds.
        assert re.sub(r"\x1b\[[0-9;]*m", "", line).count("\x1b") == 0
        assert "\\x1b]0;pwned\\x07" in line and "\\x0a" in line and "up\\x0d" in line and "eve\\x1b" in line


def test_parse_since() -> None:
    now = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
    assert parse_since("10m", now=now) == "2026-11-25T11:50:00.000000Z"
    assert parse_since("2h", now=now) == "2026-11-25T10:00:00.000000Z"
    assert parse_since("1d", now=now) == "2026-11-24T12:00:00.000000Z"
    assert parse_since("2026-11-25T13:00:00+02:00") == "2026-11-25T11:00:00.000000Z"
    assert parse_since("2026-11-25T11:00:00Z") == "2026-11-25T11:00:00.000000Z"
    for bad in ("yesterday", "10 parsecs", "2026-11-25T11:00:00"):
        with pytest.raises(ValueError, match="--since"):
            parse_since(bad)


async def test_cli_tail_and_its_errors(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "tail", "--db", str(db), "--decision", "deny", "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["seq"] for line in out] == [3, 4]
    assert main(["audit", "tail", "--db", str(db), "-n", "3"]) == 0
    readable = capsys.readouterr().out.splitlines()
    assert len(readable) == 3 and "\x1b[" not in "".join(readable)  # not a terminal: no colour
    assert main(["audit", "tail", "--db", str(db), "-n", "1", "--color", "always"]) == 0
    assert "\x1b[" in capsys.readouterr().out
    assert main(["audit", "tail", "--db", str(db), "--since", "whenever"]) == 2
    assert "--since" in capsys.readouterr().err
    assert main(["audit", "tail", "--db", str(db.parent / "missing.db")]) == 1
    assert "no audit database" in capsys.readouterr().err
    assert main(["audit"]) == 2
    with pytest.raises(SystemExit) as usage:  # a typo in --kind would otherwise match nothing, silently
        main(["audit", "tail", "--db", str(db), "--kind", "call.decisoin"])
    assert usage.value.code == 2 and "not an event kind" in capsys.readouterr().err
    assert main(["audit", "tail", "--db", str(db), "--kind", "upstream.*", "--json"]) == 0
    assert [json.loads(line)["seq"] for line in capsys.readouterr().out.splitlines()] == [6]


async def test_export_jsonl_can_be_verified_by_the_receiver(db: Path) -> None:
    out = io.StringIO()
    with open_sqlite_reader(db) as reader:
        assert export(reader, out) == 6
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6]
    prev = GENESIS_HASH
    for e in events:  # a SIEM can recompute the chain from the export alone
        body = {c: e[c] for c in schema.BODY_COLUMNS}
        for c in schema.JSON_COLUMNS:
            if body[c] is not None:
                body[c] = canonical_json(body[c]).decode()
        assert e["prev_hash"] == prev
        assert row_hash(prev, e["seq"], canonical_json([body[c] for c in schema.BODY_COLUMNS])) == e["hash"]
        prev = e["hash"]


async def test_export_since_and_after_seq(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    with open_sqlite_reader(db) as reader:
        assert export(reader, out, filters=Filters(after_seq=4)) == 2
    target = tmp_path / "out.jsonl"
    assert main(["audit", "export", "--db", str(db), "--format", "jsonl", "--since", "1h", "-o", str(target)]) == 0
    assert [json.loads(x)["seq"] for x in target.read_text().splitlines()] == [2, 3, 4, 5, 6]
    assert "exported 5 events" in capsys.readouterr().err


async def _read_json_lines(process: Process, want: int, buffer: bytearray) -> list[dict[str, Any]]:
    assert process.stdout is not None
    lines: list[dict[str, Any]] = []
    while len(lines) < want:
        while b"\n" not in buffer:
            buffer.extend(await process.stdout.receive())
        line, _, rest = bytes(buffer).partition(b"\n")
        buffer[:] = rest
        lines.append(json.loads(line))
    return lines


async def test_follow_from_another_process_while_the_store_writes(tmp_path: Path) -> None:
    path = tmp_path / "live.db"
    async with open_sqlite_sink(path) as store:
        for i in range(3):
            await store.record(event(i))
        process = await anyio.open_process(
            [
                PYTHON,
                "-m",
                "mcp_guard",
                "audit",
                "tail",
                "-f",
                "--json",
                "-n",
                "2",
                "--kind",
                "call.*",
                "--db",
                str(path),
            ],
            env=child_env(),
        )
        buffer = bytearray()
        try:
            with anyio.fail_after(20):
                backlog = await _read_json_lines(process, 2, buffer)
                assert [e["seq"] for e in backlog] == [2, 3]
                # Live rows, with a filtered-out kind in between; the writer is never blocked.
                for i in range(3, 8):
                    await store.record(event(i))
                    store.record_nowait(AuditEvent(kind="tools.list", principal="alice"))
                live = await _read_json_lines(process, 5, buffer)
                assert [e["decision_id"] for e in live] == [f"dec-{i}" for i in range(3, 8)]
                assert all(e["kind"] == "call.decision" for e in live)
                assert store.healthy
        finally:
            process.terminate()
            with anyio.move_on_after(5):
                await process.wait()
            if process.returncode is None:
                process.kill()
            await process.aclose()


async def test_follow_waits_for_the_database_to_appear(tmp_path: Path) -> None:
    path = tmp_path / "later.db"
    process = await anyio.open_process(
        [PYTHON, "-m", "mcp_guard", "audit", "tail", "-f", "--json", "--db", str(path)], env=child_env()
    )
    buffer = bytearray()
    try:
        with anyio.fail_after(20):
            async with open_sqlite_sink(path) as store:
                await store.record(event(1))
                first = await _read_json_lines(process, 1, buffer)
        assert first[0]["decision_id"] == "dec-1"
    finally:
        process.terminate()
        with anyio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
        await process.aclose()


def export_file(path: Path, out: io.StringIO) -> int:
    with open_sqlite_reader(path) as reader:
        return export(reader, out)


async def test_verify_and_export_while_the_store_writes(tmp_path: Path) -> None:
    from mcp_guard.audit.verify import verify_file

    path = tmp_path / "busy.db"
    async with open_sqlite_sink(path) as store:
        for i in range(200):
            store.record_nowait(event(i))
        await store.record(event(200))

        async def keep_writing() -> None:
            for i in range(201, 2000):
                await store.record(event(i))

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_writing)
            for _ in range(5):
                result = await anyio.to_thread.run_sync(verify_file, path)
                assert result.ok, result.problem
                out = io.StringIO()
                count = await anyio.to_thread.run_sync(export_file, path, out)
                assert count >= 201
                assert [json.loads(x)["seq"] for x in out.getvalue().splitlines()] == list(range(1, count + 1))


# ---------------------------------------------------------------------------------------------- the one-line view

LONG_TOOL = "search_tickets_by_customer_and_priority_including_archived"  # 58 characters
VERDICT_AT = len("2026-11-25T06:31:00.123Z  #123456  ") + max(len(k) for k in EventKind) + 2


def row(kind: EventKind, **values: Any) -> dict[str, Any]:
    """A decoded row as tail gets it, with long values everywhere a column can hold one."""
    base: dict[str, Any] = {c: None for c in schema.COLUMNS} | {
        "seq": 123456,
        "ts": "2026-11-25T06:31:00.123456Z",
        "kind": kind.value,
        "principal": "support-agent-with-a-long-name",
        "server": "tickets",
        "tool": LONG_TOOL,
        "reasons": ["destructive tools need the admin role outside the change freeze, ask an operator"] * 2,
        "result": {"is_error": False, "bytes": 512, "sha256": "ab" * 32},
        "details": {"action": "tools/call", "error": "x" * 200, "old": "ab" * 32, "new": "cd" * 32},
        "duration_ms": 12345.678,
        "policy_revision": "7c1e2b9f0a3d4c5e6f708192a3b4c5d6e7f8091a",
    }
    return base | values


@pytest.mark.parametrize("kind", list(EventKind))
@pytest.mark.parametrize("decision", [None, "allow", "deny"])
def test_every_kind_fits_160_columns_with_the_tool_name_whole(kind: EventKind, decision: str | None) -> None:
    line = format_line(row(kind, decision=decision))
    assert len(line) <= LINE_WIDTH == 160
    assert f"tickets/{LONG_TOOL}" in line
    assert line.startswith("2026-11-25T06:31:00.123Z  #123456  " + kind.value)
    assert line[VERDICT_AT - 2 : VERDICT_AT] == "  " and line[VERDICT_AT] != " "  # the kind column holds every kind
    coloured = format_line(row(kind, decision=decision), colour=True)
    assert len(re.sub(r"\x1b\[[0-9;]*m", "", coloured)) <= LINE_WIDTH
    assert f"tickets/{LONG_TOOL}" in coloured


def test_deny_reasons_get_the_room_before_duration_and_revision() -> None:
    line = format_line(row(EventKind.CALL_DECISION, decision="deny", principal="bob", tool="create_ticket"))
    assert "  bob → tickets/create_ticket  destructive tools need the admin role outside the" in line
    assert line.endswith("…") and "rev " not in line
    assert len(line) == LINE_WIDTH


def test_duration_and_revision_are_kept_whole_when_there_is_room() -> None:
    values = {"principal": "bob", "tool": "create_ticket", "reasons": ["weekend"], "result": None, "details": None}
    line = format_line(row(EventKind.CALL_DECISION, decision="deny", **values))
    assert line.endswith("  bob → tickets/create_ticket  weekend  12345.7ms  rev 7c1e2b9f0a3d")


def test_with_little_room_the_reasons_win_over_duration_and_revision() -> None:
    line = format_line(row(EventKind.CALL_DECISION, decision="deny", principal="bob"))
    assert line.endswith(f"bob → tickets/{LONG_TOOL}  destructive tool…")


def test_a_very_long_target_shortens_the_principal_never_the_tool() -> None:
    tool = "t" * 80
    line = format_line(row(EventKind.CALL_DECISION, decision="deny", tool=tool))
    assert f"tickets/{tool}" in line
    assert "support…" in line  # the principal gave way first


@pytest.mark.parametrize(
    ("kind", "word"), [(EventKind.POLICY_RELOAD_FAILED, "REJECTED"), (EventKind.TOOL_PIN_CHANGED, "CHANGED")]
)
def test_rejected_reloads_and_pin_changes_stand_out(kind: EventKind, word: str) -> None:
    plain = format_line(row(kind))
    assert plain[VERDICT_AT:].startswith(f"!{word} ")  # a marker where there is no colour
    coloured = format_line(row(kind), colour=True)
    assert f"\x1b[1;7;33m{word}" in coloured and f"!{word}" not in coloured
    for other in (EventKind.TOOL_PIN_APPROVED, EventKind.POLICY_LOAD, EventKind.CALL_RESULT):
        assert "!" not in format_line(row(other))[VERDICT_AT : VERDICT_AT + 2]
        assert "\x1b[1;7;33m" not in format_line(row(other), colour=True)


@pytest.mark.parametrize(
    ("kind", "decision", "verdict"),
    [
        (EventKind.CALL_ERROR, None, "ERROR"),
        (EventKind.UPSTREAM_CRASH, None, "ERROR"),
        (EventKind.UPSTREAM_START_FAILED, None, "ERROR"),
        (EventKind.AUTH_REJECT, "deny", "DENY"),
        (EventKind.CALL_RESULT, None, "OK"),
        (EventKind.SESSION_START, None, "·"),
    ],
)
def test_verdicts(kind: EventKind, decision: str | None, verdict: str) -> None:
    assert format_line(row(kind, decision=decision))[VERDICT_AT:].split()[0] == verdict


def test_details_skip_what_the_columns_show_and_shorten_digests() -> None:
    line = format_line(
        row(
            EventKind.TOOL_PIN_CHANGED,
            principal=None,
            reasons=None,
            result=None,
            duration_ms=None,
            details={"tool": LONG_TOOL, "old": "ab" * 32},
        )
    )
    assert line.endswith(f"  - → tickets/{LONG_TOOL}  old=abababababab…")


def test_tail_reads_through_any_reader_and_follows_it() -> None:
    backend = MemoryBackend()

    async def write(first: int, n: int) -> None:
        async with AuditWriter.running(backend) as writer:
            for i in range(first, first + n):
                await writer.record(event(i))

    anyio.run(write, 0, 3)
    polls = 0

    def sleep(_: float) -> None:  # each poll: the proxy writes two rows, and the third poll ends it
        nonlocal polls
        polls += 1
        if polls == 3:
            raise KeyboardInterrupt
        anyio.run(write, 10 * polls, 2)

    out = io.StringIO()
    printed = tail(
        MemoryReader(backend.rows), Filters(), out, last=2, follow=True, as_json=True, colour=False, sleep=sleep
    )
    assert printed == 6
    assert [json.loads(line)["decision_id"] for line in out.getvalue().splitlines()] == [
        "dec-1",
        "dec-2",
        "dec-10",
        "dec-11",
        "dec-20",
        "dec-21",
    ]
