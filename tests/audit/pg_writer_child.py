"""Child process for the PostgreSQL tests: concurrent record() calls on one DSN, each seq printed once committed.

Usage: python pg_writer_child.py DSN CONCURRENCY LIMIT TAG
Writes one line "<seq>" to stdout for every record() that returned; stops after LIMIT events
(0: until killed). Every event's principal is TAG, so the parent can tell the writers apart.
"""

from __future__ import annotations

import logging
import os
import sys

import anyio
import structlog

from mcp_guard.audit import AuditWriter
from mcp_guard.audit.postgres import open_postgres
from mcp_guard.types import AuditEvent


async def main(dsn: str, concurrency: int, limit: int, tag: str) -> None:
    left = limit or -1
    async with open_postgres(dsn) as backend, AuditWriter.running(backend) as store:

        async def recorder(worker: int) -> None:
            nonlocal left
            n = 0
            while left != 0:
                left -= 1
                n += 1
                seq = await store.record(
                    AuditEvent(
                        kind="call.decision",
                        principal=tag,
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
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    anyio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
