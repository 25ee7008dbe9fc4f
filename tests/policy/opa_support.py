"""Finding the real OPA binary for the tests that need one (marked ``opa``).

The binary comes from scripts/install-opa.sh (``make test`` builds it): $MCP_GUARD_OPA, then ``opa``
on PATH, then the script's cache. Without it these tests FAIL, saying how to build it — they never
skip silently; MCP_GUARD_SKIP_OPA=1 skips them deliberately (pytest's -ra summary prints the reason).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

__all__ = ["opa_binary"]


def opa_binary() -> str:
    if os.environ.get("MCP_GUARD_SKIP_OPA") == "1":
        pytest.skip("MCP_GUARD_SKIP_OPA=1: real OPA server tests skipped on request")
    candidates = [os.environ.get("MCP_GUARD_OPA"), shutil.which("opa")]
    cache = Path(os.environ.get("MCP_GUARD_CACHE", Path.home() / ".cache" / "mcp-guard"))
    candidates.append(str(cache / "bin" / "opa"))
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    pytest.fail(
        "no opa binary: run scripts/install-opa.sh (builds OPA from Debian source packages), "
        "or set MCP_GUARD_OPA=/path/to/opa; MCP_GUARD_SKIP_OPA=1 skips these tests"
    )
