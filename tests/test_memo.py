"""ByIdentity: a value is handed out again only for the very objects it was made from."""

from __future__ import annotations

import gc

import pytest

from mcp_guard.memo import ByIdentity


class Thing:
    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:  # equal by value: the memo must not care
        return isinstance(other, Thing) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


def test_a_value_is_found_by_the_same_objects_only() -> None:
    memo: ByIdentity[str] = ByIdentity(8)
    a, b = Thing("a"), Thing("b")
    assert memo.get(a) is None
    assert memo.put("made from a", a) == "made from a"
    assert memo.get(a) == "made from a"
    assert memo.get(Thing("a")) is None  # equal, not the same object
    memo.put_from("made from a and b", (a, b))
    assert memo.get_from((a, b)) == "made from a and b"
    assert memo.get_from((b, a)) is None  # the order is part of it
    assert memo.get_from((a, Thing("b"))) is None
    assert memo.get(a) == "made from a"  # one object and several are separate entries


def test_held_objects_keep_their_ids_and_a_reused_id_never_matches() -> None:
    memo: ByIdentity[str] = ByIdentity(8)
    thing = Thing("x")
    memo.put("old", thing)
    gone = id(thing)
    del thing
    gc.collect()
    assert any(id(t) == gone for held in memo._entries.values() for t in held[0])  # held: its id is not free
    # An entry found under another object's id (as if the id had been reused) is not that object's.
    other, stranger = Thing("o"), Thing("s")
    memo._entries[id(stranger)] = ((other,), "made from another object")
    memo._entries[(id(stranger), id(other))] = ((other, other), "made from others")
    assert memo.get(stranger) is None
    assert memo.get_from((stranger, other)) is None


def test_bounded_emptied_when_full() -> None:
    memo: ByIdentity[int] = ByIdentity(3)
    things = [Thing(str(i)) for i in range(7)]
    for i, t in enumerate(things):
        memo.put(i, t)
        assert len(memo) <= 3
    assert memo.get(things[-1]) == 6
    assert memo.get(things[0]) is None
    with pytest.raises(ValueError, match="positive"):
        ByIdentity(0)
