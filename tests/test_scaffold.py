"""``mcp-guard init DIR``: a config, the default bundle and the catalogue that pass ``mcp-guard check``."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_guard.cli import main
from mcp_guard.scaffold import CONFIG_NAME, data_root


def test_init_writes_a_config_that_check_accepts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "site"
    assert main(["init", str(target)]) == 0
    assert (target / CONFIG_NAME).is_file()
    assert (target / "policies" / "rego" / "data.json").is_file()
    assert (target / "policies" / "rego" / "mcp_guard" / "decision.rego").is_file()
    assert sorted(p.name for p in (target / "catalog").glob("*.toml")) == sorted(
        p.name for p in (data_root() / "connectors" / "catalog").glob("*.toml")
    )
    assert (target / "mcp-guard.reference.toml").is_file()
    capsys.readouterr()
    assert main(["check", "-c", str(target / CONFIG_NAME)]) == 0
    out = capsys.readouterr().out
    assert "policy: embedded engine, revision" in out


def test_init_refuses_a_non_empty_directory_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    assert main(["init", str(tmp_path)]) == 2
    assert "is not empty (use --force" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]  # nothing written
    assert main(["init", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "mine.txt").read_text() == "keep me" and (tmp_path / CONFIG_NAME).is_file()


def test_init_refuses_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("")
    assert main(["init", str(tmp_path / "f")]) == 2
    assert "is not a directory" in capsys.readouterr().err
