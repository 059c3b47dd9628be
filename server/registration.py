"""Registering servicers from the proto descriptors.

Like the generated `add_*Servicer_to_server`, with two differences: a request
that protobuf cannot parse (nested too deep) reaches the servicer as an
INVALID_ARGUMENT that names the path instead of failing inside gRPC with
UNKNOWN; and a method may be marked `passthrough`: its handler may then yield
already-serialized response bytes (WatchJobs frames each event once and fans
the bytes out to every watcher).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import grpc
from google.protobuf import descriptor, message_factory

from .payloads import request_deserializer

_FACTORIES: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _passthrough(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    def ser(msg: Any) -> bytes:
        return msg if isinstance(msg, bytes) else serialize(msg)

    return ser


def add_service(
    server: grpc.aio.Server, service: descriptor.ServiceDescriptor, servicer: Any, passthrough: Iterable[str] = (),
    auth: Any = None,
) -> None:
    """`auth` (an auth.Authenticator, with --auth keys): every method checks
    the caller's API key and role first."""
    raw = set(passthrough)
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for m in service.methods:
        req = message_factory.GetMessageClass(m.input_type)
        resp = message_factory.GetMessageClass(m.output_type)
        ser = resp.SerializeToString
        behavior = getattr(servicer, m.name)
        if auth is not None:
            from .auth import guard

            behavior = guard(auth, service.full_name, m.name, behavior, m.client_streaming, m.server_streaming)
        handlers[m.name] = _FACTORIES[(m.client_streaming, m.server_streaming)](
            behavior,
            # A request nested past what protobuf can parse reaches the
            # method (its handle_errors) as an UndecodableRequest, answered
            # INVALID_ARGUMENT naming the path, not gRPC's bare UNKNOWN.
            request_deserializer=request_deserializer(req),
            response_serializer=_passthrough(ser) if m.name in raw else ser,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
