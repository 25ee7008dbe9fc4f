"""The redact stage, and the log processor: injected secret values never flow back out.

:class:`Redact` sits next to the upstream (innermost stage). Whatever comes back — a tool result
(text blocks, ``structuredContent``, embedded resources, images' base64 data), resource contents,
prompt messages, or an error (``message`` and ``data``) — is scrubbed of every secret value the
:class:`~mcp_guard.secrets.manager.SecretManager` has resolved, in every encoding and also when
split across consecutive content blocks (see :mod:`mcp_guard.secrets.redact`). Every upstream's
output is scrubbed of *every* secret, not only its own. Results are not shape-masked: a tool may
legitimately return a token the agent asked for; only values mcp-guard injected are withheld.

:func:`scrub_processor` is a structlog processor doing the same to every value of a log event and,
in addition, masking well-known credential shapes (:mod:`mcp_guard.secrets.shapes`). Install it
after ``format_exc_info``/``StackInfoRenderer`` and before the renderer; if it sees an ``exc_info``
that is not rendered yet it renders it itself so the traceback text is scrubbed too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Protocol

import mcp_types as types
import structlog

from mcp_guard.frozen import evolve
from mcp_guard.pipeline.context import CallContext, CallNext, Outcome
from mcp_guard.secrets.redact import Scrubber
from mcp_guard.secrets.shapes import mask, mask_text

__all__ = ["Redact", "ScrubberSource", "redact_outcome", "scrub_error", "scrub_processor"]


class ScrubberSource(Protocol):
    """Anything with a current :class:`Scrubber` (the SecretManager)."""

    @property
    def scrubber(self) -> Scrubber: ...


def scrub_error(error: types.ErrorData, scrubber: Scrubber) -> types.ErrorData:
    """``error`` with its message and data scrubbed (the same object if nothing changed)."""
    if not scrubber:
        return error
    message = scrubber.scrub_text(error.message)
    data = scrubber.scrub_obj(error.data) if error.data is not None else None
    if message == error.message and data == error.data:
        return error
    return error.model_copy(update={"message": message, "data": data})


def redact_outcome(outcome: Outcome, scrubber: Scrubber) -> Outcome:
    """``outcome`` with its result and error scrubbed."""
    if not scrubber:
        return outcome
    result = scrubber.scrub_obj(outcome.result) if outcome.result is not None else None
    error = scrub_error(outcome.error, scrubber) if outcome.error is not None else None
    if result is outcome.result and error is outcome.error:
        return outcome
    return evolve(outcome, result=result, error=error)


class Redact:
    """Inside ``call_next``: only the upstream (``Forward``); what it returns is scrubbed on the way out."""

    def __init__(self, secrets: ScrubberSource) -> None:
        self._secrets = secrets

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Outcome:
        outcome = await call_next(ctx)
        # Read the scrubber after the call: a secret resolved meanwhile (an upstream restart
        # during a long call) is covered too.
        return redact_outcome(outcome, self._secrets.scrubber)


_PLAIN = (str, int, float, bool, type(None), Mapping, list, tuple)

EventDict = MutableMapping[str, Any]
Processor = Callable[[Any, str, EventDict], EventDict]


def scrub_processor(secrets: ScrubberSource) -> Processor:
    """A structlog processor removing secret values and masking credential shapes in every field."""

    def _stringify(value: Any, scrubber: Scrubber) -> Any:
        if isinstance(value, _PLAIN):
            return value
        text = str(value)  # exceptions, paths, models…: keep the object unless its text needs masking
        if scrubber.scrub_text(text) != text or mask_text(text)[1]:
            return text
        return value

    def processor(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
        scrubber = secrets.scrubber
        if event_dict.get("exc_info") and "exception" not in event_dict:
            event_dict = structlog.processors.format_exc_info(logger, method_name, event_dict)
        plain = {k: _stringify(v, scrubber) for k, v in event_dict.items()}
        masked, _kinds = mask(scrubber.scrub_obj(plain))
        event_dict.clear()
        event_dict.update(masked)
        return event_dict

    return processor
