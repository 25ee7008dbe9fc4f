"""A 2026-07-28 upstream's InputRequiredResult completed inside the forwarded call (mcp_guard.pipeline.input_rounds)."""

from __future__ import annotations

from typing import Any

import mcp_types as types
import pytest

from mcp_guard.channel import ClientMethod
from mcp_guard.pipeline.input_rounds import MAX_ROUNDS, complete_input_rounds, is_input_required
from mcp_guard.types import Decision

pytestmark = pytest.mark.anyio

NAME_Q = {
    "method": "elicitation/create",
    "params": {
        "mode": "form",
        "message": "What is your name?",
        "requestedSchema": {"type": "object", "properties": {"name": {"type": "string"}}},
    },
}
ROOTS_Q = {"method": "roots/list"}


class Client:
    """A client channel that answers every question and records what it was asked, under which key."""

    def __init__(self, refuse: types.ErrorData | None = None) -> None:
        self.asked: list[tuple[str, str | None]] = []
        self.refuse = refuse
        self.channel_id, self.principal_id, self.parked = "c1", "alice", False

    async def request(
        self, method: ClientMethod, params: dict[str, Any], *, key: str | None = None
    ) -> dict[str, Any] | types.ErrorData:
        self.asked.append((method.value, key))
        if self.refuse is not None:
            return self.refuse
        if method is ClientMethod.ROOTS:
            return {"roots": [{"uri": "file:///work"}]}
        return {"action": "accept", "content": {"name": "Ada"}}

    async def notify_log(self, params: types.LoggingMessageNotificationParams) -> None:
        return None

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        return None


class Upstream:
    """Asks ``rounds`` rounds of questions (with an evolving requestState), then answers."""

    def __init__(self, rounds: list[dict[str, Any]]) -> None:
        self.rounds = rounds
        self.sent: list[types.CallToolRequestParams] = []

    def first(self) -> dict[str, Any]:
        return self._answer(0)

    def _answer(self, n: int) -> dict[str, Any]:
        if n < len(self.rounds):
            return {"resultType": "input_required", "inputRequests": self.rounds[n], "requestState": f"state-{n}"}
        return {"content": [{"type": "text", "text": "done"}], "resultType": "complete"}

    async def send(self, request: types.ClientRequest) -> dict[str, Any]:
        assert isinstance(request, types.CallToolRequest)
        self.sent.append(request.params)
        return self._answer(len(self.sent))


def _call() -> types.CallToolRequest:
    meta: Any = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    return types.CallToolRequest(params=types.CallToolRequestParams(name="t", arguments={"x": 1}, _meta=meta))


async def test_questions_reach_the_client_under_the_upstreams_keys_and_the_retry_carries_its_state() -> None:
    up, client = Upstream([{"user_name": NAME_Q, "client_roots": ROOTS_Q}, {"again": NAME_Q}]), Client()
    final = await complete_input_rounds(up.first(), _call(), up.send, client, upstream="conf")
    assert final == {"content": [{"type": "text", "text": "done"}], "resultType": "complete"}
    assert sorted(client.asked) == [
        ("elicitation/create", "again"),
        ("elicitation/create", "user_name"),
        ("roots/list", "client_roots"),
    ]
    first, second = up.sent
    assert first.request_state == "state-0" and second.request_state == "state-1"  # the upstream's own, unchanged
    assert first.input_responses is not None and set(first.input_responses) == {"user_name", "client_roots"}
    assert second.input_responses is not None and set(second.input_responses) == {"again"}
    assert first.name == "t" and first.arguments == {"x": 1}  # the same call, retried
    assert first.meta is not None and dict(first.meta)["traceparent"].startswith("00-")


async def test_a_refused_question_ends_the_call_with_the_clients_error() -> None:
    refusal = types.ErrorData(code=types.MISSING_REQUIRED_CLIENT_CAPABILITY, message="no elicitation")
    up = Upstream([{"user_name": NAME_Q}])
    final = await complete_input_rounds(up.first(), _call(), up.send, Client(refuse=refusal), upstream="conf")
    assert final == refusal and up.sent == []  # the upstream is not retried without the answer


async def test_without_a_client_to_ask_the_call_fails_clearly() -> None:
    up = Upstream([{"user_name": NAME_Q}])
    final = await complete_input_rounds(up.first(), _call(), up.send, None, upstream="conf")
    assert isinstance(final, types.ErrorData) and "no client to ask" in final.message


async def test_a_question_mcp_guard_cannot_relay_fails_the_call() -> None:
    up = Upstream([{"k": {"method": "tools/call", "params": {}}}])
    final = await complete_input_rounds(up.first(), _call(), up.send, Client(), upstream="conf")
    assert isinstance(final, types.ErrorData) and "cannot relay" in final.message


async def test_an_invalid_answer_is_not_sent_upstream() -> None:
    class Bad(Client):
        async def request(
            self, method: ClientMethod, params: dict[str, Any], *, key: str | None = None
        ) -> dict[str, Any] | types.ErrorData:
            return {"action": "maybe"}

    up = Upstream([{"user_name": NAME_Q}])
    final = await complete_input_rounds(up.first(), _call(), up.send, Bad(), upstream="conf")
    assert isinstance(final, types.ErrorData) and up.sent == []


async def test_rounds_are_bounded() -> None:
    up, client = Upstream([{"q": NAME_Q}] * (MAX_ROUNDS + 5)), Client()
    final = await complete_input_rounds(up.first(), _call(), up.send, client, upstream="conf")
    assert isinstance(final, types.ErrorData) and f"after {MAX_ROUNDS} rounds" in final.message
    assert len(up.sent) == MAX_ROUNDS


def test_is_input_required() -> None:
    assert is_input_required({"resultType": "input_required"})
    assert not is_input_required({"resultType": "complete"}) and not is_input_required({"content": []})


async def test_each_retry_is_put_to_the_policy_first_and_a_deny_is_never_sent() -> None:
    asked: list[dict[str, Any]] = []

    async def redecide(responses: Any) -> Decision:
        asked.append(dict(responses))
        name = responses.get("again", {}).get("content", {}).get("name")
        return Decision(allow=name != "Ada", reasons=("no Ada twice",))

    up, client = Upstream([{"user_name": NAME_Q}, {"again": NAME_Q}]), Client()
    final = await complete_input_rounds(up.first(), _call(), up.send, client, upstream="conf", redecide=redecide)
    assert isinstance(final, Decision) and not final.allow and final.reasons == ("no Ada twice",)
    assert asked == [  # every round's answers, keyed as the upstream keyed them
        {"user_name": {"action": "accept", "content": {"name": "Ada"}}},
        {"again": {"action": "accept", "content": {"name": "Ada"}}},
    ]
    assert len(up.sent) == 1, "the first round's retry was allowed and sent, the second's never"
