"""``[upstreams.X] token_exchange`` is validated with the rest of the config: each mistake a one-line error
naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_guard.errors import ConfigError
from mcp_guard.settings import load_settings

AUTH = '[auth]\nissuer = "https://idp.example"\naudience = "https://guard.example/mcp"\n'
SECRET = '[secrets.gw]\nprovider = "env"\nname = "GW_SECRET"\n'
UPSTREAM = '[upstreams.rep]\ntransport = "http"\nurl = "https://reports.example/mcp"\n'
EXCHANGE = 'client_id = "mcp-guard"\nclient_secret = "gw"\naudience = "https://reports.example/mcp"\n'


def _load(tmp_path: Path, text: str) -> str:
    cfg = tmp_path / "g.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{cfg}: "), message
    return message.removeprefix(f"{cfg}: ")


def test_a_valid_exchange_defaults_its_token_url_to_the_issuer(tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(AUTH + SECRET + UPSTREAM + '[upstreams.rep.token_exchange]\nscopes = ["a", "b", "a"]\n' + EXCHANGE)
    tx = load_settings(cfg).upstreams["rep"].token_exchange
    assert tx is not None and tx.token_url is None and tx.scopes == ["a", "b"] and tx.refresh_margin_s == 30


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            SECRET + UPSTREAM + "[upstreams.rep.token_exchange]\n" + EXCHANGE,
            "upstreams.rep.token_exchange.token_url: needed without [auth]",
        ),
        (
            AUTH + UPSTREAM + "[upstreams.rep.token_exchange]\n" + EXCHANGE,
            "upstreams.rep.token_exchange.client_secret: unknown secret 'gw'",
        ),
        (
            AUTH
            + '[secrets.gw]\nprovider = "env"\nname = "GW_{principal}"\n'
            + UPSTREAM
            + "[upstreams.rep.token_exchange]\n"
            + EXCHANGE,
            "upstreams.rep.token_exchange.client_secret: the gateway's client secret cannot be per principal",
        ),
        (
            AUTH + SECRET + '[upstreams.rep]\ncommand = "x"\n[upstreams.rep.token_exchange]\n' + EXCHANGE,
            "upstreams.rep: token_exchange needs transport = 'http'",
        ),
        (
            AUTH
            + SECRET
            + UPSTREAM
            + 'headers = { Authorization = "Bearer static" }\n'
            + "[upstreams.rep.token_exchange]\n"
            + EXCHANGE,
            "upstreams.rep: token_exchange sets Authorization itself",
        ),
        (
            AUTH + SECRET + UPSTREAM + '[upstreams.rep.token_exchange]\nscopes = ["a b"]\n' + EXCHANGE,
            "upstreams.rep.token_exchange.scopes: a scope is a non-empty string without spaces",
        ),
        (
            AUTH
            + SECRET
            + UPSTREAM
            + '[upstreams.rep.token_exchange]\ntoken_url = "http://idp.example/t"\n'
            + EXCHANGE,
            "upstreams.rep.token_exchange.token_url: token_url must use https",
        ),
        (
            AUTH + SECRET + UPSTREAM + '[upstreams.rep.token_exchange]\nclient_id = "gw"\n',
            "upstreams.rep.token_exchange.client_secret: Field required",
        ),
    ],
)
def test_each_mistake_is_one_line_naming_file_and_key(tmp_path: Path, text: str, error: str) -> None:
    assert error in _load(tmp_path, text)
