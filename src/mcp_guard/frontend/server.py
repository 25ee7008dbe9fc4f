"""Build the client-facing low-level MCP ``Server`` from the handlers."""

from __future__ import annotations

import warnings
from typing import Any

from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.shared.exceptions import MCPDeprecationWarning

from mcp_guard import __version__
from mcp_guard.frontend.handlers import Handlers

__all__ = ["build_server", "initialization_options"]


def build_server(h: Handlers) -> Server[Any]:
    with warnings.catch_warnings():
        # logging/setLevel is deprecated in the 2026-07-28 era but part of the 2025-11-25 protocol we serve.
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        server: Server[Any] = Server(
            h.settings.server.name,
            version=__version__,
            instructions="mcp-guard: tools of several upstream servers, named '<upstream>"
            f"{h.settings.server.tool_separator}<tool>'. Every call is checked by policy and audited.",
            on_list_tools=h.list_tools,
            on_call_tool=h.call_tool,  # type: ignore[arg-type]  # returns the upstream's raw result dict
            on_list_resources=h.list_resources,
            on_list_resource_templates=h.list_resource_templates,
            on_read_resource=h.read_resource,  # type: ignore[arg-type]
            on_subscribe_resource=h.subscribe,
            on_unsubscribe_resource=h.unsubscribe,
            on_list_prompts=h.list_prompts,
            on_get_prompt=h.get_prompt,  # type: ignore[arg-type]
            on_completion=h.complete,  # type: ignore[arg-type]
            on_set_logging_level=h.set_logging_level,
        )
    # No OpenTelemetry span per message on the hot path (it is a no-op without an exporter anyway).
    server.middleware = []
    return server


def initialization_options(server: Server[Any]) -> InitializationOptions:
    return server.create_initialization_options(
        NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)
    )
