"""The wheel as a user gets it: built from this checkout, installed into a fresh virtual environment,
``mcp-guard --version``, ``mcp-guard init DIR`` and ``mcp-guard check`` run from there — outside the
checkout, with no ``PYTHONPATH``, so the defaults can only come from inside the installed package.

The fresh venv has no pip of its own and no copies of the dependencies: a ``.pth`` line adds this
interpreter's site-packages (where pip already installed them) after its own, and the wheel is installed
with ``--no-deps`` by this interpreter's pip (``pip --python``). The build runs pip's isolated build, so
``hatchling`` comes from the configured index (PyPI or its local mirror) like any user's build.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from e2e_support import REPO

pytestmark = pytest.mark.e2e


def _run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MCP_GUARD_CONFIG", "VIRTUAL_ENV")}
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{done.args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _ok(_run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)], cwd=out))
    (built,) = out.glob("mcp_guard-*.whl")
    return built


def test_the_wheel_carries_the_defaults(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "mcp_guard/_data/policies/rego/data.json" in names
    assert "mcp_guard/_data/policies/rego/mcp_guard/decision.rego" in names
    assert "mcp_guard/_data/config/mcp-guard.toml" in names
    catalogue = {n.rsplit("/", 1)[1] for n in names if n.startswith("mcp_guard/_data/catalog/")}
    assert catalogue == {p.name for p in (REPO / "connectors" / "catalog").glob("*.toml")}
    assert "mcp_guard/policy/builtins.json" in names  # package data the engine needs


def test_installed_wheel_versions_scaffolds_and_checks(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _ok(_run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path))
    bindir = venv / "bin"
    python = bindir / "python"
    purelib = Path(
        _ok(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path)).strip()
    )
    (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _ok(
        _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)], tmp_path)
    )

    where = _ok(_run([str(python), "-c", "import mcp_guard; print(mcp_guard.__file__)"], tmp_path)).strip()
    assert Path(where).is_relative_to(purelib), where  # the installed copy, not this checkout

    from importlib.metadata import version

    assert _ok(_run([str(bindir / "mcp-guard"), "--version"], tmp_path)).strip() == f"mcp-guard {version('mcp-guard')}"

    site = tmp_path / "site"
    out = _ok(_run([str(bindir / "mcp-guard"), "init", str(site)], tmp_path))
    assert "mcp-guard check -c" in out
    assert (site / "policies" / "rego" / "mcp_guard" / "decision.rego").is_file()
    assert (site / "catalog" / "time.toml").is_file() and (site / "mcp-guard.reference.toml").is_file()
    checked = _ok(_run([str(bindir / "mcp-guard"), "check", "-c", str(site / "mcp-guard.toml")], tmp_path))
    assert "policy: embedded engine, revision" in checked

    again = _run([str(bindir / "mcp-guard"), "init", str(site)], tmp_path)
    assert again.returncode == 2 and "is not empty" in again.stderr
