"""``mcp-guard audit migrate --to DSN``: copy an audit log into PostgreSQL with its chain re-verified.

::

    source (any AuditReader: the SQLite file)       target (PostgreSQL at DSN)
    ─────────────────────────────────────────       ──────────────────────────
    1. verify_chain(source): refuse a broken one     2. create/migrate the schema (open_postgres)
                                                     3. ONE transaction under the chain lock:
                                                        target head → where to start (see below)
    4. rows (after start, up to the verified head) ──►  COPY, values unchanged: seq, prev_hash, hash
                                                        target head == source head, else roll back
                                                     5. verify_chain(target) from a fresh reader

Rows are copied exactly as stored, so the target's chain is the source's chain: the same head
``(seq, hash)`` that ``audit verify`` printed for the file is what it prints for the database, and an
anchor taken before the move still holds.

**A non-empty target** is accepted only when it is a *prefix* of the source: its head ``(seq, hash)``
is a row of the source chain. That is an earlier or interrupted migrate of the same log, and only the
rows after it are copied (a second run with nothing new copies nothing). Anything else — another log,
proxies already writing there, a target ahead of the source — is refused and nothing is written:
merging two chains would forge one of them. Migrate into an empty database or schema (the DSN's
default schema: ``?options=-csearch_path%3Dname``) instead.

Every refusal is an :class:`~mcp_guard.errors.AuditError` with a one-line message (the CLI exits 1),
and it leaves the target as it was: the copy is one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import anyio
import psycopg

from mcp_guard.audit import schema
from mcp_guard.audit.chain import ChainHead
from mcp_guard.audit.postgres import chain_lock_sql, connect_args, open_postgres, open_postgres_reader, redact_dsn
from mcp_guard.audit.reader import AuditReader, Filters
from mcp_guard.audit.verify import verify_chain
from mcp_guard.errors import AuditError

__all__ = ["MigrateResult", "migrate_log"]

_COPY = f"COPY audit_events ({', '.join(schema.COLUMNS)}) FROM STDIN"
_TEXT_COLUMNS = tuple(i for i, c in enumerate(schema.COLUMNS) if c not in ("seq", "duration_ms"))


@dataclass(frozen=True, slots=True)
class MigrateResult:
    """What a migrate did: rows copied, rows the target already held, and the shared head."""

    source: str
    target: str
    copied: int
    already: int  # rows the target held before (a prefix of the source)
    head: ChainHead | None  # the head of both logs afterwards (None: both empty)


def migrate_log(source: AuditReader, dsn: str, *, timeout: float = 10.0) -> MigrateResult:
    """Copy ``source``'s rows into the PostgreSQL audit log at ``dsn`` (see the module docstring).

    ``timeout`` (s) bounds connecting and waiting for the chain lock. Raises :class:`AuditError`
    (one line, nothing written) if the source chain is broken, the target holds another chain, or
    either database cannot be used.
    """
    target = redact_dsn(dsn)
    checked = verify_chain(source)
    if not checked.ok:
        raise AuditError(
            f"{source.location}: source chain broken at seq {checked.bad_seq}: {checked.problem}; nothing copied"
        )
    _prepare_schema(dsn, timeout)
    head = ChainHead(checked.head_seq, str(checked.head_hash)) if checked.head_seq is not None else None
    try:
        copied, already = _copy(source, dsn, head, timeout)
    except psycopg.Error as e:
        raise AuditError(f"{target}: copy failed, nothing written: {' '.join(str(e).split())}") from None
    with open_postgres_reader(dsn, timeout=timeout) as reader:
        after = verify_chain(reader)
    after_head = ChainHead(after.head_seq, str(after.head_hash)) if after.head_seq is not None else None
    if not after.ok:
        raise AuditError(f"{target}: the copied chain does not verify at seq {after.bad_seq}: {after.problem}")
    if after_head != head:  # someone appended between the commit and this check
        raise AuditError(f"{target}: target head {after_head} differs from the source head {head} after the copy")
    return MigrateResult(source=source.location, target=target, copied=copied, already=already, head=head)


def _prepare_schema(dsn: str, timeout: float) -> None:
    """Create or migrate the target's schema the way the proxy does (:func:`open_postgres`).

    In an event loop of its own, on a helper thread: the caller may already run one (a test, or an
    application embedding the command).
    """

    async def prepare() -> None:
        async with open_postgres(dsn, timeout=timeout):
            pass

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mcp-guard-migrate") as pool:
        pool.submit(anyio.run, prepare).result()


def _copy(source: AuditReader, dsn: str, head: ChainHead | None, timeout: float) -> tuple[int, int]:
    """One transaction under the chain lock: check the target is a prefix, COPY the rest, check the head."""
    target = redact_dsn(dsn)
    # Reader-style connection: connecting and the chain lock are bounded, a long COPY is not a hang.
    with psycopg.connect(**connect_args(dsn, timeout, writer=False)) as conn, conn.transaction():
        row = conn.execute("SELECT 'audit_events'::regclass::oid::bigint").fetchone()
        assert row is not None
        conn.execute(chain_lock_sql(int(row[0])))
        found = conn.execute("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
        start = 0 if found is None else _resume_at(source, ChainHead(int(found[0]), str(found[1])), head, target)
        if head is None or start >= head.seq:
            return 0, start
        copied = 0
        with conn.cursor().copy(_COPY) as copy:
            for stored in source.rows(Filters(after_seq=start, until_seq=head.seq)):
                copy.write_row(_checked(stored))
                copied += 1
        new = conn.execute("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
        if new is None or ChainHead(int(new[0]), str(new[1])) != head:
            raise AuditError(f"{target}: after the copy the head is {new}, not the source head {head}; rolled back")
        return copied, start


def _resume_at(source: AuditReader, found: ChainHead, head: ChainHead | None, target: str) -> int:
    """The seq to copy after, given the target's head ``found``: it must be a row of the source chain."""
    ours = _row_hash(source.rows(Filters(after_seq=found.seq - 1, until_seq=found.seq)))
    if head is None or found.seq > head.seq or ours != found.hash:
        raise AuditError(
            f"{target}: the target already holds a different audit chain (head seq={found.seq}); "
            "migrate into an empty database or schema"
        )
    return found.seq


def _row_hash(rows: Iterable[tuple[Any, ...]]) -> str | None:
    for row in rows:
        return str(row[-1])
    return None


def _checked(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """``row`` unchanged, or AuditError if PostgreSQL text cannot store it (a NUL character)."""
    for i in _TEXT_COLUMNS:
        value = row[i]
        if isinstance(value, str) and "\x00" in value:
            raise AuditError(
                f"source row {row[0]}: column {schema.COLUMNS[i]} holds a NUL character, which PostgreSQL "
                "text cannot store; nothing copied"
            )
    return row
