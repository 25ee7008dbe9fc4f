"""Child process for the SIGKILL test: many concurrent record() calls, each seq printed once committed.

Usage: python audit_durability_child.py DB CONCURRENCY
Writes one line "<seq>" to stdout for every record() that returned, until killed.
"""

from __future__ import annotations

import logging
import os
import sys

import anyio
import structlog

from mcp_guard.audit import open_sqlite_sink
from mcp_guard.types import AuditEvent


async def main(path: str, concurrency: int) -> None:
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

        async with anyio.create_task_group() as tg:
            for worker in range(concurrency):
                tg.start_soon(recorder, worker)


if __name__ == "__main__":
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    anyio.run(main, sys.argv[1], int(sys.argv[2]))
