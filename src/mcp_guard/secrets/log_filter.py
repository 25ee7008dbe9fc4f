"""Stdlib ``logging`` records (the MCP SDK's, httpx's, uvicorn's) pass through the secrets scrubber too.

mcp-guard's own log lines are structlog events, scrubbed by ``mcp_guard.pipeline.redact.scrub_processor``.
Its dependencies log through the standard library, and their records quote what they were handed: the
SDK logs a response it could not parse (``logger.exception("Error parsing JSON response")`` with the
pydantic error, input included), httpx logs request URLs. :class:`ScrubbingFilter` rewrites a record
so that its message, its traceback text and its stack text hold no secret value or fragment of one and
no credential shape (:mod:`mcp_guard.secrets.shapes`).

Where it runs: a filter on a handler sees only that handler's records, and uvicorn configures handlers of
its own when the HTTP front starts. So :func:`install_log_filter` puts the filter in the one place every
record passes, the log-record factory (``logging.setLogRecordFactory``): a record is scrubbed when it is
made, before any logger, filter or handler sees it — and only records a logger's level lets through are
made at all. Installing again replaces the previous filter (a process may open several guards in turn).

A record whose message is clean is left exactly as it was (``msg`` and ``args`` untouched, so formatters
that read ``args``, like uvicorn's access formatter, keep working). Otherwise the arguments are scrubbed one
by one; if the message is still not clean then, it is replaced by its scrubbed text, without arguments.
Scrubbing never raises: a record that cannot be scrubbed loses its message instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from mcp_guard.secrets.redact import Scrubber
from mcp_guard.secrets.shapes import mask_text

__all__ = ["ScrubbingFilter", "install_log_filter", "uninstall_log_filter"]

_PLAIN = (int, float, bool, type(None))
_UNSCRUBBABLE = "[mcp-guard: log record withheld: it could not be scrubbed]"


class ScrubbingFilter(logging.Filter):
    """A filter that lets every record through, scrubbed in place (see the module docstring)."""

    def __init__(self, scrubber: Callable[[], Scrubber]) -> None:
        super().__init__()
        self._scrubber = scrubber  # read per record: the scrubber is replaced as secret values resolve

    def clean(self, text: str) -> str:
        """``text`` without secret values (or fragments) and with credential shapes masked."""
        return mask_text(self._scrubber().scrub_text(text))[0]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._scrub(record)
        except Exception:
            record.msg, record.args = _UNSCRUBBABLE, None
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True

    def _scrub(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.clean(message) != message:
            if isinstance(record.msg, str):
                record.msg = self.clean(record.msg)
            if isinstance(record.args, tuple):
                record.args = tuple(self._arg(a) for a in record.args)
            elif isinstance(record.args, dict):
                record.args = {k: self._arg(v) for k, v in record.args.items()}
            try:
                rendered = record.getMessage()
            except (TypeError, ValueError):
                rendered = None
            if rendered is None or self.clean(rendered) != rendered:
                record.msg, record.args = self.clean(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.clean(record.exc_text)
        if record.stack_info:
            record.stack_info = self.clean(record.stack_info)

    def _arg(self, value: Any) -> Any:
        if isinstance(value, _PLAIN):
            return value
        text = str(value)
        cleaned = self.clean(text)
        return value if cleaned == text else cleaned


_state: dict[str, Any] = {"factory": None, "filter": None}


def install_log_filter(scrubber: Callable[[], Scrubber]) -> ScrubbingFilter:
    """Scrub every stdlib log record from now on (replacing a filter installed before)."""
    flt = ScrubbingFilter(scrubber)
    if _state["factory"] is None:
        _state["factory"] = logging.getLogRecordFactory()
    make = _state["factory"]

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = make(*args, **kwargs)
        flt.filter(record)
        return record

    _state["filter"] = flt
    logging.setLogRecordFactory(factory)
    return flt


def uninstall_log_filter() -> None:
    """Back to the record factory that was in place before :func:`install_log_filter` (for tests)."""
    if _state["factory"] is not None:
        logging.setLogRecordFactory(_state["factory"])
    _state["factory"] = _state["filter"] = None
