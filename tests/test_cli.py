"""The command line: ``--config`` wherever it is given, and start-up errors as one line, exit 2, nothing left.

Start-up errors run the real CLI in a subprocess whose working directory is an empty temporary one,
with the config in another: afterwards stderr holds no traceback (JSON log lines, then one
``mcp-guard: error: …`` line naming the file, key or port), and neither directory gained a file.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mcp_guard.cli import main
from mcp_guard.pins import PinStore

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "policies" / "rego"
TIMEOUT_S = 60.0


# ---------------------------------------------------------------------------------- --config anywhere
# Every subcommand that reads a config, with the arguments it needs besides --config.
SUBCOMMANDS: list[tuple[str, ...]] = [
    ("run",),
    ("check",),
    ("tools",),
    ("tools", "pins"),
    ("tools", "approve", "tickets__delete_ticket"),
    ("policy", "eval", "--input", "-"),
    ("policy", "test"),
    ("audit", "tail"),
    ("audit", "verify"),
    ("audit", "export", "--format", "jsonl"),
    ("demo",),
]


def _placements(command: tuple[str, ...], config: str) -> Iterator[list[str]]:
    """The command line with ``-c config`` before the subcommand, after its first word, and at the end."""
    yield ["-c", config, *command]
    yield [f"--config={config}", *command]
    if command[0] == "tools" and len(command) > 1:  # the middle parser has the option too
        yield [command[0], "--config", config, *command[1:]]
    yield [*command, "-c", config]


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_uses_the_config_given_before_or_after_it(
    command: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The one on the command line is invalid in a way that names it; the one the environment names does not
    # exist. Whichever a command reads shows in its error, so this fails if any placement is ignored.
    chosen = tmp_path / "chosen.toml"
    chosen.write_text('[server]\nbogus_key = 1\n[upstreams.tickets]\ncommand = "true"\n')
    monkeypatch.setenv("MCP_GUARD_CONFIG", str(tmp_path / "decoy.toml"))
    monkeypatch.chdir(tmp_path)
    for argv in _placements(command, str(chosen)):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"{chosen}: server.bogus_key: unknown key" in err, (argv, err)
        assert "decoy" not in err, argv


def test_tools_pins_reads_the_state_of_the_config_given_anywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reported bug: ``tools --config X pins`` listed the pins of another config."""
    state = tmp_path / "mine" / "state.db"
    state.parent.mkdir()
    cfg = tmp_path / "mine" / "guard.toml"
    cfg.write_text(f'[audit]\nstate_path = "{state}"\n[upstreams.tickets]\ncommand = "true"\n')
    store = PinStore(state)
    store.observe("tickets", "delete_ticket", "a" * 64, {"name": "delete_ticket"})
    store.observe("tickets", "delete_ticket", "b" * 64, {"name": "delete_ticket", "description": "new"})
    store.close()
    monkeypatch.setenv("MCP_GUARD_CONFIG", str(tmp_path / "decoy.toml"))
    for argv in _placements(("tools", "pins"), str(cfg)):
        assert main(argv) == 1, argv  # 1: a change awaits approval
        out = capsys.readouterr().out
        assert "1 changed definitions awaiting approval" in out, (argv, out)
        # The advice names the config it needs to work verbatim.
        assert f"mcp-guard tools approve tickets__delete_ticket -c {cfg}" in out, out
    assert main(["tools", "--json", "pins", "-c", str(cfg)]) == 1  # an option of the middle parser reaches the leaf
    assert json.loads(capsys.readouterr().out)["pending"][0]["tool"] == "delete_ticket"


def test_no_config_names_what_was_looked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MCP_GUARD_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["tools", "pins"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mcp-guard: error: no config file") and "--config" in err and "MCP_GUARD_CONFIG" in err
    assert f"config/mcp-guard.toml does not exist in {tmp_path}" in err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ start-up errors
def _write(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _config(*sections: str, bundle: str = str(BUNDLE)) -> str:
    """A config whose databases would land beside it (relative paths resolve against the config's directory)."""
    return f'[policy]\nbundle = "{bundle}"\n[audit]\npath = "audit.db"\nstate_path = "state.db"\n' + "".join(sections)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


# name → (files in the config directory, argv after `mcp-guard`, texts the error line must contain)
Case = tuple[dict[str, str], list[str], list[str]]
STARTUP_ERRORS: dict[str, Callable[[Path, int], Case]] = {
    "policy does not compile": lambda d, _: (
        {"guard.toml": _config(bundle="bad"), "bad/p.rego": "package mcp_guard\n\nallow := {\n"},
        ["run", "-c", str(d / "guard.toml")],
        ["policy does not compile", str(d / "bad" / "p.rego")],
    ),
    "policy does not compile (check)": lambda d, _: (
        {"guard.toml": _config(bundle="bad"), "bad/p.rego": "package mcp_guard\n\nallow := {\n"},
        ["check", "-c", str(d / "guard.toml")],
        ["policy does not compile", str(d / "bad" / "p.rego")],
    ),
    "port in use": lambda d, port: (
        {"guard.toml": _config(f'[server]\ntransport = "http"\nport = {port}\n')},
        ["run", "-c", str(d / "guard.toml")],
        [f"{d / 'guard.toml'}: server.port", f"127.0.0.1:{port}", "address already in use"],
    ),
    "port in use (--port)": lambda d, port: (
        {"guard.toml": _config()},
        ["run", "-c", str(d / "guard.toml"), "--transport", "http", "--port", str(port)],
        ["--port", f"127.0.0.1:{port}", "address already in use"],
    ),
    "no config (run)": lambda d, _: ({}, ["run"], ["no config file", "config/mcp-guard.toml"]),
    "no config (check)": lambda d, _: ({}, ["check"], ["no config file", "config/mcp-guard.toml"]),
    "no config (tools)": lambda d, _: ({}, ["tools"], ["no config file", "config/mcp-guard.toml"]),
    "config file missing": lambda d, _: (
        {},
        ["run", "-c", str(d / "nope.toml")],
        [f"{d / 'nope.toml'}: config file not found"],
    ),
    "config unreadable": lambda d, _: (
        {"guard.toml/x": ""},  # a directory where the file should be
        ["run", "-c", str(d / "guard.toml")],
        [f"{d / 'guard.toml'}: cannot read config file"],
    ),
    "invalid TOML": lambda d, _: (
        {"guard.toml": "[server\nport = 1\n"},
        ["run", "-c", str(d / "guard.toml")],
        [f"{d / 'guard.toml'}: invalid TOML", "line 1"],
    ),
    "bad keys": lambda d, _: (
        {"guard.toml": _config('[server]\nprot = 1\nport = "eighty"\n')},
        ["check", "-c", str(d / "guard.toml")],
        [f"{d / 'guard.toml'}: ", "server.prot: unknown key", "server.port: Input should be a valid integer"],
    ),
    "bundle directory missing": lambda d, _: (
        {"guard.toml": _config(bundle="policies")},
        ["run", "-c", str(d / "guard.toml")],
        [f"{d / 'guard.toml'}: policy.bundle", str(d / "policies"), "no such directory"],
    ),
    "data overlay with a misspelt key": lambda d, _: (
        {
            "guard.toml": f'[policy]\nbundle = "{BUNDLE}"\ndata_overlay = ["site.json"]\n',
            "site.json": '{"mcp_guard_config": {"paths": {"allowed_root": {"files": ["/data"]}}}}',
        },
        ["run", "-c", str(d / "guard.toml")],
        [f"{d / 'site.json'}: data.mcp_guard_config.paths.allowed_root: unknown key", "data.schema.json"],
    ),
    "data overlay missing": lambda d, _: (
        {"guard.toml": f'[policy]\nbundle = "{BUNDLE}"\ndata_overlay = ["site.json"]\n'},
        ["run", "-c", str(d / "guard.toml")],
        [f"{d / 'site.json'}: policy.data_overlay file not found"],
    ),
    "audit path unwritable": lambda d, _: (
        {
            "guard.toml": f'[policy]\nbundle = "{BUNDLE}"\n[audit]\npath = "blocker/audit.db"\n',
            "blocker": "a file, not a directory\n",
        },
        ["run", "-c", str(d / "guard.toml")],
        [f"{d / 'guard.toml'}: audit.path", str(d / "blocker"), "is not a directory"],
    ),
    "state path is a directory": lambda d, _: (
        {
            "guard.toml": f'[policy]\nbundle = "{BUNDLE}"\n[audit]\npath = "audit.db"\nstate_path = "statedir"\n',
            "statedir/keep": "",
        },
        ["tools", "-c", str(d / "guard.toml")],
        [f"{d / 'guard.toml'}: audit.state_path", "is a directory"],
    ),
}


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("case", sorted(STARTUP_ERRORS))
def test_startup_error_is_one_line_exit_2_and_leaves_nothing(case: str, tmp_path: Path, busy_port: int) -> None:
    cwd, config_dir = tmp_path / "cwd", tmp_path / "config"
    cwd.mkdir()
    config_dir.mkdir()
    files, argv, expected = STARTUP_ERRORS[case](config_dir, busy_port)
    _write(config_dir, files)
    before = _tree(config_dir)
    env = {k: v for k, v in os.environ.items() if k != "MCP_GUARD_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-m", "mcp_guard", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    lines = out.stderr.splitlines()
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert lines and lines[-1].startswith("mcp-guard: error: "), out.stderr
    for line in lines[:-1]:  # before the error line: structured log lines only
        assert isinstance(json.loads(line), dict), line
    for text in expected:
        assert text in lines[-1], (text, lines[-1])
    assert _tree(cwd) == [], "a failed start created files in the working directory"
    assert _tree(config_dir) == before, "a failed start created files beside the config"


# ---------------------------------------------------------------------------------------------- --workers
def test_workers_need_the_http_transport(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[policy]\nbundle = "{BUNDLE}"\n[audit]\npath = "{tmp_path / "a.db"}"\n')
    assert main(["run", "-c", str(cfg), "--transport", "stdio", "--workers", "2"]) == 2
    assert "--workers: several workers need the HTTP transport" in capsys.readouterr().err
    assert not (tmp_path / "a.db").exists()


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_workers_is_a_count(value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "-c", str(tmp_path / "c.toml"), "--workers", value])
    assert exit_info.value.code == 2
    assert "a number of worker processes from 1 to 64" in capsys.readouterr().err
