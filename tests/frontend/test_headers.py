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


PLAIN = {"type": "object", "properties": {"region": {"type": "string"}}}
# Schemas that annotate no property where the SDK's check looks (a pure ``properties`` chain from the root): none,
# nested, under applicators, at the root, with a non-text token — and two that do, to show the corpus can refuse.
UNANNOTATED: list[dict[str, Any]] = [
    {},
    PLAIN,
    {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}}}},
    {"type": "object", "x-mcp-header": "Root", "properties": {"region": {"type": "string"}}},
    {"allOf": [{"properties": {"region": {"type": "string", "x-mcp-header": "Region"}}}]},
    {"properties": {"list": {"type": "array", "items": {"type": "string", "x-mcp-header": "Item"}}}},
    {"$defs": {"r": {"type": "string", "x-mcp-header": "Region"}}, "properties": {"region": {"$ref": "#/$defs/r"}}},
    {"properties": {"region": {"type": "string", "x-mcp-header": 7}}},
]
ANNOTATED: list[dict[str, Any]] = [
    SCHEMA,
    {"properties": {"geo": {"type": "object", "properties": {"zone": {"type": "integer", "x-mcp-header": "Zone"}}}}},
]
ARGUMENTS: list[dict[str, Any]] = [
    {},
    {"region": "eu"},
    {"region": "us", "geo": {"zone": 3}},
    {"region": None, "list": ["x"], "a": {"b": 1}},
    {"region": {"nested": True}},
]
HEADERS: list[dict[str, str]] = [
    {},
    {"mcp-param-region": "eu"},
    {"mcp-param-region": "us"},
    {"mcp-param-zone": "4", "mcp-param-root": "x", "mcp-param-item": "x"},
    {"mcp-param-region": "=?base64?!!?="},
    {"Mcp-Param-Region": "eu", "mcp-param-region": "us"},
]


def test_a_schema_that_annotates_nothing_is_not_handed_to_the_check() -> None:
    tools = {
        "up__plain": SimpleNamespace(exposed=types.Tool(name="up__plain", input_schema=PLAIN), hidden=False),
        "up__geo": _tool("up__geo"),
    }
    lookup = tool_input_schema(SimpleNamespace(find_tool=tools.get))  # type: ignore[arg-type]
    assert lookup("up__plain") is None
    assert lookup("up__plain") is None  # remembered by the schema object: the same answer
    assert lookup("up__geo") is tools["up__geo"].exposed.input_schema


def test_the_sdk_check_refuses_nothing_for_a_schema_the_lookup_leaves_out() -> None:
    """What makes answering None for an unannotated schema safe: the SDK's check passes every call of such a schema,
    whatever its arguments and headers (and the same corpus does refuse calls of annotated schemas)."""
    for schema in UNANNOTATED:
        tools = {"up__t": SimpleNamespace(exposed=types.Tool(name="up__t", input_schema=schema), hidden=False)}
        assert tool_input_schema(SimpleNamespace(find_tool=tools.get))("up__t") is None, schema  # type: ignore[arg-type]
        for arguments in ARGUMENTS:
            for headers in HEADERS:
                assert validate_mcp_param_headers(schema, arguments, headers) is None, (schema, arguments, headers)
    refused = 0
    for schema in ANNOTATED:
        tools = {"up__t": SimpleNamespace(exposed=types.Tool(name="up__t", input_schema=schema), hidden=False)}
        looked_up = tool_input_schema(SimpleNamespace(find_tool=tools.get))("up__t")  # type: ignore[arg-type]
        assert looked_up is not None
        for arguments in ARGUMENTS:
            for headers in HEADERS:
                refused += validate_mcp_param_headers(looked_up, arguments, headers) is not None
    assert refused > len(ARGUMENTS)  # the corpus reaches the check's refusals
