"""structlog set-up: everything to stderr (stdout is the stdio transport), JSON unless a person watches.

Extra processors (e.g. the secrets scrubber) are installed with :func:`add_processor` so that every
log line passes through them before rendering.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

__all__ = ["add_processor", "configure_logging"]

_extra: list[Any] = []


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written, not when logging was configured: a caller that
    swaps stderr (a test capturing output, a tool redirecting it) never leaves the log writing to a
    closed file."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _build(level: int, json_output: bool) -> None:
    renderer: Any = structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *_extra,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]  # write+flush suffice
        cache_logger_on_first_use=False,
    )


_state: dict[str, Any] = {"level": logging.INFO, "json": True}


def configure_logging(level: str = "info", json_output: bool | None = None) -> None:
    """Log at ``level`` to stderr; ``json_output`` defaults to JSON unless stderr is a TTY."""
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    js = (not sys.stderr.isatty()) if json_output is None else json_output
    _state.update(level=lvl, json=js)
    # The SDK and its dependencies log through stdlib logging: keep them on stderr too, quieter.
    logging.basicConfig(stream=sys.stderr, level=max(lvl, logging.WARNING), format="%(name)s: %(message)s")
    _build(lvl, js)


def add_processor(processor: Any) -> None:
    """Run ``processor`` on every event dict before it is rendered (e.g. to scrub secrets)."""
    _extra.append(processor)
    _build(_state["level"], _state["json"])
