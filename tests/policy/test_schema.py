"""data.schema.json: the default bundle's data fits it, a misspelt key is refused naming file and key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from mcp_guard.errors import PolicyError
from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.schema import DataSchemaError

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "policies" / "rego"


def site(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "site.json"
    path.write_text(json.dumps({"mcp_guard_config": doc}))
    return path


def test_the_default_bundle_ships_a_schema_its_data_satisfies() -> None:
    b = load_bundle(BUNDLE)
    assert b.schema is not None and b.schema.rel == "data.schema.json"


@pytest.mark.parametrize(
    ("doc", "key", "problem"),
    [
        ({"paths": {"allowed_root": {"files": ["/d"]}}}, "data.mcp_guard_config.paths.allowed_root", "unknown key"),
        ({"pathz": {}}, "data.mcp_guard_config.pathz", "unknown key"),
        (
            {"paths": {"allowed_roots": {"files": ["relative/x"]}}},
            "data.mcp_guard_config.paths.allowed_roots.files[0]",
            "does not match",
        ),
        (
            {"roles": {"r": {"grants": [{"server": "s", "tool": ["x"]}]}}},
            "data.mcp_guard_config.roles.r.grants[0].tool",
            "unknown key",
        ),
        (
            {"roles": {"r": {"grants": [{"tools": ["x"]}]}}},
            "data.mcp_guard_config.roles.r.grants[0].server",
            "required key missing",
        ),
        (
            {"limits": {"rate": [{"name": "n", "limit": 0, "window_s": 60}]}},
            "data.mcp_guard_config.limits.rate[0].limit",
            "less than the minimum",
        ),
        (
            {"urls": {"allowed_hosts": {"fetch": "example.com"}}},
            "data.mcp_guard_config.urls.allowed_hosts.fetch",
            "is not of type 'array'",
        ),
        (
            {"flows": {"deny_egress_after": [[]]}},
            "data.mcp_guard_config.flows.deny_egress_after[0]",
            "should be non-empty",
        ),
    ],
)
def test_a_bad_overlay_is_refused_naming_it_and_the_key(
    tmp_path: Path, doc: dict[str, Any], key: str, problem: str
) -> None:
    overlay = site(tmp_path, doc)
    with pytest.raises(DataSchemaError) as info:
        load_bundle(BUNDLE, overlays=[overlay])
    message = str(info.value)
    assert message.startswith(f"{overlay}: {key}: ") and problem in message and "\n" not in message


def test_a_valid_overlay_loads(tmp_path: Path) -> None:
    overlay = site(tmp_path, {"paths": {"allowed_roots": {"files": ["/data"]}}, "principals": {"carol": ["analyst"]}})
    b = load_bundle(BUNDLE, overlays=[overlay])
    assert b.data["mcp_guard_config"]["paths"]["allowed_roots"]["files"] == ["/data"]
    assert b.data["mcp_guard_config"]["principals"]["alice"] == ["support"]


def test_an_error_in_the_bundles_own_data_names_its_data_json(tmp_path: Path) -> None:
    root = tmp_path / "b"
    shutil.copytree(BUNDLE, root)
    data = json.loads((root / "data.json").read_text())
    data["mcp_guard_config"]["sql"]["forbidden_keyword"] = ["drop"]
    (root / "data.json").write_text(json.dumps(data))
    with pytest.raises(
        DataSchemaError, match=rf"^{root / 'data.json'}: data.mcp_guard_config.sql.forbidden_keyword: unknown key"
    ):
        load_bundle(root)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{oops", r"data\.schema\.json:1:2: invalid JSON"),
        ('{"type": 5}', r"data\.schema\.json: not a valid JSON Schema at type"),
    ],
)
def test_a_broken_schema_is_refused(tmp_path: Path, text: str, error: str) -> None:
    (tmp_path / "p.rego").write_text("package p\n\nx := 1\n")
    (tmp_path / "data.schema.json").write_text(text)
    with pytest.raises(PolicyError, match=error):
        load_bundle(tmp_path)


def test_no_schema_no_check(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text("package p\n\nx := 1\n")
    (tmp_path / "data.json").write_text('{"anything": {"goes": 1}}')
    assert load_bundle(tmp_path).schema is None


def test_a_verdict_is_remembered_per_revision_and_place(tmp_path: Path) -> None:
    """Validation runs once per revision (the watcher re-reads every second); a refused revision stays
    refused, and the same content elsewhere is named where it is."""
    first = site(tmp_path, {"pathz": {}})
    for _ in range(2):
        with pytest.raises(DataSchemaError, match=rf"^{first}: data.mcp_guard_config.pathz"):
            load_bundle(BUNDLE, overlays=[first])
    other = tmp_path / "other"
    other.mkdir()
    second = site(other, {"pathz": {}})
    with pytest.raises(DataSchemaError, match=rf"^{second}: "):
        load_bundle(BUNDLE, overlays=[second])
    first.write_text(json.dumps({"mcp_guard_config": {"paths": {"argument_names": []}}}))
    assert load_bundle(BUNDLE, overlays=[first]).data["mcp_guard_config"]["paths"]["argument_names"] == []
