"""Find many literal strings at once: a trie compiled into one regular expression.

A plain alternation ``a|b|c|…`` makes the regex engine try every literal at every position, which is
O(text × literals). Folding the literals into a trie first (``s(?:k-(?:abc|xyz)|ecret)``) means each
position costs at most one branch per distinct next character, independent of how many secrets there
are. Where one literal is a prefix of another the longer one is tried first (greedy optional group),
so matches are leftmost-longest.

:class:`Finder` turns the matches of such a pattern into spans: literals that are entered part-way in
(their head checked to the left), and short anchors extended into runs of a longer source.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["Finder", "Span", "compile_literals", "entry_point", "start_cost"]

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


# ------------------------------------------------------------------------------------------------ spans
#
# What the scan costs is decided by the characters literals *start* with: the regex engine skips a
# position whose character starts no literal in one cheap table look-up, and tries every branch of the
# trie's root at any other. So each literal is entered at a character of our choosing — a *tail*
# ``form[j:]`` whose *head* ``form[:j]`` is checked to the left of a match — and the choice prefers a
# character some literal already starts with, then one that is rare in text (not a space, quote or
# lowercase letter).

_COMMON = " etaoinsrhldcumfpgwybvkxjqz\"'\n:,."
"""Characters from most to least frequent in prose and JSON; anything else (upper case, digits, most
punctuation) counts as rare."""


def start_cost(ch: str, starts: set[str]) -> tuple[bool, int]:
    """How much entering a literal at ``ch`` adds to the scan (smaller is cheaper)."""
    i = _COMMON.find(ch)
    return ch not in starts, (len(_COMMON) - i if i >= 0 else 0)


def entry_point(text: str, candidates: Iterable[int], starts: set[str]) -> int:
    """The cheapest offset of ``text`` (among ``candidates``) to enter it at; ``starts`` is updated.

    Ties go to the rightmost offset.
    """
    best = min(candidates, key=lambda i: (start_cost(text[i], starts), -i))
    starts.add(text[best])
    return best


Span = tuple[int, int, str]
"""Where a match sits in a text: ``(start, end, owner)``."""

MISS_BUDGET = 256
"""Places where a literal is found but makes no match that one text may cost (plus one per 256 characters
of it — a few nanoseconds of Python per character at most), before anchors are no longer looked for in the
rest of that text."""

_S = TypeVar("_S", str, bytes)


class Finder(Generic[_S]):
    """Finds owned literals, and long enough runs of owned sources, in one kind of text (``str``/``bytes``).

    * an *exact* literal is a tail with a head: it matches where the tail is found and the head is just
      left of it;
    * an *anchor* is a short piece of a *source*: where it is found the match is extended left and right
      while the text agrees with the source around one of the anchor's occurrences in it, and kept if
      it spans ``min_run`` units (characters, or bytes) — ``2 * min_run`` if it reads like a word
      (:func:`_wordlike`).

    Every place the pattern matches is looked at (a match may start left of where its literal was found,
    so the leftmost literal does not make the leftmost match); overlapping matches are merged, so what is
    returned covers every match. ``pattern`` must match every tail and anchor, leftmost-longest
    (:func:`compile_literals`).
    """

    __slots__ = ("_anchors", "_exact", "_exact_re", "_min", "_owners", "_prefixes", "_re", "_sources")

    def __init__(
        self,
        pattern: re.Pattern[_S],
        exact: dict[_S, list[tuple[str, _S]]],
        sources: list[tuple[_S, str]],
        anchors: Iterable[_S],
        min_run: int,
        exact_only: re.Pattern[_S] | None = None,
    ) -> None:
        self._re: re.Pattern[_S] = pattern
        self._exact_re: re.Pattern[_S] | None = (
            exact_only  # the tails alone: what a text that floods anchors is scanned with
        )
        self._exact: dict[_S, list[tuple[str, _S]]] = exact  # tail -> [(owner, head)]
        self._sources: list[_S] = [src for src, _ in sources]
        self._owners = [owner for _, owner in sources]
        self._anchors: dict[_S, list[tuple[int, int]]] = {a: _occurrences(a, self._sources) for a in anchors}
        self._min = min_run
        # A literal the pattern matched, and every shorter literal it starts with (they match there too).
        literals: set[_S] = set(exact) | set(self._anchors)
        lengths = sorted({len(k) for k in literals}, reverse=True)
        self._prefixes: dict[_S, list[_S]] = {
            k: [k[:n] for n in lengths if n <= len(k) and k[:n] in literals] for k in literals
        }

    def spans(self, text: _S) -> list[Span]:
        """Every match in ``text``, in order; overlapping ones merged (named after the longest)."""
        search = self._re.search
        m = search(text)
        if m is None:
            return []
        found: list[Span] = []
        runs: dict[tuple[int, int], int] = {}  # (source, alignment) -> end of the run already extended
        misses = MISS_BUDGET + len(text) // 256
        while m is not None:
            start = m.start()
            before = len(found)
            for literal in self._prefixes[m.group(0)]:
                self._candidates(text, start, literal, runs, found)
            if len(found) == before:
                misses -= 1
                if misses < 0 and self._exact_re is not None:
                    # Each miss costs Python time: a text made of anchors (an upstream that knows the value)
                    # would stall the proxy. From here on only whole forms are looked for.
                    search = self._exact_re.search
            m = search(text, start + 1)
        return _merge(found)

    def _candidates(self, text: _S, start: int, literal: _S, runs: dict[tuple[int, int], int], out: list[Span]) -> None:
        """The matches ``literal``, found at ``start``, makes: exact ones whose head is there, long runs."""
        end = start + len(literal)
        for owner, head in self._exact.get(literal, ()):
            left = start - len(head)
            if left >= 0 and text[left:start] == head:
                out.append((left, end, owner))
        for idx, offset in self._anchors.get(literal, ()):
            key = (idx, start - offset)
            if runs.get(key, -1) >= end:
                continue  # the same stretch of the same source, already extended from an earlier anchor
            src = self._sources[idx]
            i, j = start, offset
            while i > 0 and j > 0 and text[i - 1] == src[j - 1]:
                i -= 1
                j -= 1
            k, r = end, offset + len(literal)
            n = len(text)
            while k < n and r < len(src) and text[k] == src[r]:
                k += 1
                r += 1
            runs[key] = k
            if k - i >= self._min and (k - i >= 2 * self._min or not _wordlike(text[i:k])):
                out.append((i, k, self._owners[idx]))


def _wordlike(run: str | bytes) -> bool:
    """Letters only, in one case or Capitalised: a piece of a secret made of words, which ordinary text holds
    too. Such a run is kept only from twice ``min_run`` on; anything with a digit, a symbol, a space or
    mixed case is a fragment from ``min_run`` on."""
    return run.isalpha() and (run.islower() or run.isupper() or run.istitle())


def _merge(spans: list[Span]) -> list[Span]:
    """``spans`` sorted, overlapping ones merged into one named after its longest part."""
    if len(spans) <= 1:
        return spans
    spans.sort(key=lambda s: (s[0], -s[1]))
    out: list[Span] = []
    longest = 0
    for start, end, owner in spans:
        if out and start < out[-1][1]:
            s0, e0, o0 = out[-1]
            if end - start > longest:
                o0, longest = owner, end - start
            out[-1] = (s0, max(e0, end), o0)
        else:
            out.append((start, end, owner))
            longest = end - start
    return out


def _occurrences(needle: _S, sources: Sequence[_S]) -> list[tuple[int, int]]:
    """Every ``(source index, offset)`` at which ``needle`` occurs in ``sources``."""
    found: list[tuple[int, int]] = []
    for idx, src in enumerate(sources):
        at = src.find(needle)
        while at >= 0:
            found.append((idx, at))
            at = src.find(needle, at + 1)
    return found
