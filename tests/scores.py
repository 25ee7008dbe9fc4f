"""The name under which a test records a score line for ``make test``'s summary (tests/conftest.py prints it).

Its own module, not a conftest attribute: several ``conftest`` modules exist under tests/, so ``from conftest
import …`` would resolve to whichever was imported first."""

from __future__ import annotations

__all__ = ["SCORE_PROPERTY"]

SCORE_PROPERTY = "mcp_guard_score"
