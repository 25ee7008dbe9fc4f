"""SecretManager: per-upstream scoping, header templates, check(), the growing scrubber."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from mcp_guard.errors import SecretError
from mcp_guard.secrets.manager import SecretManager
from mcp_guard.settings import Settings, parse_settings
from mcp_guard.upstream.connection import Injections

pytestmark = pytest.mark.anyio

A_TOKEN = "alpha-token-111-AAAA"
B_TOKEN = "bravo-token-222-BBBB"
H_TOKEN = "http-token-333-CCCC"


def _settings(tmp_path: Path, **extra_upstreams: Any) -> Settings:
    (tmp_path / "b.secret").write_text(B_TOKEN + "\n")
    data: dict[str, Any] = {
        "secrets": {
            "a_token": {"provider": "env", "name": "MG_A_TOKEN"},
            "b_token": {"provider": "file", "name": "b.secret"},  # relative to the config dir
            "h_token": {"provider": "command", "name": [sys.executable, "-c", f"print({H_TOKEN!r})"]},
            "unused": {"provider": "env", "name": "MG_NOT_SET_ANYWHERE"},
        },
        "upstreams": {
            "alpha": {"command": "alpha-server", "inject_env": {"ALPHA_TOKEN": "a_token"}},
            "bravo": {"command": "bravo-server", "env": {"PLAIN": "x"}, "inject_env": {"BRAVO_TOKEN": "b_token"}},
            "web": {
                "transport": "http",
                "url": "https://example.test/mcp",
                "headers": {"X-Static": "1"},
                "inject_headers": {"Authorization": "Bearer {h_token}", "X-Both": "{h_token}:{a_token}"},
            },
            "plain": {"command": "plain-server"},
            **extra_upstreams,
        },
    }
    return parse_settings(data, source=str(tmp_path / "cfg.toml"), base_dir=str(tmp_path))


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MG_A_TOKEN", A_TOKEN)
    monkeypatch.delenv("MG_NOT_SET_ANYWHERE", raising=False)
    return _settings(tmp_path)


async def test_each_upstream_gets_only_its_own_secrets(settings: Settings) -> None:
    m = SecretManager(settings)
    alpha = await m.injections_for("alpha")
    bravo = await m.injections_for("bravo")
    plain = await m.injections_for("plain")
    assert alpha == Injections(env={"ALPHA_TOKEN": A_TOKEN})
    assert bravo == Injections(env={"BRAVO_TOKEN": B_TOKEN})
    assert plain == Injections()
    assert A_TOKEN not in repr(bravo) and B_TOKEN not in repr(alpha)
    assert m.secret_names_for("alpha") == {"a_token"}
    assert m.secret_names_for("web") == {"h_token", "a_token"}
    assert m.secret_names_for("plain") == set()
    assert m.secret_names_for("no-such-upstream") == set()


async def test_http_upstream_gets_templated_headers(settings: Settings) -> None:
    m = SecretManager(settings)
    web = await m.injections_for("web")
    assert web.env == {}
    assert web.headers == {"Authorization": f"Bearer {H_TOKEN}", "X-Both": f"{H_TOKEN}:{A_TOKEN}"}


async def test_unresolvable_secret_names_secret_and_upstream(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MG_A_TOKEN")
    m = SecretManager(settings)
    with pytest.raises(SecretError) as info:
        await m.injections_for("alpha")
    assert info.value.secret == "a_token" and info.value.upstream == "alpha"
    expected = "secret 'a_token' (needed by upstream 'alpha'): environment variable MG_A_TOKEN is not set"
    assert str(info.value) == expected
    # bravo does not need a_token and is unaffected
    assert (await m.injections_for("bravo")).env == {"BRAVO_TOKEN": B_TOKEN}


async def test_check_reports_only_the_upstreams_that_cannot_start(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = SecretManager(settings)
    assert await m.check() == {}
    monkeypatch.delenv("MG_A_TOKEN")
    m = SecretManager(settings)
    problems = await m.check()
    assert set(problems) == {"alpha", "web"}  # both use a_token; bravo and plain serve
    assert (
        problems["alpha"] == "secret 'a_token' (needed by upstream 'alpha'): environment variable MG_A_TOKEN is not set"
    )
    assert "needed by upstream 'web'" in problems["web"]


async def test_check_skips_disabled_upstreams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MG_A_TOKEN", A_TOKEN)
    s = _settings(
        tmp_path,
        off={"command": "x", "enabled": False, "inject_env": {"T": "unused"}},
    )
    assert await SecretManager(s).check() == {}
    s2 = _settings(tmp_path, on={"command": "x", "inject_env": {"T": "unused"}})
    assert set(await SecretManager(s2).check()) == {"on"}


async def test_header_values_cannot_carry_line_breaks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MG_A_TOKEN", "line1\r\nX-Injected: yes")
    m = SecretManager(_settings(tmp_path))
    with pytest.raises(SecretError, match="line break"):
        await m.injections_for("web")


async def test_scrubber_covers_everything_resolved_including_rotated_values(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = SecretManager(settings)
    assert not m.scrubber
    await m.injections_for("alpha")
    first = m.scrubber
    assert m.scrub_text(f"x {A_TOKEN} {B_TOKEN}") == f"x [REDACTED:a_token] {B_TOKEN}"
    await m.injections_for("alpha")
    assert m.scrubber is first  # unchanged value: not rebuilt
    await m.check()
    assert m.scrub_text(f"{B_TOKEN} {H_TOKEN}") == "[REDACTED:b_token] [REDACTED:h_token]"
    monkeypatch.setenv("MG_A_TOKEN", "alpha-token-ROTATED-9")
    await m.injections_for("alpha")
    assert m.scrubber is not first
    assert m.scrub_text(f"{A_TOKEN} alpha-token-ROTATED-9") == "[REDACTED:a_token] [REDACTED:a_token]"


async def test_file_secret_rotation_is_picked_up_on_restart(settings: Settings, tmp_path: Path) -> None:
    m = SecretManager(settings)
    assert (await m.injections_for("bravo")).env["BRAVO_TOKEN"] == B_TOKEN
    f = tmp_path / "b.secret"
    f.write_text("bravo-token-NEW-value-22")
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    assert (await m.injections_for("bravo")).env["BRAVO_TOKEN"] == "bravo-token-NEW-value-22"


async def test_unknown_upstream_is_an_error(settings: Settings) -> None:
    with pytest.raises(SecretError, match="unknown upstream"):
        await SecretManager(settings).injections_for("nope")


@pytest.mark.parametrize(("configured", "scrubbed"), [(None, True), (0, False), (16, False)])
async def test_fragment_length_comes_from_the_redaction_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, configured: int | None, scrubbed: bool
) -> None:
    monkeypatch.setenv("MG_A_TOKEN", A_TOKEN)
    data = _settings(tmp_path).model_dump()
    if configured is not None:
        data["redaction"] = {"min_fragment_chars": configured}
    m = SecretManager(parse_settings(data, base_dir=str(tmp_path)))
    await m.injections_for("alpha")
    tail = A_TOKEN[-10:]  # 10 characters: a fragment at the default length, not at 16
    assert (m.scrub_text(f"token ends {tail}") == "token ends [REDACTED:a_token]") is scrubbed
