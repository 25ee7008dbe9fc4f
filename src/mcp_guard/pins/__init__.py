"""Tool pinning (rug-pull defence) and suspicious-character detection in tool definitions.

:func:`open_pins` is the one place the pin store's backend is chosen: it follows ``[audit] backend``
(SQLite in ``[audit] state_path``; PostgreSQL on ``[audit] dsn``, shared by every replica).
"""

from __future__ import annotations

from mcp_guard.pins.base import PinBackend
from mcp_guard.pins.store import PinState, PinStore
from mcp_guard.pins.suspicious import scan_text, scan_tool
from mcp_guard.settings import Settings

__all__ = ["PinBackend", "PinState", "PinStore", "open_pins", "scan_text", "scan_tool"]


def open_pins(settings: Settings) -> PinBackend:
    """The configured pin store, open (tables created). Raises sqlite3.Error/OSError or psycopg.Error."""
    if settings.audit.backend == "postgres" and settings.audit.dsn:
        from mcp_guard.pins.postgres import PostgresPinStore  # psycopg only when it is used

        return PostgresPinStore(settings.audit.dsn)
    return PinStore(settings.resolve_path(settings.audit.state_path))
