"""Cue points: XML import (defusedxml, with limits) and export. (In progress.)"""
from __future__ import annotations

import grpc

from mediajobs.v1 import media_service_pb2 as msvc

from .errors import ServiceError
from .store import Store


async def import_cue_points(store: Store, request: msvc.ImportCuePointsRequest) -> msvc.ImportCuePointsResponse:
    raise ServiceError(grpc.StatusCode.UNIMPLEMENTED, "NOT_IMPLEMENTED", "ImportCuePoints is not implemented yet")


async def export_cue_points(store: Store, request: msvc.ExportCuePointsRequest) -> msvc.ExportCuePointsResponse:
    raise ServiceError(grpc.StatusCode.UNIMPLEMENTED, "NOT_IMPLEMENTED", "ExportCuePoints is not implemented yet")
