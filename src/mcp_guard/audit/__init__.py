"""The audit trail: a hash-chained, append-only log of every decision and outcome.

Two entry points, both chosen by ``[audit] backend`` (``"sqlite"`` or ``"postgres"``)::

    async with open_sink(settings) as sink:       # the proxy: AuditWriter over the backend
        seq = await sink.record(event)            # returns once committed; AuditError if it cannot
        sink.record_nowait(event)                 # side-channel events; never raises

    with open_reader(settings) as reader:         # audit tail / verify / export, another process
        reader.head(); reader.rows(Filters(...))

How an event travels (modules in brackets)::

    events.py constructors ─► AuditWriter.record ─► queue ─► writer task ─► AuditBackend.append
    (one per event family)    [writer]              group commit            [backend: the protocol;
                              stored values + hashed body                    sqlite: the SQLite file;
                              made here, off the serial path                 postgres: PostgreSQL]
                                                                            one transaction: head,
                                                                            number + hash (chain), insert
    audit tail / verify / export ◄── AuditReader (rows, head, snapshot) ◄── the same database
    [tail, verify, export]           [reader: the protocol; SqliteReader, PostgresReader]

What can go wrong, and what you get (:mod:`mcp_guard.errors`)::

    MCPGuardError
    ├── ConfigError    ``[audit] backend`` names no backend (file and key ``audit.backend``)
    └── AuditError     the sink cannot commit an event: record() raises within record_timeout, so
                       the pipeline denies the call (``audit_unavailable``); the file was removed or
                       replaced (the sink is broken for good); PostgreSQL is down or hangs (each batch
                       fails within its timeout; the next one reconnects); the database cannot be
                       opened, is newer than this mcp-guard, or cannot be read (open_sink, open_reader)

A backend is one module: an :class:`AuditBackend` (append a numbered, hashed batch in one
transaction; report when it can never write again) and an :class:`AuditReader`, registered in the two
tables below (and its name added to ``[audit] backend`` in :mod:`mcp_guard.settings`). Other packages
use the names in ``__all__``; the submodules are this package's implementation (the ``audit``
commands and the tests reach into them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager
from pathlib import Path

from mcp_guard.audit import sqlite
from mcp_guard.audit.backend import AuditBackend
from mcp_guard.audit.chain import ChainHead
from mcp_guard.audit.reader import AuditReader, Filters, parse_since, row_to_dict
from mcp_guard.audit.writer import AuditStats, AuditWriter
from mcp_guard.errors import ConfigError
from mcp_guard.settings import Settings

__all__ = [
    "AuditBackend",
    "AuditReader",
    "AuditStats",
    "AuditWriter",
    "ChainHead",
    "Filters",
    "open_reader",
    "open_sink",
    "open_sqlite_sink",
    "parse_since",
    "row_to_dict",
]

_Opener = Callable[[Settings], AbstractAsyncContextManager[AuditBackend]]
_ReaderOpener = Callable[..., AbstractContextManager[AuditReader]]


def _postgres_backend(settings: Settings) -> AbstractAsyncContextManager[AuditBackend]:
    from mcp_guard.audit import postgres  # psycopg is imported only when the backend is used

    return postgres.backend_from_settings(settings)


def _postgres_reader(settings: Settings, *, wait: bool = False) -> AbstractContextManager[AuditReader]:
    from mcp_guard.audit import postgres

    return postgres.reader_from_settings(settings, wait=wait)


# ``[audit] backend`` -> how to open it. A new backend is one module plus one line in each table.
_BACKENDS: dict[str, _Opener] = {"sqlite": sqlite.backend_from_settings, "postgres": _postgres_backend}
_READERS: dict[str, _ReaderOpener] = {"sqlite": sqlite.reader_from_settings, "postgres": _postgres_reader}


def _chosen(settings: Settings, known: Collection[str]) -> str:
    """``[audit] backend``, checked: a name no backend answers to is a config error naming the key."""
    name = settings.audit.backend
    if name not in known:
        raise ConfigError(
            f"unknown audit backend {name!r} (known: {', '.join(sorted(known))})",
            file=settings.source,
            key="audit.backend",
        )
    return name


def open_sink(settings: Settings) -> AbstractAsyncContextManager[AuditWriter]:
    """The audit sink ``[audit]`` asks for: an :class:`AuditWriter` over the configured backend.

    ``[audit] batch_max`` and ``queue_max`` tune the writer. Leaving the block commits every queued
    event, then closes the backend. Raises :class:`~mcp_guard.errors.ConfigError` (here) for an
    unknown backend and :class:`~mcp_guard.errors.AuditError` (on entry) if the database cannot be
    opened.
    """
    opener = _BACKENDS[_chosen(settings, _BACKENDS)]
    return _sink(opener(settings), batch_max=settings.audit.batch_max, queue_max=settings.audit.queue_max)


def open_reader(settings: Settings, *, wait: bool = False) -> AbstractContextManager[AuditReader]:
    """A read-only :class:`AuditReader` of the log ``[audit]`` names, closed when the block ends.

    With ``wait``, wait for the log to appear (``audit tail -f`` started before the proxy).
    """
    return _READERS[_chosen(settings, _READERS)](settings, wait=wait)


def open_sqlite_sink(
    path: str | Path,
    *,
    batch_max: int = 256,
    queue_max: int = 10_000,
    busy_timeout: float = 1.0,
    record_timeout: float = 5.0,
    close_timeout: float = 10.0,
    checkpoint_interval: float = 1.0,
) -> AbstractAsyncContextManager[AuditWriter]:
    """An :class:`AuditWriter` over the SQLite file at ``path``, every knob exposed (tests, benchmarks).

    ``busy_timeout`` and ``checkpoint_interval`` tune the file (:func:`mcp_guard.audit.sqlite.open_sqlite`);
    the others the writer (:meth:`AuditWriter.running`).
    """
    return _sink(
        sqlite.open_sqlite(path, busy_timeout=busy_timeout, checkpoint_interval=checkpoint_interval),
        batch_max=batch_max,
        queue_max=queue_max,
        record_timeout=record_timeout,
        close_timeout=close_timeout,
    )


@asynccontextmanager
async def _sink(
    backend: AbstractAsyncContextManager[AuditBackend],
    *,
    batch_max: int,
    queue_max: int,
    record_timeout: float = 5.0,
    close_timeout: float = 10.0,
) -> AsyncIterator[AuditWriter]:
    # The writer runs inside the backend's block: its final flush happens while the backend is open.
    async with (
        backend as opened,
        AuditWriter.running(
            opened,
            batch_max=batch_max,
            queue_max=queue_max,
            record_timeout=record_timeout,
            close_timeout=close_timeout,
        ) as writer,
    ):
        yield writer
