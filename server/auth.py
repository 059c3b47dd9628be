"""Authentication and roles (`--auth keys`): every call of every service
carries `authorization: Bearer <API key>`; a missing or bad key is
UNAUTHENTICATED, a role that does not allow the call PERMISSION_DENIED
naming the roles that do. Health and reflection stay open.

Roles:
- viewer: reads and watches (Get*, List*, Watch*, Count*, Read*, Export*,
  Query*).
- worker: WorkerService (lease, heartbeat, complete, ...), the batch calls
  engines make (AddMediaInfo, CheckEntryIsDone, AddBulkUploadResults,
  UpdateBulkUploadResults), and GetJob of the jobs its key holds a lease on
  (any other job is NOT_FOUND to it).
- editor: reads, those batch calls, and every change (create, update,
  delete, abort, re-run; jobs, entries, templates, cue points, bulk uploads,
  live jobs).
- admin: everything.

A key is checked against the database once and then cached for
CACHE_S seconds, so a revoked key stops working within that time; its
last-used time is written at most once a minute.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import grpc

from .errors import ServiceError
from .principal import Caller, set_caller
from .store import Store
from .store import api_keys

CACHE_S = 10.0
TOUCH_S = 60.0
MAX_CACHED = 10_000

READ_PREFIXES = ("Get", "List", "Watch", "Count", "Read", "Export", "Query")
BATCH_CALLS = {"AddMediaInfo", "CheckEntryIsDone", "AddBulkUploadResults", "UpdateBulkUploadResults"}
WORKER_SERVICE = "mediajobs.v1.WorkerService"
JOB_SERVICE = "mediajobs.v1.JobService"
ADMIN_SERVICE = "mediajobs.v1.AdminService"


def roles_for(service: str, method: str) -> tuple[str, ...]:
    """The roles that may call `service`/`method`. AdminService is admin-only,
    its Get/List calls included (checked before the read prefixes); which
    projects an admin key reaches is AdminService's own check."""
    if service == ADMIN_SERVICE:
        return ("admin", "editor", "worker", "viewer") if method == "GetCaller" else ("admin",)
    if service == WORKER_SERVICE:
        return ("admin", "worker")
    if method in BATCH_CALLS:
        return ("admin", "editor", "worker")
    if service == JOB_SERVICE and method == "GetJob":
        return ("admin", "editor", "viewer", "worker")  # a worker: only the jobs it holds (JobService.GetJob)
    if method.startswith(READ_PREFIXES):
        return ("admin", "editor", "viewer")
    return ("admin", "editor")


class Authenticator:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[str, tuple[api_keys.ApiKey | None, float]] = {}
        self._touched: dict[str, float] = {}
        # Bumped by forget(): a lookup that started before a revocation does
        # not put the old answer back into the cache.
        self._generation = 0
        # Called with (key_id, project) by forget().
        self.on_forget: list[Callable[[str, str], None]] = []

    def forget(self, key_id: str = "", project: str = "") -> None:
        """A key was revoked (`key_id`), or a project deleted with all its
        keys (`project`), and the change committed: drop the cached keys,
        so they are refused from the next call on (not within CACHE_S), and
        tell the listeners (the watch hub ends those keys' open streams)."""
        self._generation += 1
        for text, (key, _expiry) in list(self._cache.items()):
            if key is not None and (key.id == key_id or key.project == project):
                del self._cache[text]
        for listener in self.on_forget:
            listener(key_id, project)

    async def check(self, context: grpc.aio.ServicerContext, method: str, allowed: tuple[str, ...]
                    ) -> api_keys.ApiKey:
        """The caller's key, or ServiceError (UNAUTHENTICATED; PERMISSION_DENIED
        when its role is not one of `allowed`)."""
        header = ""
        for k, v in context.invocation_metadata() or ():
            if k == "authorization":
                header = v if isinstance(v, str) else v.decode("latin-1")
                break
        if not header.startswith("Bearer "):
            raise ServiceError(grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING",
                               "this server needs an API key: send the metadata `authorization: Bearer <key>` "
                               "(mediajobs --api-key, or MEDIAJOBS_API_KEY)")
        text = header[len("Bearer "):].strip()
        now = time.monotonic()
        hit = self._cache.get(text)
        if hit is not None and hit[1] > now:
            key = hit[0]
        else:
            generation = self._generation
            key = await self.store.read(lambda db, p: api_keys.verify(db, text))
            if generation == self._generation:  # no revocation since the read began
                if len(self._cache) >= MAX_CACHED:
                    self._cache.clear()
                self._cache[text] = (key, now + CACHE_S)
        if key is None:
            raise ServiceError(grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID",
                               "the API key is unknown or revoked; ask an admin for a key "
                               "(mediajobs-server keys create)")
        if key.role not in allowed:
            raise ServiceError(grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED",
                               f"role {key.role} cannot call {method}; it needs the role {' or '.join(allowed)}",
                               metadata={"role": key.role, "needed": ",".join(allowed), "method": method})
        self.store.quotas.take(key.id)  # requests per second per key
        if now - self._touched.get(key.id, 0.0) > TOUCH_S:
            self._touched[key.id] = now
            stamp = self.store.clock()
            asyncio.ensure_future(self._touch(key.id, stamp))
        return key

    async def _touch(self, key_id: str, now_us: int) -> None:
        try:
            await self.store.write(lambda tx: api_keys.touch(tx.db, key_id, now_us), bounded=False)
        except Exception:  # noqa: BLE001 - a last-used time is not worth failing anything for
            pass


def guard(auth: Authenticator, service: str, method: str, fn: Any, client_streaming: bool,
          server_streaming: bool) -> Any:
    """`fn` (a servicer method) behind the key and role check."""
    from grpc_status import rpc_status

    from .errors import fail_call

    allowed = roles_for(service, method)

    async def refused(context: grpc.aio.ServicerContext) -> bool:
        try:
            key = await auth.check(context, method, allowed)
        except ServiceError as e:
            fail_call(context, rpc_status.to_status(e.to_status()))
            return True
        # The call's project (every store call of it is scoped to it) and
        # the creator of what it makes.
        set_caller(Caller(key.id, key.project, key.role))
        return False

    if server_streaming:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if await refused(context):
                return
            async for item in fn(request, context):
                yield item
        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if await refused(context):
            return None
        return await fn(request, context)
    del client_streaming  # the same wrapper serves a request iterator
    return unary


class ReflectionGuard(grpc.aio.ServerInterceptor):
    """--reflection-auth: reflection calls need a key too (any role); they
    are registered by grpcio-reflection, outside add_service, so they are
    checked here."""

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or not details.method.startswith("/grpc.reflection."):
            return handler
        method = details.method.rpartition("/")[2]
        inner = handler.stream_stream
        auth = self.auth

        async def checked(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            from grpc_status import rpc_status

            from .errors import fail_call

            try:
                await auth.check(context, method, api_keys.ROLES)  # any key
            except ServiceError as e:
                fail_call(context, rpc_status.to_status(e.to_status()))
                return
            async for item in inner(request_iterator, context):
                yield item

        return grpc.stream_stream_rpc_method_handler(checked, request_deserializer=handler.request_deserializer,
                                                     response_serializer=handler.response_serializer)
