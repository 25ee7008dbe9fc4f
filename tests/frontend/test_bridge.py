"""The input-required bridge: upstream→client requests as InputRequiredResult rounds for 2026-07-28 clients.

Unit tests drive :class:`InputRequiredBridge` with a fake pipeline (an async function that asks through
the call's client channel, as the registry would) and a fake request context; the last tests go through the real
guard: a recorder upstream on the handshake era, an SDK client on 2026-07-28 over the HTTP front.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from guard_harness import make_settings, recorder_upstream, running_guard, text_of
from http_harness import http_client, http_front
from mcp_guard.channel import ELICITATION, ROOTS, SAMPLING, missing_capability
from mcp_guard.frontend.input_required import BridgedCallChannel, InputRequiredBridge
from mcp_guard.pipeline.context import CallContext, Outcome
from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.settings import Settings
from mcp_guard.testing import RecordingSink
from mcp_guard.types import EventKind, Principal, SessionInfo

pytestmark = pytest.mark.anyio

ALL_CAPS = types.ClientCapabilities(
    sampling=types.SamplingCapability(), elicitation=types.ElicitationCapability(), roots=types.RootsCapability()
)
ELICIT = types.ElicitRequestFormParams(
    message="Name?",
    requested_schema={"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
)
SAMPLE = types.CreateMessageRequestParams(
    messages=[types.SamplingMessage(role="user", content=types.TextContent(type="text", text="Hi"))], max_tokens=5
)
ACCEPT = {"action": "accept", "content": {"name": "Ada"}}
SAMPLED = {"role": "assistant", "content": {"type": "text", "text": "Hello"}, "model": "m", "stopReason": "endTurn"}

Pipeline = Callable[[BridgedCallChannel], Awaitable[dict[str, Any]]]


def _ctx(caps: types.ClientCapabilities | None = ALL_CAPS) -> Any:
    async def noop(*_a: Any, **_k: Any) -> None:
        return None

    return SimpleNamespace(
        session=SimpleNamespace(client_capabilities=caps, report_progress=noop, send_log_message=noop), request_id=1
    )


def _call(principal: str = "alice", arguments: dict[str, Any] | None = None) -> CallContext:
    return CallContext(
        action="tools/call",
        principal=Principal(id=principal),
        session=SessionInfo(id="s", transport="http"),
        server="up",
        target="tool",
        exposed="up__tool",
        arguments=arguments or {"x": 1},
        request=types.CallToolRequest(params=types.CallToolRequestParams(name="tool")),
        timeout_s=10.0,
    )


def _params(state: str | None = None, responses: dict[str, Any] | None = None) -> Any:
    return SimpleNamespace(request_state=state, input_responses=responses)


class Runs:
    """A fake pipeline: counts its runs and hands the bridged call's channel to ``body``."""

    def __init__(self, body: Pipeline) -> None:
        self.body = body
        self.count = 0
        self.ended = anyio.Event()

    async def __call__(self, call: CallContext) -> Outcome:
        self.count += 1
        try:
            assert isinstance(call.downstream, BridgedCallChannel)
            return Outcome(result=await self.body(call.downstream))
        finally:
            self.ended.set()


@asynccontextmanager
async def _bridge(**kwargs: Any) -> AsyncIterator[InputRequiredBridge]:
    bridge = InputRequiredBridge(**kwargs)
    async with anyio.create_task_group() as tg:
        bridge.attach(tg)
        yield bridge
        tg.cancel_scope.cancel()


async def _round(
    bridge: InputRequiredBridge,
    runs: Runs,
    *,
    state: str | None = None,
    responses: dict[str, Any] | None = None,
    call: CallContext | None = None,
    caps: types.ClientCapabilities | None = ALL_CAPS,
) -> Outcome | dict[str, Any]:
    with anyio.fail_after(10):
        return await bridge.run(_ctx(caps), None, call or _call(), _params(state, responses), runs)  # type: ignore[arg-type]


POLL_S = 0.005  # interval of condition polls (always under a deadline)


@pytest.mark.parametrize("asked", [True, False])
async def test_progress_is_relayed_only_when_the_call_asked_for_it(asked: bool) -> None:
    """A call whose request carried no progress token asks its upstream for none (and may take the lean lane)."""
    seen: list[Any] = []

    async def run(call: CallContext) -> Outcome:
        seen.append(call.progress)
        return Outcome(result=_text_result("done"))

    async def relay(progress: float, total: float | None, message: str | None) -> None:
        return None

    call = dataclasses.replace(_call(), progress=relay if asked else None)
    async with _bridge() as bridge:
        with anyio.fail_after(10):
            await bridge.run(_ctx(), None, call, _params(), run)  # type: ignore[arg-type]
    assert len(seen) == 1
    assert (seen[0] is not None) is asked  # the bridge's own relay (the round's request carries it), or none


async def _until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while not condition():  # noqa: ASYNC110 - the state is changed by another task
            await anyio.sleep(POLL_S)


def _text_result(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}]}


async def ask_name(d: BridgedCallChannel) -> dict[str, Any]:
    answer = await ELICITATION.ask(d.request, ELICIT)
    assert isinstance(answer, types.ElicitResult), answer
    return _text_result(f"hello {(answer.content or {}).get('name')}")


# ---------------------------------------------------------------------------------------------------- rounds
async def test_no_question_means_the_final_result_at_once() -> None:
    async def body(d: BridgedCallChannel) -> dict[str, Any]:
        return _text_result("done")

    async with _bridge() as bridge:
        out = await _round(bridge, runs := Runs(body))
        assert isinstance(out, Outcome) and out.result == _text_result("done")
        assert runs.count == 1 and not bridge.calls


async def test_question_becomes_input_required_and_retry_completes_the_same_call() -> None:
    async with _bridge() as bridge:
        runs = Runs(ask_name)
        first = await _round(bridge, runs)
        assert isinstance(first, dict) and first["resultType"] == "input_required"
        assert first["inputRequests"] == {
            "elicitation-1": {
                "method": "elicitation/create",
                "params": {"mode": "form", "message": "Name?", "requestedSchema": ELICIT.requested_schema},
            }
        }
        assert isinstance(first["requestState"], str)
        final = await _round(bridge, runs, state=first["requestState"], responses={"elicitation-1": ACCEPT})
        assert isinstance(final, Outcome) and final.result == _text_result("hello Ada")
        assert runs.count == 1, "the pipeline (policy, audit) runs once per logical call"
        assert not bridge.calls


async def test_questions_asked_together_share_one_round() -> None:
    async def body(d: BridgedCallChannel) -> dict[str, Any]:
        got: dict[str, Any] = {}

        async def elicit() -> None:
            got["e"] = await ELICITATION.ask(d.request, ELICIT)

        async def sample() -> None:
            got["s"] = await SAMPLING.ask(d.request, SAMPLE)

        async def roots() -> None:
            got["r"] = await ROOTS.ask(d.request, None)

        async with anyio.create_task_group() as tg:
            # One after the other, each once the previous one is parked: a burst, not a single tick.
            for n, ask in enumerate((elicit, sample, roots), start=1):
                tg.start_soon(ask)
                await _until(lambda n=n: len(d._p.asks) == n)  # type: ignore[misc]
        return _text_result(f"{got['e'].content['name']} {got['s'].content.text} {len(got['r'].roots)}")

    async with _bridge(settle_s=0.5, settle_max_s=5) as bridge:
        runs = Runs(body)
        first = await _round(bridge, runs)
        assert isinstance(first, dict)
        methods = {k: v["method"] for k, v in first["inputRequests"].items()}
        assert sorted(methods.values()) == ["elicitation/create", "roots/list", "sampling/createMessage"]
        answers = {
            k: {
                "elicitation/create": ACCEPT,
                "sampling/createMessage": SAMPLED,
                "roots/list": {"roots": [{"uri": "file:///w"}]},
            }[m]
            for k, m in methods.items()
        }
        final = await _round(bridge, runs, state=first["requestState"], responses=answers)
        assert isinstance(final, Outcome) and final.result == _text_result("Ada Hello 1")


async def test_the_expiry_watch_starts_when_a_call_first_parks_and_only_then(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call answered in its first round never starts an expiry watcher (most calls: one task, not three); a call
    that parks starts one, once, however many rounds it takes."""
    watched: list[str] = []
    real = InputRequiredBridge._watch

    async def counted(self: InputRequiredBridge, pending: Any) -> None:
        watched.append(pending.id)
        await real(self, pending)

    monkeypatch.setattr(InputRequiredBridge, "_watch", counted)

    async def done(d: BridgedCallChannel) -> dict[str, Any]:
        return _text_result("done")

    async def two_questions(d: BridgedCallChannel) -> dict[str, Any]:
        await ELICITATION.ask(d.request, ELICIT)
        return await ask_name(d)

    async with _bridge() as bridge:
        await _round(bridge, Runs(done))
        await anyio.wait_all_tasks_blocked()
        assert watched == []
        runs = Runs(two_questions)
        r1 = await _round(bridge, runs)
        assert isinstance(r1, dict)
        r2 = await _round(bridge, runs, state=r1["requestState"], responses={"elicitation-1": ACCEPT})
        assert isinstance(r2, dict)
        final = await _round(bridge, runs, state=r2["requestState"], responses={"elicitation-2": ACCEPT})
        assert isinstance(final, Outcome) and final.result == _text_result("hello Ada")
        await anyio.wait_all_tasks_blocked()
        assert len(watched) == 1 and not bridge.calls


async def test_sequential_questions_take_one_round_each_with_a_new_state() -> None:
    async def body(d: BridgedCallChannel) -> dict[str, Any]:
        first = await ELICITATION.ask(d.request, ELICIT)
        second = await SAMPLING.ask(d.request, SAMPLE)
        assert isinstance(first, types.ElicitResult) and isinstance(second, types.CreateMessageResult)
        return _text_result("both")

    async with _bridge() as bridge:
        runs = Runs(body)
        r1 = await _round(bridge, runs)
        assert isinstance(r1, dict) and list(r1["inputRequests"]) == ["elicitation-1"]
        r2 = await _round(bridge, runs, state=r1["requestState"], responses={"elicitation-1": ACCEPT})
        assert isinstance(r2, dict) and list(r2["inputRequests"]) == ["sampling-2"]
        assert r2["requestState"] != r1["requestState"]
        with pytest.raises(MCPError) as stale:  # an answered round cannot be replayed
            await _round(bridge, runs, state=r1["requestState"], responses={"elicitation-1": ACCEPT})
        assert stale.value.error.code == types.INVALID_PARAMS and "stale" in stale.value.error.message
        r3 = await _round(bridge, runs, state=r2["requestState"], responses={"sampling-2": SAMPLED})
        assert isinstance(r3, Outcome) and r3.result == _text_result("both")


async def test_a_missing_answer_is_asked_again_and_extra_keys_are_ignored() -> None:
    async with _bridge() as bridge:
        runs = Runs(ask_name)
        r1 = await _round(bridge, runs)
        assert isinstance(r1, dict)
        r2 = await _round(bridge, runs, state=r1["requestState"], responses={"other": ACCEPT})
        assert isinstance(r2, dict) and list(r2["inputRequests"]) == ["elicitation-1"]
        final = await _round(
            bridge,
            runs,
            state=r2["requestState"],
            responses={"elicitation-1": ACCEPT, "unknown": {"action": "decline"}},
        )
        assert isinstance(final, Outcome) and final.result == _text_result("hello Ada")


async def test_an_invalid_answer_is_refused_without_using_up_the_round() -> None:
    async with _bridge() as bridge:
        runs = Runs(ask_name)
        r1 = await _round(bridge, runs)
        assert isinstance(r1, dict)
        with pytest.raises(MCPError) as bad:
            await _round(bridge, runs, state=r1["requestState"], responses={"elicitation-1": {"action": "maybe"}})
        assert bad.value.error.code == types.INVALID_PARAMS and "elicitation-1" in bad.value.error.message
        final = await _round(bridge, runs, state=r1["requestState"], responses={"elicitation-1": ACCEPT})
        assert isinstance(final, Outcome) and final.result == _text_result("hello Ada")


# ---------------------------------------------------------------------------------------------------- state
async def test_a_tampered_state_is_refused() -> None:
    async with _bridge() as bridge:
        runs = Runs(ask_name)
        r1 = await _round(bridge, runs)
        assert isinstance(r1, dict)
        state: str = r1["requestState"]
        flipped = state[:-2] + ("A" if state[-2] != "A" else "B") + state[-1]
        for bad in (state + "-TAMPERED", flipped, "not-a-state", state.replace(".1.", ".2.")):
            with pytest.raises(MCPError) as e:
                await _round(bridge, runs, state=bad, responses={"elicitation-1": ACCEPT})
            assert e.value.error.code == types.INVALID_PARAMS, bad
            assert "integrity" in e.value.error.message or "malformed" in e.value.error.message, bad
        assert runs.count == 1 and len(bridge.calls) == 1


async def test_a_state_is_bound_to_principal_and_arguments() -> None:
    async with _bridge() as bridge:
        runs = Runs(ask_name)
        r1 = await _round(bridge, runs)
        assert isinstance(r1, dict)
        for other in (_call(principal="mallory"), _call(arguments={"x": 2})):
            with pytest.raises(MCPError) as e:
                await _round(bridge, runs, state=r1["requestState"], responses={"elicitation-1": ACCEPT}, call=other)
            assert e.value.error.code == types.INVALID_PARAMS
            assert "belongs to another request" in e.value.error.message
        final = await _round(bridge, runs, state=r1["requestState"], responses={"elicitation-1": ACCEPT})
        assert isinstance(final, Outcome)


async def test_a_state_from_another_process_key_is_refused() -> None:
    async with _bridge() as one, _bridge() as two:
        runs = Runs(ask_name)
        r1 = await _round(one, runs)
        assert isinstance(r1, dict)
        with pytest.raises(MCPError) as e:
            await _round(two, runs, state=r1["requestState"], responses={"elicitation-1": ACCEPT})
        assert "integrity" in e.value.error.message


# ---------------------------------------------------------------------------------------------------- capabilities
@pytest.mark.parametrize(
    ("method", "params", "caps", "missing"),
    [
        ("sampling/createMessage", {}, types.ClientCapabilities(), {"sampling": {}}),
        (
            "sampling/createMessage",
            {"tools": [{"name": "t"}]},
            types.ClientCapabilities(sampling=types.SamplingCapability()),
            {"sampling": {"tools": {}}},
        ),
        ("elicitation/create", {"mode": "form"}, None, {"elicitation": {}}),
        (
            "elicitation/create",
            {"mode": "url", "url": "https://x"},
            types.ClientCapabilities(elicitation=types.ElicitationCapability()),
            {"elicitation": {"url": {}}},
        ),
        ("roots/list", {}, types.ClientCapabilities(sampling=types.SamplingCapability()), {"roots": {}}),
        ("elicitation/create", {"mode": "form"}, ALL_CAPS, None),
        ("sampling/createMessage", {}, ALL_CAPS, None),
    ],
)
def test_missing_capability(
    method: str, params: dict[str, Any], caps: types.ClientCapabilities | None, missing: dict[str, Any] | None
) -> None:
    assert missing_capability(method, params, caps) == missing


async def test_an_undeclared_capability_is_refused_to_the_upstream_with_32021() -> None:
    seen: list[Any] = []

    async def body(d: BridgedCallChannel) -> dict[str, Any]:
        answer = await SAMPLING.ask(d.request, SAMPLE)
        seen.append(answer)
        return _text_result("fallback")

    async with _bridge() as bridge:
        out = await _round(bridge, Runs(body), caps=types.ClientCapabilities(elicitation=types.ElicitationCapability()))
        assert isinstance(out, Outcome) and out.result == _text_result("fallback")
        assert isinstance(seen[0], types.ErrorData)
        assert seen[0].code == types.MISSING_REQUIRED_CLIENT_CAPABILITY
        assert seen[0].data == {"requiredCapabilities": {"sampling": {}}}


async def test_an_undeclared_question_asked_with_others_waits_until_they_are_answered() -> None:
    got: dict[str, Any] = {}

    async def body(d: BridgedCallChannel) -> dict[str, Any]:
        async def elicit() -> None:
            got["e"] = await ELICITATION.ask(d.request, ELICIT)

        async def sample() -> None:
            got["s"] = await SAMPLING.ask(d.request, SAMPLE)

        async with anyio.create_task_group() as tg:
            tg.start_soon(elicit)
            await _until(lambda: len(d._p.asks) == 1)
            tg.start_soon(sample)
        return _text_result("done")

    sampling_only = types.ClientCapabilities(sampling=types.SamplingCapability())
    async with _bridge(settle_s=0.5, settle_max_s=5) as bridge:
        runs = Runs(body)
        r1 = await _round(bridge, runs, caps=sampling_only)
        assert isinstance(r1, dict)
        assert [v["method"] for v in r1["inputRequests"].values()] == ["sampling/createMessage"]
        assert "e" not in got, "held, not refused, while an answerable question is open"
        final = await _round(
            bridge, runs, state=r1["requestState"], responses={"sampling-2": SAMPLED}, caps=sampling_only
        )
        assert isinstance(final, Outcome) and final.result == _text_result("done")
        assert isinstance(got["s"], types.CreateMessageResult)
        assert isinstance(got["e"], types.ErrorData) and got["e"].code == types.MISSING_REQUIRED_CLIENT_CAPABILITY
        assert got["e"].data == {"requiredCapabilities": {"elicitation": {}}}


# ---------------------------------------------------------------------------------------------------- bounds
async def test_an_abandoned_call_expires_and_its_upstream_request_fails() -> None:
    answers: list[Any] = []

    async def body(d: BridgedCallChannel) -> dict[str, Any]:
        answers.append(await ELICITATION.ask(d.request, ELICIT))
        return _text_result("gave up")

    async with _bridge(pending_ttl_s=0.05) as bridge:
        runs = Runs(body)
        r1 = await _round(bridge, runs)
        assert isinstance(r1, dict)
        with anyio.fail_after(10):
            await runs.ended.wait()
        assert isinstance(answers[0], types.ErrorData) and "did not answer" in answers[0].message
        assert not bridge.calls
        with pytest.raises(MCPError) as e:
            await _round(bridge, runs, state=r1["requestState"], responses={"elicitation-1": ACCEPT})
        assert "no longer pending" in e.value.error.message


async def test_a_stuck_upstream_is_cancelled_after_the_grace_period() -> None:
    async def body(d: BridgedCallChannel) -> dict[str, Any]:
        await ELICITATION.ask(d.request, ELICIT)
        await anyio.sleep_forever()  # an upstream that ignores the failed question
        raise AssertionError

    async with _bridge(pending_ttl_s=0.05, grace_s=0.05) as bridge:
        runs = Runs(body)
        assert isinstance(await _round(bridge, runs), dict)
        with anyio.fail_after(10):
            await runs.ended.wait()
        assert not bridge.calls


async def test_a_round_with_neither_a_result_nor_a_question_fails_at_its_deadline() -> None:
    """The round waits the call's timeout_s and round_slack_s for news, then answers with an error; the call stays
    pending (parked), so it can still expire or be resumed."""
    release = anyio.Event()

    async def body(d: BridgedCallChannel) -> dict[str, Any]:
        await release.wait()  # an upstream that neither answers nor asks
        return _text_result("late")

    call = dataclasses.replace(_call(), timeout_s=0.05)
    async with _bridge(round_slack_s=0.05) as bridge:
        runs = Runs(body)
        with pytest.raises(MCPError) as e:
            await _round(bridge, runs, call=call)
        assert "neither answered nor asked anything within 0.1s" in e.value.error.message
        assert len(bridge.calls) == 1  # parked, not lost
        release.set()
        with anyio.fail_after(10):
            await runs.ended.wait()


async def test_shutdown_cancels_bridged_calls_and_waits_for_their_shielded_work() -> None:
    """A bridged call runs in its own task, outside the guard's task group; stopping the group still cancels it
    through its run's cancel scope — shielded work (an audit row, a state write) finishes — and waits for it."""
    cleaned: list[str] = []

    async def body(d: BridgedCallChannel) -> dict[str, Any]:
        try:
            await ELICITATION.ask(d.request, ELICIT)
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):  # a write that takes many turns of the loop
                for _ in range(100):
                    await anyio.lowlevel.checkpoint()  # a cancelled await would raise here without the shield
                cleaned.append("written")
        raise AssertionError

    runs = Runs(body)
    async with _bridge() as bridge:
        assert isinstance(await _round(bridge, runs), dict)  # parked with its question
        assert runs.count == 1 and not runs.ended.is_set()
    assert cleaned == ["written"] and runs.ended.is_set()  # the group's exit waited for the call
    with pytest.raises(MCPError) as e:
        await bridge.run(_ctx(), None, _call(), _params(), runs)  # type: ignore[arg-type]
    assert "not running" in e.value.error.message


@pytest.mark.parametrize(
    "caps",
    [None, types.ClientCapabilities(), types.ClientCapabilities(experimental={"x": {}})],
    ids=["no-capabilities", "empty", "experimental-only"],
)
async def test_a_call_whose_client_can_answer_nothing_runs_in_its_requests_task(
    caps: types.ClientCapabilities | None,
) -> None:
    """No question could be put to such a client (each is refused with -32021 by its own channel, as a round
    would): the call is not bridged — no pending call, no background run, the request's own call and task."""
    seen: list[tuple[CallContext, Any, int]] = []
    call = _call()

    async def run(c: CallContext) -> Outcome:
        seen.append((c, anyio.get_current_task().id, len(bridge.calls)))
        return Outcome(result=_text_result("done"))

    async with _bridge() as bridge:
        with anyio.fail_after(10):
            out = await bridge.run(_ctx(caps), None, call, _params(), run)  # type: ignore[arg-type]
        assert isinstance(out, Outcome) and out.result == _text_result("done")
        assert seen == [(call, anyio.get_current_task().id, 0)]


async def test_a_client_that_can_answer_one_kind_of_question_is_bridged() -> None:
    seen: list[Any] = []

    async def run(c: CallContext) -> Outcome:
        seen.append(c.downstream)
        return Outcome(result=_text_result("done"))

    async with _bridge() as bridge:
        caps = types.ClientCapabilities(roots=types.RootsCapability())
        with anyio.fail_after(10):
            await bridge.run(_ctx(caps), None, _call(), _params(), run)  # type: ignore[arg-type]
    assert len(seen) == 1 and isinstance(seen[0], BridgedCallChannel)


async def test_pending_calls_are_bounded_per_principal() -> None:
    async with _bridge(max_per_principal=1) as bridge:
        assert isinstance(await _round(bridge, Runs(ask_name)), dict)
        with pytest.raises(MCPError) as e:
            await _round(bridge, Runs(ask_name))
        assert "waiting for input" in e.value.error.message
        assert isinstance(await _round(bridge, Runs(ask_name), call=_call(principal="bob")), dict)


async def test_channel_is_parked_between_rounds_only() -> None:
    parked: list[bool] = []

    async def body(d: BridgedCallChannel) -> dict[str, Any]:
        parked.append(d.parked)
        await ELICITATION.ask(d.request, ELICIT)
        parked.append(d.parked)
        return _text_result("ok")

    async with _bridge() as bridge:
        runs = Runs(body)
        r1 = await _round(bridge, runs)
        assert isinstance(r1, dict)
        call = next(iter(bridge.calls.values()))
        assert BridgedCallChannel(call).parked
        await _round(bridge, runs, state=r1["requestState"], responses={"elicitation-1": ACCEPT})
        assert parked == [False, False]


# ---------------------------------------------------------------------------------------------------- through the guard
def _settings(tmp_path: Path) -> Settings:
    settings: Settings = make_settings({"rec": recorder_upstream()}, server={"require_auth": False})
    return settings


async def test_modern_client_answers_an_upstream_elicitation_through_the_proxy(tmp_path: Path) -> None:
    asked: list[str] = []

    async def on_elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"answer": "forty-two"})

    sink = RecordingSink()
    async with (
        running_guard(_settings(tmp_path), sink=sink) as guard,
        http_front(guard) as url,
        http_client(url, mode="2026-07-28", elicitation_callback=on_elicit) as client,
    ):
        r = await client.call_tool("rec__elicit", {"message": "The answer?"})
        assert json.loads(text_of(r)) == {"action": "accept", "content": {"answer": "forty-two"}}
        assert asked == ["The answer?"]
        assert not guard.bridge.calls
    decisions = [e for e in sink.of_kind("call.decision") if e.tool == "elicit"]
    # One logical call, one call id: its admission, then the policy asked again on the answered round.
    assert [e.details.get("input_round") for e in decisions] == [None, 1]
    assert len({e.details["call_id"] for e in decisions}) == 1
    assert all(e.decision == "allow" for e in decisions)


async def test_modern_client_without_sampling_gets_32021(tmp_path: Path) -> None:
    async with (
        running_guard(_settings(tmp_path)) as guard,
        http_front(guard) as url,
        http_client(url, mode="2026-07-28") as client,
    ):
        with pytest.raises(MCPError) as e:
            await client.call_tool("rec__sample", {"prompt": "hi"})
        assert e.value.error.code == types.MISSING_REQUIRED_CLIENT_CAPABILITY
        assert not guard.bridge.calls


async def test_a_question_is_refused_alike_with_and_without_the_bridge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that declared nothing it could answer is served without the bridge (its request's channel refuses
    the upstream's question); one that declared elicitation is bridged (a round refuses it). Same refusal."""
    started: list[str] = []
    real_start = InputRequiredBridge._start

    def counting_start(self: InputRequiredBridge, call: CallContext, run: Any) -> Any:
        started.append(call.target)
        return real_start(self, call, run)

    monkeypatch.setattr(InputRequiredBridge, "_start", counting_start)

    async def on_elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        raise AssertionError("not asked")

    errors: list[types.ErrorData] = []
    async with running_guard(_settings(tmp_path)) as guard, http_front(guard) as url:
        for callbacks in ({}, {"elicitation_callback": on_elicit}):
            async with http_client(url, mode="2026-07-28", **callbacks) as client:
                with pytest.raises(MCPError) as e:
                    await client.call_tool("rec__sample", {"prompt": "hi"})
                errors.append(e.value.error)
        assert not guard.bridge.calls
    assert started == ["sample"]  # only the client that declared elicitation was bridged
    bare, bridged = errors
    assert bare.code == bridged.code == types.MISSING_REQUIRED_CLIENT_CAPABILITY
    assert (bare.message, bare.data) == (bridged.message, bridged.data)


CONFORMANCE_FIXTURE = str(Path(__file__).resolve().parents[1] / "conformance" / "conformance_fixture.py")


def _fixture_settings(protocol: str = "auto") -> Settings:
    up = {
        "protocol": protocol,
        "command": sys.executable,
        "args": [CONFORMANCE_FIXTURE, "--transport", "stdio"],
        "namespace": False,
        "forward_roots": True,
        "timeout_s": 10.0,
        "startup_timeout_s": 15.0,
    }
    settings: Settings = make_settings({"conf": up}, server={"require_auth": False})
    return settings


class Answers:
    """A client that answers every kind of question and records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def elicit(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.asked.append("elicit")
        return types.ElicitResult(action="accept", content={"name": "Ada", "color": "teal"})

    async def sample(self, context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.asked.append("sample")
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="Paris"), model="scripted"
        )

    async def roots(self, context: Any) -> types.ListRootsResult:
        self.asked.append("roots")
        return types.ListRootsResult(roots=[types.Root.model_validate({"uri": "file:///work", "name": "work"})])

    def callbacks(self) -> dict[str, Any]:
        return {
            "elicitation_callback": self.elicit,
            "sampling_callback": self.sample,
            "list_roots_callback": self.roots,
        }


@pytest.mark.parametrize("upstream", ["2025-11-25", "2026-07-28"])
@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_roots_sampling_and_elicitation_reach_the_client_in_both_eras(mode: str, upstream: str) -> None:
    # Legacy: forwarded as server→client requests on the call's stream. 2026-07-28: InputRequiredResult rounds,
    # driven by the SDK client's own retry loop. Either way the upstream gets its answers: as answers to its
    # own requests (handshake era), or as the inputResponses of mcp-guard's retries (2026-07-28 era).
    answers = Answers()
    async with (
        running_guard(_fixture_settings(upstream)) as guard,
        http_front(guard) as url,
        http_client(url, mode=mode, **answers.callbacks()) as client,
    ):
        r = await client.call_tool("test_input_required_result_list_roots", {})
        assert text_of(r) == "Client exposed 1 root(s): file:///work"
        r = await client.call_tool("test_input_required_result_multiple_inputs", {})
        assert text_of(r) == "All inputs received."
        r = await client.call_tool("test_input_required_result_multi_round", {})
        assert text_of(r) == "Ada likes teal."
        p = await client.get_prompt("test_input_required_result_prompt", {})
        assert isinstance(p.messages[0].content, types.TextContent)
        assert p.messages[0].content.text.startswith("Use the following context:")
        assert answers.asked == ["roots", "elicit", "sample", "roots", "elicit", "elicit", "elicit"]
        assert not guard.bridge.calls


@pytest.mark.parametrize(("upstream", "key"), [("2025-11-25", "elicitation-1"), ("2026-07-28", "user_name")])
async def test_a_2026_upstreams_own_keys_reach_the_client_and_its_state_stays_with_mcp_guard(
    upstream: str, key: str
) -> None:
    answers, sink = Answers(), RecordingSink()
    async with (
        running_guard(_fixture_settings(upstream), sink=sink) as guard,
        http_front(guard) as url,
        http_client(url, mode="2026-07-28", **answers.callbacks()) as client,
    ):
        assert guard.registry.connections["conf"].protocol_version == upstream
        [start] = [e for e in sink.events if e.kind is EventKind.UPSTREAM_START]
        assert start.details is not None and start.details["protocol_version"] == upstream
        assert start.details["upstream_protocol"] == ("stateless" if upstream == "2026-07-28" else "handshake")
        first = await client.session.call_tool("test_input_required_result_elicitation", {}, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult)
        assert list(first.input_requests or {}) == [key]
        assert first.request_state is not None and first.request_state.startswith("mg1.")  # mcp-guard's own
        answer = types.ElicitResult(action="accept", content={"name": "Ada"})
        done = await client.session.call_tool(
            "test_input_required_result_elicitation",
            {},
            input_responses={key: answer},
            request_state=first.request_state,
            allow_input_required=True,
        )
        assert isinstance(done, types.CallToolResult) and text_of(done) == "Hello, Ada!"
        # One logical call, one call id: its admission, one re-decision on the answered round (the bridge's
        # and the upstream retry's are the same answers, decided once), one outcome row.
        rows = [e for e in sink.events if e.tool == "test_input_required_result_elicitation"]
        assert [e.kind for e in rows] == [EventKind.CALL_DECISION, EventKind.CALL_DECISION, EventKind.CALL_RESULT]
        assert len({e.details["call_id"] for e in rows if e.details}) == 1
        assert rows[1].details is not None and rows[1].details["input_round"] == 1
        era = "stateless" if upstream == "2026-07-28" else "handshake"
        assert [(e.details or {}).get("upstream_protocol") for e in rows] == [era, era, era]
        asked = json.loads(rows[1].details["policy"]["input_json"])
        assert asked["input_responses"] == {key: {"action": "accept", "content": {"name": "Ada"}}}


async def test_a_2026_upstream_sees_the_clients_own_capabilities() -> None:
    # The upstream itself refuses a client that did not declare sampling (sep-2575), and serves one that did.
    async with running_guard(_fixture_settings("2026-07-28")) as guard, http_front(guard) as url:
        async with http_client(url, mode="2026-07-28") as bare:
            with pytest.raises(MCPError) as e:
                await bare.call_tool("test_missing_capability", {})
            assert e.value.error.code == types.MISSING_REQUIRED_CLIENT_CAPABILITY
        async with http_client(url, mode="2026-07-28", **Answers().callbacks()) as able:
            r = await able.call_tool("test_missing_capability", {})
            assert text_of(r) == "Client declared the sampling capability."


NO_MALLORY = """package t
import rego.v1

# The names a client typed into the forms an upstream asked for during the call (input.input_responses).
named contains name if {
	some response in input.input_responses
	response.action == "accept"
	name := response.content.name
}

default decision := {"allow": true}

decision := {"allow": false, "reasons": ["Mallory may not be greeted"]} if "Mallory" in named
"""


class Mallory(Answers):
    async def elicit(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.asked.append("elicit")
        return types.ElicitResult(action="accept", content={"name": "Mallory"})


@pytest.mark.parametrize(
    ("mode", "upstream"), [("2026-07-28", "2025-11-25"), ("2026-07-28", "2026-07-28"), ("legacy", "2026-07-28")]
)
async def test_a_rule_on_the_clients_answer_denies_the_call_before_the_answer_goes_upstream(
    tmp_path: Path, mode: str, upstream: str
) -> None:
    # 2026 client: its retry's inputResponses are put to the policy (the bridge); 2026 upstream: mcp-guard's retry
    # is (Forward). Either way the rule reads input.input_responses, and its deny is the call's answer and outcome.
    (tmp_path / "t.rego").write_text(NO_MALLORY)
    engine = EmbeddedEngine(load_bundle(tmp_path), decision="t/decision", timeout_ms=5000)
    sink = RecordingSink()
    async with (
        running_guard(_fixture_settings(upstream), engine=engine, sink=sink) as guard,
        http_front(guard) as url,
    ):
        async with http_client(url, mode=mode, **Answers().callbacks()) as client:
            r = await client.call_tool("test_input_required_result_elicitation", {})
            assert text_of(r) == "Hello, Ada!"
        async with http_client(url, mode=mode, **Mallory().callbacks()) as client:
            r = await client.call_tool("test_input_required_result_elicitation", {})
            assert r.is_error and "Mallory may not be greeted" in text_of(r)
        assert not guard.bridge.calls
    rows = [e for e in sink.events if e.tool == "test_input_required_result_elicitation"]
    allowed, denied = rows[:3], rows[3:]
    assert [(e.kind, e.decision) for e in allowed] == [
        (EventKind.CALL_DECISION, "allow"),
        (EventKind.CALL_DECISION, "allow"),
        (EventKind.CALL_RESULT, None),
    ]
    assert [(e.kind, e.decision) for e in denied] == [
        (EventKind.CALL_DECISION, "allow"),  # admitted: nothing was answered yet
        (EventKind.CALL_DECISION, "deny"),  # the outcome: the policy refused the answer
    ]
    assert denied[1].reasons == ("Mallory may not be greeted",) and denied[1].details is not None
    assert denied[1].details["input_round"] == 1 and denied[1].details["call_id"] == denied[0].details["call_id"]
