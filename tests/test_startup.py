"""Start-up: a bad flag, environment value or database gives one line that
names it and says what to fix, exit status 2, no traceback, no password;
--version; the durability mode reaches the database."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mediajobs.server.app import App
from mediajobs.server.config import parse_args, version
from mediajobs.server.store.db import redact_url

from conftest import fresh_pg_url, start_app


def run_server(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAJOBS_")}
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mediajobs.server", "--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0",
         *args],
        capture_output=True, text=True, timeout=60, env=e,
    )


@pytest.mark.parametrize(
    "args, env, names",
    [
        (["--lease-sweep-interval", "0"], {}, "--lease-sweep-interval"),
        (["--lease-sweep-interval", "soon"], {}, "--lease-sweep-interval"),
        (["--event-retention", "-5"], {}, "--event-retention"),
        (["--max-concurrent-rpcs", "0"], {}, "--max-concurrent-rpcs"),
        (["--durability", "sometimes"], {}, "--durability"),
        (["--listen", "nowhere"], {}, "--listen"),
        (["--no-such-flag"], {}, "--no-such-flag"),
        ([], {"MEDIAJOBS_LEASE_SWEEP_INTERVAL": "abc"}, "MEDIAJOBS_LEASE_SWEEP_INTERVAL"),
        ([], {"MEDIAJOBS_SHUTDOWN_GRACE": "1e9"}, "MEDIAJOBS_SHUTDOWN_GRACE"),
        ([], {"MEDIAJOBS_DURABILITY": "maybe"}, "MEDIAJOBS_DURABILITY"),
        (["--db", "sqlite:///x.db?synchronous=off"], {}, "--durability"),
        (["--db", "mysql://root@localhost/mj"], {}, "--db"),
        (["--db", "postgresql://mj:s3cret-pw@127.0.0.1:1/mediajobs"], {}, "--db"),
        (["--db", "postgresql://mj:s3cret-pw@127.0.0.1:notaport/mediajobs"], {}, "--db"),
        (["--live-ingest-url", "http://example.com/live"], {}, "--live-ingest-url"),
        (["--live-playback-base-url", "ftp://cdn"], {}, "--live-playback-base-url"),
        (["--live-srt-ingest", "example.com:80-90"], {}, "--live-srt-ingest"),
        (["--live-srt-ingest", "example.com:9000-19000"], {}, "--live-srt-ingest"),
        ([], {"MEDIAJOBS_LIVE_SRT_INGEST": "nohost"}, "--live-srt-ingest"),
        (["--allow-private-callbacks", "perhaps"], {}, "--allow-private-callbacks"),
    ],
)
def test_a_bad_setting_gives_one_line_and_exit_status_2(tmp_path: Path, args: list[str], env: dict[str, str],
                                                         names: str) -> None:
    r = run_server(tmp_path, *args, env=env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("mediajobs-server: ") and names in lines[0], lines[0]
    assert "Traceback" not in r.stderr and "s3cret-pw" not in r.stderr + r.stdout


def test_an_unreachable_database_names_the_flag_and_hides_the_password(tmp_path: Path) -> None:
    r = run_server(tmp_path, "--db", "postgresql://mj:s3cret-pw@127.0.0.1:1/mediajobs")
    assert "--db: cannot open postgresql://mj:***@127.0.0.1:1/mediajobs" in r.stderr
    assert "is the database server running" in r.stderr


def test_version_flag(tmp_path: Path) -> None:
    r = run_server(tmp_path, "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"mediajobs {version()}" and version() != "unknown"


def test_redact_url_masks_every_password() -> None:
    assert redact_url("postgresql://u:pw@h:5432/db?sslmode=require") == "postgresql://u:***@h:5432/db?sslmode=require"
    assert redact_url("postgresql://h/db?user=u&password=pw") == "postgresql://h/db?user=u&password=***"
    assert redact_url("/var/lib/mediajobs.db") == "/var/lib/mediajobs.db"


def test_environment_values_are_checked_like_flags(tmp_path: Path) -> None:
    cfg = parse_args([], env={"MEDIAJOBS_DURABILITY": "fast", "MEDIAJOBS_MAX_WATCH_STREAMS": "7",
                              "MEDIAJOBS_DATA_DIR": str(tmp_path)})
    assert cfg.durability == "fast" and cfg.max_watch_streams == 7 and cfg.data_dir == tmp_path
    # A flag wins over the environment.
    assert parse_args(["--durability", "strict"], env={"MEDIAJOBS_DURABILITY": "fast"}).durability == "strict"


@pytest.mark.parametrize("durability, pragma", [("strict", 2), ("fast", 1)])
async def test_durability_sets_sqlite_synchronous(tmp_path: Path, durability: str, pragma: int) -> None:
    app: App = await start_app(str(tmp_path / "mediajobs.db"), durability=durability)
    try:
        got = app.store.write_sync(lambda tx: tx.db.execute_sql("PRAGMA synchronous").fetchone()[0])
        assert got == pragma  # FULL = 2: an ack survives power loss; NORMAL = 1
    finally:
        await app.stop(None)


@pytest.mark.parametrize("durability, setting", [("strict", "on"), ("fast", "off")])
async def test_durability_sets_postgresql_synchronous_commit(tmp_path: Path, durability: str, setting: str) -> None:
    app: App = await start_app(fresh_pg_url(), durability=durability)
    try:
        got = app.store.write_sync(lambda tx: tx.db.execute_sql("SHOW synchronous_commit").fetchone()[0])
        assert got == setting
    finally:
        await app.stop(None)
