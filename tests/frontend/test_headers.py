"""The input schema the stateless transport checks ``Mcp-Param-*`` headers against: read from the catalogue.

A lookup that listed tools through the handlers would run the visibility policy and write an audited listing for
every ``tools/call`` (tests/e2e/test_conformance_headers.py shows the wire side); this one reads the merged
catalogue only, and hides what pinning hides.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import mcp_types as types
from mcp.shared.inbound import validate_mcp_param_headers
from mcp_types.jsonrpc import HEADER_MISMATCH

from mcp_guard.frontend.headers import tool_input_schema

SCHEMA = {"type": "object", "properties": {"region": {"type": "string", "x-mcp-header": "Region"}}}


def _registry(**tools: SimpleNamespace) -> Any:
    return SimpleNamespace(find_tool=tools.get)


def _tool(name: str, *, hidden: bool = False) -> SimpleNamespace:
    return SimpleNamespace(exposed=types.Tool(name=name, input_schema=SCHEMA), hidden=hidden)


def test_a_listed_tool_answers_its_exposed_schema_and_others_answer_nothing() -> None:
    lookup = tool_input_schema(_registry(up__geo=_tool("up__geo"), up__gone=_tool("up__gone", hidden=True)))
    assert lookup("up__geo") == SCHEMA
    assert lookup("up__gone") is None  # hidden by pinning: the pipeline refuses the call, nothing to check
    assert lookup("nope") is None


def test_the_catalogue_is_read_at_call_time() -> None:
    tools: dict[str, SimpleNamespace] = {}
    lookup = tool_input_schema(SimpleNamespace(find_tool=tools.get))  # type: ignore[arg-type]
    assert lookup("up__geo") is None
    tools["up__geo"] = _tool("up__geo")  # an upstream's list_changed, a reload
    assert lookup("up__geo") == SCHEMA


def test_the_sdk_check_refuses_a_mismatch_with_the_looked_up_schema() -> None:
    schema = tool_input_schema(_registry(up__geo=_tool("up__geo")))("up__geo")
    assert validate_mcp_param_headers(schema, {"region": "eu"}, {"mcp-param-region": "eu"}) is None
    refused = validate_mcp_param_headers(schema, {"region": "eu"}, {"mcp-param-region": "us"})
    assert refused is not None and refused.code == HEADER_MISMATCH
    assert validate_mcp_param_headers(schema, {"region": "eu"}, {"mcp-param-region": "eu", "mcp-param-x": "1"}) is None
