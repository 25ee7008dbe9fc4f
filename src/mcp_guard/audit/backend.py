"""The writer's seam: what an audit database backend must do for the group-commit writer.

The writer (:mod:`mcp_guard.audit.writer`) owns everything about *when* rows are written — the
queue, batching, deadlines, failure bookkeeping. A backend owns *how*: one transaction per batch in
which the rows get their ``seq`` and their place in the hash chain::

    AuditWriter                                   AuditBackend (sqlite.py, postgres.py)
    ───────────                                   ──────────────────────────────────────────
    batch of RowBody ───── append(batch) ──────►  in ONE transaction: take the chain head,
    (values + hashed body,                        number and hash the rows (chain.chain_rows),
     serialised by the caller)                    insert them, commit; the head moves on commit
    row i gets seq first+i ◄── first seq ───────  or AuditError: nothing committed
    broken for good? ────────── problem() ──────► None, or why it can never write again

Why the backend, not the writer, numbers the rows: ``seq`` and ``prev_hash`` must come from the chain
head *as of the commit*. Another process may append to the same log, so only code inside the
transaction can know the head. A backend either serialises writers before it reads the head (a lock
held to the commit: PostgreSQL's ``pg_advisory_xact_lock``; docs/architecture.md §6, "seq is assigned
inside the chain lock") or writes optimistically from a cached head and, when the explicit ``seq`` collides with a
row it did not know about, re-reads the head and chains on from there (SQLite: one writer lock per
file makes the collision the only case). Either way no two rows share a ``seq`` and the chain never
forks.

Opening a backend is an async context manager of the backend's own module (``open_sqlite``,
``open_postgres``): it creates or migrates the schema, reads the head and runs any background work
(WAL checkpoints) until the block ends. The writer is entered inside that block, so the writer's
final flush happens while the backend is still open.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from mcp_guard.audit.chain import ChainHead, RowBody

__all__ = ["AuditBackend", "InlineAppend"]


class AuditBackend(Protocol):
    """An open audit database the writer appends to (see the module docstring for the contract)."""

    @property
    def location(self) -> str:
        """The database in messages: a file path, a DSN without its password."""
        ...

    async def read_head(self) -> ChainHead:
        """The newest committed row as the database has it now (``chain.GENESIS`` when empty)."""
        ...

    async def append(self, batch: Sequence[RowBody]) -> int:
        """Commit ``batch`` as consecutive rows in one transaction; return the first row's ``seq``.

        Rows are numbered and hashed (``chain.chain_rows``) from the chain head *inside* the
        transaction, so a row committed by another writer is chained on from, never forked.
        Raises :class:`~mcp_guard.errors.AuditError` (naming :attr:`location` and the cause) when
        the transaction did not commit; nothing of ``batch`` is then stored, and the backend stays
        usable unless :meth:`problem` says otherwise. Any other exception is a bug: the writer stops.
        """
        ...

    def problem(self) -> str | None:
        """Why this backend can never write again (its file was removed or replaced); else None.

        Cheap and synchronous: the writer asks before and after every transaction and on every
        health check. A transient failure (disk full, lock timeout) is not a problem here — it is an
        :meth:`append` error, and the next batch may succeed.
        """
        ...


@runtime_checkable
class InlineAppend(Protocol):
    """Optional for a backend: commit a batch on the event loop when that needs no waiting.

    The writer offers every batch to :meth:`append_now` first and falls back to
    :meth:`AuditBackend.append` when it answers None. The contract is the same as ``append``'s, plus:
    it never blocks on a lock or a network (it declines instead), and a None answer means nothing of
    the batch was committed and nothing about the backend changed, so ``append`` can take the same
    batch. Why: a thread or network hop per transaction costs more than a small local commit itself
    (the SQLite backend implements it; PostgreSQL, a network database, does not).
    """

    def append_now(self, batch: Sequence[RowBody]) -> int | None: ...
