"""The client channel: how upstream→client traffic reaches the client whose call caused it.

An upstream on the 2025-11-25 handshake may, while one of our calls to it is in flight, ask the client
something (``sampling/createMessage``, ``elicitation/create``, ``roots/list``), send it a log message,
report progress, or say that a subscribed resource changed. That traffic takes one path::

    UpstreamConnection ──ToClient message──► Registry.to_client ──scrub, attribute──► ClientChannel ──► client

* the connection turns everything an upstream sends towards a client into one :data:`ToClient` message
  (:class:`Ask`, :class:`LogMessage`, :class:`Progress`, :class:`ResourceUpdated`) and hands it to one hook;
  for an :class:`Ask` it checks the client's answer with the matching :class:`ClientRequestType` (the one
  place answers are validated into SDK types and the one place their error texts are written);
* ``Registry.to_client`` is the choke point: every message is scrubbed of injected secret values there,
  once, by :func:`scrub_message` (every field of every kind, so a kind added later is scrubbed too), and
  only then attributed to the in-flight call it belongs to (never guessing across principals, see
  ``Registry._candidates``) and delivered;
* a :class:`ClientChannel` delivers it: on the handshake era as a request on the client's own request
  stream (``mcp_guard.frontend.sessions.RequestChannel``); on the 2026-07-28 era as a question of an
  ``InputRequiredResult`` round (``mcp_guard.frontend.input_required.BridgedCallChannel``), or, for a client
  that declared no capability to answer anything (:func:`answers_nothing`), refused at once with ``-32021``
  (:func:`capability_refusal`) by its request's ``RequestChannel``.

List-changed notifications carry nothing to the client but the fact (the catalogue they make the registry
fetch is scrubbed when it is merged).

This module sits below ``upstream`` and ``frontend`` (it imports neither), so both can name the seam.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar, cast

import mcp_types as types
import structlog
from pydantic import BaseModel, TypeAdapter, ValidationError

__all__ = [
    "ELICITATION",
    "NOTIFY_TIMEOUT_S",
    "REQUEST_TYPES",
    "ROOTS",
    "SAMPLING",
    "Ask",
    "ClientChannel",
    "ClientMethod",
    "ClientRequestType",
    "LogMessage",
    "Notice",
    "Progress",
    "ProgressRelay",
    "ResourceUpdated",
    "SendToClient",
    "ToClient",
    "answers_nothing",
    "capability_refusal",
    "log_locally",
    "missing_capability",
    "scrub_message",
]

log = structlog.get_logger("mcp_guard.channel")

NOTIFY_TIMEOUT_S = 5.0
"""How long a log or progress notification to a client may take: a slow or gone client never blocks the
upstream (or the call) that produced it for longer."""

_T = TypeVar("_T")


class ClientMethod(StrEnum):
    """The upstream→client requests mcp-guard relays (its upstream sessions declare these capabilities)."""

    SAMPLING = "sampling/createMessage"
    ELICITATION = "elicitation/create"
    ROOTS = "roots/list"


SendToClient = Callable[[ClientMethod, dict[str, Any]], Awaitable[dict[str, Any] | types.ErrorData]]
"""One upstream→client request on its way: ``(method, params)`` to the client's raw answer or an error."""

ProgressRelay = Callable[[float, float | None, str | None], Awaitable[None]]
"""Where the progress of one call goes: ``(progress, total, message)`` for the client that asked for it."""

_NOT_PAYLOAD = {"payload": False}  # field metadata: not something the upstream wrote (never scrubbed)


@dataclass(frozen=True, slots=True)
class Ask:
    """An upstream→client request (sampling, elicitation, roots): answered by the one client it belongs to."""

    method: ClientMethod
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LogMessage:
    """An upstream's log message (``notifications/message``)."""

    params: types.LoggingMessageNotificationParams


@dataclass(frozen=True, slots=True)
class Progress:
    """Progress an upstream reports on one of our calls, for the client that asked for progress on it."""

    progress: float
    total: float | None
    message: str | None
    relay: ProgressRelay = field(metadata=_NOT_PAYLOAD)


@dataclass(frozen=True, slots=True)
class ResourceUpdated:
    """A resource the upstream serves has changed (``notifications/resources/updated``)."""

    uri: str


Notice = LogMessage | Progress | ResourceUpdated
"""Upstream→client traffic that expects no answer."""
ToClient = Ask | Notice
"""Everything an upstream sends towards a client (see the module docstring)."""
_M = TypeVar("_M", bound=ToClient)


def scrub_message(message: _M, scrub_obj: Callable[[Any], Any]) -> _M:
    """``message`` with every field the upstream wrote passed through ``scrub_obj`` (one scrub per message)."""
    changes = {f.name: scrub_obj(getattr(message, f.name)) for f in fields(message) if f.metadata.get("payload", True)}
    return replace(message, **changes)


class ClientChannel(Protocol):
    """The client a call came from, as upstream→client traffic sees it.

    What the registry needs to attribute traffic (``channel_id``, ``principal_id``, ``parked``) and to
    deliver it (``request``, ``notify_log``, ``progress``). Nothing here raises: a client that cannot be
    reached is an :class:`~mcp_types.ErrorData` for the upstream, or a notification dropped.
    """

    @property
    def channel_id(self) -> str:
        """What in-flight calls are counted by: the client session, or the one bridged call."""
        ...

    @property
    def principal_id(self) -> str:
        """Who the client is (attribution never crosses principals)."""
        ...

    @property
    def parked(self) -> bool:
        """True while no request of this client is being served (a bridged call between rounds)."""
        ...

    async def request(
        self, method: ClientMethod, params: dict[str, Any], *, key: str | None = None
    ) -> dict[str, Any] | types.ErrorData:
        """Ask the client; its raw answer, or an error to hand back to the upstream.

        ``key``: the upstream's own name for the question (a 2026-07-28 upstream's ``inputRequests`` key),
        kept where the client sees questions by key."""
        ...

    async def notify_log(self, params: types.LoggingMessageNotificationParams) -> None:
        """Relay an upstream's log message (bounded by :data:`NOTIFY_TIMEOUT_S`; dropped if undeliverable)."""
        ...

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        """Relay an upstream's progress on the call (bounded by :data:`NOTIFY_TIMEOUT_S`)."""
        ...


@dataclass(frozen=True)
class ClientRequestType(Generic[_T]):
    """One kind of upstream→client request: its method and what a valid answer is.

    ``ask`` is what an upstream session's callback runs: the request goes out as a plain dict through
    ``send`` (the registry, then a channel), and the answer comes back checked into SDK types.
    """

    method: ClientMethod
    noun: str  # for error texts: "client sent an invalid <noun> result"
    answer: TypeAdapter[_T]

    async def ask(self, send: SendToClient, params: BaseModel | None) -> _T | types.ErrorData:
        raw = await send(self.method, _dump(params))
        return self.parse(raw)

    def parse(self, raw: dict[str, Any] | types.ErrorData) -> _T | types.ErrorData:
        """The client's answer as an SDK result, or an ``INTERNAL_ERROR`` saying why it is not one."""
        if isinstance(raw, types.ErrorData):
            return raw
        try:
            return self.answer.validate_python(raw, by_name=False)
        except ValidationError as e:
            return self.invalid(e)

    def invalid(self, error: ValidationError) -> types.ErrorData:
        return types.ErrorData(code=types.INTERNAL_ERROR, message=f"client sent an invalid {self.noun} result: {error}")

    def normalize(self, raw: Any) -> dict[str, Any]:
        """A valid answer as a wire dict (raises ``ValidationError`` if it is not valid)."""
        if isinstance(raw, BaseModel):
            raw = raw.model_dump(by_alias=True, mode="json", exclude_none=True)
        checked = self.answer.validate_python(raw, by_name=False)
        wire: dict[str, Any] = self.answer.dump_python(checked, by_alias=True, mode="json", exclude_none=True)
        return wire


SAMPLING: ClientRequestType[types.CreateMessageResult | types.CreateMessageResultWithTools] = ClientRequestType(
    ClientMethod.SAMPLING,
    "sampling",
    TypeAdapter(cast(Any, types.CreateMessageResult | types.CreateMessageResultWithTools)),
)
ELICITATION: ClientRequestType[types.ElicitResult] = ClientRequestType(
    ClientMethod.ELICITATION, "elicit", TypeAdapter(types.ElicitResult)
)
ROOTS: ClientRequestType[types.ListRootsResult] = ClientRequestType(
    ClientMethod.ROOTS, "roots", TypeAdapter(types.ListRootsResult)
)
REQUEST_TYPES: dict[ClientMethod, ClientRequestType[Any]] = {t.method: t for t in (SAMPLING, ELICITATION, ROOTS)}


def missing_capability(
    method: str, params: dict[str, Any], caps: types.ClientCapabilities | None
) -> dict[str, Any] | None:
    """The ``requiredCapabilities`` a client lacks to answer ``method`` with ``params`` (None: it can).

    For every method it is not None when the client declared none of ``sampling``, ``elicitation`` and ``roots``
    (:func:`answers_nothing`)."""
    if method == "sampling/createMessage":
        sampling = caps.sampling if caps is not None else None
        if sampling is None:
            return {"sampling": {}}
        if (params.get("tools") or params.get("toolChoice")) and sampling.tools is None:
            return {"sampling": {"tools": {}}}
        if params.get("includeContext") not in (None, "none") and sampling.context is None:
            return {"sampling": {"context": {}}}
        return None
    if method == "elicitation/create":
        elicitation = caps.elicitation if caps is not None else None
        if elicitation is None:
            return {"elicitation": {}}
        if params.get("mode") == "url":
            return {"elicitation": {"url": {}}} if elicitation.url is None else None
        # An empty elicitation capability means form mode; one that names only url does not include it.
        if elicitation.form is None and elicitation.url is not None:
            return {"elicitation": {"form": {}}}
        return None
    if method == "roots/list":
        return {"roots": {}} if caps is None or caps.roots is None else None
    return {method: {}}


def answers_nothing(caps: types.ClientCapabilities | None) -> bool:
    """Whether a client with these capabilities can answer no question at all (:func:`missing_capability` is not
    None for any method and params): it declared none of ``sampling``, ``elicitation`` and ``roots``."""
    return caps is None or (caps.sampling is None and caps.elicitation is None and caps.roots is None)


def capability_refusal(method: str, missing: dict[str, Any]) -> types.ErrorData:
    """The answer an upstream gets for a question the client did not declare it can answer: ``-32021`` with the
    capability it lacks in ``data.requiredCapabilities`` (:func:`missing_capability`)."""
    return types.ErrorData(
        code=types.MISSING_REQUIRED_CLIENT_CAPABILITY,
        message=f"The client did not declare the capability {method} needs: "
        f"{json.dumps(missing, separators=(',', ':'))}",
        data={"requiredCapabilities": missing},
    )


def log_locally(params: types.LoggingMessageNotificationParams, **where: Any) -> None:
    """An upstream log message no client can be sent: kept in mcp-guard's own log only."""
    log.info("upstream.log", **where, level=params.level, logger=params.logger, data=str(params.data)[:2000])


def _dump(params: BaseModel | None) -> dict[str, Any]:
    if params is None:
        return {}
    dumped: dict[str, Any] = params.model_dump(by_alias=True, mode="json", exclude_none=True)
    return dumped
