"""Values remembered by the identity of the objects they were made from: :class:`ByIdentity`.

Why: a call's hot path turns the same few objects into the same text or dict call after call — a flow's recorded
call into its history text (:mod:`mcp_guard.audit.events`), a principal, session and tool into the unchanging tail
of a decision row's replay input (ditto), a session's client capabilities into what an upstream is told
(:mod:`mcp_guard.frontend.handlers`), an API key's principal into its configured one
(:mod:`mcp_guard.frontend.auth`). Keying those by value would cost about as much as making the value again (they
are nested, and some are not hashable); their identity costs nothing.

The rule every user relies on: a remembered value is handed out again only for the very objects it was made from.
The entry holds them, so while it lives no other object can take one of their ids; a lookup compares the held
objects with the given ones by identity, so an id reused after the entry went cannot match. Bounded: the memo is
emptied when full (its objects come and go with sessions and requests; the next use makes its value again).
"""

from __future__ import annotations

from operator import is_
from typing import Generic, TypeVar

__all__ = ["ByIdentity"]

V = TypeVar("V")


class ByIdentity(Generic[V]):
    """At most ``max_entries`` values, each remembered by the identity of the objects it was made from."""

    __slots__ = ("_entries", "_max")

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        # id(object) for a value made from one object, the tuple of their ids for one made from several
        self._entries: dict[int | tuple[int, ...], tuple[tuple[object, ...], V]] = {}
        self._max = max_entries

    def get(self, source: object) -> V | None:
        """The value made from ``source`` (this very object); None if none is held."""
        hit = self._entries.get(id(source))
        if hit is None or hit[0][0] is not source:  # not held, or an id reused by another object
            return None
        return hit[1]

    def put(self, value: V, source: object) -> V:
        """Remember ``value`` as made from ``source`` (held with it); return it."""
        return self._put(id(source), (source,), value)

    def get_from(self, sources: tuple[object, ...]) -> V | None:
        """The value made from exactly these objects (the same objects, in this order); None if none is held."""
        hit = self._entries.get(tuple(map(id, sources)))
        if hit is None or not all(map(is_, hit[0], sources)):  # the ids matched: so do their counts
            return None
        return hit[1]

    def put_from(self, value: V, sources: tuple[object, ...]) -> V:
        """Remember ``value`` as made from ``sources`` (held with it); return it."""
        return self._put(tuple(map(id, sources)), sources, value)

    def _put(self, key: int | tuple[int, ...], sources: tuple[object, ...], value: V) -> V:
        entries = self._entries
        if len(entries) >= self._max:
            entries.clear()
        entries[key] = (sources, value)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
