"""The id of a JSON-RPC message read from a line that does not parse (so its sender can still be answered).

Both directions need it: the stdio front answers a client's undecodable request with the request's id
(frontend/undecodable.py), and the upstream stdio transport fails the in-flight call an undecodable or
oversized answer was meant for at once, instead of at its timeout (upstream/stdio.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["ID_SCAN_CHARS", "top_level_id"]

ID_SCAN_CHARS = 65536  # the id is looked for in this much of a line (clients put it near the start)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]]')
_ID_VALUE = re.compile(r'\s*:\s*("(?:[^"\\]|\\.){0,200}"|-?\d{1,18})(?=\s*[,}])')


def top_level_id(line: bytes) -> str | int | None:
    """The ``id`` member of the line's outermost object, if its start can be read; else None."""
    text = line[:ID_SCAN_CHARS].decode("utf-8", errors="replace")
    depth = 0
    for token in _TOKEN.finditer(text):
        t = token.group()
        if t in "{[":
            depth += 1
        elif t in "}]":
            depth -= 1
        elif depth == 1 and t == '"id"':
            m = _ID_VALUE.match(text, token.end())
            if m is not None:
                value: Any = json.loads(m.group(1))
                return value if isinstance(value, str | int) else None
    return None
