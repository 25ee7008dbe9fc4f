"""The recorder test upstream (tests/fixtures/recorder.py) served over streamable HTTP, for the benches.

    python bench/http_upstream.py --port 0        # logs {"event": "upstream.listening", "url": …} to stderr

Same tools as the stdio recorder (echo, add, …), served by the SDK's streamable-HTTP app on uvicorn
(stateful sessions, SSE responses — the SDK defaults), so the HTTP benches call the very same upstream
code directly and through mcp-guard.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Any

import uvicorn

RECORDER = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "recorder.py"


def _recorder() -> Any:
    spec = importlib.util.spec_from_file_location("bench_recorder_fixture", RECORDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def serve(host: str, port: int, json_response: bool) -> None:
    rec_mod = _recorder()
    rec = rec_mod.Recorder(many=0, page_size=50, log_path=None, logged=set())
    server = rec_mod.build_server(rec, "recorder-http")
    app = server.streamable_http_app(host=host, json_response=json_response, session_idle_timeout=3600)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
    userver = uvicorn.Server(config)
    task = asyncio.create_task(userver.serve())
    while not userver.started:
        if task.done():
            task.result()
            return
        await asyncio.sleep(0.01)
    bound = port
    for srv in userver.servers:
        for sock in srv.sockets:
            bound = sock.getsockname()[1]
    print(json.dumps({"event": "upstream.listening", "url": f"http://{host}:{bound}/mcp"}), file=sys.stderr, flush=True)
    await task


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--json-response", action="store_true", help="answer with JSON bodies instead of SSE")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.json_response))


if __name__ == "__main__":
    main()
