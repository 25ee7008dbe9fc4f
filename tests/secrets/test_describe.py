"""Descriptions of invalid input say what and where, never the input."""

from __future__ import annotations

import json
from typing import Any

import mcp_types as types
import pytest
from pydantic import TypeAdapter, ValidationError

from mcp_guard.secrets.describe import MAX_DESCRIPTION, describe_invalid, is_parse_error

TOKEN = "tk_live_9f8e7d6c5b4a39281706f5e4d3c2b1a0"


def _error(fn: Any, *args: Any) -> BaseException:
    try:
        fn(*args)
    except Exception as e:
        return e
    raise AssertionError("no error")


@pytest.mark.parametrize(
    "error",
    [
        _error(types.jsonrpc_message_adapter.validate_json, '{"jsonrpc": "2.0", "id": 1, "result": "' + TOKEN),
        _error(types.jsonrpc_message_adapter.validate_json, f'{{"jsonrpc":"2.0","id":1,"result":{json.dumps(TOKEN)}}}'),
        _error(types.CallToolResult.model_validate, {"content": [{"type": "text", "text": 12}], TOKEN: TOKEN}),
        _error(TypeAdapter(dict[str, int]).validate_python, {TOKEN: "x"}),
        _error(TypeAdapter(dict[str, int]).validate_python, {"hunter2": "x"}),
        _error(json.loads, '{"a": "' + TOKEN),
        _error(b"\xff".decode, "utf-8"),
    ],
    ids=["invalid-json", "not-a-message", "bad-result", "key-chosen-by-the-input", "short-key", "json", "utf-8"],
)
def test_nothing_of_the_input_is_quoted(error: BaseException) -> None:
    assert is_parse_error(error)
    text = describe_invalid(error)
    for i in range(len(TOKEN) - 4):
        assert TOKEN[i : i + 5] not in text, text
    assert "hunter2" not in text
    assert 0 < len(text) <= MAX_DESCRIPTION


def test_it_still_says_what_and_where() -> None:
    error = _error(types.CallToolResult.model_validate, {"content": [{"type": "text", "text": 12}]})
    assert isinstance(error, ValidationError)
    assert describe_invalid(error).startswith("12 validation error(s): content.0.TextContent.text: string_type; ")


def test_other_errors_are_not_parse_errors() -> None:
    assert not is_parse_error(ValueError("message larger than 10 bytes discarded"))
    assert "withheld" in describe_invalid(RuntimeError(TOKEN)) and TOKEN not in describe_invalid(RuntimeError(TOKEN))
