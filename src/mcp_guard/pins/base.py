"""The pin-store protocol: what the registry and the CLI ask of the store of approved tool definitions.

Two backends, chosen in one place (:func:`mcp_guard.pins.open_pins`), following ``[audit] backend``:
SQLite in ``[audit] state_path`` (:class:`~mcp_guard.pins.store.PinStore`, every process on the host) and
PostgreSQL on ``[audit] dsn`` (:class:`~mcp_guard.pins.postgres.PostgresPinStore`, every replica), so all
processes of a deployment agree on which definition of a tool is approved and which changes await
approval. Operations are synchronous and small: they run when an upstream's catalogue changes and when
an operator approves, never per call.
"""

from __future__ import annotations

from typing import Any, Protocol

from mcp_guard.pins.store import PendingChange, Pin, PinState

__all__ = ["PinBackend"]


class PinBackend(Protocol):
    """Approved tool definitions and pending changes (see :mod:`mcp_guard.pins.store` for the semantics)."""

    def observe(
        self, server: str, tool: str, sha256: str, definition: dict[str, Any], *, trust_new: bool = True
    ) -> PinState:
        """Pin a first sighting (trust on first use) when ``trust_new`` and no definition of the tool is already
        pending, or say whether ``sha256`` is the approved definition; a different one — or a first sighting
        not trusted — is recorded as pending."""
        ...

    def approve(self, server: str, tool: str, sha256: str | None = None, *, by: str = "operator") -> Pin:
        """Approve the pending definition (the newest, or the one whose hash starts with ``sha256``).

        KeyError if there is none."""
        ...

    def pins(self) -> list[Pin]: ...

    def pending(self) -> list[PendingChange]: ...

    def close(self) -> None: ...
