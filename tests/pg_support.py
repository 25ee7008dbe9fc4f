"""PostgreSQL for the tests: a server found or started, and a fresh database per test.

Where the server comes from, first that works:

1. ``$MCP_GUARD_TEST_PG_DSN`` — a DSN whose role may CREATE DATABASE (if set, it must work);
2. the machine's server at 127.0.0.1:5432 (user ``postgres``, trust auth, as on the project's machines);
3. a throwaway cluster: ``initdb`` + ``pg_ctl`` from the installed server binaries
   (``/usr/lib/postgresql/*/bin``, ``pg_config --bindir`` or ``$PATH``) in a temporary directory on a
   free port, run as the ``postgres`` user (or ``nobody``) when the tests run as root — initdb refuses
   root — and stopped when the session ends.

If none works the tests that need PostgreSQL **fail** with the reasons; they are never skipped
(``.ci/run`` installs Debian's ``postgresql`` where the binaries are missing). ``MCP_GUARD_TEST_PG=throwaway``
skips 1 and 2: the suite then runs as on a machine where no server runs.

Each test gets its own database (random name, dropped afterwards), so chains, advisory locks and
NOTIFY channels of different tests never meet. Fixtures: ``pg_server`` (session), ``pg_dsn`` (a fresh
database's DSN), ``pg_admin`` (a superuser connection to that database, for tampering).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from anyio.abc import SocketStream, TaskGroup
from psycopg import conninfo

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
ENV_DSN = "MCP_GUARD_TEST_PG_DSN"
ENV_MODE = "MCP_GUARD_TEST_PG"  # "throwaway": always start a cluster of our own


@dataclass
class PgServer:
    """A PostgreSQL server the tests may create databases on."""

    admin_dsn: str  # a role with CREATEDB, connected to a maintenance database
    origin: str  # where it came from (shown in failures)
    stop: list[Any] = field(default_factory=list)  # what to run at the end of the session
    restart_cluster: Any = None  # a throwaway cluster only: restart it (pg_ctl restart)

    def restart(self) -> None:
        """Restart the server (``pg_ctl restart -m fast``): every connection is cut, then it accepts again."""
        if self.restart_cluster is None:
            raise RuntimeError(f"{self.origin} is not ours to restart")
        self.restart_cluster()

    def dsn(self, dbname: str, **params: Any) -> str:
        """The admin DSN pointed at ``dbname`` (as a key=value connection string)."""
        return conninfo.make_conninfo(self.admin_dsn, dbname=dbname, **params)

    def create_database(self) -> str:
        name = f"mcpg_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _usable(dsn: str) -> str | None:
    """None if ``dsn`` connects and may create databases; else why not."""
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
            row = conn.execute("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    except psycopg.Error as e:
        return " ".join(str(e).split()) or type(e).__name__
    if not (row and row[0]):
        return "its role may not CREATE DATABASE"
    return None


def _bindir() -> Path | None:
    """The directory of initdb/pg_ctl: Debian's newest server, pg_config's, or $PATH's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as(user: str | None, argv: list[str]) -> None:
    cmd = ["runuser", "-u", user, "--", *argv] if user else argv
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:1])} failed ({out.returncode}): {(out.stderr or out.stdout)[-800:]}")


def _unprivileged_user() -> str | None:
    """Who runs the throwaway cluster: None (ourselves) unless we are root, who initdb refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists to run initdb")


def start_cluster() -> PgServer:
    """A throwaway cluster on a free port in a temporary directory (see the module docstring)."""
    bindir = _bindir()
    if bindir is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb) found: apt-get install postgresql")
    user = _unprivileged_user()
    base = Path(tempfile.mkdtemp(prefix="mcp-guard-pg-"))  # in /tmp: reachable by the cluster's user
    if user:
        entry = pwd.getpwnam(user)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    data, port = base / "data", _free_port()
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-t", "60"]
    try:
        _run_as(user, [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1"
        _run_as(user, [*pg_ctl, "-o", options, "start"])
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise

    def stop() -> None:
        with contextlib.suppress(Exception):
            _run_as(user, [*pg_ctl, "-m", "immediate", "stop"])
        shutil.rmtree(base, ignore_errors=True)

    def restart() -> None:
        _run_as(user, [*pg_ctl, "-m", "fast", "restart"])  # the options of the last start are kept

    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    return PgServer(dsn, f"throwaway cluster in {base}", [stop], restart)


def find_server() -> PgServer:
    """The first server that works (see the module docstring); pytest.fail naming every reason if none."""
    reasons: list[str] = []
    env = os.environ.get(ENV_DSN)
    if os.environ.get(ENV_MODE) == "throwaway":
        reasons.append(f"${ENV_MODE}=throwaway: no other server tried")
    elif env:
        problem = _usable(env)
        if problem is None:
            return PgServer(env, f"${ENV_DSN}")
        pytest.fail(f"${ENV_DSN} is set but unusable: {problem}", pytrace=False)
    else:
        problem = _usable(LOCAL_DSN)
        if problem is None:
            return PgServer(LOCAL_DSN, "127.0.0.1:5432")
        reasons.append(f"127.0.0.1:5432: {problem}")
    try:
        server = start_cluster()
    except Exception as e:
        reasons.append(f"throwaway cluster: {e}")
    else:
        problem = _usable(server.admin_dsn)
        if problem is None:
            return server
        for stop in server.stop:
            stop()
        reasons.append(f"throwaway cluster: {problem}")
    pytest.fail("no PostgreSQL server for the tests:\n  " + "\n  ".join(reasons), pytrace=False)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = find_server()
    try:
        yield server
    finally:
        for stop in server.stop:
            stop()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database of its own for this test; dropped afterwards."""
    name = pg_server.create_database()
    try:
        yield pg_server.dsn(name)
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def pg_admin(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit superuser connection to the test's database (to tamper, as an attacker would)."""
    with psycopg.connect(pg_dsn, autocommit=True, connect_timeout=10) as conn:
        yield conn


def cut_guard_connections(admin: psycopg.Connection[Any]) -> None:
    """Terminate every mcp-guard connection to ``admin``'s database — only that one: the server may be shared
    (other tests, other workers, other checkouts' suites)."""
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'mcp-guard' AND datname = current_database()"
    )


class HangingProxy:
    """A TCP forwarder in front of the server that can stop passing bytes: a PostgreSQL that hangs.

    ``hang()`` holds every byte from then on (connections stay open, nothing arrives), ``recover()``
    passes them again, ``cut()`` closes every connection (a server that went away mid-conversation).
    """

    def __init__(self, host: str, port: int, tg: TaskGroup) -> None:
        self._target = (host, port)
        self._tg = tg
        self._flowing = anyio.Event()
        self._flowing.set()
        self._streams: list[SocketStream] = []
        self.port = 0

    def dsn(self, dsn: str) -> str:
        """``dsn`` with its host and port replaced by this proxy's."""
        return conninfo.make_conninfo(dsn, host="127.0.0.1", hostaddr="127.0.0.1", port=str(self.port))

    def hang(self) -> None:
        self._flowing = anyio.Event()

    def recover(self) -> None:
        self._flowing.set()

    async def cut(self) -> None:
        streams, self._streams = self._streams, []
        for stream in streams:
            await stream.aclose()

    async def _serve(self, client: SocketStream) -> None:
        try:
            upstream = await anyio.connect_tcp(*self._target)
        except OSError:
            await client.aclose()
            return
        self._streams += [client, upstream]
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._pump, client, upstream, tg)
            tg.start_soon(self._pump, upstream, client, tg)

    async def _pump(self, src: SocketStream, dst: SocketStream, tg: TaskGroup) -> None:
        try:
            while True:
                data = await src.receive()
                await self._flowing.wait()
                await dst.send(data)
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            pass
        finally:
            tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await src.aclose()
                await dst.aclose()


@asynccontextmanager
async def hanging_proxy(dsn: str) -> AsyncIterator[HangingProxy]:
    """A :class:`HangingProxy` in front of the server ``dsn`` names, for the duration of the block."""
    params = conninfo.conninfo_to_dict(dsn)
    host = str(params.get("hostaddr") or params.get("host") or "127.0.0.1")
    port = int(params.get("port") or 5432)
    async with anyio.create_task_group() as tg:
        proxy = HangingProxy(host, port, tg)
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        proxy.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        tg.start_soon(listener.serve, proxy._serve, tg)
        try:
            yield proxy
        finally:
            proxy.recover()
            await proxy.cut()
            tg.cancel_scope.cancel()
