"""BundleWatcher: a bundle refused for what it is stays refused; one that could not reach the engine is retried."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_guard.errors import PolicyError
from mcp_guard.policy.base import EngineUnavailable
from mcp_guard.policy.bundle import Bundle, load_bundle
from mcp_guard.policy.reload import BundleWatcher, ReloadEvent

pytestmark = pytest.mark.anyio

V1 = 'package t\n\ndecision := {"allow": false}\n'
V2 = 'package t\n\ndecision := {"allow": true}\n'


class Engine:
    """An apply() that fails the way it is told to."""

    def __init__(self) -> None:
        self.fail: PolicyError | None = None
        self.applied: list[str] = []

    async def apply(self, bundle: Bundle) -> None:
        if self.fail is not None:
            raise self.fail
        self.applied.append(bundle.revision)


def watcher(root: Path, engine: Engine, events: list[ReloadEvent]) -> BundleWatcher:
    async def listener(e: ReloadEvent) -> None:
        events.append(e)

    return BundleWatcher(root, engine.apply, active_revision=load_bundle(root).revision, listener=listener)


async def test_unreachable_engine_is_retried_with_the_same_revision(tmp_path: Path) -> None:
    (tmp_path / "t.rego").write_text(V1)
    engine, events = Engine(), []
    w = watcher(tmp_path, engine, events)
    (tmp_path / "t.rego").write_text(V2)
    engine.fail = EngineUnavailable("cannot reach OPA at http://127.0.0.1:1: refused")
    first = await w.check()
    assert first is not None and first.status == "rejected" and "cannot reach OPA" in (first.error or "")
    assert await w.check() is None  # reported once, but not given up on
    engine.fail = None
    loaded = await w.check()
    assert loaded is not None and loaded.status == "loaded" and engine.applied == [load_bundle(tmp_path).revision]
    assert [e.status for e in events] == ["rejected", "loaded"]


async def test_refused_bundle_is_not_retried_until_it_changes(tmp_path: Path) -> None:
    (tmp_path / "t.rego").write_text(V1)
    engine, events = Engine(), []
    w = watcher(tmp_path, engine, events)
    (tmp_path / "t.rego").write_text(V2)
    engine.fail = PolicyError("OPA rejected the policy")
    assert (await w.check()) is not None
    engine.fail = None
    assert await w.check() is None and engine.applied == []
    (tmp_path / "t.rego").write_text(V2 + "\n")
    assert (await w.check()) is not None and len(engine.applied) == 1
