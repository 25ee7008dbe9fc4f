"""Bundle history and rollback: activated revisions kept (SQLite state file and PostgreSQL), a pinned revision
wins over the bundle directory — at reload and at the next start — until cleared; the CLI audits a rollback."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mcp_guard.audit.sqlite import open_sqlite_reader
from mcp_guard.cli import main
from mcp_guard.errors import PolicyError
from mcp_guard.policy import open_engine
from mcp_guard.policy.bundle import Bundle, load_bundle
from mcp_guard.policy.history import (
    Activation,
    HistoryStore,
    PinnedSource,
    PostgresHistory,
    SqliteHistory,
    activation_for,
    bundle_snapshot,
    record_activation,
)
from mcp_guard.policy.reload import BundleWatcher
from mcp_guard.settings import Settings, parse_settings
from mcp_guard.types import EventKind, PolicyInput, Principal, SessionInfo

pytestmark = pytest.mark.anyio


def policy(allowed: str) -> str:
    return f'package mcp_guard\nimport rego.v1\ndecision := {{"allow": input.tool == "{allowed}"}}\n'


def write_bundle(root: Path, allowed: str) -> str:
    root.mkdir(parents=True, exist_ok=True)
    (root / "p.rego").write_text(policy(allowed))
    (root / "README.md").write_text("not loaded, but kept with the revision\n")
    return load_bundle(root).revision


def ask(tool: str) -> PolicyInput:
    return PolicyInput(
        action="tools/call",
        principal=Principal("a"),
        session=SessionInfo("s", "memory"),
        server="x",
        tool=tool,
        arguments={},
    )


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], HistoryStore]]:
    """Both backends; PostgreSQL from tests/pg_support.py (fails, never skips, when it is absent)."""
    made: list[HistoryStore] = []
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgres" else None

    def make() -> HistoryStore:
        store: HistoryStore = SqliteHistory(tmp_path / "state.db") if dsn is None else PostgresHistory(dsn)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def test_store_round_trip(make_store: Callable[[], HistoryStore], tmp_path: Path) -> None:
    store = make_store()
    assert store.activations() == [] and store.pinned() is None  # nothing there yet, and nothing created
    if isinstance(store, SqliteHistory):
        assert not (tmp_path / "state.db").exists()
    r1 = write_bundle(tmp_path / "b", "read")
    files = bundle_snapshot(load_bundle(tmp_path / "b"))
    assert set(files) == {"p.rego", "README.md"}
    store.record(Activation(r1, "2026-01-01T00:00:00Z", "start", "ops@h", "b"), files)
    store.record(Activation(r1, "2026-01-01T00:01:00Z", "reload", "ops@h", "b"), files)
    assert [a.source for a in store.activations()] == ["reload", "start"]
    assert store.activations(1)[0].ts == "2026-01-01T00:01:00Z"
    assert store.files(r1) == files and store.resolve(r1[:8].upper()) == r1
    with pytest.raises(PolicyError, match="no stored bundle revision starts with"):
        store.resolve("abcdef" if not r1.startswith("abcdef") else "fedcba")
    with pytest.raises(PolicyError, match="at least 6"):
        store.resolve("ab")
    store.pin(r1, "alice")
    pin = store.pinned()
    assert pin is not None and pin.revision == r1 and pin.actor == "alice"
    store.pin(None, "alice")
    assert store.pinned() is None


async def test_rollback_wins_over_the_directory_until_cleared(
    make_store: Callable[[], HistoryStore], tmp_path: Path
) -> None:
    root = tmp_path / "b"
    r1 = write_bundle(root, "read")
    settings = parse_settings({"policy": {"bundle": str(root)}, "upstreams": {}}, source="<test>")
    store = make_store()

    async def start(source: PinnedSource) -> tuple[str, bool]:
        """Start an engine on ``source`` and record the start as the app does: (revision, allows read)."""
        async with open_engine(settings, watch=False, run_tests=False, source=source) as engine:
            bundle: Bundle = engine.bundle
            await record_activation(store, bundle, activation_for(bundle, source, "start", str(root)))
            return engine.revision, (await engine.evaluate(ask("read"))).allow

    first = PinnedSource(store)
    assert await start(first) == (r1, True)
    r2 = write_bundle(root, "write")  # the directory moves on
    assert await start(first) == (r2, False)

    # A running proxy picks the pin up at its next look; its history says who rolled back.
    watchers: list[BundleWatcher] = []
    source = PinnedSource(store)
    async with open_engine(
        settings,
        watch=False,
        run_tests=False,
        on_watcher=watchers.append,
        source=source,
        on_activate=lambda b: record_activation(store, b, activation_for(b, source, "reload", str(root))),
    ) as engine:
        assert engine.revision == r2
        store.pin(r1, "alice")
        event = await watchers[0].check()
        assert event is not None and event.status == "loaded" and engine.revision == r1
        assert (await engine.evaluate(ask("read"))).allow is True
        latest = store.activations(1)[0]
        assert (latest.revision, latest.source, latest.actor) == (r1, "rollback", "alice")
        assert await watchers[0].check() is None  # the directory's r2 is set aside while pinned

    # A restart keeps the rollback: the pin wins over the directory (which still holds r2).
    restarted = PinnedSource(store)
    async with open_engine(settings, watch=False, run_tests=False, source=restarted) as engine:
        assert engine.revision == r1

    # Cleared: the directory rules again at the next look.
    again = PinnedSource(store)
    async with open_engine(settings, watch=False, run_tests=False, on_watcher=watchers.append, source=again) as engine:
        assert engine.revision == r1
        store.pin(None, "alice")
        event = await watchers[-1].check()
        assert event is not None and event.status == "loaded" and engine.revision == r2
    for s in (first, source, restarted, again):
        s.close()


def config(tmp_path: Path, bundle: Path) -> Path:
    path = tmp_path / "mcp-guard.toml"
    path.write_text(
        f'[policy]\nbundle = "{bundle}"\n[audit]\npath = "{tmp_path / "audit.db"}"\n'
        f'state_path = "{tmp_path / "state.db"}"\n[upstreams.rec]\ncommand = "never-started"\n'
    )
    return path


def test_cli_history_and_rollback_are_audited(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "b"
    r1 = write_bundle(root, "read")
    cfg = config(tmp_path, root)
    settings: Settings = parse_settings(
        {"policy": {"bundle": str(root)}, "audit": {"state_path": str(tmp_path / "state.db")}, "upstreams": {}},
        source="<t>",
    )
    store = SqliteHistory(tmp_path / "state.db")
    store.record(Activation(r1, "2026-01-01T00:00:00Z", "start", "ops", "b"), bundle_snapshot(load_bundle(root)))
    r2 = write_bundle(root, "write")
    store.record(Activation(r2, "2026-01-01T00:01:00Z", "reload", "ops", "b"), bundle_snapshot(load_bundle(root)))
    assert settings.audit.state_path.endswith("state.db")

    assert main(["policy", "history", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.index(r2[:12]) < out.index(r1[:12]) and "pinned:" not in out

    assert main(["policy", "rollback", r1[:10], "--as", "alice", "-c", str(cfg)]) == 0
    assert f"pinned {r1}" in capsys.readouterr().out
    assert main(["policy", "history", "--json", "-c", str(cfg)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["pinned"]["revision"] == r1 and doc["pinned"]["actor"] == "alice"

    assert main(["policy", "rollback", "--clear", "--as", "bob", "-c", str(cfg)]) == 0
    assert store.pinned() is None
    assert main(["policy", "rollback", "ffffff00", "-c", str(cfg)]) == 2
    assert "no stored bundle revision" in capsys.readouterr().err
    assert main(["policy", "rollback", "-c", str(cfg)]) == 2
    opa_cfg = tmp_path / "opa.toml"
    opa_cfg.write_text(cfg.read_text().replace("[policy]\n", '[policy]\nengine = "opa"\n'))
    assert main(["policy", "rollback", r1[:10], "-c", str(opa_cfg)]) == 2
    assert "OPA loads its own bundles" in capsys.readouterr().err

    with open_sqlite_reader(tmp_path / "audit.db") as reader:
        rows = [r for r in reader.rows() if r[3] == EventKind.POLICY_ROLLBACK]
    assert [(r[6], r[14]) for r in rows] == [("alice", r1), ("bob", None)]
    assert json.loads(rows[1][15])["previous_pin"] == r1


def test_a_stored_revision_that_no_longer_loads_is_not_pinned(tmp_path: Path) -> None:
    root = tmp_path / "b"
    r1 = write_bundle(root, "read")
    store = SqliteHistory(tmp_path / "state.db")
    broken = {"p.rego": b"package mcp_guard\nimport rego.v1\ndecision := {\n"}
    store.record(Activation(r1, "t", "start", "ops", "b"), broken)  # as if someone wrote into the store
    assert main(["policy", "rollback", r1[:8], "-c", str(config(tmp_path, root))]) == 2
    assert store.pinned() is None


class DownStore(SqliteHistory):
    """A store that cannot be reached (every call fails as the real ones do)."""

    def pinned(self) -> None:  # type: ignore[override]
        raise PolicyError("state.db: bundle history unavailable: disk I/O error")

    def record(self, activation: Activation, files: object) -> None:  # type: ignore[override]
        raise PolicyError("state.db: bundle history unavailable: disk I/O error")


async def test_an_unreachable_store_never_stops_a_bundle(tmp_path: Path) -> None:
    """History is a record, not a gate: the pin keeps its last known state, a failed record is logged."""
    root = tmp_path / "b"
    r1 = write_bundle(root, "read")
    store = DownStore(tmp_path / "state.db")
    source = PinnedSource(store)
    await source.refresh()
    assert source.pin is None and source.root_for(root) == root
    await record_activation(store, load_bundle(root), Activation(r1, "t", "start", "ops", "b"))  # does not raise
    settings = parse_settings({"policy": {"bundle": str(root)}, "upstreams": {}}, source="<test>")
    async with open_engine(settings, watch=False, run_tests=False, source=source) as engine:
        assert engine.revision == r1
    source.close()
