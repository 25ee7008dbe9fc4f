"""`mcp-guard policy fmt`: OPA's formatter, the default bundle kept canonical, a clear refusal without OPA.

Needs the OPA binary (scripts/install-opa.sh); without it these tests fail saying how to get it, except
the one that checks the refusal, which hides OPA on purpose.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from opa_support import opa_binary

from mcp_guard.cli import main
from mcp_guard.policy.fmt import find_opa

pytestmark = [pytest.mark.e2e, pytest.mark.opa]

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "policies" / "rego"
MESSY = "package t\nimport rego.v1\nx:=1\nallow if {input.a==1}\n"


@pytest.fixture
def with_opa(monkeypatch: pytest.MonkeyPatch) -> str:
    opa = opa_binary()
    monkeypatch.setenv("MCP_GUARD_OPA", opa)
    return opa


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def config(tmp_path: Path) -> str:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[policy]\nbundle = "{BUNDLE}"\n')
    return str(cfg)


def test_the_default_bundle_is_in_canonical_format(with_opa: str) -> None:
    listed = subprocess.run([with_opa, "fmt", "--list", str(BUNDLE)], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and listed.stdout == "", listed.stdout + listed.stderr


def test_check_on_the_default_bundle_exit_0(tmp_path: Path, with_opa: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "policy", "fmt", "--check", "-c", config(tmp_path))[0] == 0


def test_check_lists_and_fmt_writes(tmp_path: Path, with_opa: str, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "b"
    root.mkdir()
    (root / "t.rego").write_text(MESSY)
    rc, out, err = run(capsys, "policy", "fmt", "--check", "-c", config(tmp_path), str(root))
    assert rc == 1 and out.strip() == str(root / "t.rego") and "1 file(s) not in canonical format" in err
    assert (root / "t.rego").read_text() == MESSY  # --check writes nothing
    rc, out, _ = run(capsys, "policy", "fmt", "-c", config(tmp_path), str(root))
    assert rc == 0 and "x := 1" in (root / "t.rego").read_text()
    assert run(capsys, "policy", "fmt", "--check", "-c", config(tmp_path), str(root))[0] == 0


def test_a_rewrite_the_embedded_engine_reads_differently_is_reported(
    tmp_path: Path, with_opa: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "b"
    root.mkdir()
    (root / "t.rego").write_text(
        "package t\n\nimport rego.v1\n\nk(v) if v == 3\n\nh(v) := true if {\n\tv == 1\n} else := k(v)\n"
    )
    rc, _, err = run(capsys, "policy", "fmt", "-c", config(tmp_path), str(root))
    assert rc == 1 and "else-value" in err and "now fails the static check" in err


def test_a_file_that_does_not_parse_is_named(tmp_path: Path, with_opa: str, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "b"
    root.mkdir()
    (root / "t.rego").write_text("package t\n\nx := {\n")
    rc, _, err = run(capsys, "policy", "fmt", "--check", "-c", config(tmp_path), str(root))
    assert rc == 2 and f"{root / 't.rego'}:4: rego_parse_error" in err


def test_without_opa_fmt_refuses_saying_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MCP_GUARD_OPA", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("MCP_GUARD_CACHE", str(tmp_path / "cache"))
    assert find_opa() is None
    rc, _, err = run(capsys, "policy", "fmt", "--check", "-c", config(tmp_path))
    assert rc == 2 and "no opa binary was found" in err and "scripts/install-opa.sh" in err
