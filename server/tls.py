"""TLS for the gRPC port: `--tls-cert` + `--tls-key`, and with
`--tls-client-ca` mutual TLS (a client must present a certificate that CA
signed; others fail the handshake).

Certificates are reloaded without a restart: gRPC asks `fetch` before each
new handshake, and it answers with the files' new contents when they
changed on disk (size or modification time) or after SIGHUP, else "no
change". A file caught half-written, or a new pair that does not match, is
logged and the certificate in use is kept; connections already open keep
theirs. The files are checked at start-up with Python's ssl module (the
key matches the certificate, the CA file holds certificates), so a bad file
stops the server with one line instead of failing every handshake later.
"""
from __future__ import annotations

import logging
import os
import ssl
import threading
from pathlib import Path

import grpc

log = logging.getLogger("mediajobs.tls")


class TlsError(Exception):
    """A certificate, key or CA file that cannot work; the message names it."""


def _read(path: Path, flag: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TlsError(f"{flag}: cannot read {path}: {e.strerror or e}") from None
    if b"-----BEGIN" not in data:
        raise TlsError(f"{flag}: {path} is not a PEM file (no -----BEGIN line)")
    return data


class TlsFiles:
    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._lock = threading.Lock()
        self._stamp = self._stamps()
        self._forced = False
        self.reloads = 0

    def _stamps(self) -> tuple[tuple[int, int], ...]:
        out = []
        for p in (self.cert, self.key, self.client_ca):
            if p is None:
                continue
            try:
                st = os.stat(p)
                out.append((st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((-1, -1))
        return tuple(out)

    def check(self) -> None:
        """Raise TlsError unless the files make a working configuration."""
        _read(self.cert, "--tls-cert")
        _read(self.key, "--tls-key")
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError) as e:
            raise TlsError(f"--tls-cert/--tls-key: {self.cert} and {self.key} are not a certificate and its "
                           f"private key ({getattr(e, 'reason', None) or e})") from None
        if self.client_ca is not None:
            _read(self.client_ca, "--tls-client-ca")
            try:
                ssl.create_default_context(cafile=str(self.client_ca))
            except (ssl.SSLError, OSError) as e:
                raise TlsError(f"--tls-client-ca: {self.client_ca} holds no usable CA certificate "
                               f"({getattr(e, 'reason', None) or e})") from None

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        self.check()
        ca = _read(self.client_ca, "--tls-client-ca") if self.client_ca is not None else None
        return grpc.ssl_server_certificate_configuration(
            [(_read(self.key, "--tls-key"), _read(self.cert, "--tls-cert"))], root_certificates=ca)

    def request_reload(self) -> None:
        """SIGHUP: read the files again at the next handshake."""
        with self._lock:
            self._forced = True

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's certificate fetcher: a new configuration, or None (keep)."""
        with self._lock:
            stamp = self._stamps()
            if stamp == self._stamp and not self._forced:
                return None
            self._forced = False
            self._stamp = stamp
        try:
            config = self.configuration()
        except TlsError as e:
            log.warning("TLS files changed but cannot be used (%s); keeping the certificate in use", e)
            return None
        self.reloads += 1
        log.warning("TLS certificate reloaded from %s", self.cert)
        return config

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.configuration(), self.fetch,  # type: ignore[arg-type]  # None means "keep" (grpc docs)
            require_client_authentication=self.client_ca is not None)
