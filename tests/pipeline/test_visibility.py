"""Visibility: listings are filtered by policy and cached — but a listing the engine failed is never cached."""

from __future__ import annotations

import pytest

from mcp_guard.pipeline.visibility import ListItem, Visibility
from mcp_guard.types import Decision, PolicyInput, Principal, ReasonCode, SessionInfo

pytestmark = pytest.mark.anyio

ITEMS: list[ListItem] = [("up", "search", None), ("up", "delete", None)]
ALICE = Principal("alice", ("support",))
SESSION = SessionInfo("s1", "memory")


class FlakyEngine:
    """Fails (``failure``) while ``down``, then allows everything but ``delete`` (a deny the policy makes)."""

    revision = "rev-1"

    def __init__(self, failure: ReasonCode | Exception) -> None:
        self.down = True
        self.failure = failure
        self.calls = 0

    async def evaluate(self, input: PolicyInput) -> Decision:
        self.calls += 1
        if self.down:
            if isinstance(self.failure, Exception):
                raise self.failure
            return Decision.deny(self.failure, "opa unreachable")
        return Decision(allow=input.tool != "delete")


async def _visible(vis: Visibility) -> frozenset[int]:
    return await vis.visible("tools/list", ALICE, SESSION, ITEMS, catalog_version=7)


@pytest.mark.parametrize("failure", [ReasonCode.ENGINE_ERROR, ReasonCode.TIMEOUT, ConnectionError("refused")], ids=str)
async def test_tools_hidden_while_the_engine_fails_come_back_when_it_recovers(failure: ReasonCode | Exception) -> None:
    engine = FlakyEngine(failure)
    vis = Visibility(engine)
    assert await _visible(vis) == frozenset(), "fail closed: nothing shown while the engine fails"
    engine.down = False
    assert await _visible(vis) == frozenset({0}), "the failed listing was not cached"


async def test_a_listing_the_engine_answered_is_cached_denies_included() -> None:
    engine = FlakyEngine(ReasonCode.ENGINE_ERROR)
    engine.down = False
    vis = Visibility(engine)
    assert await _visible(vis) == frozenset({0})
    calls = engine.calls
    engine.down = True  # answered from the cache: the engine is not asked again
    assert await _visible(vis) == frozenset({0}) and engine.calls == calls


async def test_a_policy_that_is_undefined_is_an_answer_and_is_cached() -> None:
    class Undefined:
        revision = "rev-1"
        calls = 0

        async def evaluate(self, input: PolicyInput) -> Decision:
            self.calls += 1
            return Decision.deny(ReasonCode.POLICY_UNDEFINED)

    engine = Undefined()
    vis = Visibility(engine)
    assert await _visible(vis) == frozenset() and await _visible(vis) == frozenset()
    assert engine.calls == len(ITEMS)
