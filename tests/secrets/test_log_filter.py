"""Stdlib log records (the SDK's, httpx's, uvicorn's) are scrubbed when they are made, whatever handler
writes them."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from mcp_guard.secrets.log_filter import ScrubbingFilter, install_log_filter, uninstall_log_filter
from mcp_guard.secrets.redact import Scrubber, marker

TOKEN = "tk_live_9f8e7d6c5b4a39281706f5e4d3c2b1a0"
SCRUBBER = Scrubber([("token", TOKEN)])


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """A handler on a logger of its own (like uvicorn's), added *after* the filter was installed."""
    install_log_filter(lambda: SCRUBBER)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logger = logging.getLogger("mcp.client.streamable_http.test")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        uninstall_log_filter()


def test_a_message_formatted_from_args_is_scrubbed(captured: io.StringIO) -> None:
    logging.getLogger("mcp.client.streamable_http.test").warning("Received session ID: %s", f"id-{TOKEN}")
    assert TOKEN not in captured.getvalue() and marker("token") in captured.getvalue()


def test_the_sdks_parse_error_with_its_traceback_is_scrubbed(captured: io.StringIO) -> None:
    log = logging.getLogger("mcp.client.streamable_http.test")
    try:
        raise ValueError(f'1 validation error [input_value=\'{{"result": "...{TOKEN[-20:]}"}}\']')
    except ValueError:
        log.exception("Error parsing JSON response")
    text = captured.getvalue()
    assert "Error parsing JSON response" in text and "Traceback" in text and "ValueError" in text
    assert TOKEN[-20:] not in text and marker("token") in text


def test_credential_shapes_are_masked_like_in_our_own_log(captured: io.StringIO) -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    logging.getLogger("mcp.client.streamable_http.test").error("HTTP Request: GET https://x/?t=%s", jwt)
    assert jwt not in captured.getvalue()


def test_a_clean_record_is_left_as_it_was() -> None:
    """uvicorn's access formatter reads ``record.args``: a record with nothing to scrub keeps them."""
    record = logging.LogRecord("uvicorn.access", logging.INFO, "f", 1, '%s - "%s %s"', ("1.2.3.4", "GET", "/"), None)
    ScrubbingFilter(lambda: SCRUBBER).filter(record)
    assert record.args == ("1.2.3.4", "GET", "/") and record.msg == '%s - "%s %s"'


def test_args_are_scrubbed_one_by_one_when_that_is_enough() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "f", 1, '%s - "%s %s"', ("1.2.3.4", "GET", f"/?k={TOKEN}"), None
    )
    ScrubbingFilter(lambda: SCRUBBER).filter(record)
    assert record.args == ("1.2.3.4", "GET", f"/?k={marker('token')}")


def test_a_record_that_cannot_be_scrubbed_loses_its_message() -> None:
    def broken() -> Scrubber:
        raise RuntimeError("no scrubber")

    record = logging.LogRecord("x", logging.ERROR, "f", 1, "value %s", (TOKEN,), None)
    assert ScrubbingFilter(broken).filter(record) is True
    assert TOKEN not in record.getMessage()


def test_installing_again_replaces_the_filter_and_uninstalling_restores_the_factory() -> None:
    before = logging.getLogRecordFactory()
    install_log_filter(lambda: Scrubber())
    install_log_filter(lambda: SCRUBBER)
    record = logging.getLogRecordFactory()("x", logging.INFO, "f", 1, TOKEN, None, None)
    assert record.getMessage() == marker("token")
    uninstall_log_filter()
    assert logging.getLogRecordFactory() is before
