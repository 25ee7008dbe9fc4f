"""open_engine(settings): engine choice, bundle errors, and hot reload (swap, reject, keep last good)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

import mcp_guard.policy as policy
from mcp_guard.errors import PolicyError
from mcp_guard.policy import CachedEngine, EmbeddedEngine, EngineHealth, PolicyEngine, ReloadEvent, open_engine
from mcp_guard.settings import Settings, parse_settings

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]

V1 = 'package t\n\nimport rego.v1\n\ndecision := {"allow": false, "reasons": ["v1"]}\n'
V2 = 'package t\n\nimport rego.v1\n\ndecision := {"allow": true, "reasons": ["v2"]}\n'
TEST_OK = "package t\n\nimport rego.v1\n\ntest_shape if is_boolean(decision.allow)\n"


def settings(tmp_path: Path, **policy_keys: object) -> Settings:
    return parse_settings(
        {"policy": {"bundle": "bundle", "decision": "t/decision", **policy_keys}}, base_dir=str(tmp_path)
    )


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    d = tmp_path / "bundle"
    d.mkdir()
    (d / "t.rego").write_text(V1)
    (d / "t_test.rego").write_text(TEST_OK)
    return d


@pytest.fixture(autouse=True)
def fast_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy, "RELOAD_INTERVAL_S", 0.02)


class Recorder:
    """Reload listener that records events and lets a test wait for the n-th one."""

    def __init__(self) -> None:
        self.events: list[ReloadEvent] = []
        self._changed = anyio.Event()

    async def __call__(self, event: ReloadEvent) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, n: int) -> None:
        with anyio.fail_after(10):
            while True:
                changed = self._changed
                if len(self.events) >= n:
                    return
                await changed.wait()


async def test_embedded_engine_from_settings(tmp_path: Path, bundle: Path) -> None:
    async with open_engine(settings(tmp_path, hot_reload=False)) as engine:
        # the embedded engine behind the decision cache (on by default)
        assert isinstance(engine, CachedEngine) and isinstance(engine.inner, EmbeddedEngine)
        assert isinstance(engine, PolicyEngine)
        d = await engine.evaluate_document({})
        assert d.reasons == ("v1",) and d.revision == engine.revision


async def test_broken_bundle_at_start_names_file(tmp_path: Path, bundle: Path) -> None:
    (bundle / "t.rego").write_text("package t\n\ndecision := {\n")
    with pytest.raises(PolicyError, match=r"t\.rego:4"):
        async with open_engine(settings(tmp_path)):
            pass


async def test_hot_reload_swaps_bundle(tmp_path: Path, bundle: Path) -> None:
    listener = Recorder()
    events = listener.events
    async with open_engine(settings(tmp_path), on_reload=listener) as engine:
        first = engine.revision
        (bundle / "t.rego").write_text(V2)
        await listener.wait_for(1)
        assert events[0].status == "loaded" and events[0].revision == engine.revision != first
        d = await engine.evaluate_document({})
        assert d.allow is True and d.reasons == ("v2",) and d.revision == engine.revision


async def test_hot_reload_rejects_broken_and_failing_bundles(tmp_path: Path, bundle: Path) -> None:
    listener = Recorder()
    events = listener.events
    async with open_engine(settings(tmp_path), on_reload=listener) as engine:
        good = engine.revision
        (bundle / "t.rego").write_text("package t\n\ndecision := {\n")  # does not parse
        await listener.wait_for(1)
        assert events[0].status == "rejected" and "t.rego" in (events[0].error or "")
        assert events[0].active_revision == good == engine.revision
        (bundle / "t.rego").write_text('package t\n\nimport rego.v1\n\ndecision := {"allow": "no"}\n')  # tests fail
        await listener.wait_for(2)
        assert events[1].status == "rejected" and "test(s) failed" in (events[1].error or "")
        assert "data.t.test_shape" in (events[1].error or "")
        d = await engine.evaluate_document({})
        assert d.reasons == ("v1",) and engine.revision == good
        (bundle / "data.json").write_text("{not json")  # unreadable bundle
        await listener.wait_for(3)
        assert events[2].status == "rejected" and events[2].revision is None
        (bundle / "data.json").unlink()
        (bundle / "t.rego").write_text(V2)  # fixed: loads
        await listener.wait_for(4)
        assert events[3].status == "loaded"
        assert (await engine.evaluate_document({})).allow is True


async def test_failing_tests_ignored_when_run_tests_on_reload_off(tmp_path: Path, bundle: Path) -> None:
    listener = Recorder()
    events = listener.events
    s = settings(tmp_path, run_tests_on_reload=False)
    async with open_engine(s, on_reload=listener) as engine:
        (bundle / "t.rego").write_text('package t\n\nimport rego.v1\n\ndecision := {"allow": "no"}\n')
        await listener.wait_for(1)
        assert events[0].status == "loaded"
        assert (await engine.evaluate_document({})).code == "result_invalid"


@pytest.mark.parametrize(("keys", "watch"), [({"hot_reload": False}, None), ({}, False)])
async def test_no_watcher_when_disabled(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch, keys: dict[str, object], watch: bool | None
) -> None:
    started: list[object] = []
    monkeypatch.setattr(policy, "BundleWatcher", lambda *a, **k: started.append(a))
    async with open_engine(settings(tmp_path, **keys), watch=watch) as engine:
        assert (await engine.evaluate_document({})).reasons == ("v1",)
    assert started == []


async def test_watcher_started_by_default(tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[float] = []
    real = policy.BundleWatcher

    def spy(*args: Any, **kwargs: Any) -> Any:
        started.append(kwargs["interval"])
        return real(*args, **kwargs)

    monkeypatch.setattr(policy, "BundleWatcher", spy)
    async with open_engine(settings(tmp_path)):
        pass
    assert started == [0.02]


# ------------------------------------------------------------------------ start-up gates and health

FAILING_TEST = 'package t\n\nimport rego.v1\n\ntest_reason if decision.reasons == ["v2"]\n'


async def test_failing_tests_stop_start_naming_the_test(tmp_path: Path, bundle: Path) -> None:
    (bundle / "t2_test.rego").write_text(FAILING_TEST)
    with pytest.raises(PolicyError) as info:
        async with open_engine(settings(tmp_path)):
            pass
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        f"{bundle}: 1 policy test(s) failed: data.t.test_reason (t2_test.rego) FAIL: "
        't2_test.rego:5:16: false: decision.reasons == ["v2"] (left = ["v1"], right = ["v2"])'
    )


async def test_failing_tests_start_when_run_tests_on_start_off(tmp_path: Path, bundle: Path) -> None:
    (bundle / "t2_test.rego").write_text(FAILING_TEST)
    async with open_engine(settings(tmp_path, run_tests_on_start=False)) as engine:
        assert (await engine.evaluate_document({})).reasons == ("v1",)


async def test_bundle_failing_the_static_check_does_not_start(tmp_path: Path, bundle: Path) -> None:
    (bundle / "t.rego").write_text(
        'package t\n\ndecision := {"allow": false, "reasons": [msg]} if {\n\tmsg := sprintf("%s", input.x)\n'
        "\tstartswith(msg)\n}\n"
    )
    with pytest.raises(
        PolicyError, match=r"t\.rego:5:\d+: startswith: arity mismatch .* \(in rule data\.t\.decision\)"
    ):
        async with open_engine(settings(tmp_path)):
            pass


async def test_embedded_engine_is_always_ready(tmp_path: Path, bundle: Path) -> None:
    async with open_engine(settings(tmp_path, hot_reload=False)) as engine:
        assert isinstance(engine, EngineHealth)
        assert engine.ready is True and engine.problem is None


# ------------------------------------------------------------------------ data_overlay and data.schema.json

DATA_POLICY = (
    'package t\n\nimport rego.v1\n\ndecision := {"allow": data.site.open == true, "reasons": [data.site.name]}\n'
)
DATA_SCHEMA = (
    '{"type": "object", "properties": {"site": {"type": "object", "additionalProperties": false,'
    ' "properties": {"open": {"type": "boolean"}, "name": {"type": "string"}, "tags": {"type": "array"}}}}}'
)


@pytest.fixture
def data_bundle(tmp_path: Path) -> Path:
    d = tmp_path / "bundle"
    d.mkdir()
    (d / "t.rego").write_text(DATA_POLICY)
    (d / "data.json").write_text('{"site": {"open": false, "name": "shipped", "tags": ["a", "b"]}}')
    (d / "data.schema.json").write_text(DATA_SCHEMA)
    # the shipped test sees the shipped data, whatever the site's overlay says
    (d / "t_test.rego").write_text('package t\n\nimport rego.v1\n\ntest_shipped if decision.reasons == ["shipped"]\n')
    return d


async def test_overlay_is_merged_at_start_and_tests_keep_the_shipped_data(tmp_path: Path, data_bundle: Path) -> None:
    (tmp_path / "site.json").write_text('{"site": {"open": true}}')
    async with open_engine(settings(tmp_path, data_overlay=["site.json"], hot_reload=False)) as engine:
        d = await engine.evaluate_document({})
        assert d.allow is True and d.reasons == ("shipped",)  # open from the overlay, name deep-merged from data.json


async def test_schema_violation_stops_start_naming_the_overlay_and_key(tmp_path: Path, data_bundle: Path) -> None:
    (tmp_path / "site.json").write_text('{"site": {"opne": true}}')
    with pytest.raises(PolicyError) as info:
        async with open_engine(settings(tmp_path, data_overlay=["site.json"])):
            pass
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'site.json'}: data.site.opne: unknown key") and "\n" not in message


async def test_missing_overlay_stops_start(tmp_path: Path, data_bundle: Path) -> None:
    with pytest.raises(PolicyError, match=r"site\.json: policy.data_overlay file not found"):
        async with open_engine(settings(tmp_path, data_overlay=["site.json"])):
            pass


async def test_hot_reload_applies_an_edited_overlay_and_rejects_a_bad_one(tmp_path: Path, data_bundle: Path) -> None:
    site = tmp_path / "site.json"
    site.write_text('{"site": {"name": "one"}}')
    listener = Recorder()
    events = listener.events
    async with open_engine(settings(tmp_path, data_overlay=["site.json"]), on_reload=listener) as engine:
        assert (await engine.evaluate_document({})).reasons == ("one",)
        site.write_text('{"site": {"name": "two"}}')
        await listener.wait_for(1)
        assert events[0].status == "loaded" and (await engine.evaluate_document({})).reasons == ("two",)
        good = engine.revision
        site.write_text('{"site": {"name": 3}}')  # the schema wants a string
        await listener.wait_for(2)
        assert events[1].status == "rejected" and f"{site}: data.site.name: 3 is not of type 'string'" in (
            events[1].error or ""
        )
        assert engine.revision == good and (await engine.evaluate_document({})).reasons == ("two",)


async def test_default_bundle_starts_with_site_data_that_drops_the_demo(tmp_path: Path) -> None:
    """The shipped tests run on the shipped data: a site that removes the demo's principals and roles and
    moves the roots still passes the start-up test gate, and its own data decides."""
    (tmp_path / "site.json").write_text(
        '{"mcp_guard_config": {"principals": {"alice": null, "bob": null, "carol": ["analyst"]},'
        ' "roles": {"support": null}, "paths": {"allowed_roots": {"files": ["/data/site"], "filesystem": null}}}}'
    )
    s = parse_settings(
        {"policy": {"bundle": str(REPO / "policies" / "rego"), "data_overlay": ["site.json"], "hot_reload": False}},
        base_dir=str(tmp_path),
    )

    def read(principal: str, path: str) -> dict[str, Any]:
        return {
            "action": "tools/call",
            "principal": {"id": principal, "roles": [], "attributes": {}},
            "server": "files",
            "tool": "read_text_file",
            "arguments": {"path": path},
            "tool_info": {"annotations": {"readOnlyHint": True}},
        }

    async with open_engine(s) as engine:  # run_tests_on_start is on
        data = engine.bundle.data["mcp_guard_config"]  # type: ignore[attr-defined]
        assert set(data["principals"]) == {"carol", "local-agent"} and "support" not in data["roles"]
        assert (await engine.evaluate_document(read("carol", "/data/site/a.txt"))).allow is True
        assert (await engine.evaluate_document(read("carol", "/srv/agent-workspace/a.txt"))).allow is False
        assert (await engine.evaluate_document(read("bob", "/data/site/a.txt"))).allow is False  # bob is gone
