"""mcp-guard: a governed execution layer for MCP — policy, secrets and audit in front of every tool call."""

from importlib.metadata import PackageNotFoundError, version

try:
    # The installed distribution's version (`mcp-guard --version`), so the wheel and the code never disagree.
    __version__ = version("mcp-guard")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
