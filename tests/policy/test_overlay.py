"""data_overlay: objects deep-merge, everything else replaces; which file set a key; unreadable overlays."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_guard.errors import PolicyError
from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.overlay import deep_merge, provenance, read_overlay

BASE = {"c": {"roots": {"files": ["/a"], "git": ["/g"]}, "hosts": ["x", "y"], "n": 1}}


def test_objects_merge_and_arrays_replace() -> None:
    merged = deep_merge(BASE, {"c": {"roots": {"files": ["/site"]}, "hosts": ["z"], "new": True}})
    assert merged == {"c": {"roots": {"files": ["/site"], "git": ["/g"]}, "hosts": ["z"], "n": 1, "new": True}}
    assert BASE["c"]["roots"]["files"] == ["/a"]  # the base is not modified


def test_null_removes_a_key_and_an_object_replaces_a_scalar() -> None:
    """RFC 7386 (JSON Merge Patch): how a site drops a shipped role or principal."""
    assert deep_merge(BASE, {"c": {"roots": None, "gone": None}})["c"] == {"hosts": ["x", "y"], "n": 1}
    assert deep_merge({"a": 1}, {"a": {"b": 2, "c": None}}) == {"a": {"b": 2}}
    assert deep_merge({"a": {"b": 1}}, {"a": 3}) == {"a": 3}


def test_provenance_names_the_last_file_that_set_a_key() -> None:
    layers = [("data.json", BASE), ("one.json", {"c": {"n": 2}}), ("two.json", {"c": {"hosts": []}})]
    assert provenance(["c", "n"], layers) == "one.json"
    assert provenance(["c", "hosts", 0], layers) == "two.json"
    assert provenance(["c", "roots", "git"], layers) == "data.json"
    assert provenance([], layers) == "data.json"


@pytest.mark.parametrize(
    ("text", "error"),
    [("{not json", r"site\.json:1:2: invalid JSON"), ("[1]", "must hold a JSON object")],
)
def test_unreadable_overlay_names_the_file(tmp_path: Path, text: str, error: str) -> None:
    (tmp_path / "site.json").write_text(text)
    with pytest.raises(PolicyError, match=error):
        read_overlay(tmp_path / "site.json")


def test_overlays_apply_in_order_and_change_the_revision(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text("package p\n\nx := data.c.n\n")
    (tmp_path / "data.json").write_text('{"c": {"n": 1, "m": 1}}')
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    one.write_text('{"c": {"n": 2, "m": 2}}')
    two.write_text('{"c": {"n": 3}}')
    plain = load_bundle(tmp_path)
    b = load_bundle(tmp_path, overlays=[one, two])
    assert b.data == {"c": {"n": 3, "m": 2}} and b.base_data == {"c": {"n": 1, "m": 1}}
    assert b.revision != plain.revision
    assert b.without_overlays().data == plain.data and b.without_overlays().overlays == ()
    two.write_text('{"c": {"n": 4}}')
    assert load_bundle(tmp_path, overlays=[one, two]).revision != b.revision  # an overlay edit is a new revision
    assert plain.without_overlays() is plain
