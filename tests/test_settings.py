"""Finding the config (docs/architecture.md §8.1), one-line validation errors, what differs between two configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_guard.errors import ConfigError
from mcp_guard.settings import changed_keys, find_config, load_settings, parse_settings


def test_find_config_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MCP_GUARD_CONFIG", raising=False)
    with pytest.raises(ConfigError, match=r"no config file: no --config given, \$MCP_GUARD_CONFIG is not set"):
        find_config(None)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "mcp-guard.toml").write_text("")
    assert find_config(None) == Path("config/mcp-guard.toml")
    monkeypatch.setenv("MCP_GUARD_CONFIG", "from-env.toml")
    assert find_config(None) == Path("from-env.toml")
    assert find_config("given.toml") == Path("given.toml")


def test_validation_errors_are_one_line_naming_file_and_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text('[server]\nport = "x"\nprot = 1\n[upstreams.a]\ntransport = "http"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{cfg}: server.port: ")
    assert "; server.prot: unknown key" in message and "upstreams.a: http upstream needs 'url'" in message
    assert info.value.file == str(cfg) and info.value.key == "server.port"


def test_changed_keys() -> None:
    old = parse_settings({"server": {"port": 1}, "principals": {"ann": {"roles": ["a"]}}})
    new = parse_settings(
        {"server": {"port": 2}, "principals": {"ann": {"roles": ["a", "b"]}, "bob": {}}, "policy": {"timeout_ms": 9}}
    )
    assert changed_keys(old, new) == ["policy.timeout_ms", "principals.ann.roles", "principals.bob", "server.port"]
    assert changed_keys(old, old) == []


def test_console_section_roles_and_base_url() -> None:
    s = parse_settings({"server": {"host": "::1", "port": 9000}}, source="<t>")
    assert (s.console.operator_role, s.console.viewer_role) == ("operator", "viewer")
    assert s.console.url_base(s.server) == "http://[::1]:9000"
    s = parse_settings({"console": {"base_url": "https://guard.example/", "operator_role": "secops"}}, source="<t>")
    assert s.console.url_base(s.server) == "https://guard.example" and s.console.operator_role == "secops"
    with pytest.raises(ConfigError, match=r"console\.base_url"):
        parse_settings({"console": {"base_url": "guard.example"}}, source="<t>")
    with pytest.raises(ConfigError, match=r"console\.colour"):
        parse_settings({"console": {"colour": "red"}}, source="<t>")


def test_an_upstreams_protocol_era_is_validated(tmp_path: Path) -> None:
    up = {"command": "x"}
    assert parse_settings({"upstreams": {"a": up}}).upstreams["a"].protocol == "auto"
    assert (
        parse_settings({"upstreams": {"a": {**up, "protocol": "2026-07-28"}}}).upstreams["a"].protocol == "2026-07-28"
    )
    cfg = tmp_path / "g.toml"
    cfg.write_text('[upstreams.a]\ncommand = "x"\nprotocol = "2024-11-05"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{cfg}: upstreams.a.protocol: ")


def test_an_upstreams_task_support_is_validated(tmp_path: Path) -> None:
    up = {"command": "x"}
    plain = parse_settings({"upstreams": {"a": up}}).upstreams["a"]
    assert plain.tasks is None and plain.task_tools == {}, "unset: as each tool's definition says"
    got = parse_settings(
        {"upstreams": {"a": {**up, "tasks": "optional", "task_tools": {"slow": "required", "quick": "forbidden"}}}}
    ).upstreams["a"]
    assert got.tasks == "optional" and got.task_tools == {"slow": "required", "quick": "forbidden"}
    cfg = tmp_path / "t.toml"
    cfg.write_text('[upstreams.a]\ncommand = "x"\ntasks = "always"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{cfg}: upstreams.a.tasks: ")
    cfg.write_text('[upstreams.a]\ncommand = "x"\ntask_tools = { slow = "sometimes" }\n')
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert str(info.value).startswith(f"{cfg}: upstreams.a.task_tools.slow: ")


def test_the_http_fronts_idle_connection_cap_is_validated() -> None:
    assert parse_settings({}).server.http_max_idle_connections == 512
    assert parse_settings({"server": {"http_max_idle_connections": 2}}).server.http_max_idle_connections == 2
    with pytest.raises(ConfigError, match=r"^g\.toml: server\.http_max_idle_connections: .*greater than 0"):
        parse_settings({"server": {"http_max_idle_connections": 0}}, source="g.toml")
