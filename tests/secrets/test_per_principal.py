"""Per-principal secrets: ``{principal}`` in a secret's name, resolved for the caller only, every value scrubbed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from mcp_guard.errors import ConfigError, SecretError
from mcp_guard.secrets.manager import SecretManager
from mcp_guard.secrets.per_principal import principal_id_problem, substitute
from mcp_guard.settings import SecretSettings, Settings, parse_settings

pytestmark = pytest.mark.anyio

ALICE = "alice-own-token-1111-AAAA"
BOB = "bob-own-token-2222-BBBB"
SHARED = "shared-token-3333-CCCC"


def _settings(tmp_path: Path, **upstreams: Any) -> Settings:
    (tmp_path / "tokens").mkdir(exist_ok=True)
    (tmp_path / "tokens" / "alice").write_text(ALICE + "\n")
    data: dict[str, Any] = {
        "secrets": {
            "gh": {"provider": "env", "name": "MG_GH_{principal}"},
            "files": {"provider": "file", "name": "tokens/{principal}"},
            "cmd": {
                "provider": "command",
                "name": [sys.executable, "-c", "import sys; print('tok-' + sys.argv[1] * 20)", "{principal}"],
            },
            "shared": {"provider": "env", "name": "MG_SHARED"},
        },
        "upstreams": {
            "github": {"command": "gh-server", "inject_env": {"GH_TOKEN": "gh", "OTHER": "shared"}},
            "plain": {"command": "plain-server", "inject_env": {"S": "shared"}},
            **upstreams,
        },
    }
    return parse_settings(data, source=str(tmp_path / "cfg.toml"), base_dir=str(tmp_path))


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SecretManager:
    monkeypatch.setenv("MG_GH_alice", ALICE)
    monkeypatch.setenv("MG_GH_bob", BOB)
    monkeypatch.setenv("MG_SHARED", SHARED)
    return SecretManager(_settings(tmp_path))


def test_a_name_with_the_placeholder_is_per_principal() -> None:
    assert SecretSettings(provider="env", name="T_{principal}").per_principal
    assert SecretSettings(provider="command", name=["pass", "show", "gh/{principal}"]).per_principal
    assert not SecretSettings(provider="env", name="T").per_principal


def test_pool_bounds_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pool"):
        _settings(tmp_path, bad={"command": "x", "inject_env": {"G": "gh"}, "pool": {"max": 0}})
    with pytest.raises(ConfigError, match="pool"):
        _settings(tmp_path, bad={"command": "x", "inject_env": {"G": "gh"}, "pool": {"idle_s": -1}})
    assert _settings(tmp_path).upstreams["github"].pool.max == 16


@pytest.mark.parametrize(
    ("provider", "principal", "ok"),
    [
        ("env", "alice_1", True),
        ("env", "a-b", False),  # never mapped to a_b: that would be another principal's variable
        ("env", "a.b", False),
        ("file", "a-b.c@d", True),
        ("file", "..", False),
        ("file", ".hidden", False),
        ("file", "a/b", False),
        ("file", "../etc/passwd", False),
        ("command", "x" * 129, False),
        ("env", "", False),
    ],
)
def test_only_safe_ids_are_substituted(provider: str, principal: str, ok: bool) -> None:
    s = SecretSettings(provider=provider, name="X_{principal}")  # type: ignore[arg-type]
    assert (principal_id_problem(s, principal) is None) is ok


def test_substitute_replaces_every_occurrence() -> None:
    s = SecretSettings(provider="command", name=["get", "{principal}", "--as={principal}"])
    assert substitute(s, "bob").name == ["get", "bob", "--as=bob"]


def test_pooled_upstreams_are_those_with_a_per_principal_secret(manager: SecretManager) -> None:
    assert manager.pooled_upstreams() == frozenset({"github"})


async def test_each_principal_gets_its_own_value_and_the_shared_ones(manager: SecretManager) -> None:
    alice = await manager.injections_for_principal("github", "alice")
    bob = await manager.injections_for_principal("github", "bob")
    assert alice.env == {"GH_TOKEN": ALICE, "OTHER": SHARED}
    assert bob.env == {"GH_TOKEN": BOB, "OTHER": SHARED}


async def test_without_a_principal_a_per_principal_secret_has_no_value(manager: SecretManager) -> None:
    with pytest.raises(SecretError, match="per principal"):
        await manager.injections_for("github")
    assert (await manager.injections_for("plain")).env == {"S": SHARED}


async def test_a_principal_without_a_value_is_told_which_is_missing(manager: SecretManager) -> None:
    with pytest.raises(SecretError, match="MG_GH_carol is not set"):
        await manager.injections_for_principal("github", "carol")
    with pytest.raises(SecretError, match="cannot name a per-principal env secret"):
        await manager.injections_for_principal("github", "car-ol")


async def test_check_does_not_resolve_per_principal_secrets(manager: SecretManager) -> None:
    assert await manager.check() == {}


async def test_file_and_command_values_per_principal(manager: SecretManager) -> None:
    assert (await manager.resolve("files", principal="alice")).get_secret_value() == ALICE
    with pytest.raises(SecretError, match="does not exist"):
        await manager.resolve("files", principal="bob")
    assert (await manager.resolve("cmd", principal="bob")).get_secret_value() == "tok-" + "bob" * 20


async def test_every_principals_value_stays_scrubbed(manager: SecretManager, monkeypatch: pytest.MonkeyPatch) -> None:
    """More principals than the rotated-values bound of one secret: none of their values drops out."""
    values = {f"user{i}": f"value-of-user{i}-0123456789" for i in range(12)}
    for principal, value in values.items():
        monkeypatch.setenv(f"MG_GH_{principal}", value)
        await manager.resolve("gh", principal=principal)
    text = " ".join(values.values())
    scrubbed = manager.scrub_text(text)
    assert not any(v in scrubbed for v in values.values())
    assert scrubbed.count("[REDACTED:gh]") == len(values)


async def test_an_http_upstreams_headers_carry_the_callers_own_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MG_GH_alice", ALICE)
    monkeypatch.setenv("MG_GH_bob", BOB)
    web = {"transport": "http", "url": "https://gh.example/mcp", "inject_headers": {"Authorization": "Bearer {gh}"}}
    manager = SecretManager(_settings(tmp_path, web=web))
    assert "web" in manager.pooled_upstreams()
    assert (await manager.injections_for_principal("web", "alice")).headers == {"Authorization": f"Bearer {ALICE}"}
    assert (await manager.injections_for_principal("web", "bob")).headers == {"Authorization": f"Bearer {BOB}"}


def test_a_pool_on_an_upstream_without_per_principal_secrets_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"upstreams.plain2.pool: only an upstream that injects a per-principal"):
        _settings(tmp_path, plain2={"command": "x", "inject_env": {"S": "shared"}, "pool": {"max": 2}})
    assert (
        _settings(tmp_path, ok={"command": "x", "inject_env": {"G": "gh"}, "pool": {"max": 2}}).upstreams["ok"].pool.max
        == 2
    )
