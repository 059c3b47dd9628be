"""AdminService (projects, API keys, the audit log) and `mediajobs admin`,
against a real server (--auth keys) over a real channel, on SQLite and
PostgreSQL: projects are created, read, listed and deleted (refused while
they hold anything unless force, which deletes every row of the project in
every table, its keys included, which stop working at once; never the home
project); keys are shown once, listed without secrets and refused as soon as
they are revoked; a project admin reaches its own project only (another
project is NOT_FOUND, as if it did not exist; creating and deleting projects
PERMISSION_DENIED); other roles are refused; every change is in the audit
log; `mediajobs-server keys create` makes a missing project."""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import peewee
import pytest

from mediajobs.client.cli import main as cli_main
from mediajobs.server.auth import roles_for
from mediajobs.server.store import Store, api_keys
from mediajobs.server.store import projects as store_projects
from mediajobs.server.store.models import models_for
from mediajobs.v1 import admin_service_pb2 as asvc
from mediajobs.v1 import admin_service_pb2_grpc
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc
from conftest import error_info, field_violations, start_app
from scripted import spawn

OK = grpc.StatusCode.OK
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
FUTURE_US = 4_000_000_000_000_000  # far beyond any sweep's cut-off


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def key_id(text: str) -> str:
    return text.split("_")[1].upper()


async def bootstrap_key(app: Any, role: str = "admin", project: str = "default") -> str:
    """A key made on the database, as `mediajobs-server keys create` does."""
    _k, text = await app.store.write(lambda tx: api_keys.create_key(tx.db, project, role, f"{role} key", "test",
                                                                    tx.now))
    return text


async def status(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e.code()
    return OK


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    return e.value


class Env:
    def __init__(self, app: Any, ch: grpc.aio.Channel, root: str) -> None:
        self.app = app
        self.target = f"127.0.0.1:{app.port}"
        self.admin = admin_service_pb2_grpc.AdminServiceStub(ch)
        self.jobs = job_service_pb2_grpc.JobServiceStub(ch)
        self.root = root  # a system admin: an admin key of the home project

    def as_(self, key: str) -> Any:
        """The AdminService stub's methods with `key`."""
        admin = self.admin

        class Keyed:
            def __getattr__(self, name: str) -> Any:
                method = getattr(admin, name)
                return lambda req: method(req, metadata=bearer(key))

        return Keyed()

    async def create_project(self, name: str, key: str | None = None, **kw: Any) -> asvc.Project:
        return await self.as_(key or self.root).CreateProject(
            asvc.CreateProjectRequest(project=asvc.Project(name=name, **kw)))

    async def create_key(self, project: str, role: str, key: str | None = None, name: str = "") -> Any:
        return await self.as_(key or self.root).CreateApiKey(
            asvc.CreateApiKeyRequest(project=project, role=role, name=name))

    async def works(self, key: str) -> grpc.StatusCode:
        """What a read with `key` gets (OK, UNAUTHENTICATED, ...)."""
        return await status(self.jobs.ListJobTypes(svc.ListJobTypesRequest(), metadata=bearer(key)))

    async def audit(self, project: str = "", key: str | None = None) -> list[asvc.AuditEntry]:
        resp = await self.as_(key or self.root).ListAuditEntries(asvc.ListAuditEntriesRequest(project=project))
        return list(resp.entries)

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return await self.app.store.read(lambda db, p: db.execute_sql(sql, args).fetchall())


async def open_env(db: str, **cfg: Any) -> tuple[Any, grpc.aio.Channel, Env]:
    app = await start_app(db, auth="keys", **cfg)
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    return app, ch, Env(app, ch, await bootstrap_key(app))


async def close_env(app: Any, ch: grpc.aio.Channel) -> None:
    await ch.close()
    await app.stop(None)


@pytest.fixture
async def env(db_url: str) -> Any:
    app, ch, e = await open_env(db_url)
    try:
        yield e
    finally:
        await close_env(app, ch)


@pytest.fixture
async def lite(sqlite_path: str) -> Any:
    app, ch, e = await open_env(sqlite_path)
    try:
        yield e
    finally:
        await close_env(app, ch)


# -- projects ------------------------------------------------------------------------------


async def test_projects_are_created_read_listed_and_deleted(env: Env) -> None:
    made = await env.create_project("acme", display_name="ACME Inc.", description="the first customer")
    assert (made.name, made.display_name, made.description, made.home) == ("acme", "ACME Inc.", "the first customer",
                                                                           False)
    assert made.creator == f"key:{key_id(env.root)}" and made.create_time.seconds > 0
    e = await failure(env.create_project("acme"))
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS and error_info(e).reason == "PROJECT_EXISTS"
    for bad in ("Acme", "1acme", "acme-", "ac_me", "a" * 64, ""):
        e = await failure(env.create_project(bad))
        assert e.code() == INVALID_ARGUMENT, bad
        assert "lowercase letters, digits and '-'" in field_violations(e)["project.name"], bad
    e = await failure(env.create_project("zeta", creator="mallory"))
    assert field_violations(e) == {"project.creator": "output only; leave it empty"}
    assert (await env.create_project("a" * 63)).name == "a" * 63

    root = env.as_(env.root)
    assert await root.GetProject(asvc.GetProjectRequest(name="acme")) == made
    home = await root.GetProject(asvc.GetProjectRequest(name="default"))
    assert home.home and home.creator == "mediajobs-server"
    e = await failure(root.GetProject(asvc.GetProjectRequest(name="nope")))
    assert e.code() == NOT_FOUND and error_info(e).reason == "PROJECT_NOT_FOUND"

    names = [p.name for p in (await root.ListProjects(asvc.ListProjectsRequest())).projects]
    assert names == ["a" * 63, "acme", "default"]
    paged, token = [], ""
    while True:  # one project a page
        page = await root.ListProjects(asvc.ListProjectsRequest(page_size=1, page_token=token))
        paged += [p.name for p in page.projects]
        token = page.next_page_token
        if not token:
            break
    assert paged == names

    e = await failure(root.DeleteProject(asvc.DeleteProjectRequest(name="default", force=True)))
    assert e.code() == FAILED_PRECONDITION and error_info(e).reason == "PROJECT_IS_HOME"
    gone = await root.DeleteProject(asvc.DeleteProjectRequest(name="acme"))
    assert gone.project == made and dict(gone.deleted_rows) == {}
    assert await status(root.GetProject(asvc.GetProjectRequest(name="acme"))) == NOT_FOUND
    assert await status(root.DeleteProject(asvc.DeleteProjectRequest(name="acme"))) == NOT_FOUND
    # The name is free again.
    assert (await env.create_project("acme")).name == "acme"


def fill(db: peewee.Database, project: str, tag: str) -> None:
    """A row of `project` in every table with a `project` column, and a row
    in every child table under its parents (the rows are of no use to the
    server: only their project matters here)."""
    m = models_for(db)
    n = itertools.count(1)
    parents = {"bulk_uploads": f"{tag}-upload", "live_jobs": f"{tag}-live"}
    for model in m.all:
        t = model._meta.table_name
        if t in store_projects.STORE_WIDE or t in store_projects.KEPT:
            continue
        row: dict[str, Any] = {}
        for name, f in model._meta.fields.items():
            if isinstance(f, peewee.AutoField):
                continue
            if name == "project":
                row[name] = project
            elif t in store_projects.CHILDREN and name == store_projects.CHILDREN[t][0]:
                row[name] = parents[store_projects.CHILDREN[t][1]]
            elif t in parents and name == "id":
                row[name] = parents[t]
            elif isinstance(f, peewee.BlobField):
                row[name] = b""  # an empty message
            elif isinstance(f, peewee.BooleanField):
                row[name] = False
            elif isinstance(f, peewee.SmallIntegerField):
                row[name] = 0
            elif isinstance(f, peewee.BigIntegerField):
                row[name] = FUTURE_US + next(n) * 1000 + (1 if tag == "acme" else 2)
            elif isinstance(f, peewee.IntegerField):
                row[name] = next(n)
            else:
                row[name] = f"{tag}-{t}-{next(n)}"[: getattr(f, "max_length", None) or 64]
        model.insert(**row).execute()


async def count_rows(env: Env, project: str) -> dict[str, int]:
    """Rows of `project` in every table, the child tables by their parents."""
    out: dict[str, int] = {}

    def read(db: peewee.Database, _p: str) -> None:
        for t in store_projects.project_tables(db):
            out[t] = db.execute_sql(f"SELECT COUNT(*) FROM {t} WHERE project = {db.param}", (project,)).fetchone()[0]
        for child, (col, parent) in store_projects.CHILDREN.items():
            out[child] = db.execute_sql(f"SELECT COUNT(*) FROM {child} WHERE {col} IN (SELECT id FROM {parent} "
                                        f"WHERE project = {db.param})", (project,)).fetchone()[0]

    await env.app.store.read(read)
    return out


async def test_a_project_that_holds_anything_is_deleted_only_with_force(env: Env) -> None:
    await env.create_project("acme")
    await env.create_project("keep")
    editor = (await env.create_key("acme", "editor", name="ci")).key
    job = await env.jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE", request_id="r1"), metadata=bearer(editor))
    await env.app.store.write(lambda tx: (fill(tx.db, "acme", "acme"), fill(tx.db, "keep", "keep")))
    before_keep = await count_rows(env, "keep")
    root = env.as_(env.root)

    e = await failure(root.DeleteProject(asvc.DeleteProjectRequest(name="acme")))
    assert e.code() == FAILED_PRECONDITION and error_info(e).reason == "PROJECT_NOT_EMPTY"
    text = e.details() or ""
    assert "jobs 2" in text and "live_jobs 1" in text and "entries 1" in text and "force" in text, text
    assert "api_keys" not in text and "job_events" not in text  # bookkeeping is not "held"
    assert error_info(e).metadata["jobs"] == "2"
    # Nothing was deleted: the key and the job are there.
    assert await env.works(editor) == OK
    assert (await env.jobs.GetJob(svc.GetJobRequest(id=job.id), metadata=bearer(editor))).id == job.id

    gone = await root.DeleteProject(asvc.DeleteProjectRequest(name="acme", force=True))
    deleted = dict(gone.deleted_rows)
    assert deleted["jobs"] == 2 and deleted["api_keys"] == 2 and deleted["idempotency_keys"] == 2
    assert deleted["live_timings"] == 1 and deleted["bulk_upload_chunks"] == 1
    assert "audit_log" not in deleted
    # Its key was used a moment ago (so it is in the server's key cache): refused at once.
    assert await env.works(editor) == UNAUTHENTICATED
    left = await count_rows(env, "acme")
    assert {t: n for t, n in left.items() if n} == {"audit_log": left["audit_log"]} and left["audit_log"] >= 3
    assert await count_rows(env, "keep") == before_keep  # another project's rows are untouched
    assert all(n for t, n in before_keep.items() if t != "audit_log")
    actions = [a.action for a in await env.audit("acme")]
    assert actions[0] == "PROJECT_DELETED" and "PROJECT_CREATED" in actions and "KEY_CREATED" in actions
    entry = (await env.audit("acme"))[0]
    assert entry.detail.startswith("force; deleted ") and "jobs 2" in entry.detail


def test_deleting_a_project_knows_every_table(sqlite_path: str) -> None:
    """Every table has `project`, or is store-wide, or is listed with its
    parent (store/projects.py): a new table cannot be forgotten."""
    store = Store(sqlite_path).open()
    try:
        db = store.db
        assert store.read_sync(lambda d, p: store_projects.uncovered_tables(d)) == []
        tables = store_projects.project_tables(db)
        for child, (col, parent) in store_projects.CHILDREN.items():
            assert parent in tables and child not in tables
        assert "audit_log" in tables and "api_keys" in tables and "job_events" in tables
        assert set(store_projects.BOOKKEEPING) <= set(tables)
    finally:
        store.close()


def test_a_database_older_than_the_projects_table_gets_its_projects(sqlite_path: str) -> None:
    store = Store(sqlite_path).open()
    store.write_sync(lambda tx: api_keys.create_key(tx.db, "legacy", "admin", "", "test", tx.now))
    store.write_sync(lambda tx: tx.db.execute_sql("DROP TABLE projects"))
    store.write_sync(lambda tx: tx.db.execute_sql("DELETE FROM store_meta WHERE key = 'projects_registered'"))
    store.close()
    store = Store(sqlite_path).open()
    try:
        names = store.read_sync(lambda d, p: [x.name for x in store_projects.list_projects(d, "default", "", 10)])
        assert names == ["default", "legacy"]
    finally:
        store.close()


async def test_the_home_project_is_the_servers_project(sqlite_path: str) -> None:
    app, ch, env = await open_env(sqlite_path, project="studio")
    try:
        root = await bootstrap_key(app, project="studio")
        home = await env.as_(root).GetProject(asvc.GetProjectRequest(name="studio"))
        assert home.home
        e = await failure(env.as_(root).DeleteProject(asvc.DeleteProjectRequest(name="studio")))
        assert error_info(e).reason == "PROJECT_IS_HOME"
        # An admin key of another project is no system admin there.
        other = await bootstrap_key(app, project="default")
        e = await failure(env.create_project("x", key=other))
        assert e.code() == DENIED and "admin key of project 'studio'" in (e.details() or "")
    finally:
        await close_env(app, ch)


# -- API keys ------------------------------------------------------------------------------


async def test_keys_are_shown_once_listed_without_secrets_and_revoked_at_once(lite: Env) -> None:
    env = lite
    root = env.as_(env.root)
    await env.create_project("acme")
    made = await env.create_key("acme", "editor", name="ci")
    k, text = made.api_key, made.key
    assert text.startswith("mjk_") and key_id(text) == k.id
    assert (k.project, k.role, k.name, k.creator) == ("acme", "editor", "ci", f"key:{key_id(env.root)}")
    assert not k.HasField("revoke_time") and not k.HasField("last_used_time")
    secret = text.split("_", 2)[2]
    assert await env.works(text) == OK
    assert (await env.jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE"), metadata=bearer(text))).id

    listed = await root.ListApiKeys(asvc.ListApiKeysRequest(project="acme"))
    assert [x.id for x in listed.api_keys] == [k.id]
    every = await root.ListApiKeys(asvc.ListApiKeysRequest())
    assert {x.project for x in every.api_keys} == {"acme", "default"}
    for resp in (listed, every):
        assert secret.encode() not in resp.SerializeToString()
    one = await root.ListApiKeys(asvc.ListApiKeysRequest(page_size=1))
    assert len(one.api_keys) == 1 and one.next_page_token

    for req, field in ((asvc.CreateApiKeyRequest(project="acme", role="root"), "role"),
                       (asvc.CreateApiKeyRequest(project="acme", role=""), "role"),
                       (asvc.CreateApiKeyRequest(project="acme", role="viewer", name="n" * 129), "name")):
        e = await failure(root.CreateApiKey(req))
        assert e.code() == INVALID_ARGUMENT and field in field_violations(e)
    e = await failure(env.create_key("nope", "viewer"))
    assert e.code() == NOT_FOUND and error_info(e).reason == "PROJECT_NOT_FOUND"
    # No project: the caller's own.
    assert (await root.CreateApiKey(asvc.CreateApiKeyRequest(role="viewer"))).api_key.project == "default"

    revoked = await root.RevokeApiKey(asvc.RevokeApiKeyRequest(id=k.id.lower()))
    assert revoked.id == k.id and revoked.HasField("revoke_time")
    assert await env.works(text) == UNAUTHENTICATED  # at once, though it was cached a moment ago
    again = await root.RevokeApiKey(asvc.RevokeApiKeyRequest(id=k.id))
    assert again.revoke_time == revoked.revoke_time
    assert [a.action for a in await env.audit("acme")].count("KEY_REVOKED") == 1
    assert (await root.ListApiKeys(asvc.ListApiKeysRequest(project="acme"))).api_keys == []
    with_revoked = await root.ListApiKeys(asvc.ListApiKeysRequest(project="acme", include_revoked=True))
    assert [x.id for x in with_revoked.api_keys] == [k.id] and with_revoked.api_keys[0].HasField("last_used_time")

    e = await failure(root.RevokeApiKey(asvc.RevokeApiKeyRequest(id=text)))
    assert e.code() == INVALID_ARGUMENT and secret not in (e.details() or "") and secret not in str(e)
    e = await failure(root.RevokeApiKey(asvc.RevokeApiKeyRequest(id="01HA255YE6H6DEETJ5M6595ZDA")))
    assert e.code() == NOT_FOUND and error_info(e).reason == "API_KEY_NOT_FOUND"
    assert await status(root.ListApiKeys(asvc.ListApiKeysRequest(project="nope"))) == NOT_FOUND


async def test_a_project_admin_reaches_its_own_project_only(lite: Env) -> None:
    env = lite
    await env.create_project("acme")
    await env.create_project("beta")
    acme_admin = (await env.create_key("acme", "admin", name="acme ops")).key
    beta_editor = (await env.create_key("beta", "editor")).key
    beta_id = key_id(beta_editor)
    acme = env.as_(acme_admin)

    assert (await acme.GetProject(asvc.GetProjectRequest(name="acme"))).name == "acme"
    missing = await failure(acme.GetProject(asvc.GetProjectRequest(name="nobody-has-this")))
    for other in ("beta", "default"):  # exactly as if it did not exist
        e = await failure(acme.GetProject(asvc.GetProjectRequest(name=other)))
        assert e.code() == NOT_FOUND and error_info(e).reason == error_info(missing).reason
        assert (e.details() or "").replace(other, "X") == (missing.details() or "").replace("nobody-has-this", "X")
    assert [p.name for p in (await acme.ListProjects(asvc.ListProjectsRequest())).projects] == ["acme"]

    for call in (acme.CreateProject(asvc.CreateProjectRequest(project=asvc.Project(name="gamma"))),
                 acme.DeleteProject(asvc.DeleteProjectRequest(name="acme")),
                 acme.DeleteProject(asvc.DeleteProjectRequest(name="beta", force=True))):
        e = await failure(call)
        assert e.code() == DENIED and error_info(e).reason == "ADMIN_OF_HOME_NEEDED"
        assert "an admin key of project 'default'" in (e.details() or "")
    assert await status(acme.GetProject(asvc.GetProjectRequest(name="beta"))) == NOT_FOUND  # still there, unseen

    # Its own project's keys: create, list, revoke.
    e = await failure(env.create_key("beta", "admin", key=acme_admin))
    assert e.code() == NOT_FOUND and error_info(e).reason == "PROJECT_NOT_FOUND"
    viewer = await acme.CreateApiKey(asvc.CreateApiKeyRequest(role="viewer"))
    assert viewer.api_key.project == "acme" and await env.works(viewer.key) == OK
    listed = await acme.ListApiKeys(asvc.ListApiKeysRequest())
    assert {k.project for k in listed.api_keys} == {"acme"} and len(listed.api_keys) == 2
    for other in ("beta", "default"):
        assert await status(acme.ListApiKeys(asvc.ListApiKeysRequest(project=other))) == NOT_FOUND
        assert await status(acme.ListAuditEntries(asvc.ListAuditEntriesRequest(project=other))) == NOT_FOUND
    e = await failure(acme.RevokeApiKey(asvc.RevokeApiKeyRequest(id=beta_id)))
    assert e.code() == NOT_FOUND and error_info(e).reason == "API_KEY_NOT_FOUND"
    assert await env.works(beta_editor) == OK
    await acme.RevokeApiKey(asvc.RevokeApiKeyRequest(id=viewer.api_key.id))
    assert await env.works(viewer.key) == UNAUTHENTICATED
    # Its own audit entries only.
    entries = await env.audit(key=acme_admin)
    assert {a.project for a in entries} == {"acme"}
    assert [a.action for a in entries] == ["KEY_REVOKED", "KEY_CREATED", "KEY_CREATED", "PROJECT_CREATED"]


async def test_other_roles_and_no_key_are_refused(lite: Env) -> None:
    env = lite
    methods = [m.name for m in asvc.DESCRIPTOR.services_by_name["AdminService"].methods if m.name != "GetCaller"]
    assert len(methods) == 8
    for m in methods:
        assert roles_for("mediajobs.v1.AdminService", m) == ("admin",)
    # GetCaller: any key may ask who it is; nobody without one.
    for role in ("editor", "worker", "viewer", "admin"):
        key = await bootstrap_key(env.app, role)
        who = await env.admin.GetCaller(asvc.GetCallerRequest(), metadata=bearer(key))
        assert (who.project, who.role, who.home) == ("default", role, True) and who.key_id == key_id(key)
    assert await status(env.admin.GetCaller(asvc.GetCallerRequest())) == UNAUTHENTICATED
    requests = {
        "CreateProject": asvc.CreateProjectRequest(project=asvc.Project(name="x")),
        "GetProject": asvc.GetProjectRequest(name="default"),
        "ListProjects": asvc.ListProjectsRequest(),
        "DeleteProject": asvc.DeleteProjectRequest(name="default"),
        "CreateApiKey": asvc.CreateApiKeyRequest(role="admin"),
        "ListApiKeys": asvc.ListApiKeysRequest(),
        "RevokeApiKey": asvc.RevokeApiKeyRequest(id=key_id(env.root)),
        "ListAuditEntries": asvc.ListAuditEntriesRequest(),
    }
    assert set(requests) == set(methods)
    for role in ("editor", "worker", "viewer"):
        key = await bootstrap_key(env.app, role)
        for name, req in requests.items():
            e = await failure(getattr(env.admin, name)(req, metadata=bearer(key)))
            assert e.code() == DENIED and error_info(e).reason == "ROLE_NOT_ALLOWED", (role, name)
            assert "needs the role admin" in (e.details() or "")
    for name, req in requests.items():
        assert await status(getattr(env.admin, name)(req)) == UNAUTHENTICATED
    assert await env.works(env.root) == OK  # the root key was not revoked by any of it


async def test_the_audit_log_lists_every_action_newest_first(lite: Env) -> None:
    env = lite
    root = env.as_(env.root)
    await env.create_project("acme")
    made = await env.create_key("acme", "worker", name="w1")
    await root.RevokeApiKey(asvc.RevokeApiKeyRequest(id=made.api_key.id))
    await root.DeleteProject(asvc.DeleteProjectRequest(name="acme"))
    entries = await env.audit("acme")  # a deleted project's entries stay
    assert [e.action for e in entries] == ["PROJECT_DELETED", "KEY_REVOKED", "KEY_CREATED", "PROJECT_CREATED"]
    assert {e.actor for e in entries} == {f"key:{key_id(env.root)}"}
    assert [e.subject for e in entries] == ["acme", made.api_key.id, made.api_key.id, "acme"]
    assert entries[2].detail == "role worker, name 'w1'"
    assert [e.id for e in entries] == sorted((e.id for e in entries), reverse=True)
    paged, token = [], ""
    while True:
        page = await root.ListAuditEntries(asvc.ListAuditEntriesRequest(project="acme", page_size=3,
                                                                        page_token=token))
        paged += list(page.entries)
        token = page.next_page_token
        if not token:
            break
    assert paged == entries
    e = await failure(root.ListAuditEntries(asvc.ListAuditEntriesRequest(page_token="nonsense")))
    assert e.code() == INVALID_ARGUMENT
    assert len(await env.audit()) == 4  # every project's, for a system admin


async def test_without_keys_anyone_is_a_system_admin(sqlite_path: str) -> None:
    app = await start_app(sqlite_path)  # --auth none on a loopback address
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            admin = admin_service_pb2_grpc.AdminServiceStub(ch)
            p = await admin.CreateProject(asvc.CreateProjectRequest(project=asvc.Project(name="acme")))
            assert p.creator == "anonymous"
            made = await admin.CreateApiKey(asvc.CreateApiKeyRequest(role="viewer"))
            assert made.api_key.project == "default" and made.api_key.creator == "anonymous"
            resp = await admin.ListAuditEntries(asvc.ListAuditEntriesRequest())
            assert [(e.action, e.actor) for e in resp.entries] == [("KEY_CREATED", "anonymous"),
                                                                  ("PROJECT_CREATED", "anonymous")]
    finally:
        await app.stop(None)


# -- command lines ---------------------------------------------------------------------------


async def cli(env: Env, key: str, *argv: str) -> int:
    # A daemon thread (not asyncio.to_thread): a CLI left waiting by a failed
    # test must not keep the event loop's executor from closing.
    async with asyncio.timeout(60):
        return await asyncio.wrap_future(spawn(cli_main, ["--server", env.target, "--api-key", key, *argv]))


async def test_the_admin_cli(lite: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env, root = lite, lite.root
    assert await cli(env, root, "admin", "projects", "create", "acme", "--display-name", "ACME Inc.") == 0
    cap = capsys.readouterr()
    assert cap.out.startswith("project acme created\n") and "ACME Inc." in cap.out
    assert await cli(env, root, "admin", "projects", "create", "Bad_Name") == 2
    assert "lowercase letters" in capsys.readouterr().err
    assert await cli(env, root, "admin", "projects", "list") == 0
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines()]
    assert rows[0][:2] == ["NAME", "DISPLAY"] and [r[0] for r in rows[1:]] == ["acme", "default"]
    assert await cli(env, root, "--json", "admin", "projects", "get", "default") == 0
    assert json.loads(capsys.readouterr().out)["home"] is True

    assert await cli(env, root, "admin", "keys", "create", "--project", "acme", "--role", "editor",
                     "--name", "ci") == 0
    cap = capsys.readouterr()
    key = cap.out.strip()
    assert key.startswith("mjk_") and cap.out == key + "\n" and "shown once" in cap.err and key not in cap.err
    assert await cli(env, key, "jobs", "list") == 0
    capsys.readouterr()
    assert await cli(env, root, "admin", "keys", "list", "--project", "acme") == 0
    out = capsys.readouterr().out
    assert key_id(key) in out and "editor" in out and key.split("_", 2)[2] not in out
    assert await cli(env, root, "admin", "keys", "revoke", key_id(key)) == 0
    assert capsys.readouterr().out.startswith(f"revoked key {key_id(key)} (editor of project acme)")
    assert await cli(env, key, "jobs", "list") == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert await cli(env, root, "admin", "keys", "list", "--project", "acme", "--revoked", "--json") == 0
    assert [k["id"] for k in json.loads(capsys.readouterr().out)["api_keys"]] == [key_id(key)]

    assert await cli(env, root, "admin", "projects", "delete", "default") == 1
    assert "PROJECT_IS_HOME" in capsys.readouterr().err
    assert await cli(env, root, "admin", "projects", "delete", "acme", "--force") == 0
    assert capsys.readouterr().out == "deleted project acme (api_keys 1)\n"
    assert await cli(env, root, "admin", "audit", "--json") == 0
    actions = [e["action"] for e in json.loads(capsys.readouterr().out)["entries"]]
    assert actions == ["PROJECT_DELETED", "KEY_REVOKED", "KEY_CREATED", "PROJECT_CREATED"]
    assert await cli(env, root, "admin", "audit", "--limit", "2") == 0
    cap = capsys.readouterr()
    assert len(cap.out.splitlines()) == 3 and "more with" in cap.err
    # A non-admin key is refused.
    viewer = await bootstrap_key(env.app, "viewer")
    assert await cli(env, viewer, "admin", "projects", "list") == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err


def test_admin_help_describes_every_action(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["admin", "--help"]) == 0
    out = capsys.readouterr().out
    assert "projects" in out and "keys" in out and "audit" in out and "system admin" in out
    assert cli_main(["admin", "projects", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(a in out for a in ("create", "get", "list", "delete"))
    assert cli_main(["admin", "keys", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(a in out for a in ("create", "list", "revoke"))
    assert cli_main(["admin", "projects", "delete", "--help"]) == 0
    assert "--force" in capsys.readouterr().out


def run_keys(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAJOBS_")}
    return subprocess.run([sys.executable, "-m", "mediajobs.server", "keys", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_the_bootstrap_command_creates_a_missing_project(tmp_path: Path) -> None:
    db = str(tmp_path / "keys.db")
    made = run_keys("--db", db, "create", "--project", "acme", "--role", "admin")
    assert made.returncode == 0 and "project acme did not exist: created it" in made.stderr
    again = run_keys("--db", db, "create", "--project", "acme", "--role", "viewer")
    assert again.returncode == 0 and "did not exist" not in again.stderr
    home = run_keys("--db", db, "create", "--role", "admin")  # default: the home project, made with the schema
    assert home.returncode == 0 and "did not exist" not in home.stderr
    bad = run_keys("--db", db, "create", "--project", "Not_A_Name", "--role", "admin")
    assert bad.returncode == 2 and "lowercase letters" in bad.stderr and not bad.stdout
    audit = run_keys("--db", db, "audit", "--project", "acme")
    assert [ln.split()[2] for ln in audit.stdout.splitlines()] == ["PROJECT_CREATED", "KEY_CREATED", "KEY_CREATED"]
    store = Store(db).open()
    try:
        names = store.read_sync(lambda d, p: [x.name for x in store_projects.list_projects(d, "default", "", 10)])
        assert names == ["acme", "default"]
    finally:
        store.close()
