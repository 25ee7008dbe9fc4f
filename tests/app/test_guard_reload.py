"""``Guard.reload``: the config file re-read whole, upstreams / principals / secrets applied while serving,
a bad file rejected with nothing changed, every attempt audited as ``config.reload`` (names, never values)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from guard_harness import client_of, read_log, recorder_upstream, text_of, wait_for
from mcp_guard.app import Guard
from mcp_guard.frontend.auth import key_digest
from mcp_guard.secrets.manager import SecretManager
from mcp_guard.settings import load_settings
from mcp_guard.testing import RecordingSink, allow_all
from mcp_guard.types import EventKind

pytestmark = pytest.mark.anyio

KEY_ONE = "first-key-of-alice-0001"
KEY_TWO = "second-key-of-alice-0002"


def _toml(v: Any) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(x)}" for k, x in v.items()) + " }"
    return json.dumps(v)


def _write(
    path: Path,
    upstreams: dict[str, dict[str, Any]],
    *,
    alice_key: str = KEY_ONE,
    alice_roles: tuple[str, ...] = ("support",),
    secrets: dict[str, dict[str, Any]] | None = None,
    extra: str = "",
) -> Path:
    lines = ['[server]\nprincipal = "alice"\n', "[principals.alice]", f"roles = {json.dumps(list(alice_roles))}"]
    lines.append(f'api_key_sha256 = "{key_digest(alice_key)}"\n')
    for name, table in (secrets or {}).items():
        lines.append(f"[secrets.{name}]")
        lines += [f"{k} = {_toml(v)}" for k, v in table.items()]
    for name, table in upstreams.items():
        lines.append(f"[upstreams.{name}]")
        lines += [f"{k} = {_toml(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def _guard(cfg: Path, sink: RecordingSink) -> Guard:
    settings = load_settings(cfg)
    return Guard(settings, engine=allow_all(), sink=sink, secrets=SecretManager(settings))


def _reloads(sink: RecordingSink) -> list[dict[str, Any]]:
    return [dict(e.details or {}) for e in sink.of_kind(str(EventKind.CONFIG_RELOAD))]


async def test_upstreams_added_removed_changed_while_a_call_on_an_unchanged_one_completes(tmp_path: Path) -> None:
    logs = {n: tmp_path / f"{n}.log" for n in "abcd"}
    cfg = _write(tmp_path / "guard.toml", {n: recorder_upstream(logs[n]) for n in "abc"})
    sink = RecordingSink()
    guard = _guard(cfg, sink)
    async with guard.running():
        assert not await guard.registry.wait_ready(20)
        kept, changed_before = guard.registry.connections["a"], guard.registry.connections["c"]
        kept_session = kept.session
        async with client_of(guard) as client, anyio.create_task_group() as tg:
            slow: list[str] = []

            async def call_slow() -> None:
                slow.append(text_of(await client.call_tool("a__slow", {"seconds": 2.0, "steps": 1})))

            tg.start_soon(call_slow)
            await wait_for(lambda: any(e.get("name") == "slow" for e in read_log(logs["a"])))

            # b removed, c changed (one env value), d added, a untouched.
            _write(
                cfg,
                {
                    "a": recorder_upstream(logs["a"]),
                    "c": recorder_upstream(logs["c"], RECORDER_NAME="c2"),
                    "d": recorder_upstream(logs["d"]),
                },
            )
            result = await guard.reload()
            assert result.status == "ok", result.as_details()
            assert result.plan is not None
            assert (result.plan.upstreams_added, result.plan.upstreams_removed) == (("d",), ("b",))
            assert result.plan.upstreams_changed == ("c",)

            # The call in flight on the unchanged upstream finished normally, on the same connection.
            await wait_for(lambda: bool(slow), within=20)
            assert slow == ["slept 2.0s"]
            assert not [e for e in read_log(logs["a"]) if e.get("event") == "cancelled"]
            assert guard.registry.connections["a"] is kept and kept.session is kept_session
            assert "b" not in guard.registry.connections
            assert guard.registry.connections["c"] is not changed_before and changed_before.state == "stopped"

            await wait_for(lambda: "d__echo" in guard.registry.catalog.tools, within=20)
            await wait_for(lambda: "c__echo" in guard.registry.catalog.tools, within=20)
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"a__echo", "c__echo", "d__echo"} <= names and "b__echo" not in names
            assert text_of(await client.call_tool("d__echo", {"text": "new"})) == "new"
            info = guard.registry.connections["c"].catalog.server_info
            assert info is not None and info.name == "c2"

    (row,) = _reloads(sink)
    assert row["status"] == "ok" and row["upstreams_added"] == ["d"] and row["upstreams_removed"] == ["b"]
    assert row["upstreams_changed"] == ["c"] and row["restart_required"] == []


@pytest.mark.parametrize(
    ("broken", "expect"),
    [
        ("[server\n", "invalid TOML"),
        ("[upstreams.z]\ncommand = 'python'\nbogus = 1\n", "upstreams.z.bogus: unknown key"),
        ("missing-secret", "secrets.tok"),
    ],
    ids=["parse-error", "validation-error", "unresolvable-secret"],
)
async def test_a_bad_config_is_rejected_whole_and_the_old_one_keeps_serving(
    tmp_path: Path, broken: str, expect: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _write(tmp_path / "guard.toml", {"a": recorder_upstream()})
    sink = RecordingSink()
    guard = _guard(cfg, sink)
    async with guard.running():
        assert not await guard.registry.wait_ready(20)
        before = dict(guard.registry.connections)
        settings_before = guard.settings
        if broken == "missing-secret":
            monkeypatch.delenv("MG_RELOAD_MISSING", raising=False)
            # A new upstream and a new key — valid TOML, but its secret cannot be resolved.
            _write(
                cfg,
                {"a": recorder_upstream(), "b": recorder_upstream() | {"inject_env": {"TOK": "tok"}}},
                alice_key=KEY_TWO,
                secrets={"tok": {"provider": "env", "name": "MG_RELOAD_MISSING"}},
            )
        else:
            cfg.write_text(cfg.read_text() + broken)
        result = await guard.reload()
        assert result.status == "rejected" and result.error is not None and expect in result.error
        assert guard.registry.connections == before and guard.settings is settings_before
        assert guard.keys.match(KEY_ONE) == "alice" and guard.keys.match(KEY_TWO) is None
        async with client_of(guard) as client:
            assert text_of(await client.call_tool("a__echo", {"text": "still"})) == "still"
    (row,) = _reloads(sink)
    assert row["status"] == "rejected" and expect in row["error"]
    assert "upstreams_added" not in row


async def test_principals_keys_and_roles_change_without_touching_upstreams(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "guard.toml", {"a": recorder_upstream()})
    sink = RecordingSink()
    guard = _guard(cfg, sink)
    async with guard.running():
        assert not await guard.registry.wait_ready(20)
        conn = guard.registry.connections["a"]
        resolve = guard.handlers("stdio").principal_of
        assert resolve(None).roles == ("support",)  # type: ignore[arg-type]
        assert guard.keys.match(KEY_ONE) == "alice"
        _write(cfg, {"a": recorder_upstream()}, alice_key=KEY_TWO, alice_roles=("support", "admin"))
        result = await guard.reload()
        assert result.status == "ok" and result.plan is not None
        assert result.plan.principals_changed == ("alice",) and not result.plan.stopped
        assert guard.keys.match(KEY_TWO) == "alice" and guard.keys.match(KEY_ONE) is None
        # A resolver handed out before the reload answers with the new roles.
        assert resolve(None).roles == ("support", "admin")  # type: ignore[arg-type]
        assert guard.registry.connections["a"] is conn
    (row,) = _reloads(sink)
    assert row["principals_changed"] == ["alice"]
    assert KEY_TWO not in json.dumps(row) and key_digest(KEY_TWO) not in json.dumps(row)


async def test_a_rotated_secret_restarts_only_the_upstream_that_injects_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_value, new_value = "rotating-secret-old-1a2b3c", "rotating-secret-new-4d5e6f"
    monkeypatch.setenv("MG_ROTATING", old_value)
    secrets = {"tok": {"provider": "env", "name": "MG_ROTATING"}}
    tables = {"a": recorder_upstream(), "s": recorder_upstream() | {"inject_env": {"TOK": "tok"}}}
    cfg = _write(tmp_path / "guard.toml", tables, secrets=secrets)
    sink = RecordingSink()
    guard = _guard(cfg, sink)
    async with guard.running():
        assert not await guard.registry.wait_ready(20)
        a, s = guard.registry.connections["a"], guard.registry.connections["s"]
        monkeypatch.setenv("MG_ROTATING", new_value)
        result = await guard.reload()  # the file is unchanged; the secret's value is not
        assert result.status == "ok" and result.plan is not None
        assert result.plan.upstreams_changed == ("s",) and result.plan.secrets_changed == ()
        assert guard.registry.connections["a"] is a and guard.registry.connections["s"] is not s
        assert await guard.registry.connections["s"].wait_ready(20)
        # Both values stay scrubbed: the old one may still be echoed by something that saw it.
        scrubbed = guard.secrets.scrubber.scrub_text(f"{old_value} {new_value}")
        assert old_value not in scrubbed and new_value not in scrubbed
    (row,) = _reloads(sink)
    assert row["upstreams_changed"] == ["s"]
    assert old_value not in json.dumps(row) and new_value not in json.dumps(row)


async def test_keys_outside_the_reloadable_tables_are_reported_not_applied(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "guard.toml", {"a": recorder_upstream()})
    sink = RecordingSink()
    guard = _guard(cfg, sink)
    async with guard.running():
        assert not await guard.registry.wait_ready(20)
        cfg.write_text(cfg.read_text().replace("[server]\n", "[server]\nport = 9\n"))
        result = await guard.reload()
        assert result.status == "restart_required" and result.changed == ["server.port"]
        assert guard.settings.server.port == 8765
