"""``[auth]`` validates itself: each problem is one line naming the file and the dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_guard.errors import ConfigError
from mcp_guard.settings import load_settings

BASE = 'issuer = "https://idp.example"\naudience = "https://guard.example/mcp"\n'


def _load(tmp_path: Path, body: str) -> ConfigError:
    path = tmp_path / "guard.toml"
    path.write_text("[auth]\n" + body)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return info.value


@pytest.mark.parametrize(
    ("body", "key", "says"),
    [
        ('issuer = "https://idp.example"\n', "auth.audience", "Field required"),
        (BASE + 'algorithms = ["RS256", "HS256"]\n', "auth.algorithms", "'HS256' not allowed: asymmetric"),
        (BASE + 'algorithms = ["none"]\n', "auth.algorithms", "'none' and HS* are never accepted"),
        (BASE + "algorithms = []\n", "auth.algorithms", "at least one algorithm"),
        ('issuer = "http://idp.example"\naudience = "https://g/mcp"\n', "auth.issuer", "must use https"),
        ('issuer = "https://idp.example"\naudience = "https://g/mcp#frag"\n', "auth.audience", "#fragment"),
        ('issuer = "https://idp.example"\naudience = "mcp-guard"\n', "auth.audience", "absolute https:// URL"),
        ('issuer = "https://i"\naudience = "https://g/m\\"x"\n', "auth.audience", "quotes"),
        (BASE + 'jwks_url = "ftp://idp.example/jwks"\n', "auth.jwks_url", "absolute https:// URL"),
        (BASE + 'roles_claim = "realm..roles"\n', "auth.roles_claim", "dotted path"),
        (BASE + 'required_scopes = ["two words"]\n', "auth.required_scopes", "not an OAuth scope token"),
        (BASE + "jwks_refresh_s = 600\njwks_max_age_s = 60\n", "auth.jwks_max_age_s", "at least jwks_refresh_s"),
        (BASE + "leeway_s = 3600\n", "auth.leeway_s", "less than or equal to 300"),
        (BASE + "audiences = []\n", "auth.audiences", "unknown key"),
    ],
)
def test_bad_auth_settings_name_file_and_key(tmp_path: Path, body: str, key: str, says: str) -> None:
    e = _load(tmp_path, body)
    assert e.key == key
    assert f"{key}: " in str(e) and says in str(e)


def test_loopback_http_is_allowed_for_a_local_idp(tmp_path: Path) -> None:
    path = tmp_path / "guard.toml"
    path.write_text('[auth]\nissuer = "http://127.0.0.1:9000"\naudience = "http://localhost:8765/mcp"\n')
    s = load_settings(path)
    assert s.auth is not None and s.auth.algorithms == ["RS256", "PS256", "ES256", "EdDSA"]
    assert s.auth.leeway_s == 30 and s.auth.roles_claim == "roles" and s.auth.scope_claim == "scope"
