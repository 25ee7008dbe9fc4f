"""Suite-wide fixtures: async tests run on anyio's built-in pytest plugin, asyncio backend.

PostgreSQL for the tests that need one (found or started, never skipped): ``pg_server``, ``pg_dsn``
and ``pg_admin`` from tests/pg_support.py.

Scores a test records with ``record_property(SCORE_PROPERTY, line)`` (the conformance e2e tests; the name is
in tests/scores.py) are printed in a section of pytest's terminal summary, so ``make test`` shows them without
``-s``.
"""

from __future__ import annotations

import pytest

from pg_support import pg_admin, pg_dsn, pg_server
from scores import SCORE_PROPERTY

__all__ = ["pg_admin", "pg_dsn", "pg_server"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the score lines tests recorded (passed or failed), once each, sorted (target, then version)."""
    lines: dict[str, None] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            for name, value in getattr(report, "user_properties", ()):
                if name == SCORE_PROPERTY:
                    lines[str(value)] = None
    if lines:
        terminalreporter.section("scores")
        for line in sorted(lines):
            terminalreporter.write_line(line)
