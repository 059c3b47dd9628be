"""API keys on every call: `authorization: Bearer <key>` added to the
metadata of each call a MediaJobsClient (sync channel) or a Worker (asyncio
channel) makes, by channel interceptors (call credentials would need TLS;
a key also works over a plaintext channel, e.g. behind a TLS-terminating
proxy)."""
from __future__ import annotations

import collections
from typing import Any

import grpc


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                                   "wait_for_ready", "compression")),
               grpc.ClientCallDetails):
    pass


def _with_key(details: Any, header: tuple[str, str]) -> Any:
    metadata = [m for m in (details.metadata or ()) if m[0] != "authorization"] + [header]
    return _Details(details.method, details.timeout, metadata, details.credentials,
                    getattr(details, "wait_for_ready", None), getattr(details, "compression", None))


class KeyInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                     grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """For grpc.intercept_channel (sync channels)."""

    def __init__(self, api_key: str) -> None:
        self.header = ("authorization", f"Bearer {api_key}")

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_with_key(details, self.header), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_with_key(details, self.header), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(_with_key(details, self.header), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(_with_key(details, self.header), request_iterator)


def _aio_details(details: Any, header: tuple[str, str]) -> Any:
    from grpc.aio import ClientCallDetails, Metadata

    md = Metadata(*[(k, v) for k, v in (details.metadata or ()) if k != "authorization"], header)
    return ClientCallDetails(details.method, details.timeout, md, details.credentials, details.wait_for_ready)


def aio_interceptors(api_key: str) -> list[Any]:
    """For grpc.aio channels (the worker SDK)."""
    from grpc import aio

    header = ("authorization", f"Bearer {api_key}")

    class UU(aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return await continuation(_aio_details(details, header), request)

    class US(aio.UnaryStreamClientInterceptor):
        async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
            return await continuation(_aio_details(details, header), request)

    class SU(aio.StreamUnaryClientInterceptor):
        async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
            return await continuation(_aio_details(details, header), request_iterator)

    class SS(aio.StreamStreamClientInterceptor):
        async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
            return await continuation(_aio_details(details, header), request_iterator)

    return [UU(), US(), SU(), SS()]
