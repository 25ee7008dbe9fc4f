"""mcp_guard.telemetry: which exporter the standard variables choose, and one-line errors for what it cannot do."""

from __future__ import annotations

import re

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from mcp_guard.errors import ConfigError
from mcp_guard.settings import parse_settings
from mcp_guard.telemetry import _exporter, open_tracing

SETTINGS = parse_settings({"server": {"name": "edge-guard"}, "telemetry": {"traces": True}}, source="g.toml")


def test_the_variables_choose_the_exporter() -> None:
    assert isinstance(_exporter(SETTINGS, {}), OTLPSpanExporter)  # the default
    assert isinstance(_exporter(SETTINGS, {"OTEL_TRACES_EXPORTER": "otlp"}), OTLPSpanExporter)
    assert isinstance(_exporter(SETTINGS, {"OTEL_TRACES_EXPORTER": "console"}), ConsoleSpanExporter)
    # traces = true in the file while the variable says none: the file wins, with the default exporter.
    assert isinstance(_exporter(SETTINGS, {"OTEL_TRACES_EXPORTER": "none"}), OTLPSpanExporter)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"OTEL_TRACES_EXPORTER": "zipkin"},
            "OTEL_TRACES_EXPORTER='zipkin': mcp-guard exports traces with otlp or",
        ),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL='grpc'"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "speaks http/protobuf"),
    ],
)
def test_what_it_cannot_do_is_a_one_line_config_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _exporter(SETTINGS, env)


def test_the_service_is_named_after_the_server_unless_the_variable_says_otherwise() -> None:
    with open_tracing(SETTINGS, env={"OTEL_TRACES_EXPORTER": "console"}) as provider:
        assert provider is not None
        assert provider.resource.attributes["service.name"] == "edge-guard"
        assert provider.resource.attributes["service.version"]
