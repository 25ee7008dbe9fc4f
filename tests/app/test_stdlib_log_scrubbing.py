"""Guard.open installs the stdlib log filter next to the structlog scrub processor."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from guard_harness import REPO, make_settings
from mcp_guard.app import Guard
from mcp_guard.secrets.log_filter import uninstall_log_filter

pytestmark = pytest.mark.anyio

TOKEN = "open-guard-token-5c1e9a77b2"


async def test_records_of_dependencies_are_scrubbed_once_a_guard_is_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MG_OPEN_TOKEN", TOKEN)
    settings = make_settings(
        {},
        secrets={"tok": {"provider": "env", "name": "MG_OPEN_TOKEN"}},
        policy={"bundle": str(REPO / "policies" / "rego"), "hot_reload": False},
        audit={"path": str(tmp_path / "audit.db"), "state_path": str(tmp_path / "state.db")},
    )
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger("httpx.test")
    logger.addHandler(handler)
    try:
        async with Guard.open(settings) as guard:
            await guard.secrets.resolve("tok")  # type: ignore[attr-defined]
            logger.warning("HTTP Request: GET https://api.example/?key=%s", TOKEN)
            logger.warning("cut short: ...%s", TOKEN[-9:])
    finally:
        logger.removeHandler(handler)
        uninstall_log_filter()
    assert TOKEN[-9:] not in out.getvalue()
    assert out.getvalue().count("[REDACTED:tok]") == 2
