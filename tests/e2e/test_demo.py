"""`mcp-guard demo` runs non-interactively and its story happens: denials with reasons, the credential
call, scrubbing, the rug pull, and a verified audit chain — with the token nowhere in the audit files."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import REPO, need_node_peers

pytestmark = pytest.mark.e2e

sys.path.insert(0, str(REPO / "tests" / "secrets"))
from secret_checks import assert_no_secret  # noqa: E402


def test_demo_story() -> None:
    need_node_peers()
    token = "tkt_demo-e2e-Z3kq9PxLw2vR8sT1"
    env = {**os.environ, "MCP_GUARD_DEMO_TICKETS_TOKEN": token, "NO_COLOR": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "mcp_guard", "demo", "--fast"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )
    text = out.stdout
    assert out.returncode == 0, text[-4000:] + out.stderr[-3000:]
    assert "unexpected" not in text
    assert text.count("✘ DENIED") >= 4
    assert "destructiveHint" in text and "'..'" in text and "only read-only queries" in text
    assert "tool_changed" in text and "[REDACTED:tickets_token]" in text
    assert "chain intact" in text
    assert token not in text and token not in out.stderr
    assert "DENIED Denied" not in text  # the verdict is not stuttered
    demo = REPO / "demo"
    for f in demo.iterdir():
        if f.suffix in (".db", ".db-wal") or f.name.endswith("-wal"):
            assert_no_secret(f.read_bytes(), token)

    # The closing hints work verbatim on the state the demo left (pins exits 1: a change awaits approval).
    hints = [line.strip() for line in text.split("Try it yourself", 1)[1].splitlines()]
    hints = [h for h in hints if h.startswith("mcp-guard ")]
    assert any("tools approve tickets__search_tickets -c config/demo.toml" in h for h in hints), hints
    for hint in hints:
        run = subprocess.run(
            [sys.executable, "-m", "mcp_guard", *shlex.split(hint)[1:]],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            env=env,
        )
        assert run.returncode == (1 if " tools pins " in f" {hint} " else 0), (hint, run.stdout, run.stderr)
        assert "Traceback" not in run.stderr, hint


def test_every_config_and_catalog_snippet_loads() -> None:
    from mcp_guard.settings import load_settings

    for cfg in sorted((REPO / "config").glob("*.toml")):
        s = load_settings(cfg)
        assert s.upstreams, cfg
    assert Path(REPO / "connectors" / "catalog").is_dir()
