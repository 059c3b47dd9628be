"""`mediajobs-gateway`: the HTTP gateway as a process of its own, in front of
a mediajobs gRPC server (any number of gateways per server).

    mediajobs-gateway --server 127.0.0.1:50051 --listen 127.0.0.1:8080

Every call carries the HTTP request's API key to the server, which checks
it (`Authorization: Bearer <key>`, or the vendor dialect's form of it): the
gateway holds no credentials of its own, except the Kaltura partners file
(--kaltura-partners), since Kaltura's clients sign their sessions with a
secret the server does not keep.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Callable

import grpc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="mediajobs-gateway", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default=os.environ.get("MEDIAJOBS_SERVER", "127.0.0.1:50051"),
                    help="the mediajobs gRPC server, HOST:PORT (env MEDIAJOBS_SERVER; default 127.0.0.1:50051)")
    ap.add_argument("--listen", default=os.environ.get("MEDIAJOBS_GATEWAY_LISTEN", "127.0.0.1:8080"),
                    help="HOST:PORT to serve HTTP on (env MEDIAJOBS_GATEWAY_LISTEN; default 127.0.0.1:8080)")
    ap.add_argument("--tls-ca", default=os.environ.get("MEDIAJOBS_TLS_CA", ""),
                    help="the server uses TLS: trust this CA file (env MEDIAJOBS_TLS_CA)")
    ap.add_argument("--tls-system-roots", action="store_true",
                    help="the server uses TLS: trust the system's CAs")
    ap.add_argument("--kaltura-partners", default=os.environ.get("MEDIAJOBS_KALTURA_PARTNERS", ""),
                    help="Kaltura partners file: JSON {partnerId: {secret, api_key, user_api_key}} for KS "
                         "sessions (env MEDIAJOBS_KALTURA_PARTNERS)")
    ap.add_argument("--insecure", action="store_true",
                    help="allow a --listen address other machines can reach (the gateway has no TLS of its own: "
                         "put it behind a TLS proxy)")
    from ..config import CORS_HELP, SSE_FLAGS, ConfigError, _check_listen, _env_default, is_loopback, \
        parse_cors_origin, parse_cors_origins

    ap.add_argument("--cors-origin", action="append", type=parse_cors_origin, metavar="ORIGIN",
                    help=f"{CORS_HELP} (env MEDIAJOBS_CORS_ORIGINS, comma-separated)")
    for flag, var, _field, parse, default, text in SSE_FLAGS:
        ap.add_argument(flag, type=parse, default=None, metavar="SECONDS" if "seconds" in text else "N",
                        help=f"{text} (env {var}; default {default:g})")
    ap.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    ap.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)  # started by mediajobs-server
    a = ap.parse_args(argv)

    try:
        # Not given: the environment variable's value, checked as the flag's would be.
        if a.cors_origin is None:
            a.cors_origin = _env_default(dict(os.environ), "--cors-origin", "MEDIAJOBS_CORS_ORIGINS",
                                         parse_cors_origins, ())
        a.cors_origin = tuple(dict.fromkeys(a.cors_origin))
        for flag, var, _field, parse, default, _text in SSE_FLAGS:
            dest = flag[2:].replace("-", "_")
            if getattr(a, dest) is None:
                setattr(a, dest, _env_default(dict(os.environ), flag, var, parse, default))
        _check_listen(a.listen)
        if not is_loopback(a.listen) and not a.insecure:
            raise ConfigError(f"--listen {a.listen[:60]} can be reached from other machines, but the gateway has "
                              "no TLS of its own: keep it on a loopback address behind a TLS proxy, or give "
                              "--insecure (a trusted network)")
    except ConfigError as e:
        ap.exit(2, f"mediajobs-gateway: {e}\n")
    return a


async def run(a: argparse.Namespace) -> None:
    from .app import Gateway
    from .upstream import Upstream

    credentials = None
    if a.tls_ca or a.tls_system_roots:
        root = Path(a.tls_ca).expanduser().read_bytes() if a.tls_ca else None
        credentials = grpc.ssl_channel_credentials(root_certificates=root)
    settings = {"kaltura_partners": a.kaltura_partners, "cors_origins": a.cors_origin,
                "sse_max_streams": a.sse_max_streams, "sse_heartbeat_s": a.sse_heartbeat,
                "sse_resume_window_s": a.sse_resume_window}
    gw = await Gateway(Upstream(a.server, credentials), settings).start(a.listen)
    print(f"mediajobs-gateway listening on http://{a.listen.rsplit(':', 1)[0]}:{gw.port} -> {a.server}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await gw.stop()


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (Linux and macOS): the
    gateway's work is mostly HTTP parsing, socket I/O and gRPC calls, and on
    uvloop a GET costs the gateway about a sixth less CPU
    (scripts/bench_gateway.py). None: asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.parent_pid:
        from .process import die_with_parent

        die_with_parent(a.parent_pid)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(run(a))
    except OSError as e:
        print(f"mediajobs-gateway: cannot listen on {a.listen}: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
