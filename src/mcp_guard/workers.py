"""``mcp-guard run --workers N``: N worker processes serving one listening socket (the HTTP front).

The proxy is one Python thread, CPU-bound under load, so more calls per second need more processes. The
supervisor (this module, in the process the operator started) binds the port itself — a port in use is
still the one-line start-up error — N times with SO_REUSEPORT, and starts N copies of the ``mcp-guard run``
command line, each handed one of the listening sockets (``--worker-fd``, inherited) and its number
(``--worker-index``). The kernel hashes each new connection to one socket, so to one worker (evenly; one
shared socket measured ~2:1 between two workers); the supervisor keeps every socket open, so connections
for a worker being restarted wait in its backlog until it is back. A worker is a complete proxy: its own
upstream processes, policy engine, state connection and audit writer on the shared files (SQLite
serialises the appends of several processes on one chain with ``BEGIN IMMEDIATE``; PostgreSQL with its
chain lock), so nothing about the audit or rate-limit guarantees changes.

What the supervisor does, and nothing else:

* SIGTERM / SIGINT: passed to every worker, then waits for them (each drains as a single proxy does);
* SIGHUP (``mcp-guard reload`` signals the pid file, which the supervisor holds): passed to every worker;
* a worker that dies on its own is started again (after 0.5 s, doubling to 10 s while it keeps dying within
  10 s of its start); one that exits with 2 — a start-up error such as a bad config — stops them all, exit 2.

Sessions: a connection is not a session. A 2025-11-25 session lives in the worker that created it and its
id names that worker (``w<index>-<id>``, :mod:`mcp_guard.frontend.worker_sessions`): a request that reaches
another worker is refused with a 404 that says so, which a client treats as an expired session (it
initialises again). Clients that keep one keep-alive connection per session always reach their worker;
others need a load balancer that routes on ``Mcp-Session-Id`` in front of separate ``mcp-guard run``
processes (deploy/haproxy.cfg), or ``--workers 1``. Stateless 2026-07-28 clients are served by any worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

__all__ = ["supervise"]

log = structlog.get_logger(__name__)

_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
_START_ERROR = 2  # a worker that cannot start (config, policy, audit path): every other one would fail too
_FIRST_DELAY_S, _MAX_DELAY_S, _STABLE_S = 0.5, 10.0, 10.0
_STOP_WAIT_S = 20.0
_PR_SET_PDEATHSIG = 1


@dataclass(slots=True)
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    delay: float = _FIRST_DELAY_S
    due: float | None = None  # when a dead worker is started again


def _child_setup() -> None:
    """In the worker, before exec: the supervisor's blocked signals unblocked, and SIGTERM when it dies."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    with contextlib.suppress(OSError, AttributeError):  # not Linux: a killed supervisor leaves its workers
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


class _Supervisor:
    def __init__(self, socks: Sequence[socket.socket], argv_for: Callable[[int, int], Sequence[str]]) -> None:
        self._fds = [s.fileno() for s in socks]
        self._argv_for = argv_for
        self._workers = [_Worker(i) for i in range(len(socks))]
        self._stopping = False
        self._exit = 0

    def _start(self, w: _Worker) -> None:
        fd = self._fds[w.index]
        w.proc = subprocess.Popen(list(self._argv_for(w.index, fd)), pass_fds=(fd,), preexec_fn=_child_setup)
        w.started, w.due = time.monotonic(), None
        log.info("workers.started", worker=w.index, pid=w.proc.pid)

    def _signal_all(self, signum: int) -> None:
        for w in self._workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signum)

    def _reap(self) -> None:
        now = time.monotonic()
        for w in self._workers:
            if w.proc is None or w.proc.poll() is None:
                continue
            code, pid, w.proc = w.proc.returncode, w.proc.pid, None
            if self._stopping:
                continue
            if code == _START_ERROR:
                log.error("workers.start_failed", worker=w.index, pid=pid, exit_code=code)
                self._stop(_START_ERROR)
                continue
            w.delay = w.delay * 2 if now - w.started < _STABLE_S else _FIRST_DELAY_S
            w.delay = min(w.delay, _MAX_DELAY_S)
            w.due = now + w.delay
            log.error("workers.died", worker=w.index, pid=pid, exit_code=code, restart_in_s=w.delay)

    def _stop(self, code: int = 0) -> None:
        if not self._stopping:
            self._stopping, self._exit = True, code
            self._signal_all(signal.SIGTERM)

    def _restart_due(self) -> float:
        """Start the workers whose restart is due; the seconds until the next one is (at most 1)."""
        now, wait = time.monotonic(), 1.0
        for w in self._workers:
            if w.due is None or self._stopping:
                continue
            if w.due <= now:
                self._start(w)
            else:
                wait = min(wait, w.due - now)
        return wait

    def run(self) -> int:
        for w in self._workers:
            self._start(w)
        deadline: float | None = None
        while any(w.proc is not None for w in self._workers) or (not self._stopping and self._pending()):
            info = signal.sigtimedwait(_SIGNALS, self._restart_due())
            if info is not None:
                self._on_signal(info.si_signo)
            self._reap()
            if self._stopping:
                deadline = deadline or time.monotonic() + _STOP_WAIT_S
                if time.monotonic() > deadline:
                    self._signal_all(signal.SIGKILL)
        log.info("workers.stopped", exit_code=self._exit)
        return self._exit

    def _pending(self) -> bool:
        return any(w.due is not None for w in self._workers)

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            log.info("shutdown", signal=signal.Signals(signum).name, workers=len(self._workers))
            self._stop()
        elif signum == signal.SIGHUP:
            log.info("workers.reload", workers=len(self._workers))
            self._signal_all(signal.SIGHUP)


def supervise(socks: Sequence[socket.socket], argv_for: Callable[[int, int], Sequence[str]]) -> int:
    """Run one worker per listening socket in ``socks`` until SIGTERM/SIGINT (or a worker's start-up error);
    the exit code.

    ``argv_for(index, fd)`` is a worker's command line (``fd``: its socket, inherited). The signals are blocked
    in this process and waited for synchronously (``sigtimedwait``): no handler runs between a fork and its
    bookkeeping."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        return _Supervisor(socks, argv_for).run()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
