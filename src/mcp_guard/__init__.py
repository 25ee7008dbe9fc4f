"""mcp-guard: a governed execution layer for MCP — policy, secrets and audit in front of every tool call."""

__version__ = "0.1.0"

__all__ = ["__version__"]
