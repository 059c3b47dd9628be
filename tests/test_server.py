"""The shell around the services: health per service, reflection (what
grpcurl uses), and the console script's graceful drain on SIGTERM."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mediajobs.server.app import App

from conftest import start_app


async def test_health_per_service_and_not_serving_while_draining(sqlite_path):
    app: App = await start_app(sqlite_path)
    stopped = False
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            h = health_pb2_grpc.HealthStub(ch)
            for name in ("", "mediajobs.v1.JobService"):
                resp = await h.Check(health_pb2.HealthCheckRequest(service=name))
                assert resp.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await h.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
            assert e.value.code() == grpc.StatusCode.NOT_FOUND

            watch = h.Watch(health_pb2.HealthCheckRequest(service="mediajobs.v1.JobService"))
            first = await asyncio.wait_for(watch.read(), 10)
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            stop = asyncio.create_task(app.stop(5))
            stopped = True
            nxt = await asyncio.wait_for(watch.read(), 10)
            assert nxt.status == health_pb2.HealthCheckResponse.NOT_SERVING
            await stop
    finally:
        if not stopped:
            await app.stop(None)


async def test_reflection_lists_and_describes_services(app: App):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)

        async def ask(req: reflection_pb2.ServerReflectionRequest) -> reflection_pb2.ServerReflectionResponse:
            call = stub.ServerReflectionInfo()
            await call.write(req)
            await call.done_writing()
            resp = await call.read()
            return resp

        names = {s.name for s in (await ask(reflection_pb2.ServerReflectionRequest(list_services=""))).list_services_response.service}
        assert {"mediajobs.v1.JobService", "mediajobs.v1.WorkerService", "mediajobs.v1.MediaService",
                "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
        desc = await ask(reflection_pb2.ServerReflectionRequest(file_containing_symbol="mediajobs.v1.JobService"))
        assert desc.file_descriptor_response.file_descriptor_proto, "descriptor for grpcurl describe"
        from google.protobuf import descriptor_pb2

        media = await ask(reflection_pb2.ServerReflectionRequest(file_containing_symbol="mediajobs.v1.MediaService"))
        files = [descriptor_pb2.FileDescriptorProto.FromString(b)
                 for b in media.file_descriptor_response.file_descriptor_proto]
        methods = {m.name for f in files for s in f.service if s.name == "MediaService" for m in s.method}
        assert {"CreateEntry", "CheckEntryIsDone", "AddMediaInfo", "ImportCuePoints", "ExportCuePoints"} <= methods


def test_server_console_script_drains_on_sigterm(tmp_path):
    env = dict(os.environ, MEDIAJOBS_DATA_DIR=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mediajobs.server", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line
        port = int(line.split("listening on 127.0.0.1:")[1].split()[0])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        assert (tmp_path / "mediajobs.db").exists(), "default database in the data dir"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_server_refuses_a_busy_port(tmp_path, app_port_in_use):
    env = dict(os.environ, MEDIAJOBS_DATA_DIR=str(tmp_path))
    r = subprocess.run(
        [sys.executable, "-m", "mediajobs.server", "--listen", f"127.0.0.1:{app_port_in_use}"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert r.returncode != 0
    assert "cannot listen" in r.stderr


@pytest.fixture
def app_port_in_use():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()
