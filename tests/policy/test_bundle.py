"""Loading a bundle directory: files, data mounting, revision, test discovery, errors naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_guard.errors import PolicyError
from mcp_guard.policy.bundle import load_bundle, rule_ref

REPO = Path(__file__).resolve().parents[2]


def write(root: Path, rel: str, text: str) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_default_bundle_loads() -> None:
    b = load_bundle(REPO / "policies" / "rego")
    rels = {f.rel for f in b.policies}
    assert {"mcp_guard/decision.rego", "mcp_guard/grants.rego", "mcp_guard/arguments.rego"} <= rels
    assert all(f.rel.endswith("_test.rego") for f in b.tests) and b.tests
    assert "roles" in b.data["mcp_guard_config"]
    assert len(b.revision) == 64


def test_tests_are_separate_and_hidden_files_ignored(tmp_path: Path) -> None:
    write(tmp_path, "p.rego", "package p\n\nx := 1\n")
    write(tmp_path, "p_test.rego", "package p\n\ntest_x if x == 1\n")
    write(tmp_path, ".git/junk.rego", "not rego at all")
    write(tmp_path, "sub/.swp.rego", "junk")
    b = load_bundle(tmp_path)
    assert [f.rel for f in b.policies] == ["p.rego"]
    assert [f.rel for f in b.tests] == ["p_test.rego"]


def test_data_json_mounted_at_its_directory(tmp_path: Path) -> None:
    write(tmp_path, "p.rego", "package p\n")
    write(tmp_path, "data.json", '{"top": {"a": 1}}')
    write(tmp_path, "top/data.json", '{"b": 2}')
    write(tmp_path, "x/y/data.json", "[1, 2]")
    b = load_bundle(tmp_path)
    assert b.data == {"top": {"a": 1, "b": 2}, "x": {"y": [1, 2]}}
    assert len(b.data_files) == 3


def test_conflicting_data_names_the_file(tmp_path: Path) -> None:
    write(tmp_path, "p.rego", "package p\n")
    write(tmp_path, "data.json", '{"top": {"a": 1}}')
    write(tmp_path, "top/data.json", '{"a": 2}')
    with pytest.raises(PolicyError, match=r"top/data\.json: data key top\.a"):
        load_bundle(tmp_path)


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "p.rego", "package p\n")
    bad = write(tmp_path, "data.json", '{\n  "a": 1,\n  oops\n}')
    with pytest.raises(PolicyError, match=rf"{bad}:3:3: invalid JSON"):
        load_bundle(tmp_path)


def test_root_data_must_be_object(tmp_path: Path) -> None:
    write(tmp_path, "p.rego", "package p\n")
    write(tmp_path, "data.json", "[1]")
    with pytest.raises(PolicyError, match="must hold a JSON object"):
        load_bundle(tmp_path)


def test_missing_dir_and_empty_bundle(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="directory not found"):
        load_bundle(tmp_path / "nope")
    write(tmp_path, "data.json", "{}")
    with pytest.raises(PolicyError, match=r"no \.rego policy files"):
        load_bundle(tmp_path)


def test_non_utf8_file_named(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_bytes(b"package p\n\xff\xfe")
    with pytest.raises(PolicyError, match=r"p\.rego: not UTF-8"):
        load_bundle(tmp_path)


def test_revision_changes_with_any_file(tmp_path: Path) -> None:
    p = write(tmp_path, "p.rego", "package p\n\nx := 1\n")
    r1 = load_bundle(tmp_path).revision
    assert load_bundle(tmp_path).revision == r1
    p.write_text("package p\n\nx := 2\n")
    r2 = load_bundle(tmp_path).revision
    write(tmp_path, "p_test.rego", "package p\n")
    r3 = load_bundle(tmp_path).revision
    write(tmp_path, "data.json", "{}")
    r4 = load_bundle(tmp_path).revision
    assert len({r1, r2, r3, r4}) == 4


def test_test_rules_discovered(tmp_path: Path) -> None:
    write(tmp_path, "p.rego", "package p\n")
    write(
        tmp_path,
        "a_test.rego",
        (
            "package a.b\n\nimport rego.v1\n\n"
            "test_one if true\n\ntest_two := true\n\ntest_one if false\n\n"
            "helper_test_x := 1\n\n  test_indented_is_not_a_head := 1\n"
        ),
    )
    b = load_bundle(tmp_path)
    assert [r.ref for r in b.test_rules()] == ["data.a.b.test_one", "data.a.b.test_two"]
    write(tmp_path, "nopkg_test.rego", "test_x if true\n")
    with pytest.raises(PolicyError, match="no package declaration"):
        load_bundle(tmp_path).test_rules()


@pytest.mark.parametrize(
    ("setting", "ref"),
    [("mcp_guard/decision", "data.mcp_guard.decision"), ("a.b.c", "data.a.b.c"), ("data/x/y", "data.x.y")],
)
def test_rule_ref(setting: str, ref: str) -> None:
    assert rule_ref(setting) == ref


@pytest.mark.parametrize("bad", ["", "/", "a/b-c", "a/1b", "a//"])
def test_rule_ref_rejects_bad_paths(bad: str) -> None:
    if bad == "a//":
        assert rule_ref(bad) == "data.a"
        return
    with pytest.raises(PolicyError, match=r"policy\.decision"):
        rule_ref(bad)
