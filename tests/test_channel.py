"""The client channel's typed adapters: one check of a client's answer per upstream→client request type."""

from __future__ import annotations

import typing
from typing import Any

import mcp_types as types
import pytest
from pydantic import ValidationError

from mcp_guard.channel import (
    ELICITATION,
    REQUEST_TYPES,
    ROOTS,
    SAMPLING,
    Ask,
    ClientMethod,
    ClientRequestType,
    LogMessage,
    Progress,
    ResourceUpdated,
    ToClient,
    answers_nothing,
    capability_refusal,
    missing_capability,
    scrub_message,
)

pytestmark = pytest.mark.anyio

SAMPLED = {"role": "assistant", "content": {"type": "text", "text": "Hello"}, "model": "m", "stopReason": "endTurn"}
SAMPLE = types.CreateMessageRequestParams(
    messages=[types.SamplingMessage(role="user", content=types.TextContent(type="text", text="Hi"))], max_tokens=5
)


def test_every_relayed_method_has_one_request_type() -> None:
    assert set(REQUEST_TYPES) == set(ClientMethod)
    assert all(t.method is m for m, t in REQUEST_TYPES.items())


@pytest.mark.parametrize(
    ("kind", "raw", "model"),
    [
        (SAMPLING, SAMPLED, types.CreateMessageResult),
        (ELICITATION, {"action": "accept", "content": {"name": "Ada"}}, types.ElicitResult),
        (ROOTS, {"roots": [{"uri": "file:///w"}]}, types.ListRootsResult),
    ],
)
def test_a_valid_answer_becomes_its_sdk_type(kind: ClientRequestType[Any], raw: dict[str, Any], model: type) -> None:
    assert isinstance(kind.parse(raw), model)


@pytest.mark.parametrize(
    ("kind", "raw", "text"),
    [
        (SAMPLING, {"role": "assistant"}, "client sent an invalid sampling result: "),
        (ELICITATION, {"action": "maybe"}, "client sent an invalid elicit result: "),
        (ROOTS, {"roots": "file:///w"}, "client sent an invalid roots result: "),
    ],
)
def test_an_invalid_answer_is_an_internal_error_for_the_upstream(
    kind: ClientRequestType[Any], raw: dict[str, Any], text: str
) -> None:
    answer = kind.parse(raw)
    assert isinstance(answer, types.ErrorData)
    assert answer.code == types.INTERNAL_ERROR and answer.message.startswith(text)


def test_an_error_from_the_way_to_the_client_is_passed_on_unchanged() -> None:
    refused = types.ErrorData(code=types.INVALID_REQUEST, message="no back channel")
    assert SAMPLING.parse(refused) is refused


async def test_ask_sends_the_method_and_wire_params_and_checks_the_answer() -> None:
    sent: list[tuple[ClientMethod, dict[str, Any]]] = []

    async def send(method: ClientMethod, params: dict[str, Any]) -> dict[str, Any] | types.ErrorData:
        sent.append((method, params))
        return SAMPLED if method is ClientMethod.SAMPLING else {"roots": []}

    answer = await SAMPLING.ask(send, SAMPLE)
    assert isinstance(answer, types.CreateMessageResult) and answer.model == "m"
    assert sent == [
        (
            ClientMethod.SAMPLING,
            {"messages": [{"role": "user", "content": {"type": "text", "text": "Hi"}}], "maxTokens": 5},
        )
    ]
    assert await ROOTS.ask(send, None) == types.ListRootsResult(roots=[])
    assert sent[-1] == (ClientMethod.ROOTS, {}), "roots/list has no params: an empty object"


def test_normalize_gives_the_wire_form_of_a_valid_answer_only() -> None:
    model = types.ElicitResult(action="accept", content={"name": "Ada"})
    assert ELICITATION.normalize(model) == {"action": "accept", "content": {"name": "Ada"}}
    assert SAMPLING.normalize(SAMPLED) == SAMPLED
    with pytest.raises(ValidationError):
        ELICITATION.normalize({"action": "maybe"})


# ---------------------------------------------------------------------------------------------------- scrubbing
def test_scrub_message_passes_every_field_the_upstream_wrote_and_nothing_else() -> None:
    async def relay(progress: float, total: float | None, message: str | None) -> None: ...

    seen: list[Any] = []

    def scrub(value: Any) -> Any:
        seen.append(value)
        return "scrubbed" if isinstance(value, str) else value

    progress = scrub_message(Progress(1, 2, "secret", relay), scrub)
    assert progress == Progress(1, 2, "scrubbed", relay) and relay not in seen
    assert scrub_message(ResourceUpdated("mem://secret"), scrub) == ResourceUpdated("scrubbed")
    ask = scrub_message(Ask(ClientMethod.ROOTS, {"k": "v"}), lambda v: {"k": "w"} if isinstance(v, dict) else v)
    assert ask == Ask(ClientMethod.ROOTS, {"k": "w"})


def test_every_kind_of_upstream_to_client_message_is_a_to_client_member() -> None:
    """A kind added to ToClient is scrubbed by scrub_message with no change there (it walks the fields)."""
    assert set(typing.get_args(ToClient)) == {Ask, LogMessage, Progress, ResourceUpdated}


QUESTIONS: list[tuple[str, dict[str, Any]]] = [
    ("sampling/createMessage", {}),
    ("sampling/createMessage", {"tools": [{"name": "t"}], "includeContext": "thisServer"}),
    ("elicitation/create", {}),
    ("elicitation/create", {"mode": "url", "url": "https://x"}),
    ("roots/list", {}),
    ("something/else", {}),
]
CAPABILITIES: list[types.ClientCapabilities | None] = [
    None,
    types.ClientCapabilities(),
    types.ClientCapabilities(experimental={"x": {}}),
    types.ClientCapabilities(sampling=types.SamplingCapability()),
    types.ClientCapabilities(elicitation=types.ElicitationCapability()),
    types.ClientCapabilities(elicitation=types.ElicitationCapability(url=types.UrlElicitationCapability())),
    types.ClientCapabilities(roots=types.RootsCapability()),
]


@pytest.mark.parametrize("caps", CAPABILITIES)
def test_a_client_answers_nothing_exactly_when_every_question_lacks_a_capability(
    caps: types.ClientCapabilities | None,
) -> None:
    """What lets the bridge leave a call in its request: for such a client no question is answerable."""
    lacking = [missing_capability(method, params, caps) for method, params in QUESTIONS]
    assert answers_nothing(caps) == all(m is not None for m in lacking)
    for (method, _), missing in zip(QUESTIONS, lacking, strict=True):
        if missing is not None:
            refusal = capability_refusal(method, missing)
            assert refusal.code == types.MISSING_REQUIRED_CLIENT_CAPABILITY
            assert refusal.data == {"requiredCapabilities": missing} and method in refusal.message
