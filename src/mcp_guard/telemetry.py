"""OpenTelemetry traces: whether they are on, and the tracer provider when they are (docs/architecture.md §9).

Off by default, and then free: nothing here imports OpenTelemetry unless traces are on, the pipeline has
no tracing stage (:func:`mcp_guard.pipeline.build.pipeline_stages` adds :mod:`mcp_guard.pipeline.trace`
only when handed a tracer), so a call pays nothing for the feature.

On when ``[telemetry] traces = true``, or when the standard ``OTEL_TRACES_EXPORTER`` variable names an
exporter (anything but ``none``); ``OTEL_SDK_DISABLED=true`` turns them off whatever else says. What is
exported where is the standard ``OTEL_*`` variables' business, read by the SDK itself:
``OTEL_TRACES_EXPORTER`` (``otlp``, the default, or ``console``), ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``…_HEADERS``, ``…_TIMEOUT``, ``OTEL_SERVICE_NAME`` (default: the
``[server] name``), ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` / ``…_ARG``, ``OTEL_BSP_*``. The OTLP
exporter speaks HTTP/protobuf (``OTEL_EXPORTER_OTLP_PROTOCOL`` may be unset or ``http/protobuf``).

Spans are exported by a batch processor off the call path; :func:`open_tracing` flushes them at exit.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from mcp_guard.errors import ConfigError
from mcp_guard.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["INSTRUMENTATION", "open_tracing", "traces_enabled"]

INSTRUMENTATION = "mcp_guard"  # the tracer's (instrumentation scope's) name
_EXPORTERS = ("otlp", "console")
_FLUSH_TIMEOUT_MS = 5000


def traces_enabled(settings: Settings, env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process traces: ``[telemetry] traces`` or ``OTEL_TRACES_EXPORTER``, unless the SDK is
    disabled by ``OTEL_SDK_DISABLED``."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    return settings.telemetry.traces or exporter not in ("", "none")


@contextlib.contextmanager
def open_tracing(
    settings: Settings, *, exporter: SpanExporter | None = None, env: Mapping[str, str] = os.environ
) -> Iterator[TracerProvider | None]:
    """The tracer provider while the block runs (None when traces are off), shut down — spans flushed —
    at exit. ``exporter`` replaces the one the variables choose (tests hand in an in-memory exporter, which
    is exported to synchronously). Raises :class:`ConfigError` naming the key or variable that is wrong."""
    if not traces_enabled(settings, env) and exporter is None:
        yield None
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        raise ConfigError(
            "traces are on but OpenTelemetry is not installed: pip install 'mcp-guard[otel]'",
            file=settings.source,
            key="telemetry.traces",
        ) from None
    from mcp_guard import __version__

    attributes: dict[str, Any] = {"service.version": __version__}
    if not env.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = settings.server.name
    provider = TracerProvider(resource=Resource.create(attributes))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        provider.add_span_processor(BatchSpanProcessor(_exporter(settings, env)))
    try:
        yield provider
    finally:
        provider.force_flush(_FLUSH_TIMEOUT_MS)
        provider.shutdown()


def _exporter(settings: Settings, env: Mapping[str, str]) -> SpanExporter:
    """The exporter ``OTEL_TRACES_EXPORTER`` names (default ``otlp``)."""
    name = env.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    if name == "none":
        name = "otlp"  # [telemetry] traces = true with the variable saying none: the config file wins
    if name not in _EXPORTERS:
        raise ConfigError(f"OTEL_TRACES_EXPORTER={name!r}: mcp-guard exports traces with {' or '.join(_EXPORTERS)}")
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stderr)  # stdout is the stdio transport's
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    )
    if protocol.strip().lower() != "http/protobuf":
        raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: mcp-guard's OTLP exporter speaks http/protobuf")
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ConfigError(
            "OTLP trace export needs opentelemetry-exporter-otlp-proto-http: pip install 'mcp-guard[otel]'",
            file=settings.source,
            key="telemetry.traces",
        ) from None
    return OTLPSpanExporter()
