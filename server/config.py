"""Server configuration from flags and MEDIAJOBS_* environment variables."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mediajobs"


@dataclass
class Config:
    listen: str = "127.0.0.1:50051"
    # A SQLite file path, or a database URL (sqlite:///path, postgresql://...).
    db: str = ""
    data_dir: Path = default_data_dir()
    # Change events older than this are compacted away (WatchJobs resumes only
    # from a retained revision).
    event_retention_s: float = 24 * 3600
    # Idempotency records are kept this long.
    request_id_ttl_s: float = 24 * 3600
    # How often the retention sweep runs.
    sweep_interval_s: float = 60.0
    # How often expired worker leases are recovered.
    lease_sweep_interval_s: float = 1.0
    # CheckFileExists answers only inside this folder (default DATA_DIR/storage).
    storage_root: Path | None = None
    # Graceful shutdown: how long in-flight calls may finish.
    shutdown_grace_s: float = 10.0
    project: str = "default"

    def db_url(self) -> str:
        return self.db or str(self.data_dir / "mediajobs.db")

    def storage_dir(self) -> Path:
        return self.storage_root or self.data_dir / "storage"


def parse_args(argv: list[str] | None = None) -> Config:
    env = os.environ
    ap = argparse.ArgumentParser(
        prog="mediajobs-server",
        description="Run the mediajobs gRPC server (jobs, watch, health, reflection).",
    )
    ap.add_argument("--listen", default=env.get("MEDIAJOBS_LISTEN", Config.listen),
                    help="HOST:PORT to listen on (env MEDIAJOBS_LISTEN; default %(default)s)")
    ap.add_argument("--db", default=env.get("MEDIAJOBS_DB", ""),
                    help="SQLite file path or database URL such as postgresql://user@host/db "
                         "(env MEDIAJOBS_DB; default DATA_DIR/mediajobs.db)")
    ap.add_argument("--data-dir", default=env.get("MEDIAJOBS_DATA_DIR", str(default_data_dir())),
                    help="folder for the default SQLite database (env MEDIAJOBS_DATA_DIR; default %(default)s)")
    ap.add_argument("--storage-root", default=env.get("MEDIAJOBS_STORAGE_ROOT"),
                    help="folder that CheckFileExists may look into (env MEDIAJOBS_STORAGE_ROOT; "
                         "default DATA_DIR/storage)")
    ap.add_argument("--lease-sweep-interval", type=float,
                    default=float(env.get("MEDIAJOBS_LEASE_SWEEP_INTERVAL", Config.lease_sweep_interval_s)),
                    help="seconds between recoveries of expired worker leases (default %(default)s)")
    ap.add_argument("--event-retention", type=float,
                    default=float(env.get("MEDIAJOBS_EVENT_RETENTION", Config.event_retention_s)),
                    help="seconds of change history kept for WatchJobs resumption (default %(default)s)")
    ap.add_argument("--shutdown-grace", type=float,
                    default=float(env.get("MEDIAJOBS_SHUTDOWN_GRACE", Config.shutdown_grace_s)),
                    help="seconds in-flight calls get to finish on SIGTERM/SIGINT (default %(default)s)")
    ap.add_argument("--log-level", default=env.get("MEDIAJOBS_LOG_LEVEL", "INFO"),
                    help="logging level (default %(default)s)")
    a = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return Config(
        listen=a.listen,
        db=a.db,
        data_dir=Path(a.data_dir),
        event_retention_s=a.event_retention,
        storage_root=Path(a.storage_root) if a.storage_root else None,
        lease_sweep_interval_s=a.lease_sweep_interval,
        shutdown_grace_s=a.shutdown_grace,
    )
