"""Tool pinning (rug-pull defence) and suspicious-character detection in tool definitions."""

from mcp_guard.pins.store import PinState, PinStore
from mcp_guard.pins.suspicious import scan_text, scan_tool

__all__ = ["PinState", "PinStore", "scan_text", "scan_tool"]
