"""Replay: decision rows keep the policy question (bounded, audit copy of arguments) and a candidate bundle
re-decides them — allow→deny, deny→allow, reasons — with every unreplayable row counted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest

from mcp_guard.audit import Filters, open_reader, open_sink, open_sqlite_sink, row_to_dict
from mcp_guard.audit.events import (
    OMITTED_KEY,
    POLICY_KEY,
    TRUNCATED_KEY,
    UNREPLAYABLE_KEY,
    policy_record,
    recorded_input,
)
from mcp_guard.audit.sqlite import open_sqlite_reader
from mcp_guard.audit.verify import verify_chain
from mcp_guard.cli import main
from mcp_guard.pipeline.build import pipeline_stages
from mcp_guard.pipeline.chain import build_chain
from mcp_guard.pipeline.context import CallContext
from mcp_guard.pipeline.secret_source import NO_SECRETS
from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.policy.replay import Change, Skip, compare, replay_rows
from mcp_guard.settings import Settings, parse_settings
from mcp_guard.state import MemoryState
from mcp_guard.state.base import FLOW_HISTORY
from mcp_guard.testing import RecordingUpstream, idle_registry
from mcp_guard.types import Decision, EventKind, Principal, SessionInfo

pytestmark = pytest.mark.anyio

# Allows every tool but "rm"; the candidate also denies "write" with a path under /etc, and words a reason anew.
CURRENT = """package t
import rego.v1
default decision := {"allow": false, "reasons": ["no"]}
decision := {"allow": true} if input.tool != "rm"
decision := {"allow": false, "reasons": ["rm is off"]} if input.tool == "rm"
"""
CANDIDATE = """package t
import rego.v1
default decision := {"allow": false, "reasons": ["no"]}
bad if startswith(input.arguments.path, "/etc")
decision := {"allow": true} if { input.tool != "rm"; not bad }
decision := {"allow": false, "reasons": ["/etc is off"]} if { input.tool != "rm"; bad }
decision := {"allow": false, "reasons": ["rm is never allowed"]} if input.tool == "rm"
"""


def bundle(root: Path, rego: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "t.rego").write_text(rego)
    return root


def engine(root: Path) -> EmbeddedEngine:
    return EmbeddedEngine(load_bundle(root), decision="t/decision", timeout_ms=5000)


SETTINGS = parse_settings({"upstreams": {"rec": {"command": "never-started"}}}, source="<test>")


def call_ctx(tool: str, arguments: dict[str, Any]) -> CallContext:
    return CallContext(
        action="tools/call",
        principal=Principal("alice", ("support",)),
        session=SessionInfo("s1", "memory"),
        server="rec",
        target=tool,
        exposed=f"rec__{tool}",
        arguments=arguments,
        request=types.CallToolRequest(params=types.CallToolRequestParams(name=tool, arguments=arguments)),
    )


async def record_calls(db: Path | Settings, current: Path, calls: list[tuple[str, dict[str, Any]]]) -> None:
    """The calls through every real stage (in front of a recording upstream), audited to a SQLite file (or the
    audit store a Settings names)."""
    async with open_sqlite_sink(db) if isinstance(db, Path) else open_sink(db) as sink:
        stages = pipeline_stages(
            engine=engine(current), sink=sink, registry=idle_registry(SETTINGS), secrets=NO_SECRETS, state=MemoryState()
        )
        chain = build_chain(stages, RecordingUpstream())
        for tool, arguments in calls:
            await chain(call_ctx(tool, arguments))


def rows(db: Path) -> list[dict[str, Any]]:
    with open_sqlite_reader(db) as reader:
        return [row_to_dict(r) for r in reader.rows() if r[3] == EventKind.CALL_DECISION]


CALLS = [
    ("write", {"path": "/tmp/a"}),
    ("write", {"path": "/etc/passwd"}),
    ("rm", {"path": "/tmp/a"}),
    ("read", {"path": "/etc/hosts"}),
]


async def test_decision_rows_keep_the_input_and_the_chain_still_verifies(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    await record_calls(db, bundle(tmp_path / "cur", CURRENT), CALLS)
    decisions = rows(db)
    assert len(decisions) == 4
    record = decisions[0]["details"][POLICY_KEY]
    recorded = recorded_input(record)
    assert record["allow"] is True and recorded is not None and "arguments" not in recorded
    assert recorded["tool"] == "write" and recorded["context"]["time"]
    assert decisions[2]["details"][POLICY_KEY] == {**decisions[2]["details"][POLICY_KEY], "allow": False}
    with open_sqlite_reader(db) as reader:
        assert verify_chain(reader).ok


async def test_replay_lists_exactly_the_changed_decisions(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    await record_calls(db, bundle(tmp_path / "cur", CURRENT), CALLS)
    report = replay_rows(rows(db), engine(bundle(tmp_path / "cand", CANDIDATE)))
    assert report.rows == 4 and report.replayed == 4 and report.unchanged == 1 and not report.skipped
    changes = [(c.tool, c.change) for c in report.changed]
    assert changes == [("write", Change.ALLOW_TO_DENY), ("rm", Change.REASONS), ("read", Change.ALLOW_TO_DENY)]
    assert report.changed[0].candidate["reasons"] == ["/etc is off"]
    assert report.changed[0].recorded["allow"] is True


async def test_the_same_bundle_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    current = bundle(tmp_path / "cur", CURRENT)
    await record_calls(db, current, CALLS)
    report = replay_rows(rows(db), engine(current))
    assert report.changed == [] and report.unchanged == 4


async def test_deny_to_allow_is_a_change(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    await record_calls(db, bundle(tmp_path / "cur", CURRENT), CALLS)
    looser = bundle(tmp_path / "loose", 'package t\nimport rego.v1\ndecision := {"allow": true}\n')
    report = replay_rows(rows(db), engine(looser))
    assert [(c.tool, c.change) for c in report.changed] == [("rm", Change.DENY_TO_ALLOW)]


def test_an_oversized_input_is_kept_as_a_digest_and_marked_unreplayable() -> None:
    document = {"action": "tools/call", "principal": {"id": "a", "attributes": {"blob": "x" * 5000}}, "arguments": {}}
    record = policy_record(document, Decision(allow=True), 1024)
    assert recorded_input(record) is None
    assert record[UNREPLAYABLE_KEY]["reason"] == "input_too_large" and len(record[UNREPLAYABLE_KEY]["sha256"]) == 64
    assert "x" * 100 not in json.dumps(record)


def test_rows_without_input_are_counted_by_reason(tmp_path: Path) -> None:
    cand = engine(bundle(tmp_path / "cand", CANDIDATE))
    base = {"kind": "call.decision", "seq": 1, "ts": "t", "principal": "a", "server": "s", "tool": "t"}
    big = policy_record({"principal": {"x": "y" * 4000}}, Decision(allow=True), 1024)
    ok = policy_record({"action": "tools/call", "tool": "read", "principal": {"id": "a"}}, Decision(allow=True), None)
    report = replay_rows(
        [
            {**base, "decision_id": "1", "details": {"action": "tools/call"}, "arguments": {}},
            {**base, "decision_id": "2", "details": {POLICY_KEY: big}, "arguments": {}},
            {**base, "decision_id": "3", "details": {POLICY_KEY: ok}, "arguments": {TRUNCATED_KEY: {"bytes": 9}}},
            {**base, "decision_id": "4", "details": {POLICY_KEY: ok}, "arguments": {"path": "/tmp"}},
            {**base, "decision_id": "4", "details": {POLICY_KEY: ok}, "arguments": {"path": "/tmp"}},  # same decision
        ],
        cand,
    )
    assert report.rows == 4 and report.replayed == 1
    assert dict(report.skipped) == {Skip.NO_INPUT: 1, Skip.INPUT_TOO_LARGE: 1, Skip.ARGUMENTS_TRUNCATED: 1}


def test_compare_orders_changes() -> None:
    assert compare(True, [], {}, Decision(allow=False, reasons=("x",))) is Change.ALLOW_TO_DENY
    assert compare(False, ["x"], None, Decision(allow=True)) is Change.DENY_TO_ALLOW
    assert compare(False, ["x", "y"], None, Decision(allow=False, reasons=("y", "x"))) is None
    assert compare(True, [], {"labels": ["a"]}, Decision(allow=True)) is Change.OBLIGATIONS


async def test_cli_replay_prints_a_table_and_json_and_exits_1_on_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "audit.db"
    current = bundle(tmp_path / "cur", CURRENT)
    await record_calls(db, current, CALLS)
    config = tmp_path / "mcp-guard.toml"
    config.write_text(
        f'[policy]\nbundle = "{current}"\ndecision = "t/decision"\n[audit]\npath = "{db}"\n'
        '[upstreams.rec]\ncommand = "never-started"\n'
    )
    cand = bundle(tmp_path / "cand", CANDIDATE)
    assert main(["policy", "replay", "--bundle", str(cand), "-c", str(config)]) == 1
    out = capsys.readouterr().out
    assert "allow→deny" in out and "/etc is off" in out and "4 decision(s) read, 4 replayed, 3 would change" in out
    assert main(["policy", "replay", "--bundle", str(cand), "-c", str(config), "--json", "--principal", "bob"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rows"] == 0 and doc["changed"] == []
    assert main(["policy", "replay", "--bundle", str(current), "-c", str(config), "--since", "1d"]) == 0
    assert "0 would change" in capsys.readouterr().out
    config.write_text(config.read_text().replace(str(db), str(tmp_path / "elsewhere.db")))
    assert main(["policy", "replay", "--bundle", str(current), "-c", str(config)]) == 2  # not 1: nothing compared
    assert "no audit database" in capsys.readouterr().err


def holding(directory: Path, text: str) -> list[Path]:
    """The audit files (the database and any WAL beside it) whose bytes hold ``text``."""
    return [f for f in directory.glob("audit.db*") if text.encode() in f.read_bytes()]


async def test_secrets_never_reach_the_stored_input(tmp_path: Path) -> None:
    """The row keeps the audit copy of the arguments (credential shapes masked), and no raw copy elsewhere."""
    db = tmp_path / "audit.db"
    key = "AKIA" + "IOSFODNN7EXAMPLE"
    await record_calls(db, bundle(tmp_path / "cur", CURRENT), [("write", {"path": "/tmp/x", "note": key})])
    assert holding(tmp_path, key) == []
    (row,) = rows(db)
    assert key not in json.dumps(row) and row["arguments"]["path"] == "/tmp/x"
    report = replay_rows([row], engine(bundle(tmp_path / "cand", CANDIDATE)))
    assert report.replayed == 1 and not report.changed


async def test_replay_reads_a_postgresql_audit_log_and_it_verifies(tmp_path: Path, pg_dsn: str) -> None:
    """The input rides in the hashed details column, so the PostgreSQL backend needs no migration for it."""
    settings = parse_settings(
        {"audit": {"backend": "postgres", "dsn": pg_dsn}, "upstreams": {"rec": {"command": "never-started"}}},
        source="<test>",
    )
    await record_calls(settings, bundle(tmp_path / "cur", CURRENT), CALLS)
    with open_reader(settings) as reader, reader.snapshot():
        rows = [row_to_dict(r) for r in reader.rows(Filters(kinds=(str(EventKind.CALL_DECISION),)))]
        assert verify_chain(reader).ok
    report = replay_rows(rows, engine(bundle(tmp_path / "cand", CANDIDATE)))
    assert report.replayed == 4 and [c.change for c in report.changed] == [
        Change.ALLOW_TO_DENY,
        Change.REASONS,
        Change.ALLOW_TO_DENY,
    ]


# Labels every "read" private and denies "post" in a private flow: it reads the flow's labels, never its history.
LABELLING = """package t
import rego.v1
default decision := {"allow": false, "reasons": ["no"]}
decision := {"allow": true, "obligations": {"labels": ["private"]}} if input.tool == "read"
decision := {"allow": true} if { input.tool != "read"; not private }
decision := {"allow": false, "reasons": ["private flow"]} if { input.tool != "read"; private }
private if "private" in input.context.flow.labels
"""
# Denies a third call in a row (labels aside): it reads the history.
COUNTING = """package t
import rego.v1
default decision := {"allow": false, "reasons": ["no"]}
busy if count(input.context.flow.history) >= 2
decision := {"allow": true} if not busy
decision := {"allow": false, "reasons": ["busy"]} if busy
"""


async def record_with_shadow(db: Path, current: Path, shadow: Path | None) -> None:
    async with open_sqlite_sink(db) as sink:
        stages = pipeline_stages(
            engine=engine(current),
            sink=sink,
            registry=idle_registry(SETTINGS),
            secrets=NO_SECRETS,
            state=MemoryState(),
            shadow=engine(shadow) if shadow is not None else None,
        )
        chain = build_chain(stages, RecordingUpstream())
        for tool in ("echo", "echo", "echo"):
            await chain(call_ctx(tool, {}))


async def test_a_history_no_decision_reads_is_left_out_and_replay_says_so(tmp_path: Path) -> None:
    """The bundle reads a flow's labels, not its history: the rows' inputs carry ``history: []`` and name it
    omitted, so a candidate that reads the history is not replayed on them (counted ``history_not_recorded``) —
    one that does not read it is. With that candidate as the shadow bundle, the history is recorded whole."""
    current, counting = bundle(tmp_path / "cur", LABELLING), bundle(tmp_path / "cnt", COUNTING)
    db = tmp_path / "audit.db"
    await record_with_shadow(db, current, None)
    recorded = rows(db)
    assert len(recorded) == 3
    for row in recorded:
        record = row["details"][POLICY_KEY]
        assert record[OMITTED_KEY] == [FLOW_HISTORY]
        flow = json.loads(record["input_json"])["context"]["flow"]
        assert flow["history"] == [] and flow["labels"] == []
    skipped = replay_rows(recorded, engine(counting))
    assert skipped.replayed == 0 and dict(skipped.skipped) == {Skip.HISTORY_NOT_RECORDED: 3}
    same = replay_rows(recorded, engine(current))
    assert same.replayed == 3 and same.unchanged == 3
    assert verify_chain_ok(db)

    shadowed = tmp_path / "shadowed.db"
    await record_with_shadow(shadowed, current, counting)
    histories = [
        json.loads(row["details"][POLICY_KEY]["input_json"])["context"]["flow"]["history"] for row in rows(shadowed)
    ]
    assert [len(h) for h in histories] == [0, 1, 2]
    assert all(OMITTED_KEY not in row["details"][POLICY_KEY] for row in rows(shadowed))
    report = replay_rows(rows(shadowed), engine(counting))
    assert report.replayed == 3 and [c.change for c in report.changed] == [Change.ALLOW_TO_DENY]
    assert report.changed[0].candidate["reasons"] == ["busy"]


def verify_chain_ok(db: Path) -> bool:
    with open_sqlite_reader(db) as reader:
        return verify_chain(reader).ok
