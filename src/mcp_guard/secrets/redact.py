"""Scrub injected secret values out of everything that flows back to the agent (and into logs).

A :class:`Scrubber` is built from the ``(name, value)`` pairs of the secrets mcp-guard injected. It
replaces every occurrence of a value — raw or in any of the encodings listed in
:mod:`mcp_guard.secrets.forms` (JSON-escaped, URL-encoded, hex, base64 / base64url at every
alignment) — with ``[REDACTED:<secret name>]``.

Algorithm
    All encoded forms of all secrets are folded into one trie-shaped regular expression
    (:mod:`mcp_guard.secrets.matcher`), so a text is scanned once whatever the number of secrets;
    matches are leftmost-longest and map back to the secret's name. A scrubber with no secrets is a
    fast path: every method returns its input unchanged (the very same object).

Split across blocks
    An upstream can leak a value in pieces: a tool result whose first text block ends in ``"sk-ab"``
    and whose second starts with ``"cd12"``. :meth:`Scrubber.scrub_texts` scans the *concatenation* of
    consecutive texts and maps each match span back onto the blocks: the marker goes where the match
    starts, the remaining pieces are removed from the following blocks. :meth:`Scrubber.scrub_obj`
    applies this to every run of consecutive text-bearing items of a list: MCP text content blocks
    (``{"type": "text", "text": …}``), resource contents (``{"uri": …, "text": …}``), embedded
    resources and prompt messages (``{"resource"|"content": {"text": …}}``) and plain strings.
    Secrets split across the values of different dict keys are not reassembled.

Binary content
    A string under a ``blob`` or ``data`` key that is valid base64 (embedded resources, images,
    audio) is also decoded, scrubbed as bytes and re-encoded, so a secret anywhere in the payload is
    caught whatever its alignment; the encoded text is scrubbed as well. Base64 wrapped in lines
    (MIME, PEM) is decoded too; if something had to be removed it is re-encoded unwrapped.

Short secrets
    Values shorter than :data:`MIN_SECRET_LENGTH` (4) characters are *not* redacted: replacing every
    ``"a"`` of a result is absurd and such a value offers no protection anyway. They are listed in
    :attr:`Scrubber.skipped` (the :class:`~mcp_guard.secrets.manager.SecretManager` logs a warning).

Pydantic models (e.g. ``mcp.types.CallToolResult``) are dumped to JSON-able data, scrubbed and
validated back into the same type.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, SecretStr

from mcp_guard.secrets.forms import encoded_forms
from mcp_guard.secrets.matcher import compile_literals

__all__ = ["MIN_SECRET_LENGTH", "Scrubber", "marker"]

MIN_SECRET_LENGTH = 4
_BASE64_KEYS = frozenset({"blob", "data"})
_NESTED_TEXT_KEYS = ("content", "resource")


def marker(name: str) -> str:
    """The text that replaces a secret called ``name``."""
    return f"[REDACTED:{name}]"


def _plain(value: str | SecretStr) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


class Scrubber:
    """Removes a fixed set of secret values, in all their encodings, from text, bytes and JSON data."""

    __slots__ = ("_bytes_markers", "_bytes_re", "_markers", "_names", "_text_re", "names", "skipped")

    def __init__(self, secrets: Iterable[tuple[str, str | SecretStr]] = ()) -> None:
        owners: dict[str, str] = {}  # form -> secret name
        names: set[str] = set()
        skipped: list[str] = []
        for name, secret in secrets:
            value = _plain(secret)
            if len(value) < MIN_SECRET_LENGTH:
                skipped.append(name)
                continue
            names.add(name)
            for form in encoded_forms(value):
                owners.setdefault(form, name)
        self.names: frozenset[str] = frozenset(names)
        self.skipped: tuple[str, ...] = tuple(sorted(set(skipped)))
        self._names = owners
        self._markers = {form: marker(name) for form, name in owners.items()}
        self._bytes_markers = {k.encode("utf-8"): v.encode("utf-8") for k, v in self._markers.items()}
        compiled = compile_literals(owners)
        self._text_re: re.Pattern[str] | None = compiled[0] if compiled else None
        self._bytes_re: re.Pattern[bytes] | None = compiled[1] if compiled else None

    def __bool__(self) -> bool:
        return self._text_re is not None

    def __repr__(self) -> str:
        return f"Scrubber(names={sorted(self.names)!r})"

    # -- text ---------------------------------------------------------------------------------

    def scrub_text(self, text: str) -> str:
        """``text`` with every secret form replaced by its marker."""
        if self._text_re is None:
            return text
        markers = self._markers
        return self._text_re.sub(lambda m: markers[m.group(0)], text)

    def scrub_bytes(self, data: bytes) -> bytes:
        """Like :meth:`scrub_text` on raw bytes (forms matched as UTF-8)."""
        if self._bytes_re is None:
            return data
        markers = self._bytes_markers
        return self._bytes_re.sub(lambda m: markers[m.group(0)], data)

    def found(self, text: str) -> set[str]:
        """Names of the secrets present (in any form) in ``text``."""
        if self._text_re is None:
            return set()
        return {self._names[m.group(0)] for m in self._text_re.finditer(text)}

    def found_in(self, obj: Any) -> set[str]:
        """Names of the secrets present in any string (value or key) of JSON-able ``obj``."""
        if self._text_re is None:
            return set()
        names: set[str] = set()
        stack = [obj]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                names |= self.found(item)
            elif isinstance(item, Mapping):
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, list | tuple):
                stack.extend(item)
            elif isinstance(item, bytes | bytearray) and self._bytes_re is not None:
                names |= {self._names[m.group(0).decode("utf-8")] for m in self._bytes_re.finditer(item)}
        return names

    def scrub_texts(self, texts: Sequence[str]) -> list[str]:
        """Scrub consecutive text blocks jointly, so a secret split across blocks is caught too.

        The marker replaces the part of a match in the block where it starts; the parts of the same
        match in later blocks are removed.
        """
        if self._text_re is None:
            return list(texts)
        joined = "".join(texts)
        markers = self._markers
        matches = [(m.start(), m.end(), markers[m.group(0)]) for m in self._text_re.finditer(joined)]
        if not matches:
            return list(texts)
        out: list[str] = []
        block_start = 0
        j = 0
        for text in texts:
            block_end = block_start + len(text)
            pieces: list[str] = []
            cur = block_start
            while j < len(matches) and matches[j][0] < block_end:
                start, end, mark = matches[j]
                if start > cur:
                    pieces.append(joined[cur:start])
                if start >= block_start:
                    pieces.append(mark)
                cur = max(cur, min(end, block_end))
                if end > block_end:
                    break  # the match continues into the next block
                j += 1
            if cur < block_end:
                pieces.append(joined[cur:block_end])
            out.append("".join(pieces))
            block_start = block_end
        return out

    # -- structured data ----------------------------------------------------------------------

    def scrub_obj(self, obj: Any) -> Any:
        """A copy of JSON-able ``obj`` (dicts, lists, tuples, strings, bytes, pydantic models) scrubbed.

        Keys are scrubbed as well as values; numbers, booleans and ``None`` pass through. With no
        secrets ``obj`` itself is returned.
        """
        if self._text_re is None:
            return obj
        return self._walk(obj, None)

    def _walk(self, obj: Any, key: str | None) -> Any:
        if isinstance(obj, str):
            if key in _BASE64_KEYS:
                obj = self._scrub_base64(obj)
            return self.scrub_text(obj)
        if isinstance(obj, Mapping):
            return {
                (self.scrub_text(k) if isinstance(k, str) else k): self._walk(v, k if isinstance(k, str) else None)
                for k, v in obj.items()
            }
        if isinstance(obj, list | tuple):
            items = self._walk_seq(obj)
            return tuple(items) if isinstance(obj, tuple) else items
        if isinstance(obj, bytes | bytearray):
            return self.scrub_bytes(bytes(obj))
        if isinstance(obj, BaseModel):
            data = self._walk(obj.model_dump(mode="json", by_alias=True), None)
            return type(obj).model_validate(data)
        return obj

    def _scrub_base64(self, text: str) -> str:
        compact = "".join(text.split()) if any(c in text for c in " \r\n\t") else text
        try:
            raw = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            return text
        scrubbed = self.scrub_bytes(raw)
        return text if scrubbed == raw else base64.b64encode(scrubbed).decode("ascii")

    def _walk_seq(self, items: Sequence[Any]) -> list[Any]:
        out = [self._walk(item, None) for item in items]
        # Re-scrub runs of consecutive text-bearing items jointly (secrets split across blocks).
        run: list[int] = []
        for i in range(len(items) + 1):
            path = _text_path(items[i]) if i < len(items) else None
            if path is not None:
                run.append(i)
                continue
            if len(run) > 1:
                self._scrub_run(items, out, run)
            run = []
        return out

    def _scrub_run(self, items: Sequence[Any], out: list[Any], run: list[int]) -> None:
        paths = [_text_path(items[i]) or () for i in run]
        texts = [_get(items[i], p) for i, p in zip(run, paths, strict=True)]
        joint = self.scrub_texts(texts)
        if joint == texts:
            return
        for i, path, text in zip(run, paths, joint, strict=True):
            out[i] = _put(out[i], path, self.scrub_text(text))


def _text_path(item: Any) -> tuple[str, ...] | None:
    """Where the text of a text-bearing list item sits (``()`` for a plain string), else ``None``."""
    if isinstance(item, str):
        return ()
    if isinstance(item, Mapping):
        if isinstance(item.get("text"), str):
            return ("text",)
        for key in _NESTED_TEXT_KEYS:
            inner = item.get(key)
            if isinstance(inner, Mapping) and isinstance(inner.get("text"), str):
                return (key, "text")
    return None


def _get(item: Any, path: tuple[str, ...]) -> str:
    for key in path:
        item = item[key]
    assert isinstance(item, str)
    return item


def _put(item: Any, path: tuple[str, ...], text: str) -> Any:
    """``item`` (an already scrubbed copy) with the text at ``path`` replaced."""
    if not path:
        return text
    head, *rest = path
    return {**item, head: _put(item[head], tuple(rest), text)}
