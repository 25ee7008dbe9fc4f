"""The connector catalogue: every TOML snippet parses with the real settings loader, is ready to paste,
and documents every tool its server really lists (checked by starting the server)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from connector_harness import REPO, connect
from mcp.client.stdio import StdioServerParameters

from mcp_guard.settings import Settings, UpstreamSettings, parse_settings

CATALOG = REPO / "connectors" / "catalog"
FILES = sorted(CATALOG.glob("*.toml"))
NPM_BIN = REPO / "tests" / "e2e" / "node_modules" / ".bin"
EXPECTED = {"filesystem", "git", "memory", "time", "fetch", "everything", "tickets", "warehouse"}
FIRST_PARTY = {"tickets", "warehouse"}


def load(path: Path) -> tuple[dict[str, Any], Settings]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    # As if pasted into config/<something>.toml: relative paths resolve against config/.
    return data, parse_settings(data, source=str(path), base_dir=str(REPO / "config"))


def test_catalog_is_complete() -> None:
    assert {p.stem for p in FILES} == EXPECTED


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_snippet_parses_and_is_documented(path: Path) -> None:
    data, settings = load(path)
    assert list(settings.upstreams) == [path.stem], "one [upstreams.<file name>] table per file"
    assert set(data) <= {"upstreams", "secrets"}, "a snippet holds only upstream (and its secret) tables"
    up = settings.upstreams[path.stem]
    assert isinstance(up, UpstreamSettings) and up.transport == "stdio" and up.command
    assert up.pinning == "enforce"
    text = path.read_text(encoding="utf-8")
    assert text.startswith(f"# Catalogue: {path.stem} ")
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    assert "Policy" in comments and '"roles"' in comments and '"grants"' in comments
    # Every injected secret is declared in the same snippet (so it pastes without dangling references).
    for secret in up.inject_env.values():
        assert secret in settings.secrets


def test_all_snippets_paste_into_one_config() -> None:
    merged: dict[str, dict[str, Any]] = {"upstreams": {}, "secrets": {}}
    for path in FILES:
        data, _ = load(path)
        for table in ("upstreams", "secrets"):
            for name, body in data.get(table, {}).items():
                assert name not in merged[table], f"{table}.{name} defined twice"
                merged[table][name] = body
    settings = parse_settings(merged, source="<catalog>", base_dir=str(REPO / "config"))
    assert set(settings.upstreams) == EXPECTED


# -- starting the servers the snippets describe ---------------------------------------------------


def _documented(path: Path, names: set[str]) -> set[str]:
    """Tool names that the snippet's text never mentions (as a whole word)."""
    text = path.read_text(encoding="utf-8")
    return {n for n in names if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text)}


def _first_party_params(name: str, tmp_path: Path) -> StdioServerParameters:
    _, settings = load(CATALOG / f"{name}.toml")
    up = settings.upstreams[name]
    assert up.command == "python" and up.cwd is not None
    cwd = settings.resolve_path(up.cwd).resolve()
    assert cwd == REPO, "cwd '..' must reach the checkout from config/"
    env = dict(up.env)
    for var in env:
        if var.endswith("_DB"):
            env[var] = str(tmp_path / f"{name}.db")  # not the production path in the snippet
    for var in up.inject_env:
        env[var] = "test-token-from-secret-store"
    return StdioServerParameters(command=sys.executable, args=list(up.args), env=env, cwd=str(cwd))


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(FIRST_PARTY))
async def test_first_party_snippet_starts_the_connector(name: str, tmp_path: Path) -> None:
    path = CATALOG / f"{name}.toml"
    async with connect(_first_party_params(name, tmp_path)) as s:
        tools = {t.name for t in (await s.list_tools()).tools}
        assert tools and not _documented(path, tools)
        probe = "whoami" if name == "tickets" else "list_tables"
        assert not (await s.call_tool(probe, {})).is_error


def _third_party_params(name: str, tmp_path: Path) -> StdioServerParameters:
    """The snippet's command, pointed at locally installed peers and at scratch directories."""
    _, settings = load(CATALOG / f"{name}.toml")
    up = settings.upstreams[name]
    env = {k: str(tmp_path / Path(v).name) for k, v in up.env.items()}
    args = [a if not a.startswith("/srv/") else str(tmp_path) for a in up.args]
    if up.command == "npx":
        package = next(a for a in args if a.startswith("@modelcontextprotocol/"))
        binary = NPM_BIN / ("mcp-" + package.split("/")[1].split("@")[0])
        if not binary.exists():
            pytest.skip(f"{binary} not installed (make peers)")
        rest = args[args.index(package) + 1 :]
        return StdioServerParameters(command=str(binary), args=rest, env=env, cwd=str(tmp_path))
    assert up.command == "python" and args[0] == "-m"
    if importlib.util.find_spec(args[1]) is None:
        pytest.skip(f"{args[1]} is not installed in this interpreter (pip install {args[1].replace('_', '-')})")
    if name == "git":
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, timeout=30)
    return StdioServerParameters(command=sys.executable, args=args, env=env, cwd=str(tmp_path))


@pytest.mark.e2e
@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(EXPECTED - FIRST_PARTY))
async def test_third_party_snippet_documents_every_tool(name: str, tmp_path: Path) -> None:
    if name == "git" and shutil.which("git") is None:
        pytest.skip("git is not installed")
    path = CATALOG / f"{name}.toml"
    async with connect(_third_party_params(name, tmp_path)) as s:
        tools = {t.name for t in (await s.list_tools()).tools}
        assert tools
        missing = _documented(path, tools)
        assert not missing, f"{path.name} does not mention tools {sorted(missing)}"
