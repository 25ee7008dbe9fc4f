"""``mcp-guard reload`` as an operator meets it when something is missing: no pid_file configured, no proxy
running. (Reloading a real proxy: tests/e2e/test_reload_e2e.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_guard.cli import main


def _config(tmp_path: Path, server: str = "") -> Path:
    cfg = tmp_path / "guard.toml"
    cfg.write_text(f'[server]\n{server}\n[audit]\npath = "audit.db"\nstate_path = "state.db"\n')
    return cfg


def test_reload_needs_a_pid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reload", "-c", str(_config(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mcp-guard: error: ") and "server.pid_file: [server] pid_file is not set" in err


def test_reload_with_no_proxy_running_is_a_failed_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, 'pid_file = "guard.pid"')
    assert main(["reload", "-c", str(cfg), "--no-wait"]) == 1
    assert "guard.pid does not exist: is mcp-guard running with this config?" in capsys.readouterr().err
    (tmp_path / "guard.pid").write_text("999999999\n")
    assert main(["reload", "-c", str(cfg)]) == 1
    assert "names process 999999999, which is not running" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["guard.pid", "guard.toml"]  # nothing created


def test_version_is_the_installed_distribution_s(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"mcp-guard {version('mcp-guard')}"
