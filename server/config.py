"""Server configuration from flags and MEDIAJOBS_* environment variables.

Every value is checked before anything starts: a bad flag or environment
value ends the process with one line that names it and says what to fix,
and exit status 2 (no traceback).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, NoReturn

from .store.db import DEFAULT_DURABILITY, DURABILITY_MODES
from .store.writer import DEFAULT_MAX_QUEUE


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mediajobs"


def version() -> str:
    try:
        return metadata.version("mediajobs")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


@dataclass
class Config:
    listen: str = "127.0.0.1:50051"
    # A SQLite file path, or a database URL (sqlite:///path, postgresql://...).
    db: str = ""
    data_dir: Path = field(default_factory=default_data_dir)
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
    # strict: an ack survives power loss; fast: it survives a server crash.
    durability: str = DEFAULT_DURABILITY
    # Overload protection: beyond these, calls fail fast with RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int = 512
    max_write_queue: int = DEFAULT_MAX_QUEUE
    max_watch_streams: int = 20_000
    max_parked_acquires: int = 2_000
    # Runners inside the server that apply CSV bulk uploads (BULK_UPLOAD
    # jobs); 0 leaves them to external workers.
    bulk_runners: int = 1
    # Live jobs: the ingest server publishers push to (what live workers
    # listen on, as clients reach it), and where playlists are served from.
    live_ingest_url: str = "rtmp://127.0.0.1:1935/live"
    live_playback_base_url: str = ""
    live_cdn_base_url: str = ""
    # Quotas (0: none), see server/quotas.py.
    quota_pending_jobs: int = 0
    quota_open_bulk_uploads: int = 16
    quota_live_jobs_online: int = 0
    quota_requests_per_second: float = 0.0
    # "none" (no keys; the default on a loopback address) or "keys".
    auth: str = "none"
    # With --auth keys: reflection needs a key too.
    reflection_auth: bool = False
    # Serve a non-loopback address without TLS or without keys anyway.
    insecure: bool = False
    # Connections are closed after this long (0: never), calls get the grace.
    max_connection_age_s: float = 3600.0
    max_connection_age_grace_s: float = 30.0
    # TLS on the gRPC port (both or neither), and mutual TLS with a client CA.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # The HTTP gateway inside the server (HOST:PORT; "" = none), and its
    # Kaltura partners file (partner id -> KS secret and API key).
    http_listen: str = ""
    # How: "process" (a child process) or "inline" (in this event loop).
    http_gateway: str = "process"
    kaltura_partners: str = ""
    # Browser origins (scheme://host[:port], or "*") the gateway answers CORS
    # for; none: same-origin only (no CORS headers at all).
    cors_origins: tuple[str, ...] = ()
    # The gateway's event streams (GET /v1/jobs:watch, server/gateway/sse.py).
    sse_max_streams: int = 2000
    sse_heartbeat_s: float = 15.0
    sse_resume_window_s: float = 30.0
    # SRT ingest for live jobs: HOST:LOW-HIGH (empty: SRT not available).
    live_srt_ingest: str = ""
    # Live jobs' callbacks may go to private and loopback addresses.
    allow_private_callbacks: bool = False

    def db_url(self) -> str:
        return self.db or str(self.data_dir / "mediajobs.db")

    def storage_dir(self) -> Path:
        return self.storage_root or self.data_dir / "storage"

    def gateway_settings(self) -> dict[str, object]:
        """The settings of the embedded HTTP gateway (gateway.app.SETTINGS_KEY;
        GATEWAY_FLAGS names each one's mediajobs-gateway flag)."""
        return {"kaltura_partners": self.kaltura_partners, "cors_origins": self.cors_origins,
                "sse_max_streams": self.sse_max_streams, "sse_heartbeat_s": self.sse_heartbeat_s,
                "sse_resume_window_s": self.sse_resume_window_s}


class ConfigError(Exception):
    """A flag or environment value that cannot work; the message names it."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _number(kind: Callable[[str], float], lo: float, hi: float, what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not {what}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value:.10g} is out of range: use {lo:.10g} to {hi:.10g}")
        return value

    return parse


_ORIGIN = re.compile(r"([a-z][a-z0-9+.-]*)://(\[[0-9a-f:.]+\]|[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
                     r"(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*)(?::([0-9]{1,5}))?")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def parse_cors_origin(text: str) -> str:
    """One --cors-origin: `*`, or scheme://host[:port] as a browser sends it
    in Origin (lower case, no default port, no path)."""
    value = text.strip()
    if value == "*":
        return value
    m = _ORIGIN.fullmatch(value.lower())
    port = m.group(3) if m else None
    if m is None or (port is not None and not 1 <= int(port) <= 65535):
        raise argparse.ArgumentTypeError(
            f"{text[:80]!r} is not an origin: use scheme://host[:port] with no path or trailing slash "
            "(e.g. https://dashboard.example.com, http://localhost:5173), or * for any")
    scheme, host = m.group(1), m.group(2)
    if port is None or _DEFAULT_PORTS.get(scheme) == port:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{int(port)}"


def parse_cors_origins(text: str) -> tuple[str, ...]:
    """A comma-separated list of origins (MEDIAJOBS_CORS_ORIGINS)."""
    return tuple(dict.fromkeys(parse_cors_origin(o) for o in text.split(",") if o.strip()))


CORS_HELP = ("a browser origin (scheme://host[:port], or * for any) whose pages may call the HTTP gateway "
             "(REST and the /v1/jobs:watch event stream) across origins: the gateway answers its CORS preflights "
             "and adds Access-Control-Allow-Origin for it; repeat for more; none (the default): same-origin "
             "only, no CORS headers")

# flag -> (environment variable, parser, default, help)
_SECONDS = float
def _flag(text: str) -> bool:
    v = text.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a yes/no value (use 1/true/yes or 0/false/no)")


_FLAGS: list[tuple[str, str, Callable[[str], object] | None, object, str]] = [
    ("--listen", "MEDIAJOBS_LISTEN", None, Config.listen, "HOST:PORT to listen on"),
    ("--http-listen", "MEDIAJOBS_HTTP_LISTEN", None, "",
     "HOST:PORT of the HTTP gateway served by this process (REST/JSON over the same API; default: none)"),
    ("--http-gateway", "MEDIAJOBS_HTTP_GATEWAY", None, "process",
     "how --http-listen runs the gateway: process (a child process with an interpreter of its own, restarted if it "
     "dies; HTTP and gRPC then do not share one GIL, and a request costs about a third less CPU) or inline (in "
     "this process's event loop: one process)"),
    ("--kaltura-partners", "MEDIAJOBS_KALTURA_PARTNERS", None, "",
     "the HTTP gateway's Kaltura partners file: JSON {partnerId: {secret, api_key, user_api_key}} (KS sessions)"),
    ("--cors-origin", "MEDIAJOBS_CORS_ORIGINS", parse_cors_origins, (), CORS_HELP),  # repeatable
    ("--db", "MEDIAJOBS_DB", None, "",
     "SQLite file path or database URL such as postgresql://user@host/db (default DATA_DIR/mediajobs.db)"),
    ("--data-dir", "MEDIAJOBS_DATA_DIR", None, None,
     "folder for the default SQLite database and storage root (default $XDG_DATA_HOME/mediajobs or "
     "~/.local/share/mediajobs)"),
    ("--storage-root", "MEDIAJOBS_STORAGE_ROOT", None, None,
     "folder that entries' sources and CheckFileExists are resolved in (default DATA_DIR/storage)"),
    ("--durability", "MEDIAJOBS_DURABILITY", None, DEFAULT_DURABILITY,
     "strict: an acknowledged write survives power loss (SQLite synchronous=FULL); "
     "fast: it survives a server crash (SQLite synchronous=NORMAL, PostgreSQL synchronous_commit=off)"),
    ("--lease-sweep-interval", "MEDIAJOBS_LEASE_SWEEP_INTERVAL", _number(float, 0.05, 3600, "a number of seconds"),
     Config.lease_sweep_interval_s, "seconds between recoveries of expired worker leases (0.05-3600)"),
    ("--event-retention", "MEDIAJOBS_EVENT_RETENTION", _number(float, 60, 365 * 86400, "a number of seconds"),
     Config.event_retention_s, "seconds of change history kept for WatchJobs resumption (60 s to 365 days)"),
    ("--shutdown-grace", "MEDIAJOBS_SHUTDOWN_GRACE", _number(float, 0, 3600, "a number of seconds"),
     Config.shutdown_grace_s, "seconds in-flight calls get to finish on SIGTERM/SIGINT (0-3600)"),
    ("--max-concurrent-rpcs", "MEDIAJOBS_MAX_CONCURRENT_RPCS", _number(int, 1, 1_000_000, "a whole number"),
     Config.max_concurrent_rpcs,
     "unary calls served at once; more fail fast with RESOURCE_EXHAUSTED (health checks are never refused)"),
    ("--max-write-queue", "MEDIAJOBS_MAX_WRITE_QUEUE", _number(int, 1, 1_000_000, "a whole number"),
     Config.max_write_queue, "mutations waiting for the database writer; more fail fast with RESOURCE_EXHAUSTED"),
    ("--max-watch-streams", "MEDIAJOBS_MAX_WATCH_STREAMS", _number(int, 1, 10_000_000, "a whole number"),
     Config.max_watch_streams, "open WatchJobs streams; more are refused with RESOURCE_EXHAUSTED"),
    ("--max-parked-acquires", "MEDIAJOBS_MAX_PARKED_ACQUIRES", _number(int, 1, 1_000_000, "a whole number"),
     Config.max_parked_acquires, "AcquireJobs calls waiting for work at once; more are refused with RESOURCE_EXHAUSTED"),
    ("--bulk-runners", "MEDIAJOBS_BULK_RUNNERS", _number(int, 0, 64, "a whole number"),
     Config.bulk_runners, "bulk uploads applied at once by the server itself (0-64; 0 leaves BULK_UPLOAD jobs to "
     "external workers)"),
    ("--quota-pending-jobs", "MEDIAJOBS_QUOTA_PENDING_JOBS", _number(int, 0, 10**9, "a whole number"),
     Config.quota_pending_jobs, "PENDING jobs a project may have; more creates fail RESOURCE_EXHAUSTED (0: no quota)"),
    ("--quota-open-bulk-uploads", "MEDIAJOBS_QUOTA_OPEN_BULK_UPLOADS", _number(int, 1, 10_000, "a whole number"),
     Config.quota_open_bulk_uploads, "bulk uploads a project may be writing at once (1-10000)"),
    ("--quota-live-jobs-online", "MEDIAJOBS_QUOTA_LIVE_JOBS_ONLINE", _number(int, 0, 100_000, "a whole number"),
     Config.quota_live_jobs_online, "live jobs a project may have online at once (0: no quota)"),
    ("--quota-requests-per-second", "MEDIAJOBS_QUOTA_REQUESTS_PER_SECOND",
     _number(float, 0, 1_000_000, "a number"), Config.quota_requests_per_second,
     "calls per second per API key, with a second's worth of burst (--auth keys; 0: no quota)"),
    ("--auth", "MEDIAJOBS_AUTH", None, None,
     "none: no API keys; keys: every call needs `authorization: Bearer <API key>` and a role that allows it "
     "(default: none on a loopback --listen address, keys otherwise)"),
    ("--reflection-auth", "MEDIAJOBS_REFLECTION_AUTH", _flag, False,
     "with --auth keys: server reflection (what grpcurl list/describe use) needs an API key too (default: open)"),
    ("--insecure", "MEDIAJOBS_INSECURE", _flag, False,
     "serve an address other machines can reach without TLS or without API keys (refused otherwise)"),
    ("--max-connection-age", "MEDIAJOBS_MAX_CONNECTION_AGE", _number(float, 0, 30 * 86400, "a number of seconds"),
     Config.max_connection_age_s,
     "seconds after which a connection is closed (GOAWAY) and its client reconnects, resuming watches "
     "without gaps; 0: never (0 to 30 days)"),
    ("--max-connection-age-grace", "MEDIAJOBS_MAX_CONNECTION_AGE_GRACE",
     _number(float, 0, 86400, "a number of seconds"), Config.max_connection_age_grace_s,
     "seconds calls get to finish on a closing connection before streams are cut (0 to 1 day)"),
    ("--tls-cert", "MEDIAJOBS_TLS_CERT", None, None,
     "PEM certificate (chain) for TLS on the gRPC port, with --tls-key; reloaded without a restart when the "
     "file changes or on SIGHUP (default: no TLS)"),
    ("--tls-key", "MEDIAJOBS_TLS_KEY", None, None, "PEM private key of --tls-cert"),
    ("--tls-client-ca", "MEDIAJOBS_TLS_CLIENT_CA", None, None,
     "PEM CA certificate(s): mutual TLS, every client must present a certificate this CA signed"),
    ("--live-ingest-url", "MEDIAJOBS_LIVE_INGEST_URL", None, Config.live_ingest_url,
     "the RTMP server live publishers push to, as they reach it (rtmp://HOST:PORT/APP; a live worker's "
     "--rtmp-listen); live jobs' ingest URLs are this plus the stream key"),
    ("--live-playback-base-url", "MEDIAJOBS_LIVE_PLAYBACK_BASE_URL", None, "",
     "http(s) URL the storage root's live/ folder is served under, for live jobs' playback_url (default none: "
     "the playlists' paths under the storage root are given instead)"),
    ("--live-cdn-base-url", "MEDIAJOBS_LIVE_CDN_BASE_URL", None, "",
     "http(s) URL of a CDN in front of the storage root, for the cdn URL of live jobs with cdn_distribution"),
    ("--live-srt-ingest", "MEDIAJOBS_LIVE_SRT_INGEST", None, "",
     "HOST:LOW-HIGH: SRT ingest for live jobs, each given its own port of LOW-HIGH (at most 1,000) and passphrase, "
     "reached at HOST; the live workers run srt-live-transmit listeners there (default none: SRT live jobs are "
     "refused)"),
    ("--allow-private-callbacks", "MEDIAJOBS_ALLOW_PRIVATE_CALLBACKS", _flag, False,
     "let live jobs' callback URLs reach private and loopback addresses (by default refused, so that a "
     "callback cannot probe services next to the server); 1/true/yes to allow"),
    ("--log-level", "MEDIAJOBS_LOG_LEVEL", None, "INFO", "logging level: DEBUG, INFO, WARNING or ERROR"),
]

# The HTTP gateway's event streams (GET /v1/jobs:watch; gateway/sse.py
# SseSettings, whose field each names): flag, environment variable, field,
# parser (with its range), default, help. mediajobs-server and
# mediajobs-gateway take the same ones.
SSE_FLAGS: list[tuple[str, str, str, Callable[[str], float], float, str]] = [
    ("--sse-max-streams", "MEDIAJOBS_SSE_MAX_STREAMS", "max_streams", _number(int, 1, 1_000_000, "a whole number"),
     Config.sse_max_streams, "event streams one HTTP gateway serves at once; more are 503 with Retry-After "
     "(1-1000000)"),
    ("--sse-heartbeat", "MEDIAJOBS_SSE_HEARTBEAT_S", "heartbeat_s", _number(float, 0.05, 3600, "a number of seconds"),
     Config.sse_heartbeat_s, "seconds of quiet after which an event stream gets a `: keepalive` comment "
     "(0.05-3600)"),
    ("--sse-resume-window", "MEDIAJOBS_SSE_RESUME_WINDOW_S", "resume_window_s",
     _number(float, 0, 86400, "a number of seconds"), Config.sse_resume_window_s,
     "seconds an event stream stays open, resuming, while the gRPC server is unavailable; then it ends with "
     "`event: error` (0 to 1 day)"),
]
_FLAGS += [(flag, var, parse, default, text) for flag, var, _field, parse, default, text in SSE_FLAGS]

# The settings of the HTTP gateway (Config.gateway_settings) as mediajobs-gateway
# flags, for the gateway as a child process (gateway/process.py).
GATEWAY_FLAGS: dict[str, str] = {"kaltura_partners": "--kaltura-partners", "cors_origins": "--cors-origin",
                                 **{f"sse_{f}": flag for flag, _var, f, *_rest in SSE_FLAGS}}


def _env_default(env: dict[str, str], flag: str, var: str, parse: Callable[[str], object] | None,
                 default: object) -> object:
    raw = env.get(var)
    if raw is None or raw == "":
        return default
    if parse is None:
        return raw
    try:
        return parse(raw)
    except argparse.ArgumentTypeError as e:
        raise ConfigError(f"environment variable {var} (the {flag} flag): {e}") from None


def _check_listen(listen: str, flag: str = "--listen") -> None:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{flag}: {listen[:60]!r} is not HOST:PORT (e.g. 127.0.0.1:50051, [::]:50051, 0.0.0.0:0)")


def is_loopback(listen: str) -> bool:
    """Whether HOST of HOST:PORT is this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_srt_ingest(text: str) -> tuple[str, int, int]:
    """`HOST:LOW-HIGH` -> (host, low, high); ConfigError naming the flag."""
    host, sep, ports = text.rpartition(":")
    low_s, dash, high_s = ports.partition("-")
    ok = bool(sep and host and low_s.isdigit() and (not dash or high_s.isdigit()))
    low = int(low_s) if low_s.isdigit() else 0
    high = int(high_s) if dash and high_s.isdigit() else low
    if not ok or not 1024 <= low <= high <= 65535 or high - low >= 1000 or any(c.isspace() for c in host):
        raise ConfigError(f"--live-srt-ingest: {text[:60]!r} is not HOST:LOW-HIGH with ports 1024-65535, at most "
                          "1,000 of them (e.g. media.example.com:9000-9099)")
    return host.strip("[]"), low, high


def _check_url(flag: str, url: str, schemes: tuple[str, ...], required: bool = False) -> None:
    if not url and not required:
        return
    if not url.startswith(schemes) or len(url) > 512 or any(c.isspace() for c in url) or \
            not url.split("://", 1)[1].split("/", 1)[0]:
        raise ConfigError(f"{flag}: {url[:60]!r} is not a {' or '.join(s[:-3] for s in schemes)} URL "
                          f"(e.g. {schemes[0]}media.example.com{':1935/live' if 'rtmp' in schemes[0] else ''})")


def parse_args(argv: list[str] | None = None, env: dict[str, str] | None = None) -> Config:
    """Flags, then MEDIAJOBS_* variables, then defaults. Exits with status 2
    and one line on stderr for anything that cannot work."""
    environ = dict(os.environ if env is None else env)
    ap = _Parser(
        prog="mediajobs-server",
        description="Run the mediajobs gRPC server (jobs, workers, media, watch, health, reflection). "
                    "Every flag can also be set with the MEDIAJOBS_* variable named in its help.",
    )
    ap.add_argument("--version", action="version", version=f"mediajobs {version()}")
    cors_env: tuple[str, ...] = ()
    try:
        for flag, var, parse, default, text in _FLAGS:
            value = _env_default(environ, flag, var, parse, default)
            shown = "; default %(default)s" if value not in (None, "") else ""
            kw: dict[str, object] = {"default": value, "help": f"{text} (env {var}{shown})"}
            if parse is not None:
                kw["type"] = parse
            if flag == "--durability":
                kw["choices"] = DURABILITY_MODES
            if parse is _flag:  # `--flag` alone means yes; `--flag no` also works
                kw["nargs"] = "?"
                kw["const"] = True
            if flag == "--cors-origin":  # repeatable: given on the command line, it replaces the variable's list
                kw = {"action": "append", "type": parse_cors_origin, "default": None, "metavar": "ORIGIN",
                      "help": f"{text} (env {var}, comma-separated)"}
                cors_env = value if isinstance(value, tuple) else ()
            ap.add_argument(flag, **kw)  # type: ignore[arg-type]
        a = ap.parse_args(argv)
        cors_origins = tuple(dict.fromkeys(a.cors_origin)) if a.cors_origin is not None else cors_env
        if a.durability not in DURABILITY_MODES:
            raise ConfigError(f"--durability / MEDIAJOBS_DURABILITY: {a.durability[:20]!r} is not a mode: use strict or fast")
        if a.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"--log-level: {a.log_level[:20]!r} is not a level: use DEBUG, INFO, WARNING or ERROR")
        _check_listen(a.listen)
        _check_url("--live-ingest-url", a.live_ingest_url, ("rtmp://", "rtmps://"), required=True)
        _check_url("--live-playback-base-url", a.live_playback_base_url, ("http://", "https://"))
        _check_url("--live-cdn-base-url", a.live_cdn_base_url, ("http://", "https://"))
        if a.live_srt_ingest:
            parse_srt_ingest(a.live_srt_ingest)
        loopback = is_loopback(a.listen)
        auth = (a.auth or ("none" if loopback else "keys")).lower()
        if auth not in ("none", "keys"):
            raise ConfigError(f"--auth / MEDIAJOBS_AUTH: {auth[:20]!r} is not a mode: use none or keys")
        if not loopback and not a.insecure and (auth == "none" or not a.tls_cert):
            missing = " and ".join(w for w, m in (("TLS (--tls-cert/--tls-key)", not a.tls_cert),
                                                   ("API keys (--auth keys)", auth == "none")) if m)
            raise ConfigError(f"--listen {a.listen[:60]} can be reached from other machines, but without "
                              f"{missing} anyone there could do anything: add {missing}, or give --insecure "
                              "to serve it as it is (a trusted network)")
        if a.http_gateway not in ("process", "inline"):
            raise ConfigError(f"--http-gateway / MEDIAJOBS_HTTP_GATEWAY: {a.http_gateway[:20]!r} is not a mode: "
                              "use process or inline")
        if a.http_listen:
            _check_listen(a.http_listen, "--http-listen")
            if not is_loopback(a.http_listen) and not a.insecure:
                raise ConfigError(f"--http-listen {a.http_listen[:60]} can be reached from other machines, but the "
                                  "HTTP gateway has no TLS of its own: keep it on a loopback address behind a TLS "
                                  "proxy, or give --insecure (a trusted network)")
        if a.reflection_auth and auth != "keys":
            raise ConfigError("--reflection-auth goes with --auth keys (without keys there is nothing to check)")
        if bool(a.tls_cert) != bool(a.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together: give both (TLS) or neither")
        if a.tls_client_ca and not a.tls_cert:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
    except ConfigError as e:
        sys.stderr.write(f"mediajobs-server: {e}\n")
        raise SystemExit(2) from None
    import logging

    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return Config(
        listen=a.listen,
        db=a.db,
        data_dir=Path(a.data_dir).expanduser() if a.data_dir else default_data_dir(),
        event_retention_s=a.event_retention,
        storage_root=Path(a.storage_root).expanduser() if a.storage_root else None,
        lease_sweep_interval_s=a.lease_sweep_interval,
        shutdown_grace_s=a.shutdown_grace,
        durability=a.durability,
        max_concurrent_rpcs=int(a.max_concurrent_rpcs),
        max_write_queue=int(a.max_write_queue),
        max_watch_streams=int(a.max_watch_streams),
        max_parked_acquires=int(a.max_parked_acquires),
        bulk_runners=int(a.bulk_runners),
        live_ingest_url=a.live_ingest_url.rstrip("/"),
        live_playback_base_url=a.live_playback_base_url.rstrip("/"),
        live_cdn_base_url=a.live_cdn_base_url.rstrip("/"),
        allow_private_callbacks=bool(a.allow_private_callbacks),
        live_srt_ingest=a.live_srt_ingest,
        auth=auth,
        reflection_auth=bool(a.reflection_auth),
        insecure=bool(a.insecure),
        quota_pending_jobs=int(a.quota_pending_jobs),
        quota_open_bulk_uploads=int(a.quota_open_bulk_uploads),
        quota_live_jobs_online=int(a.quota_live_jobs_online),
        quota_requests_per_second=float(a.quota_requests_per_second),
        max_connection_age_s=float(a.max_connection_age),
        max_connection_age_grace_s=float(a.max_connection_age_grace),
        tls_cert=Path(a.tls_cert).expanduser() if a.tls_cert else None,
        tls_key=Path(a.tls_key).expanduser() if a.tls_key else None,
        tls_client_ca=Path(a.tls_client_ca).expanduser() if a.tls_client_ca else None,
        http_listen=a.http_listen,
        http_gateway=a.http_gateway,
        kaltura_partners=a.kaltura_partners,
        cors_origins=cors_origins,
        sse_max_streams=int(a.sse_max_streams),
        sse_heartbeat_s=float(a.sse_heartbeat),
        sse_resume_window_s=float(a.sse_resume_window),
    )
