"""AdminService: projects, API keys and the audit log. Thin servicer:
authorize -> validate -> call the store (store/projects.py, store/api_keys.py)
-> shape the reply.

Every method is admin-only (auth.roles_for). Within that, who may do what:
- a system admin is an admin key of the server's home project (cfg.project),
  or anyone on a server without keys (`--auth none`: no caller): every
  project, every project's keys and audit entries;
- a project admin (an admin key of any other project) may read its own
  project and manage its own project's keys and audit entries. Creating and
  deleting projects is PERMISSION_DENIED naming what is needed; anything of
  another project is NOT_FOUND exactly as if it did not exist (the same
  error as a name nobody has), so nothing leaks about other projects.

Each change and its audit entry commit in one transaction. A revoked key,
and every key of a deleted project, is dropped from the Authenticator's key
cache as soon as the change has committed, so it is refused from the
reply on instead of after the cache's 10 s.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable

import grpc

from mediajobs.v1 import admin_service_pb2 as asvc
from mediajobs.v1 import admin_service_pb2_grpc as asvc_grpc

from ..admission import Admission, unlimited
from ..errors import ServiceError, clip, handle_errors, invalid_argument
from ..principal import caller
from ..store import Store
from ..store import api_keys
from ..store import projects as store_projects
from ..store.jobs import decode_token, encode_token, list_fingerprint, page_size

if TYPE_CHECKING:
    from ..auth import Authenticator

Project = asvc.Project

KEY_ID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
MAX_KEY_NAME_CHARS = 128
ANONYMOUS = "anonymous"


def _check_ref(name: str, field: str = "name") -> None:
    """A project named in a request (which may predate the name rule)."""
    if not name:
        raise invalid_argument([(field, "required: the project's name")])
    if len(name) > store_projects.MAX_NAME_CHARS:
        raise invalid_argument([(field, f"at most {store_projects.MAX_NAME_CHARS} characters; "
                                        f"{clip(name)} is not a project name")])


def validate_create(req: asvc.CreateProjectRequest) -> None:
    p = req.project
    store_projects.check_name(p.name, "project.name")
    v: list[tuple[str, str]] = []
    if len(p.display_name) > store_projects.MAX_DISPLAY_NAME_CHARS:
        v.append(("project.display_name", f"at most {store_projects.MAX_DISPLAY_NAME_CHARS} characters"))
    if len(p.description) > store_projects.MAX_DESCRIPTION_CHARS:
        v.append(("project.description", f"at most {store_projects.MAX_DESCRIPTION_CHARS} characters"))
    for f in ("creator", "home"):
        if getattr(p, f):
            v.append((f"project.{f}", "output only; leave it empty"))
    if p.HasField("create_time"):
        v.append(("project.create_time", "output only; leave it empty"))
    if v:
        raise invalid_argument(v)


def _key_id(text: str) -> str:
    """The key id of a RevokeApiKey request, uppercased. The value is never
    echoed: someone may send a key's text by mistake."""
    if not text:
        raise invalid_argument([("id", "required: the key's id (26 characters, as ListApiKeys shows it)")])
    key_id = text.upper()
    if not KEY_ID_RE.match(key_id):
        raise invalid_argument([("id", "not a key id: give the 26 characters ListApiKeys shows (never the key "
                                       "text itself)")])
    return key_id


def _page_after(token: str, fingerprint: str, kind: type, default: Any) -> Any:
    """Where a page starts: the last item of the previous page, from its
    token (`default` without one)."""
    if not token:
        return default
    values = decode_token(token, fingerprint)
    if len(values) != 1 or type(values[0]) is not kind:
        raise invalid_argument([("page_token", "not a page token this server issued; start again without one")])
    return values[0]


def key_not_found(key_id: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, "API_KEY_NOT_FOUND",
                        f"API key {key_id} does not exist; list keys with ListApiKeys",
                        metadata={"key_id": key_id}, resource=("mediajobs.v1.ApiKey", key_id))


class AdminService(asvc_grpc.AdminServiceServicer):
    def __init__(self, store: Store, home: str, auth: Authenticator | None = None,
                 admission: Admission | None = None) -> None:
        """`home`: the server's home project (cfg.project); `auth`: the
        server's Authenticator (None with --auth none), whose key cache
        revocations and deletions clear."""
        self.store = store
        self.home = home
        self.auth = auth
        self.admission = admission or unlimited()

    # -- who is calling ---------------------------------------------------------------

    def _scope(self) -> str | None:
        """None for a system admin; else the one project the caller manages."""
        c = caller()
        if c is None:
            return None
        if c.role != "admin":  # roles_for lets only admins in; kept in case that changes
            raise ServiceError(grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED",
                               f"role {c.role} cannot call AdminService; it needs the role admin",
                               metadata={"role": c.role, "needed": "admin"})
        return None if c.project == self.home else c.project

    @staticmethod
    def _actor() -> str:
        c = caller()
        return c.name if c is not None else ANONYMOUS

    def _system_only(self, what: str) -> None:
        if self._scope() is not None:
            c = caller()
            assert c is not None
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED, "ADMIN_OF_HOME_NEEDED",
                f"{what} needs an admin key of project {self.home!r} (a system admin); this key is an admin of "
                f"project {c.project!r} only",
                metadata={"needed": f"admin of project {self.home}", "project": c.project})

    def _visible(self, project: str) -> None:
        """NOT_FOUND (as for a project that does not exist) for a project
        the caller may not see."""
        scope = self._scope()
        if scope is not None and project != scope:
            raise store_projects.not_found(project)

    def _forget_keys(self, key_id: str = "", project: str = "") -> None:
        """Refuse a revoked key, or a deleted project's keys, from now on:
        out of the Authenticator's cache, their open streams ended (nothing
        to do without --auth keys)."""
        if self.auth is not None:
            self.auth.forget(key_id, project)

    # -- projects ------------------------------------------------------------------------

    @handle_errors
    async def CreateProject(self, request: asvc.CreateProjectRequest, context: grpc.aio.ServicerContext
                            ) -> Project:
        self._system_only("creating a project")
        validate_create(request)
        actor = self._actor()
        return await self.store.write(lambda tx: store_projects.create_project(
            tx.db, request.project, actor, tx.now, self.home))

    @handle_errors
    async def GetProject(self, request: asvc.GetProjectRequest, context: grpc.aio.ServicerContext) -> Project:
        _check_ref(request.name)
        self._visible(request.name)
        project = await self.store.read(lambda db, p: store_projects.get_project(db, request.name, self.home))
        if project is None:
            raise store_projects.not_found(request.name)
        return project

    @handle_errors
    async def ListProjects(self, request: asvc.ListProjectsRequest, context: grpc.aio.ServicerContext
                           ) -> asvc.ListProjectsResponse:
        size = page_size(request.page_size)
        fp = list_fingerprint(request)
        after = _page_after(request.page_token, fp, str, "")
        scope = self._scope()
        rows = await self.store.read(lambda db, p: store_projects.list_projects(
            db, self.home, after, size + 1, scope))
        resp = asvc.ListProjectsResponse(projects=rows[:size])
        if len(rows) > size:
            resp.next_page_token = encode_token([rows[size - 1].name], fp)
        return resp

    @handle_errors
    async def DeleteProject(self, request: asvc.DeleteProjectRequest, context: grpc.aio.ServicerContext
                            ) -> asvc.DeleteProjectResponse:
        self._system_only("deleting a project")
        _check_ref(request.name)
        actor = self._actor()
        resp = await self.store.write(lambda tx: store_projects.delete_project(
            tx.db, request.name, request.force, self.home, actor, tx.now))
        self._forget_keys(project=request.name)  # its keys are gone: refused from now on
        return resp

    # -- API keys ------------------------------------------------------------------------

    @handle_errors
    async def CreateApiKey(self, request: asvc.CreateApiKeyRequest, context: grpc.aio.ServicerContext
                           ) -> asvc.CreateApiKeyResponse:
        c = caller()
        project = request.project or (c.project if c is not None else self.home)
        _check_ref(project, "project")
        v: list[tuple[str, str]] = []
        if request.role not in api_keys.ROLES:
            v.append(("role", f"{clip(request.role)} is not a role: use one of {', '.join(api_keys.ROLES)}"
                      if request.role else f"required: one of {', '.join(api_keys.ROLES)}"))
        if len(request.name) > MAX_KEY_NAME_CHARS:
            v.append(("name", f"at most {MAX_KEY_NAME_CHARS} characters"))
        if v:
            raise invalid_argument(v)
        self._visible(project)
        actor = self._actor()

        def create(tx: Any) -> asvc.CreateApiKeyResponse:
            if not store_projects.exists(tx.db, project):
                raise store_projects.not_found(project)
            key, text = api_keys.create_key(tx.db, project, request.role, request.name, actor, tx.now)
            api_keys.audit(tx.db, project, tx.now, actor, "KEY_CREATED", key.id,
                           f"role {key.role}, name {key.name!r}")
            return asvc.CreateApiKeyResponse(api_key=store_projects.key_message(key), key=text)

        return await self.store.write(create)

    @handle_errors
    async def ListApiKeys(self, request: asvc.ListApiKeysRequest, context: grpc.aio.ServicerContext
                          ) -> asvc.ListApiKeysResponse:
        size = page_size(request.page_size)
        fp = list_fingerprint(request)
        after = _page_after(request.page_token, fp, str, "")
        project = self._project_filter(request.project)

        def read(db: Any, _p: str) -> list[api_keys.ApiKey]:
            if request.project and not store_projects.exists(db, request.project):
                raise store_projects.not_found(request.project)
            return store_projects.list_keys(db, project, request.include_revoked, after, size + 1)

        rows = await self.store.read(read)
        resp = asvc.ListApiKeysResponse(api_keys=[store_projects.key_message(k) for k in rows[:size]])
        if len(rows) > size:
            resp.next_page_token = encode_token([rows[size - 1].id], fp)
        return resp

    @handle_errors
    async def RevokeApiKey(self, request: asvc.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
                           ) -> asvc.ApiKey:
        key_id = _key_id(request.id)
        scope = self._scope()
        actor = self._actor()

        def revoke(tx: Any) -> api_keys.ApiKey:
            key = store_projects.get_key(tx.db, key_id)
            if key is None or (scope is not None and key.project != scope):
                raise key_not_found(key_id)
            if key.revoke_time:
                return key  # revoked already: unchanged, nothing recorded
            api_keys.revoke(tx.db, key_id, tx.now)
            api_keys.audit(tx.db, key.project, tx.now, actor, "KEY_REVOKED", key_id,
                           f"role {key.role}, name {key.name!r}")
            key.revoke_time = tx.now
            return key

        key = await self.store.write(revoke)
        self._forget_keys(key_id=key_id)  # refused from this reply on
        return store_projects.key_message(key)

    # -- audit log ------------------------------------------------------------------------

    @handle_errors
    async def ListAuditEntries(self, request: asvc.ListAuditEntriesRequest, context: grpc.aio.ServicerContext
                               ) -> asvc.ListAuditEntriesResponse:
        size = page_size(request.page_size)
        fp = list_fingerprint(request)
        before = _page_after(request.page_token, fp, int, 0)
        # A system admin may read a deleted project's entries: no existence check.
        project = self._project_filter(request.project)
        rows = await self.store.read(lambda db, p: store_projects.list_audit(db, project, before, size + 1))
        resp = asvc.ListAuditEntriesResponse(entries=rows[:size])
        if len(rows) > size:
            resp.next_page_token = encode_token([rows[size - 1].id], fp)
        return resp

    @handle_errors
    async def GetCaller(self, request: asvc.GetCallerRequest, context: grpc.aio.ServicerContext) -> asvc.Caller:
        c = caller()
        if c is None:
            return asvc.Caller(project=self.home, home=True)
        return asvc.Caller(project=c.project, role=c.role, key_id=c.key_id, home=c.project == self.home)

    def _project_filter(self, given: str) -> str | None:
        """The project a list is limited to: a project admin's own (another
        is NOT_FOUND), else `given` (None: every project)."""
        scope = self._scope()
        if given:
            _check_ref(given, "project")
            if scope is not None and given != scope:
                raise store_projects.not_found(given)
            return given
        return scope
