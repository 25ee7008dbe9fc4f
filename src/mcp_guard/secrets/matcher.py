"""Find many literal strings at once: a trie compiled into one regular expression.

A plain alternation ``a|b|c|…`` makes the regex engine try every literal at every position, which is
O(text × literals). Folding the literals into a trie first (``s(?:k-(?:abc|xyz)|ecret)``) means each
position costs at most one branch per distinct next character, independent of how many secrets there
are. Where one literal is a prefix of another the longer one is tried first (greedy optional group),
so matches are leftmost-longest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = ["compile_literals"]

_END = ""  # trie key marking "a literal ends here" (real keys are single characters)

_Node = dict[str, Any]


def _insert(root: _Node, word: str) -> None:
    node = root
    for ch in word:
        node = node.setdefault(ch, {})
    node[_END] = True


def _pattern(node: _Node) -> str:
    """Regex source for the literals below ``node`` (iterative along unbranched chains)."""
    prefix: list[str] = []
    while True:
        keys = [k for k in node if k != _END]
        if len(keys) == 1 and _END not in node:
            prefix.append(re.escape(keys[0]))
            node = node[keys[0]]
            continue
        break
    branches = [re.escape(k) + _pattern(node[k]) for k in sorted(keys)]
    if not branches:
        return "".join(prefix)
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    if _END in node:
        body = f"(?:{body})?"  # greedy: prefer the longer literal
    return "".join(prefix) + body


def trie_source(literals: Iterable[str]) -> str:
    """The regex source matching exactly the given (non-empty) literals, leftmost-longest."""
    root: _Node = {}
    for word in literals:
        if word:
            _insert(root, word)
    return _pattern(root)


def compile_literals(literals: Iterable[str]) -> tuple[re.Pattern[str], re.Pattern[bytes]] | None:
    """One ``str`` and one ``bytes`` pattern (UTF-8) matching the literals; ``None`` if there are none."""
    words = sorted({w for w in literals if w})
    if not words:
        return None
    text = re.compile(trie_source(words))
    # Build the bytes trie over UTF-8 bytes smuggled through latin-1 (one char per byte).
    as_latin1 = [w.encode("utf-8").decode("latin-1") for w in words]
    binary = re.compile(trie_source(as_latin1).encode("latin-1"))
    return text, binary
