"""Playing the server on a grpcio-testing scripted channel: the code under
test runs in a thread, the test thread takes each call, checks the request
and answers it (test_cli.py, test_cli_media.py)."""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from mediajobs.client.cli import main


def spawn(fn: Callable[..., Any], *args: Any, **kw: Any) -> Future[Any]:
    """Run fn in a daemon thread (a stuck call fails its test by timeout
    instead of hanging the test run)."""
    f: Future[Any] = Future()

    def run() -> None:
        try:
            f.set_result(fn(*args, **kw))
        except BaseException as e:  # noqa: BLE001 - handed to the test
            f.set_exception(e)

    threading.Thread(target=run, daemon=True).start()
    return f


def run_cli(fake: Any, *argv: str) -> Future[int]:
    return spawn(main, list(argv), channel=fake)


def take(kind: str, fake: Any, service: Any, name: str, running: Future[Any],
         timeout: float = 5.0) -> tuple[Any, Any]:
    """The next `name` call of `service` (request, rpc), failing fast if the
    code under test finished (or hangs) without making it."""
    box: queue.Queue[Any] = queue.Queue()
    take_call = getattr(fake, f"take_{kind}")
    threading.Thread(target=lambda: box.put(take_call(service.methods_by_name[name])), daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            _md, request, rpc = box.get(timeout=0.02)
            return request, rpc
        except queue.Empty:
            pass
        if running.done():
            raise AssertionError(f"finished without calling {name}: {running.result()!r}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {name} call within {timeout}s")


def ok(rpc: Any, response: Any) -> None:
    rpc.terminate(response, (), grpc.StatusCode.OK, "")


def rich_status(code: grpc.StatusCode, message: str, reason: str, *, violations: list[tuple[str, str]] | None = None,
                metadata: dict[str, str] | None = None) -> grpc.Status:
    """What the server sends for an error: ErrorInfo (+ BadRequest)."""
    details: list[Any] = [error_details_pb2.ErrorInfo(reason=reason, domain="mediajobs", metadata=metadata or {})]
    if violations:
        details.append(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations]))
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=packed))


def fail_unary(rpc: Any, st: grpc.Status) -> None:
    rpc.terminate(None, st.trailing_metadata, st.code, st.details)


def fail_stream(rpc: Any, st: grpc.Status) -> None:
    rpc.terminate(st.trailing_metadata, st.code, st.details)
