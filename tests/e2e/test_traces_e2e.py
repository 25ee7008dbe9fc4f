"""Traces from a real ``mcp-guard run --transport http`` process, exported by the OpenTelemetry SDK's OTLP/HTTP
exporter (configured only through the standard ``OTEL_*`` variables) to an OTLP/HTTP receiver.

No collector binary is installable here (no Debian or PyPI package ships one), so the receiver is written
below: a plain HTTP server that accepts ``POST /v1/traces`` and decodes each body with the OTLP protobuf
schema (``opentelemetry-proto``'s ``ExportTraceServiceRequest``) — what a collector does on that path. It
answers what the protocol says (200 with an empty ``ExportTraceServiceResponse``); nothing is faked on the
exporter's side, which is the unmodified SDK in the proxy process.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from e2e_support import API_KEY, POLL_S, http_guard, recorder, write_config
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from http_harness import http_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


class Receiver:
    """Spans received on ``/v1/traces``, decoded: one dict per span with its resource's attributes."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def add(self, request: ExportTraceServiceRequest) -> None:
        with self.lock:
            for rs in request.resource_spans:
                resource = {a.key: _value(a.value) for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.spans.append(
                            {
                                "name": s.name,
                                "trace_id": s.trace_id.hex(),
                                "span_id": s.span_id.hex(),
                                "parent_span_id": s.parent_span_id.hex(),
                                "kind": s.kind,
                                "attributes": {a.key: _value(a.value) for a in s.attributes},
                                "resource": resource,
                                "scope": ss.scope.name,
                            }
                        )

    def named(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.spans if s["name"] == name]


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, which) if which else None


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    received = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_error(404)
                return
            received.add(ExportTraceServiceRequest.FromString(body))
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received, f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    finally:
        server.shutdown()
        server.server_close()


async def test_spans_reach_an_otlp_receiver_with_the_clients_trace_and_the_decision(
    tmp_path: Path, receiver: tuple[Receiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    received, endpoint = receiver
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "guard-e2e")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export every 100 ms rather than 5 s
    cfg = write_config(tmp_path, {"rec": recorder(tmp_path / "rec.log")})
    with http_guard(cfg, tmp_path / "guard.log") as url:
        async with http_client(url, API_KEY) as client:
            meta: Any = {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"}
            result = await client.call_tool("rec__echo", {"text": "traced"}, meta=meta)
            assert not result.is_error
        with anyio.fail_after(30):
            # The call span ends last (it holds the others); each may come in its own export batch.
            while not (received.named("tools/call rec__echo") and received.named("forward rec")):  # noqa: ASYNC110
                await anyio.sleep(POLL_S)

    (call,) = received.named("tools/call rec__echo")
    assert call["trace_id"] == TRACE_ID and call["parent_span_id"] == CLIENT_SPAN
    assert call["resource"]["service.name"] == "guard-e2e" and call["scope"] == "mcp_guard"
    with sqlite3.connect(f"file:{tmp_path / 'audit.db'}?mode=ro", uri=True) as db:
        (decision_id,) = db.execute(
            "SELECT decision_id FROM audit_events WHERE kind = 'call.decision' AND tool = 'echo'"
        ).fetchone()
    assert call["attributes"]["mcp_guard.decision_id"] == decision_id
    assert call["attributes"]["mcp_guard.decision"] == "allow"

    (forward,) = received.named("forward rec")
    assert forward["trace_id"] == TRACE_ID
    # The upstream got the forward span's context in its request's _meta.
    (logged,) = [json.loads(line) for line in (tmp_path / "rec.log").read_text().splitlines()]
    assert logged["params"]["_meta"]["traceparent"] == f"00-{TRACE_ID}-{forward['span_id']}-01"
    assert {s["name"] for s in received.spans} >= {"Observe", "Authorize", "RecordDecision", "Redact"}
