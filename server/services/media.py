"""MediaService: entries, media info, job templates and cue points.
Thin servicer: validate -> call the store -> shape the reply."""
from __future__ import annotations

from pathlib import Path

import grpc
from google.protobuf import empty_pb2

from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import media_service_pb2 as msvc
from mediajobs.v1 import media_service_pb2_grpc as msvc_grpc

from .. import cue_points
from ..errors import ServiceError, handle_errors
from ..store import Store


def unimplemented(what: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNIMPLEMENTED, "NOT_IMPLEMENTED", f"{what} is not implemented yet")


class MediaService(msvc_grpc.MediaServiceServicer):
    def __init__(self, store: Store, storage_root: Path) -> None:
        self.store = store
        self.storage_root = storage_root

    # -- cue points (server/cue_points.py) ------------------------------------

    @handle_errors
    async def ImportCuePoints(
        self, request: msvc.ImportCuePointsRequest, context: grpc.aio.ServicerContext
    ) -> msvc.ImportCuePointsResponse:
        return await cue_points.import_cue_points(self.store, request)

    @handle_errors
    async def ExportCuePoints(
        self, request: msvc.ExportCuePointsRequest, context: grpc.aio.ServicerContext
    ) -> msvc.ExportCuePointsResponse:
        return await cue_points.export_cue_points(self.store, request)
