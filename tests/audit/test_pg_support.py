"""The PostgreSQL test fixture itself: it fails loudly rather than skip when no server can be had."""

from __future__ import annotations

import pytest

import pg_support


def test_no_server_and_no_binaries_is_a_failure_naming_every_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pg_support.ENV_DSN, raising=False)
    monkeypatch.delenv(pg_support.ENV_MODE, raising=False)
    monkeypatch.setattr(pg_support, "LOCAL_DSN", "postgresql://postgres@127.0.0.1:1/postgres")
    monkeypatch.setattr(pg_support, "_bindir", lambda: None)
    with pytest.raises(pytest.fail.Exception) as failed:
        pg_support.find_server()
    message = str(failed.value)
    assert "no PostgreSQL server for the tests" in message
    assert "127.0.0.1:5432" in message and "no PostgreSQL server binaries" in message


def test_an_unusable_dsn_in_the_environment_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pg_support.ENV_MODE, raising=False)
    monkeypatch.setenv(pg_support.ENV_DSN, "postgresql://postgres@127.0.0.1:1/postgres")
    with pytest.raises(pytest.fail.Exception, match="is set but unusable"):
        pg_support.find_server()


def test_a_throwaway_cluster_starts_creates_databases_and_stops() -> None:
    server = pg_support.start_cluster()
    try:
        assert pg_support._usable(server.admin_dsn) is None
        name = server.create_database()
        server.drop_database(name)
    finally:
        for stop in server.stop:
            stop()
    assert pg_support._usable(server.admin_dsn) is not None  # stopped
