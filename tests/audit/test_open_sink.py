"""open_sink / open_reader (settings): the backend ``[audit] backend`` names, tuned by ``[audit]``."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_testkit import event, seqs

from mcp_guard.audit import open_reader, open_sink
from mcp_guard.audit.sqlite import SqliteBackend, SqliteReader
from mcp_guard.cli import main
from mcp_guard.errors import AuditError, ConfigError
from mcp_guard.settings import AuditSettings, Settings, load_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "conf" / "mcp-guard.toml"
    path.parent.mkdir()
    path.write_text('[audit]\nbackend = "sqlite"\npath = "data/audit.db"\nbatch_max = 8\nqueue_max = 16\n')
    return path


async def test_open_sink_writes_where_the_audit_table_says(config: Path) -> None:
    async with open_sink(load_settings(config)) as sink:
        assert isinstance(sink.backend, SqliteBackend)
        assert sink.backend.path == config.parent / "data" / "audit.db"  # relative to the config file
        for i in range(20):
            sink.record_nowait(event(i))
        assert sink.stats.dropped == 4  # queue_max
    assert sink.stats.largest_batch == 8  # batch_max
    assert seqs(config.parent / "data" / "audit.db") == list(range(1, 17))


async def test_open_reader_reads_what_open_sink_wrote(config: Path) -> None:
    settings = load_settings(config)
    async with open_sink(settings) as sink:
        seq = await sink.record(event(1))
    with open_reader(settings) as reader:
        assert isinstance(reader, SqliteReader)
        head = reader.head()
        assert head is not None and head.seq == seq
        assert [row[0] for row in reader.rows()] == [seq]


def test_backend_is_sqlite_by_default() -> None:
    assert Settings().audit.backend == "sqlite"


def test_an_unknown_backend_in_the_file_is_a_config_error_naming_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "mcp-guard.toml"
    path.write_text('[audit]\nbackend = "cassandra"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert (err.value.file, err.value.key) == (str(path), "audit.backend")
    assert str(err.value).startswith(f"{path}: audit.backend: ")


def _with_backend(settings: Settings, backend: str) -> Settings:
    """Settings naming a backend the model would refuse: what a newer config could hold."""
    audit = AuditSettings.model_construct(**{**settings.audit.model_dump(), "backend": backend})
    return settings.model_copy(update={"audit": audit})


async def test_open_sink_and_open_reader_refuse_a_backend_they_do_not_have(config: Path) -> None:
    settings = _with_backend(load_settings(config), "cassandra")
    with pytest.raises(ConfigError, match="unknown audit backend 'cassandra'") as err:
        async with open_sink(settings):
            pass
    assert (err.value.file, err.value.key) == (str(config), "audit.backend")
    assert str(err.value).startswith(f"{config}: audit.backend: ")
    with pytest.raises(ConfigError, match=r"audit\.backend"):
        open_reader(settings)
    assert not (config.parent / "data").exists()  # refused before anything was created


async def test_audit_commands_read_through_the_config(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with open_sink(load_settings(config)) as sink:
        await sink.record(event(1))
    assert main(["audit", "verify", "--config", str(config)]) == 0
    assert f"ok: {config.parent / 'data' / 'audit.db'}: 1 rows" in capsys.readouterr().out
    assert main(["audit", "tail", "--config", str(config), "--json"]) == 0
    assert '"decision_id": "dec-1"' in capsys.readouterr().out


def test_open_reader_on_a_log_that_is_not_there(tmp_path: Path) -> None:
    settings = Settings(audit=AuditSettings(path=str(tmp_path / "none.db")))
    with pytest.raises(AuditError, match="no audit database here"), open_reader(settings):
        pass
