"""The gRPC API the gateway fronts: one channel, a stub per service, and the
caller's credentials carried onto each call."""
from __future__ import annotations

from typing import Any, Sequence

import grpc
from aiohttp import web

from mediajobs.v1 import admin_service_pb2, bulk_upload_service_pb2, job_service_pb2, live_job_service_pb2
from mediajobs.v1 import media_service_pb2, worker_service_pb2
from mediajobs.v1 import admin_service_pb2_grpc, bulk_upload_service_pb2_grpc, job_service_pb2_grpc
from mediajobs.v1 import live_job_service_pb2_grpc, media_service_pb2_grpc, worker_service_pb2_grpc

SERVICES = {
    s.name: s
    for mod in (job_service_pb2, media_service_pb2, bulk_upload_service_pb2, live_job_service_pb2,
                admin_service_pb2, worker_service_pb2)
    for s in mod.DESCRIPTOR.services_by_name.values()
}

# Replies of the API fit gRPC's default 4 MiB; requests the gateway forwards
# are bounded by the HTTP body limit (app.MAX_BODY_BYTES).
CHANNEL_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 60_000),
)


class Upstream:
    """`target` is the gRPC server (HOST:PORT or unix:PATH); `credentials`
    its TLS (None: plaintext)."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None = None) -> None:
        self.target = target
        self.channel = grpc.aio.secure_channel(target, credentials, options=list(CHANNEL_OPTIONS)) \
            if credentials is not None else grpc.aio.insecure_channel(target, options=list(CHANNEL_OPTIONS))
        self.stubs: dict[str, Any] = {
            "JobService": job_service_pb2_grpc.JobServiceStub(self.channel),
            "MediaService": media_service_pb2_grpc.MediaServiceStub(self.channel),
            "BulkUploadService": bulk_upload_service_pb2_grpc.BulkUploadServiceStub(self.channel),
            "LiveJobService": live_job_service_pb2_grpc.LiveJobServiceStub(self.channel),
            "AdminService": admin_service_pb2_grpc.AdminServiceStub(self.channel),
            "WorkerService": worker_service_pb2_grpc.WorkerServiceStub(self.channel),
        }

    def method(self, service: str, rpc: str) -> Any:
        return getattr(self.stubs[service], rpc)

    async def close(self) -> None:
        await self.channel.close()


def call_metadata(request: web.Request) -> list[tuple[str, str]]:
    """What of the HTTP request goes onto the gRPC call: the API key
    (`Authorization: Bearer <key>`), as the gRPC API takes it."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() != "bearer ":
        return []
    key = auth[7:].strip()
    if len(key) > 4096 or not key.isascii() or not key.isprintable():
        # gRPC metadata takes printable ASCII only: a key with anything else
        # is no key anyone has, so it goes on as one the server refuses.
        key = "mjk_invalid"
    return [("authorization", "Bearer " + key)]
