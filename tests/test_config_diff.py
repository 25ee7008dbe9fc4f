"""``plan_reload``: what a reload applies (upstreams, principals, secrets) and what waits for a restart."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_guard.config_diff import plan_reload
from mcp_guard.errors import ConfigError
from mcp_guard.settings import Settings, parse_settings


def _settings(**tables: Any) -> Settings:
    return parse_settings(tables, source="/etc/guard.toml", base_dir="/etc")


def _up(*args: str, **more: Any) -> dict[str, Any]:
    return {"command": "python", "args": list(args), **more}


def test_upstreams_added_removed_and_changed_by_any_setting() -> None:
    old = _settings(upstreams={"a": _up("a"), "b": _up("b"), "c": _up("c"), "off": _up("x", enabled=False)})
    new = _settings(upstreams={"a": _up("a"), "c": _up("c", timeout_s=5), "d": _up("d"), "off": _up("x", enabled=True)})
    plan = plan_reload(old, new)
    assert plan.upstreams_added == ("d", "off")  # enabling a disabled upstream starts it
    assert plan.upstreams_removed == ("b",)
    assert plan.upstreams_changed == ("c",)
    assert plan.stopped == ("b", "c") and plan.started == ("c", "d", "off")
    assert plan.restart_required == () and plan.effective.upstreams == new.upstreams


def test_a_secret_redefined_or_rotated_changes_the_upstreams_that_inject_it() -> None:
    secrets = {"tok": {"provider": "env", "name": "A"}}
    ups = {"s": _up("s", inject_env={"TOK": "tok"}), "plain": _up("p")}
    old = _settings(secrets=secrets, upstreams=ups)
    redefined = _settings(secrets={"tok": {"provider": "env", "name": "B"}}, upstreams=ups)
    plan = plan_reload(old, redefined)
    assert plan.secrets_changed == ("tok",) and plan.upstreams_changed == ("s",)
    same = plan_reload(old, old, rotated=frozenset({"tok"}))
    assert same.secrets_changed == () and same.upstreams_changed == ("s",)
    assert not plan_reload(old, old).applies_anything


def test_principals_changed_by_name_and_details_carry_no_value() -> None:
    digest = "ab" * 32
    old = _settings(principals={"alice": {"roles": ["a"]}, "bob": {}})
    new = _settings(principals={"alice": {"roles": ["a"], "api_key_sha256": digest}, "carol": {}})
    plan = plan_reload(old, new)
    assert plan.principals_changed == ("alice", "bob", "carol")
    assert digest not in repr(plan.details())


def test_other_keys_wait_for_a_restart_and_are_not_applied() -> None:
    old = _settings(server={"port": 1000}, upstreams={"a": _up("a")})
    new = _settings(server={"port": 2000, "name": "x"}, audit={"path": "other.db"}, upstreams={"a": _up("a")})
    plan = plan_reload(old, new)
    assert plan.restart_required == ("audit.path", "server.name", "server.port")
    assert plan.effective.server.port == 1000 and plan.effective.audit.path == old.audit.path


def test_the_effective_config_is_validated_as_a_whole() -> None:
    # Valid on its own with its own separator, but ambiguous under the running one (a restart-only key).
    old = _settings(server={"tool_separator": "_"})
    new = _settings(server={"tool_separator": "__"}, upstreams={"my_tools": _up("m")})
    with pytest.raises(ConfigError, match=r"upstreams\.my_tools"):
        plan_reload(old, new)
