"""Child process for the SIGKILL test: many concurrent record() calls, each seq printed once committed.

Usage: python audit_durability_child.py DB CONCURRENCY [yield]
Writes one line "<seq>" to stdout for every record() that returned, until killed. With ``yield`` each recorder
passes through the event loop after each record(), as a call does on its way to its upstream: a lone recorder's
rows are then committed by record() itself (the writer's inline path in the caller's task).
"""

from __future__ import annotations

import logging
import os
import sys

import anyio
import anyio.lowlevel
import structlog

from mcp_guard.audit import open_sqlite_sink
from mcp_guard.types import AuditEvent


async def main(path: str, concurrency: int, pause: bool) -> None:
    async with open_sqlite_sink(path) as store:

        async def recorder(worker: int) -> None:
            n = 0
            while True:
                n += 1
                seq = await store.record(
                    AuditEvent(
                        kind="call.decision",
                        principal=f"agent-{worker}",
                        server="tickets",
                        tool="create_ticket",
                        decision="allow",
                        reasons=("ok",),
                        arguments={"n": n},
                        details={"worker": worker},
                    )
                )
                os.write(1, f"{seq}\n".encode())  # unbuffered: printed means the parent can read it
                if pause:
                    await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            for worker in range(concurrency):
                tg.start_soon(recorder, worker)


if __name__ == "__main__":
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    anyio.run(main, sys.argv[1], int(sys.argv[2]), sys.argv[3:] == ["yield"])
