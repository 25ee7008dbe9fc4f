"""The ``redact`` obligation of a ``tools/result`` decision: what it may say, and doing it to a result.

``obligations.redact = {"pointers": ["/structuredContent/card"], "patterns": ["[0-9]{13,19}"]}``
(docs/architecture.md, "Result policy"; both keys optional, no others):

* **pointers** — RFC 6901 JSON pointers into the result, each starting with ``/structuredContent/``. The
  value a pointer names is replaced by :data:`MARKER` (not removed: a required field of the tool's
  ``outputSchema`` stays present; its type may not — a client validating structured content may reject the
  result, which is the safe failure). A pointer that names nothing in this result changes nothing. A server
  usually repeats its structured content as JSON in a text block, so every string or number a pointer
  replaced (its text at least :data:`MIN_MIRROR_CHARS` long) is also replaced wherever it appears verbatim
  in the result's text — otherwise the pointer would hide the value in one place and show it in another.
* **patterns** — regular expressions; every match in the result's text is replaced by :data:`MARKER`. "The
  result's text" is the ``text`` of text blocks, the ``text`` of embedded resources, and every string value
  inside ``structuredContent`` (a card number is as readable there). Keys, types, URIs, ``_meta`` and
  binary payloads are left alone.

**Bounded cost.** Patterns are written by the policy, but a policy is data an operator may not have read
line by line, and Python's ``re`` has no time limit: one catastrophically backtracking pattern would stall
the proxy. So a pattern is accepted only if it is at most :data:`MAX_PATTERN_CHARS` characters, compiles, has
no backreference, and repeats no group that itself holds an unbounded repetition (``(a+)+``, ``(\\w*x)*``:
the shapes that backtrack exponentially); at most :data:`MAX_PATTERNS` patterns and :data:`MAX_POINTERS`
pointers per decision. What is left runs in time polynomial in the result's size, which the upstream
connection already bounds. Anything else is a malformed obligation (``obligation_invalid``): the result is
withheld, never shown unredacted. (A guaranteed-linear engine such as RE2 would lift the shape rule; it is
not a dependency today.)
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "MARKER",
    "MAX_PATTERNS",
    "MAX_PATTERN_CHARS",
    "MAX_POINTERS",
    "MIN_MIRROR_CHARS",
    "RedactSpec",
    "Redaction",
    "parse_pointer",
    "parse_redact",
    "redact_result",
    "risky_pattern",
]

MARKER: Final = "[redacted]"
"""What a redacted value or match is replaced by."""
MAX_POINTERS: Final = 32
MAX_PATTERNS: Final = 16
MAX_PATTERN_CHARS: Final = 256
MIN_MIRROR_CHARS: Final = 4
"""A value a pointer replaced is also replaced in the text if its text is at least this long (shorter ones,
like ``5`` or ``true``, would take ordinary characters with them)."""

_ROOT: Final = "structuredContent"
_KEYS: Final = frozenset({"pointers", "patterns"})


@dataclass(frozen=True, slots=True)
class RedactSpec:
    """A parsed ``obligations.redact``: pointer paths below ``structuredContent`` and compiled patterns."""

    pointers: tuple[tuple[str, ...], ...] = ()
    patterns: tuple[re.Pattern[str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.pointers or self.patterns)


@dataclass(frozen=True, slots=True)
class Redaction:
    """A redacted copy of a result and how many replacements of each kind were made."""

    result: dict[str, Any]
    pointers: int = 0  # values replaced through a pointer
    mirrors: int = 0  # verbatim text occurrences of those values
    patterns: int = 0  # pattern matches

    def counts(self) -> dict[str, int]:
        return {"pointers": self.pointers, "mirrors": self.mirrors, "patterns": self.patterns}


# ---------------------------------------------------------------------- parsing the obligation
def parse_redact(value: object) -> RedactSpec | str:
    """The :class:`RedactSpec` of an ``obligations.redact`` value, or what is wrong with it."""
    if not isinstance(value, dict):
        return f"obligations.redact must be an object with 'pointers' and/or 'patterns', got {_type(value)}"
    extra = sorted(str(k) for k in set(value) - _KEYS)
    if extra:
        return f"obligations.redact has unknown key(s) {', '.join(map(repr, extra))} (expected 'pointers', 'patterns')"
    pointers = _strings(value.get("pointers", []), "pointers", MAX_POINTERS)
    if isinstance(pointers, str):
        return pointers
    patterns = _strings(value.get("patterns", []), "patterns", MAX_PATTERNS)
    if isinstance(patterns, str):
        return patterns
    paths: list[tuple[str, ...]] = []
    for i, text in enumerate(pointers):
        path = parse_pointer(text)
        if isinstance(path, str):
            return f"obligations.redact.pointers[{i}]: {path}"
        paths.append(path)
    compiled: list[re.Pattern[str]] = []
    for i, text in enumerate(patterns):
        pattern = _compile(text)
        if isinstance(pattern, str):
            return f"obligations.redact.patterns[{i}]: {pattern}"
        compiled.append(pattern)
    return RedactSpec(tuple(paths), tuple(compiled))


def _strings(value: object, key: str, most: int) -> list[str] | str:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return f"obligations.redact.{key} must be a list of strings, got {_type(value)}"
    if len(value) > most:
        return f"obligations.redact.{key} has {len(value)} entries, at most {most} are allowed"
    return list(value)


def parse_pointer(text: str) -> tuple[str, ...] | str:
    """The reference tokens below ``structuredContent`` of an RFC 6901 pointer, or what is wrong with it."""
    if not text.startswith("/"):
        return f"{_shown(text)} is not a JSON pointer (RFC 6901: it starts with '/')"
    raw = text[1:].split("/")
    if re.search(r"~(?![01])", text):
        return f"{_shown(text)} has a '~' not followed by 0 or 1 (RFC 6901 escapes are ~0 and ~1)"
    tokens = tuple(t.replace("~1", "/").replace("~0", "~") for t in raw)
    if tokens[0] != _ROOT or len(tokens) < 2:
        return f"{_shown(text)} must point inside the result's structuredContent ('/{_ROOT}/…')"
    return tokens[1:]


def _compile(text: str) -> re.Pattern[str] | str:
    if len(text) > MAX_PATTERN_CHARS:
        return f"a pattern of {len(text)} characters; at most {MAX_PATTERN_CHARS} are allowed"
    try:
        pattern = re.compile(text)
    except re.error as e:
        return f"{_shown(text)} is not a valid regular expression ({e})"
    risk = risky_pattern(text)
    if risk is not None:
        return f"{_shown(text)} is refused: {risk}"
    if pattern.fullmatch("") is not None:
        return f"{_shown(text)} matches the empty string (it would mark every position)"
    return pattern


def risky_pattern(text: str) -> str | None:
    """Why a (compilable) pattern could backtrack catastrophically, or None.

    A scan of the pattern's text: a backreference, or an unbounded repetition (``*``, ``+``, ``{n,}``)
    of a group whose body holds an unbounded repetition. Conservative: it may refuse a harmless pattern
    (rewrite it without the nesting), never the reverse for these shapes."""
    if re.search(r"\\[1-9]|\(\?P=", text):
        return "backreferences are not allowed"
    stack: list[bool] = []  # per open group: does its body hold an unbounded repetition?
    unbounded_here = False  # at the top level
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            i = _class_end(text, i)
            continue
        if c == "(":
            stack.append(unbounded_here)
            unbounded_here = False
            i += 1
            continue
        if c == ")" and stack:
            inner = unbounded_here
            unbounded_here = stack.pop()
            width = _unbounded_quantifier(text, i + 1)
            if width and inner:
                return "a repeated group contains an unbounded repetition (nested quantifiers backtrack exponentially)"
            unbounded_here = unbounded_here or inner or bool(width)
            i += 1 + width
            continue
        width = _unbounded_quantifier(text, i)
        if width:
            unbounded_here = True
            i += width
            continue
        i += 1
    return None


def _class_end(text: str, start: int) -> int:
    """The index after the character class opening at ``start``."""
    i = start + 1
    if i < len(text) and text[i] == "^":
        i += 1
    if i < len(text) and text[i] == "]":
        i += 1
    while i < len(text) and text[i] != "]":
        i += 2 if text[i] == "\\" else 1
    return i + 1


_UNBOUNDED: Final = re.compile(r"[*+][?+]?|\{\d*,\}[?+]?")


def _unbounded_quantifier(text: str, at: int) -> int:
    """The length of an unbounded quantifier starting at ``at`` (0 if there is none)."""
    m = _UNBOUNDED.match(text, at)
    return m.end() - at if m else 0


# ---------------------------------------------------------------------- applying it
_NOTHING: Final = object()


def redact_result(result: Mapping[str, Any], spec: RedactSpec) -> Redaction:
    """A copy of ``result`` with the spec's pointers and patterns applied (the module docstring says how)."""
    out: dict[str, Any] = copy.deepcopy(dict(result))
    structured = out.get(_ROOT)
    hits = 0
    replaced: list[str] = []
    for path in spec.pointers:
        old = _replace_at(structured, path)
        if old is not _NOTHING:
            hits += 1
            replaced.extend(_scalar_texts(old))
    mirror = _literal_pattern(replaced)
    mirrored = _sub_all(out, mirror) if mirror is not None else 0
    matched = sum(_sub_all(out, p) for p in spec.patterns)
    return Redaction(out, pointers=hits, mirrors=mirrored, patterns=matched)


def _replace_at(node: object, path: tuple[str, ...]) -> object:
    """Replace the value at ``path`` below ``node`` by the marker; the old value, or ``_NOTHING`` if none is there."""
    for i, token in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, dict):
            if token not in node:
                return _NOTHING
            if last:
                old = node[token]
                node[token] = MARKER
                return old
            node = node[token]
        elif isinstance(node, list):
            index = _index(token, len(node))
            if index is None:
                return _NOTHING
            if last:
                old = node[index]
                node[index] = MARKER
                return old
            node = node[index]
        else:
            return _NOTHING
    return _NOTHING


def _index(token: str, length: int) -> int | None:
    """An RFC 6901 array index ("0" or no leading zero) within ``length``; "-" and anything else name nothing."""
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        return None
    index = int(token)
    return index if index < length else None


def _scalar_texts(value: object) -> Iterator[str]:
    """The text of every string and number in ``value`` long enough to be mirrored in the text."""
    if isinstance(value, dict):
        for v in value.values():
            yield from _scalar_texts(v)
    elif isinstance(value, list):
        for v in value:
            yield from _scalar_texts(v)
    elif isinstance(value, str | int | float) and not isinstance(value, bool):
        text = value if isinstance(value, str) else str(value)
        if len(text) >= MIN_MIRROR_CHARS:
            yield text


def _literal_pattern(texts: list[str]) -> re.Pattern[str] | None:
    """One pattern matching any of ``texts`` verbatim (longest first), or None for none."""
    if not texts:
        return None
    ordered = sorted(set(texts), key=len, reverse=True)
    return re.compile("|".join(re.escape(t) for t in ordered))


def _sub_all(result: dict[str, Any], pattern: re.Pattern[str]) -> int:
    """Replace every match of ``pattern`` in the result's text, in place; the number of replacements."""
    count = 0
    content = result.get("content")
    if isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            holder = block.get("resource") if block.get("type") == "resource" else block
            if isinstance(holder, dict) and isinstance(holder.get("text"), str):
                holder["text"], n = pattern.subn(MARKER, holder["text"])
                count += n
    if _ROOT in result:
        result[_ROOT], n = _sub_strings(result[_ROOT], pattern)
        count += n
    return count


def _sub_strings(value: Any, pattern: re.Pattern[str]) -> tuple[Any, int]:
    """``value`` with the pattern replaced in every string it holds (dicts and lists in place)."""
    if isinstance(value, str):
        return pattern.subn(MARKER, value)
    count = 0
    if isinstance(value, dict):
        for k, v in value.items():
            value[k], n = _sub_strings(v, pattern)
            count += n
    elif isinstance(value, list):
        for i, v in enumerate(value):
            value[i], n = _sub_strings(v, pattern)
            count += n
    return value, count


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 80 else repr(text[:77] + "...")


def _type(v: object) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(v), type(v).__name__
    )
