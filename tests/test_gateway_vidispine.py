"""Vidispine's Job API under /API, driven end to end by the published
`vidispine` 5.0.4 client, unmodified, against a real server with the
gateway embedded: every JobApi operation, the id, state and priority
mappings, abort's ABORT_PENDING -> ABORTED, job problems from an expired
lease, HTTP Basic carrying API keys (401/403, the `user=true` default,
projects), and errors in the dialect's own form.

The client is synchronous (urllib3), so its calls run in a thread while the
server keeps the event loop. Time moves with the server's FakeClock, never
with sleeps."""
from __future__ import annotations

import asyncio
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
import grpc
import pytest
import vidispine
from google.protobuf import duration_pb2, json_format

from mediajobs.server.app import App
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc
from mediajobs.v1 import resources_pb2 as res
from mediajobs.v1 import worker_service_pb2 as wsvc
from mediajobs.v1 import worker_service_pb2_grpc

from conftest import FakeClock, start_app
from test_auth import make_key

# The pattern the client's JobType checks `jobId` against (with re.search).
CLIENT_JOB_ID_RE = r"([_A-Za-z]+-)?([A-Za-z_][A-Za-z0-9_]*-|(([A-Za-z_][A-Za-z0-9_]*)?\*))([0-9]{1}[0-9]{0,31})"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def serve(tmp_path: Path, clock: FakeClock, **cfg: Any) -> App:
    # The lease sweeper runs only when a test asks for it (CleanExpiredLeases).
    return await start_app(str(tmp_path / "db.sqlite"), clock=clock, lease_sweep_interval_s=3600,
                           http_listen="127.0.0.1:0", **cfg)


@pytest.fixture
async def vapp(tmp_path: Path, clock: FakeClock) -> AsyncIterator[App]:
    app = await serve(tmp_path, clock)
    try:
        yield app
    finally:
        await app.stop(None)


@pytest.fixture
async def workers(vapp: App) -> AsyncIterator[worker_service_pb2_grpc.WorkerServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{vapp.port}") as ch:
        yield worker_service_pb2_grpc.WorkerServiceStub(ch)


def job_api(app: App, username: str = "alice", password: str = "") -> vidispine.JobApi:
    """A JobApi on the gateway. vidispine.Configuration is a singleton whose
    constructor keywords count only once per process (every later call
    returns a copy of the first): set host and credentials as attributes."""
    conf = vidispine.Configuration()
    conf.host = f"http://127.0.0.1:{app.gateway.port}/API"
    conf.username, conf.password = username, password
    return vidispine.JobApi(vidispine.ApiClient(conf))


async def call(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kw)


async def refused(fn: Callable[..., Any], *args: Any, **kw: Any) -> vidispine.ApiException:
    with pytest.raises(vidispine.ApiException) as e:
        await call(fn, *args, **kw)
    return e.value


def ulid_of(job_id: str) -> str:
    assert job_id.startswith("VX-") and len(job_id) == 29, job_id
    return job_id[3:]


def iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, timezone.utc).isoformat()


async def acquire(workers: worker_service_pb2_grpc.WorkerServiceStub, job_type: str, lease_s: int = 30
                  ) -> wsvc.LeasedJob:
    got = await workers.AcquireJobs(wsvc.AcquireJobsRequest(
        job_types=[job_type], lease_duration=duration_pb2.Duration(seconds=lease_s), identity="w1@host",
        lock_key=res.LockKey(scheduler_id="s", worker_id="w1"), no_wait=True))
    assert len(got.jobs) == 1, got
    return got.jobs[0]


async def test_create_get_update_rerun_delete(vapp: App) -> None:
    api = job_api(vapp, "alice", "anything")  # --auth none: any credentials
    doc = vidispine.SimpleMetadataType(field=[vidispine.KeyValueType(key="team", value="sports")])
    job = await call(api.create_custom_job, "TRANSCODE", doc, jobmetadata=["team=news", "lang=en"],
                     priority="HIGH", notification="placeholder-1", notification_data="ping me")
    # The client parsed it, so jobId passed its regex; a job is VX-<ULID>.
    assert re.search(CLIENT_JOB_ID_RE, job.job_id) and ulid_of(job.job_id)
    assert (job.status, job.type, job.priority, job.user) == ("READY", "TRANSCODE", "HIGH", "alice")
    # The document's value wins over the query's.
    assert [(d.key, d.value) for d in job.data] == [("lang", "en"), ("team", "sports")]

    got = await call(api.get_job, job.job_id)
    assert got.job_id == job.job_id and got.data is None, "metadata only when asked"
    assert got.total_steps == 1 and got.current_step.status == "READY" and got.current_step.number == 1
    assert got.log.task[0].attempts == 0 and got.log.task[0].progress.unit == "percent"
    assert got.started is None and got.finished is None
    got = await call(api.get_job, job.job_id, metadata=True)
    assert {(d.key, d.value) for d in got.data} == {("lang", "en"), ("team", "sports")}
    got = await call(api.get_job, job.job_id, metadata=True, field=["team"])
    assert [(d.key, d.value) for d in got.data] == [("team", "sports")]

    # Seen through the gRPC API: metadata, creator, and notification kept in params.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{vapp.port}") as ch:
        jobs = job_service_pb2_grpc.JobServiceStub(ch)
        native = await jobs.GetJob(svc.GetJobRequest(id=ulid_of(job.job_id), include_metadata=True))
    assert native.creator == "alice" and dict(native.metadata) == {"lang": "en", "team": "sports"}
    assert json_format.MessageToDict(native.params) == {"notification": "placeholder-1",
                                                        "notificationData": "ping me"}
    assert native.priority == res.Job.HIGH

    await call(api.update_job, job.job_id, priority="LOWEST")
    assert (await call(api.get_job, job.job_id)).priority == "LOWEST"

    again = await call(api.create_duplicate_job, job.job_id, priority="HIGHEST")
    assert again.job_id != job.job_id and (again.priority, again.status, again.type) == ("HIGHEST", "READY",
                                                                                         "TRANSCODE")
    assert {(d.key, d.value) for d in again.data} == {("lang", "en"), ("team", "sports")}
    same_priority = await call(api.create_duplicate_job, job.job_id)
    assert same_priority.priority == "LOWEST", "no priority: the old job's"

    # An empty SimpleMetadataDocument is no metadata; priority defaults to MEDIUM.
    plain = await call(api.create_custom_job, "PROBE", vidispine.SimpleMetadataType())
    assert plain.priority == "MEDIUM" and plain.data == []

    await call(api.delete_jobs, [job.job_id, again.job_id])
    for gone in (job.job_id, again.job_id):
        assert (await refused(api.get_job, gone)).status == 404
    assert (await call(api.get_job, same_priority.job_id)).job_id == same_priority.job_id
    # Deleting what is not there is 404, and nothing is deleted.
    assert (await refused(api.delete_jobs, [same_priority.job_id, job.job_id])).status == 404
    assert (await call(api.get_job, same_priority.job_id)).status == "READY"


async def test_abort_is_asynchronous_for_a_running_job(vapp: App, workers: Any, clock: FakeClock) -> None:
    api = job_api(vapp)
    waiting = await call(api.create_custom_job, "T", vidispine.SimpleMetadataType())
    await call(api.abort_job, waiting.job_id, reason="not needed")
    got = await call(api.get_job, waiting.job_id)
    assert got.status == "ABORTED" and got.finished is not None
    assert got.log.task[0].error_message == "aborted: not needed"

    running = await call(api.create_custom_job, "T", vidispine.SimpleMetadataType())
    start_us = clock.now
    leased = await acquire(workers, "T")
    assert leased.job.id == ulid_of(running.job_id)
    got = await call(api.get_job, running.job_id)
    assert got.status == "STARTED" and got.started == datetime.fromisoformat(iso(start_us))
    assert got.log.task[0].attempts == 1

    clock.advance(3)
    await call(api.abort_job, running.job_id, reason="stop", cleanup=False)
    got = await call(api.get_job, running.job_id)
    assert got.status == "ABORT_PENDING" and got.finished is None
    hb = await workers.Heartbeat(wsvc.HeartbeatRequest(job_id=leased.job.id, lease_token=leased.lease_token))
    assert hb.cancel_requested
    # Aborting again changes nothing.
    await call(api.abort_job, running.job_id)
    assert (await call(api.get_job, running.job_id)).status == "ABORT_PENDING"
    await workers.CompleteJob(wsvc.CompleteJobRequest(job_id=leased.job.id, lease_token=leased.lease_token))
    got = await call(api.get_job, running.job_id)
    assert got.status == "ABORTED" and got.finished == datetime.fromisoformat(iso(clock.now))

    # A finished job can be neither aborted nor given a new priority: 409.
    done = await call(api.create_custom_job, "T", vidispine.SimpleMetadataType())
    leased = await acquire(workers, "T")
    await workers.CompleteJob(wsvc.CompleteJobRequest(job_id=leased.job.id, lease_token=leased.lease_token))
    assert (await call(api.get_job, done.job_id)).status == "FINISHED"
    assert (await refused(api.abort_job, done.job_id)).status == 409
    assert (await refused(api.update_job, done.job_id, priority="HIGH")).status == 409


async def test_listing_filters_sort_paging_and_idonly(vapp: App, workers: Any, clock: FakeClock) -> None:
    alice, bob = job_api(vapp, "alice"), job_api(vapp, "bob")
    made = {}
    for name, jtype, prio, meta in (("a1", "A", "LOW", ["batch=1"]), ("a2", "A", "HIGH", ["batch=1"]),
                                    ("b1", "B", "MEDIUM", ["batch=2"]), ("b2", "B", "HIGHEST", []),
                                    ("c1", "C", "LOWEST", [])):
        made[name] = (await call(alice.create_custom_job, jtype, vidispine.SimpleMetadataType(), priority=prio,
                                 jobmetadata=meta)).job_id
    bobs = (await call(bob.create_custom_job, "A", vidispine.SimpleMetadataType())).job_id
    name_of = {v: k for k, v in made.items()}

    def names(listing: Any) -> list[str]:
        return [name_of.get(j.job_id, "bob") for j in listing.job or []]

    # user=true (the default): only the caller's jobs, in creation order.
    mine = await call(alice.get_jobs)
    assert mine.hits == 5 and names(mine) == ["a1", "a2", "b1", "b2", "c1"]
    assert {j.user for j in mine.job} == {"alice"} and mine.job[0].data is None
    everyone = await call(alice.get_jobs, user=False)
    assert everyone.hits == 6 and bobs in [j.job_id for j in everyone.job]
    assert names(await call(bob.get_jobs)) == ["bob"]

    assert names(await call(alice.get_jobs, type=["A", "B"])) == ["a1", "a2", "b1", "b2"]
    assert (await call(alice.get_jobs, type=["all"])).hits == 5
    assert names(await call(alice.get_jobs, jobmetadata=["batch=1"])) == ["a1", "a2"]
    assert names(await call(alice.get_jobs, jobmetadata=["batch=1", "batch=2"])) == []

    # States: READY is PENDING; a leased job is STARTED; a finished one FINISHED.
    assert (await call(alice.get_jobs, state=["READY"])).hits == 5
    start_us = clock.now
    leased = await acquire(workers, "C")
    started = await call(alice.get_jobs, state=["STARTED"])
    assert names(started) == ["c1"] and started.job[0].status == "STARTED"
    assert started.job[0].started == datetime.fromisoformat(iso(start_us))
    assert names(await call(alice.get_jobs, state=["READY", "WAITING"])) == ["a1", "a2", "b1", "b2"]
    assert (await call(alice.get_jobs, state=["FINISHED", "FAILED_TOTAL"])).hits == 0
    assert (await call(alice.get_jobs, state=["NONE", "DISAPPEARED"])).hits == 0
    clock.advance(10)
    finish_us = clock.now
    await workers.CompleteJob(wsvc.CompleteJobRequest(job_id=leased.job.id, lease_token=leased.lease_token))
    assert names(await call(alice.get_jobs, state=["FINISHED"])) == ["c1"]

    # Time ranges, inclusive, ISO 8601.
    assert names(await call(alice.get_jobs, starttime_from=iso(start_us))) == ["c1"]
    assert names(await call(alice.get_jobs, starttime_to=iso(start_us - 1_000_000))) == []
    assert names(await call(alice.get_jobs, finishtime_from=iso(finish_us), finishtime_to=iso(finish_us))) == ["c1"]
    assert names(await call(alice.get_jobs, finishtime_to=iso(finish_us - 1_000_000))) == []

    # Sorting, then first/number paging over the sorted list.
    by_priority = ["b2", "a2", "b1", "a1", "c1"]
    assert names(await call(alice.get_jobs, sort="priority desc")) == by_priority
    assert names(await call(alice.get_jobs, sort="type asc, priority asc")) == ["a1", "a2", "b1", "b2", "c1"]
    assert names(await call(alice.get_jobs, sort="jobId desc")) == ["c1", "b2", "b1", "a2", "a1"]
    assert names(await call(alice.get_jobs, sort="user asc, priority desc")) == by_priority
    page = await call(alice.get_jobs, sort="priority desc", first=2, number=2)
    assert page.hits == 5 and names(page) == ["a2", "b1"]
    assert names(await call(alice.get_jobs, sort="priority desc", first=5, number=10)) == ["c1"]
    past_the_end = await call(alice.get_jobs, first=6)
    assert past_the_end.hits == 5 and names(past_the_end) == []
    count_only = await call(alice.get_jobs, number=0)
    assert count_only.hits == 5 and names(count_only) == []

    # idonly still carries the four fields the client requires; metadata and steps on request.
    ids = await call(alice.get_jobs, idonly=True, type=["A"])
    assert [(j.job_id, j.type) for j in ids.job] == [(made["a1"], "A"), (made["a2"], "A")]
    assert ids.job[0].status == "READY" and ids.job[0].priority == "LOW" and ids.job[0].user is None
    full = await call(alice.get_jobs, type=["A"], metadata=True, step=True)
    assert [(d.key, d.value) for d in full.job[0].data] == [("batch", "1")]
    assert full.job[0].current_step.status == "READY" and full.job[0].total_steps == 1
    assert (await call(alice.get_jobs, type=["A"])).job[0].current_step is None


async def test_job_types_and_problems_of_an_expired_lease(vapp: App, workers: Any, clock: FakeClock) -> None:
    api = job_api(vapp)
    job = await call(api.create_custom_job, "CUSTOM_X", vidispine.SimpleMetadataType())
    other = await call(api.create_custom_job, "CUSTOM_X", vidispine.SimpleMetadataType())
    types = await call(api.get_job_types)
    assert {"TRANSCODE", "CUSTOM_X"} <= set(types.uri) and types.hits == len(types.uri)
    assert (await call(api.get_all_job_problems)).problem == []

    leased = await acquire(workers, "CUSTOM_X", lease_s=5)
    assert leased.job.id == ulid_of(job.job_id)
    clock.advance(6)  # past the lease, without a heartbeat
    swept = await workers.CleanExpiredLeases(wsvc.CleanExpiredLeasesRequest())
    assert list(swept.retried_job_ids) == [leased.job.id]

    problems = (await call(api.get_all_job_problems)).problem
    assert len(problems) == 1
    p = problems[0]
    assert p.type == "LEASE_EXPIRED" and p.job == [job.job_id] and isinstance(p.id, int) and p.id > 0
    data = {d.key: d.value for d in p.data}
    assert data["worker"] and "lease expired" in data["message"] and data["jobStatus"] == "READY"
    mine = (await call(api.get_job_problems, job.job_id)).problem
    assert [(q.id, q.type) for q in mine] == [(p.id, "LEASE_EXPIRED")]
    assert (await call(api.get_job_problems, other.job_id)).problem == []
    assert (await refused(api.get_job_problems, "VX-123")).status == 404


async def test_basic_credentials_carry_api_keys_roles_and_projects(tmp_path: Path, clock: FakeClock) -> None:
    app = await serve(tmp_path, clock, auth="keys")
    try:
        editor, editor2 = await make_key(app, "editor"), await make_key(app, "editor")
        viewer, outsider = await make_key(app, "viewer"), await make_key(app, "editor", project="acme")
        editor_id = editor.split("_")[1].upper()

        # No credentials, a password that is no key, a key with a wrong secret: 401 asking for Basic.
        for username, password in (("", ""), ("admin", "admin"), ("ci", editor[:-4] + "XXXX")):
            e = await refused(job_api(app, username, password).get_jobs)
            assert e.status == 401 and e.headers["WWW-Authenticate"].startswith("Basic"), (username, password)
        e = await refused(job_api(app, "v", viewer).create_custom_job, "T", vidispine.SimpleMetadataType())
        assert e.status == 403

        api = job_api(app, "any-name", editor)  # the username is free, the password is the key
        job = await call(api.create_custom_job, "T", vidispine.SimpleMetadataType(), jobmetadata=["k=v"])
        assert job.user == f"key:{editor_id}"
        as_username = job_api(app, editor, "")  # the key as the username works too
        assert (await call(as_username.get_job, job.job_id)).user == f"key:{editor_id}"
        theirs = await call(job_api(app, "x", editor2).create_custom_job, "T", vidispine.SimpleMetadataType())
        # user=true: only the jobs this key created; user=false: the project's.
        assert [j.job_id for j in (await call(api.get_jobs)).job] == [job.job_id]
        assert [j.job_id for j in (await call(api.get_jobs, user=False)).job] == [job.job_id, theirs.job_id]
        assert (await call(job_api(app, "v", viewer).get_jobs, user=False)).hits == 2

        # Another project's key: the job does not exist for it, and lists never show it.
        other = job_api(app, "acme", outsider)
        for op, args in ((other.get_job, ()), (other.get_job_problems, ()), (other.abort_job, ()),
                         (other.update_job, ()), (other.create_duplicate_job, ())):
            assert (await refused(op, job.job_id, *args)).status == 404, op
        assert (await refused(other.delete_jobs, [job.job_id])).status == 404
        assert (await call(other.get_jobs, user=False)).hits == 0
        assert (await call(other.get_all_job_problems)).problem == []
        assert (await call(api.get_job, job.job_id)).status == "READY", "untouched"
    finally:
        await app.stop(None)


async def test_bad_input_is_400_and_errors_keep_the_dialects_form(vapp: App) -> None:
    api = job_api(vapp)
    job = await call(api.create_custom_job, "T", vidispine.SimpleMetadataType())
    assert (await refused(api.get_job, "VX-123")).status == 404
    assert (await refused(api.get_job, "VX-01ARZ3NDEKTSV4RRFFQ69G5FAV")).status == 404
    assert (await refused(api.update_job, job.job_id, priority="URGENT")).status == 400
    assert (await refused(api.create_custom_job, "T", vidispine.SimpleMetadataType(), priority="NOW")).status == 400
    assert (await refused(api.create_custom_job, "no spaces", vidispine.SimpleMetadataType())).status == 400
    assert (await refused(api.create_custom_job, "T", vidispine.SimpleMetadataType(),
                          jobmetadata=["no-equals"])).status == 400
    assert (await refused(api.get_jobs, state=["BOGUS"])).status == 400
    assert (await refused(api.get_jobs, sort="size desc")).status == 400
    assert (await refused(api.get_jobs, sort="user asc", user=False)).status == 400
    assert (await refused(api.get_jobs, starttime_from="yesterday")).status == 400
    assert (await refused(api.get_jobs, number=-1)).status == 400
    assert (await refused(api.get_jobs, first=10**9)).status == 400

    base = f"http://127.0.0.1:{vapp.gateway.port}"
    async with aiohttp.ClientSession() as s:
        async def err(r: Any) -> tuple[int, dict[str, Any]]:
            assert r.content_type == "application/json"
            return r.status, await r.json()

        status, body = await err(await s.get(f"{base}/API/job", params={"metadata": "yes"}))
        assert status == 400 and body["invalidInput"]["context"] == "metadata"
        status, body = await err(await s.get(f"{base}/API/job", params={"metadata": "TRUE", "bogus": "1"}))
        assert status == 400 and "bogus" in body["invalidInput"]["explanation"]
        status, body = await err(await s.post(f"{base}/API/job", params={"type": "T"}, data=b"{nope"))
        assert status == 400 and "JSON" in body["invalidInput"]["explanation"]
        for bad in ([1], {"field": "x"}, {"field": [{"key": 1, "value": "v"}]}, {"other": []}):
            status, body = await err(await s.post(f"{base}/API/job", params={"type": "T"}, json=bad))
            assert status == 400 and "invalidInput" in body, bad
        status, body = await err(await s.post(f"{base}/API/job", params={"type": "T"},
                                              data=b'{"field": [' + b" " * (2 * 1024 * 1024) + b"]}"))
        assert status == 413 and "limit" in body["invalidInput"]["explanation"]
        # An Idempotency-Key makes a retried create return the first job.
        made = [await (await s.post(f"{base}/API/job", params={"type": "T"}, json={},
                                    headers={"Idempotency-Key": "create-1"})).json() for _ in range(2)]
        assert made[0]["jobId"] == made[1]["jobId"] and made[0]["status"] == "READY"
        status, body = await err(await s.post(f"{base}/API/job", params={"type": "T"},
                                              headers={"Idempotency-Key": "k" * 129}))
        assert status == 400 and body["invalidInput"]["context"] == "Idempotency-Key"
        status, body = await err(await s.get(f"{base}/API/job/{job.job_id}"))
        assert status == 200 and body["jobId"] == job.job_id and body["status"] == "READY"
        # The gateway's own errors under /API: Vidispine's form, not mediajobs' {"error": ...}.
        status, body = await err(await s.get(f"{base}/API/nothing"))
        assert status == 404 and "/API/jobtype" in body["notFound"]["explanation"] and "error" not in body
        r = await s.patch(f"{base}/API/job")
        status, body = await err(r)
        assert status == 405 and "GET" in r.headers["Allow"] and "notAllowed" in body
        status, body = await err(await s.get(f"{base}/v1/nowhere"))
        assert status == 404 and body["error"]["status"] == "NOT_FOUND", "other prefixes keep their own form"


async def test_a_quota_refusal_is_429_with_retry_after(tmp_path: Path, clock: FakeClock) -> None:
    app = await serve(tmp_path, clock, quota_pending_jobs=1)
    try:
        api = job_api(app)
        await call(api.create_custom_job, "T", vidispine.SimpleMetadataType())
        e = await refused(api.create_custom_job, "T", vidispine.SimpleMetadataType())
        assert e.status == 429 and int(e.headers["Retry-After"]) >= 1
        assert '"tooManyRequests"' in e.body
    finally:
        await app.stop(None)
