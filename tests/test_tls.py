"""TLS and mutual TLS on the gRPC port, over real channels, with test CAs
from trustme: plaintext clients are refused, mutual TLS refuses clients
without a certificate of the client CA, certificates reload without a
restart (file change or SIGHUP), and bad files stop the server with one
line."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mediajobs.client import MediaJobsClient, tls_credentials

from conftest import start_app


def write_server_files(ca: trustme.CA, folder: Path) -> tuple[Path, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_path.write_bytes(cert.private_key_pem.bytes())
    return cert_path, key_path


async def check(port: int, creds: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) if creds is not None \
        else grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    async with channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as e:
            return e.code()
    return grpc.StatusCode.OK


def creds_for(ca: trustme.CA, client: trustme.LeafCert | None = None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
    return grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem.bytes(), private_key=client.private_key_pem.bytes(),
        certificate_chain=b"".join(blob.bytes() for blob in client.cert_chain_pems))


async def test_tls_refuses_plaintext_and_reloads_a_new_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = write_server_files(ca, tmp_path / "tls")
    app = await start_app(str(tmp_path / "db.sqlite"), tls_cert=cert, tls_key=key)
    try:
        assert await check(app.port, creds_for(ca)) == grpc.StatusCode.OK
        assert await check(app.port, None) == grpc.StatusCode.UNAVAILABLE  # plaintext: no handshake
        assert await check(app.port, creds_for(trustme.CA())) == grpc.StatusCode.UNAVAILABLE  # unknown server
        # A certificate from another CA replaces the files: new connections get it, no restart.
        ca2 = trustme.CA()
        cert2 = ca2.issue_cert("127.0.0.1", "localhost")
        key.write_bytes(cert2.private_key_pem.bytes())
        cert.write_bytes(b"".join(blob.bytes() for blob in cert2.cert_chain_pems))
        os.utime(cert, ns=(1, 1))  # a change the size or time shows, whatever the file system's clock
        assert await check(app.port, creds_for(ca2)) == grpc.StatusCode.OK
        assert await check(app.port, creds_for(ca)) == grpc.StatusCode.UNAVAILABLE
        assert app.tls is not None and app.tls.reloads == 1
        # A half-written file is not taken: the certificate in use stays.
        key.write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
        assert await check(app.port, creds_for(ca2)) == grpc.StatusCode.OK
        assert app.tls.reloads == 1
        # SIGHUP's path: read again even when the files look the same.
        key.write_bytes(cert2.private_key_pem.bytes())
        app.tls.request_reload()
        assert await check(app.port, creds_for(ca2)) == grpc.StatusCode.OK
        assert app.tls.reloads == 2
        # The Python client and CLI speak TLS with a CA file.
        (tmp_path / "ca.pem").write_bytes(ca2.cert_pem.bytes())
        def list_with_tls() -> int:  # sync client: off the loop that runs the server
            c = MediaJobsClient(f"127.0.0.1:{app.port}", credentials=tls_credentials(tmp_path / "ca.pem"))
            try:
                return len(c.list_jobs().jobs)
            finally:
                c.close()

        assert await asyncio.to_thread(list_with_tls) == 0
        from mediajobs.client.cli import main

        code = await asyncio.to_thread(main, ["--server", f"127.0.0.1:{app.port}", "--tls-ca",
                                              str(tmp_path / "ca.pem"), "jobs", "list"])
        assert code == 0
        plain = await asyncio.to_thread(main, ["--server", f"127.0.0.1:{app.port}", "jobs", "list"])
        assert plain == 1  # a plaintext CLI cannot talk to a TLS server
    finally:
        await app.stop(None)


async def test_mutual_tls_refuses_clients_without_a_certificate_of_the_client_ca(tmp_path: Path) -> None:
    server_ca, client_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()
    cert, key = write_server_files(server_ca, tmp_path / "tls")
    ca_file = tmp_path / "tls" / "clients.pem"
    ca_file.write_bytes(client_ca.cert_pem.bytes())
    app = await start_app(str(tmp_path / "db.sqlite"), tls_cert=cert, tls_key=key, tls_client_ca=ca_file)
    try:
        good = client_ca.issue_cert("worker-1@example.com")
        assert await check(app.port, creds_for(server_ca, good)) == grpc.StatusCode.OK
        assert await check(app.port, creds_for(server_ca)) == grpc.StatusCode.UNAVAILABLE  # no certificate
        stranger = other_ca.issue_cert("intruder@example.com")
        assert await check(app.port, creds_for(server_ca, stranger)) == grpc.StatusCode.UNAVAILABLE
    finally:
        await app.stop(None)


def run_server(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAJOBS_")}
    return subprocess.run([sys.executable, "-m", "mediajobs.server", "--data-dir", str(tmp_path / "data"),
                           "--listen", "127.0.0.1:0", *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("case", ["mismatched key", "not pem", "missing", "only cert", "ca without cert"])
def test_bad_tls_files_stop_the_server_with_one_line(tmp_path: Path, case: str) -> None:
    ca = trustme.CA()
    cert, key = write_server_files(ca, tmp_path / "tls")
    other_key = tmp_path / "tls" / "other.key"
    other_key.write_bytes(ca.issue_cert("x.example").private_key_pem.bytes())
    args = {"mismatched key": ["--tls-cert", str(cert), "--tls-key", str(other_key)],
            "not pem": ["--tls-cert", str(cert), "--tls-key", str(tmp_path)],
            "missing": ["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(key)],
            "only cert": ["--tls-cert", str(cert)],
            "ca without cert": ["--tls-client-ca", str(cert)]}[case]
    r = run_server(tmp_path, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("mediajobs-server: ") and "--tls-" in lines[0], r.stderr
