"""The stdio front answers every line it cannot decode (the client never waits for ever)."""

from __future__ import annotations

import asyncio
import json

import mcp_types as types
import pytest

from mcp_guard.frontend.stdio import _LineReadStream
from mcp_guard.lineid import top_level_id

pytestmark = pytest.mark.anyio

PING = b'{"jsonrpc":"2.0","id":99,"method":"ping"}\n'


async def read_all(data: bytes, limit: int = 1 << 20) -> tuple[list[object], list[types.JSONRPCError]]:
    """Feed ``data`` to the read stream; what it yields to the session, and what it answered itself."""
    reader = asyncio.StreamReader(limit=limit)
    reader.feed_data(data)
    reader.feed_eof()
    answered: list[types.JSONRPCError] = []
    stream = _LineReadStream(reader, limit, answered.append)
    got: list[object] = []
    async for item in stream:
        got.append(item)
    return got, answered


async def test_a_line_nested_2000_deep_is_answered_with_its_id() -> None:
    deep = b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"x":' + b"[" * 2500 + b"]" * 2500 + b"}}\n"
    got, [answer] = await read_all(deep + PING)
    assert answer.id == 5 and answer.error.code == types.PARSE_ERROR
    assert "nests deeper" in answer.error.message
    assert len(got) == 1  # the ping after it is read as usual


@pytest.mark.parametrize(
    ("line", "code", "rid"),
    [
        (b"{not json\n", types.PARSE_ERROR, None),
        (b'{"id": "a", "method": \n', types.PARSE_ERROR, "a"),
        (b"[" * 3000 + b"\n", types.PARSE_ERROR, None),
        (b'{"jsonrpc":"2.0","id":3}\n', types.INVALID_REQUEST, 3),
        (b'{"jsonrpc":"2.0","params":{"id":8},"id":4,"method":7}\n', types.INVALID_REQUEST, 4),
        (b"\xff\xfe garbage\n", types.PARSE_ERROR, None),
    ],
)
async def test_every_undecodable_line_gets_one_answer(line: bytes, code: int, rid: object) -> None:
    got, answered = await read_all(line + PING)
    assert [(a.id, a.error.code) for a in answered] == [(rid, code)]
    assert len(got) == 1


async def test_an_oversized_line_is_answered_and_skipped() -> None:
    big = b'{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"t":"' + b"x" * 5000 + b'"}}\n'
    got, [answer] = await read_all(big + PING, limit=1024)
    assert answer.id == 12 and answer.error.code == types.PARSE_ERROR and "larger than 1024" in answer.error.message
    assert len(got) == 1


def test_the_id_is_read_only_at_the_top_level() -> None:
    assert top_level_id(b'{"params":{"id":1},"id":2}') == 2
    assert top_level_id(b'{"params":{"id":1}}') is None
    assert top_level_id(b'{"a":"\\"id\\":3","id":"x"}') == "x"
    assert top_level_id(b'{"id":true}') is None
    assert json.loads(b'{"id":1}')["id"] == top_level_id(b'{"id":1}')
