"""Invisible and control characters in text an agent will read (tool poisoning).

A tool description that carries zero-width characters, bidirectional overrides, Unicode tag characters
or terminal escape sequences can hide instructions from the person reviewing it while the model still
reads them. :func:`scan_text` names which kinds a text carries; the policy input gets them as
``tool_info.suspicious`` and the default policy denies such tools.
"""

from __future__ import annotations

import json
import re
from typing import Any

import mcp_types as types

__all__ = ["KINDS", "scan_obj", "scan_text", "scan_tool"]

_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("ansi_escape", re.compile(r"\x1b[\[\]()#;?]*[0-9;]*[@-~]?|\x9b")),
    ("zero_width", re.compile("[\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u180e]")),
    ("bidi_control", re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")),
    ("tag_characters", re.compile("[\U000e0000-\U000e007f]")),
    ("control_character", re.compile("[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f-\x9a\x9c-\x9f]")),
)
KINDS = tuple(k for k, _ in _PATTERNS)


def scan_text(text: str) -> tuple[str, ...]:
    """The kinds of invisible/control characters in ``text`` (empty when clean)."""
    if text.isascii() and text.isprintable():
        return ()
    return tuple(kind for kind, pat in _PATTERNS if pat.search(text))


def scan_obj(obj: Any) -> tuple[str, ...]:
    """Every kind found in any string inside a JSON-able object (keys included)."""
    found: set[str] = set()

    def walk(o: Any) -> None:
        if isinstance(o, str):
            found.update(scan_text(o))
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(k)
                walk(v)
        elif isinstance(o, list | tuple):
            for v in o:
                walk(v)

    walk(obj)
    return tuple(k for k in KINDS if k in found)


def scan_tool(tool: types.Tool) -> tuple[str, ...]:
    """Kinds found anywhere in a tool's definition (name, title, description, schemas, annotations)."""
    return scan_obj(json.loads(tool.model_dump_json(by_alias=True, exclude_none=True)))
