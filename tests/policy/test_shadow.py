"""Loading the [policy] shadow_bundle candidate: errors name the key and the file; none configured is None."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_guard.errors import ConfigError, PolicyError
from mcp_guard.policy.shadow import load_shadow
from mcp_guard.settings import Settings, parse_settings


def settings(tmp: Path, shadow: str | None) -> Settings:
    policy = {"shadow_bundle": shadow} if shadow is not None else {}
    return parse_settings({"policy": policy, "upstreams": {}}, source=str(tmp / "c.toml"), base_dir=str(tmp))


def test_no_shadow_bundle_is_none(tmp_path: Path) -> None:
    assert load_shadow(settings(tmp_path, None)) is None


def test_a_missing_directory_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"policy\.shadow_bundle: .*nope: shadow bundle directory not found"):
        load_shadow(settings(tmp_path, "nope"))


def test_a_broken_candidate_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "cand").mkdir()
    (tmp_path / "cand" / "p.rego").write_text("package t\nimport rego.v1\nx := {\n")
    with pytest.raises(PolicyError, match=r"policy\.shadow_bundle: .*p\.rego"):
        load_shadow(settings(tmp_path, "cand"))


def test_a_good_candidate_loads(tmp_path: Path) -> None:
    (tmp_path / "cand").mkdir()
    (tmp_path / "cand" / "p.rego").write_text('package mcp_guard\nimport rego.v1\ndecision := {"allow": true}\n')
    engine = load_shadow(settings(tmp_path, "cand"))
    assert engine is not None and engine.revision
