"""ListJobs over 10,000 jobs: every filter and every order, walked page by
page with keyset tokens, against the expected answer computed here."""
from __future__ import annotations

import random
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import field_mask_pb2, timestamp_pb2

from mediajobs.server.convert import set_ts
from mediajobs.server.store import Store
from mediajobs.server.store import jobs as store_jobs
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc
from mediajobs.v1 import resources_pb2 as res

from conftest import FakeClock, start_app

Job = res.Job
N = 10_000
TYPES = ["TRANSCODE", "EXTRACT_MEDIA", "THUMBNAIL", "CUSTOM_A"]
STATES = [Job.PENDING, Job.RUNNING, Job.ABORTING, Job.SUCCEEDED, Job.FAILED, Job.ABORTED]
CREATORS = ["alice", "bob", "carol"]
T0 = 1_800_000_000_000_000


def populate(path: str) -> list[dict[str, Any]]:
    """10,000 jobs with random attributes; many share a create_time (ties)."""
    rnd = random.Random(42)
    clock = FakeClock(T0)
    store = Store(path, clock=clock).open()
    rows: list[dict[str, Any]] = []
    try:
        for batch in range(N // 250):
            clock.advance(1)
            specs = []
            for _ in range(250):
                specs.append(
                    dict(
                        type=rnd.choice(TYPES),
                        priority=rnd.randint(1, 5),
                        creator=rnd.choice(CREATORS),
                        meta={"tier": rnd.choice(["gold", "silver"]), "n": str(rnd.randint(0, 3))},
                        state=rnd.choice(STATES),
                        start=0,
                        end=0,
                    )
                )
            for s in specs:
                if s["state"] != Job.PENDING:
                    s["start"] = T0 + rnd.randint(0, 60) * 1_000_000
                if s["state"] in (Job.SUCCEEDED, Job.FAILED, Job.ABORTED):
                    s["end"] = s["start"] + rnd.randint(1, 60) * 1_000_000

            def write(tx, specs=specs):  # type: ignore[no-untyped-def]
                out = []
                for s in specs:
                    job = store_jobs.new_job(
                        tx,
                        svc.CreateJobRequest(type=s["type"], priority=s["priority"], creator=s["creator"], metadata=s["meta"]),
                    )
                    job.state = s["state"]
                    set_ts(job.start_time, s["start"])
                    set_ts(job.end_time, s["end"])
                    store_jobs.emit(tx, job, res.JobEvent.UPDATED, Job.PENDING)
                    # Active jobs hold a lease far in the future, so the server's
                    # lease sweeper leaves them alone during the test.
                    active = s["state"] in (Job.RUNNING, Job.ABORTING)
                    store_jobs.save_job(tx, job, store_jobs.LeaseColumns("t", "w", 2**62) if active else None)
                    out.append(dict(s, id=job.id, create=tx.now))
                return out

            rows.extend(store.write_sync(write))
    finally:
        store.close()
    return rows


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[dict[str, Any]]]:
    path = str(tmp_path_factory.mktemp("list") / "jobs.db")
    return path, populate(path)


def ts(us: int) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromMicroseconds(us)
    return t


FIELD_OF = {"id": "id", "type": "type", "state": "state", "priority": "priority",
            "create_time": "create", "start_time": "start", "end_time": "end"}


def expected_order(rows: list[dict[str, Any]], order_by: str) -> list[str]:
    order = store_jobs.parse_order_by(order_by)
    out = list(rows)
    for name, desc in reversed(order):
        out.sort(key=lambda r, k=FIELD_OF[name]: r[k], reverse=desc)
    return [r["id"] for r in out]


async def walk(stub: job_service_pb2_grpc.JobServiceStub, req: svc.ListJobsRequest) -> tuple[list[str], int]:
    ids: list[str] = []
    token = ""
    total = -1
    for _ in range(N):
        req.page_token = token
        resp = await stub.ListJobs(req)
        ids.extend(j.id for j in resp.jobs)
        total = resp.total_size
        token = resp.next_page_token
        if not token:
            break
    return ids, total


ORDERS = [
    "", "id desc", "type", "type desc", "state", "state desc", "priority", "priority desc",
    "create_time", "create_time desc", "start_time", "start_time desc", "end_time desc",
    "priority desc, create_time", "state, priority desc", "type desc, end_time, id desc",
]

FILTERS: list[tuple[dict[str, Any], Any]] = [
    ({}, lambda r: True),
    ({"states": [Job.RUNNING]}, lambda r: r["state"] == Job.RUNNING),
    ({"states": [Job.FAILED, Job.ABORTED], "types": ["TRANSCODE"]},
     lambda r: r["state"] in (Job.FAILED, Job.ABORTED) and r["type"] == "TRANSCODE"),
    ({"types": ["CUSTOM_A", "THUMBNAIL"]}, lambda r: r["type"] in ("CUSTOM_A", "THUMBNAIL")),
    ({"creator": "bob"}, lambda r: r["creator"] == "bob"),
    ({"metadata": {"tier": "gold", "n": "2"}}, lambda r: r["meta"] == {"tier": "gold", "n": "2"}),
    ({"create_time_from": ts(T0 + 10_000_000), "create_time_to": ts(T0 + 20_000_000)},
     lambda r: T0 + 10_000_000 <= r["create"] <= T0 + 20_000_000),
    ({"start_time_from": ts(T0 + 5_000_000), "start_time_to": ts(T0 + 30_000_000)},
     lambda r: r["start"] and T0 + 5_000_000 <= r["start"] <= T0 + 30_000_000),
    ({"end_time_to": ts(T0 + 40_000_000)}, lambda r: r["end"] and r["end"] <= T0 + 40_000_000),
    ({"end_time_from": ts(T0 + 40_000_000), "states": [Job.SUCCEEDED], "creator": "alice"},
     lambda r: r["end"] >= T0 + 40_000_000 and r["state"] == Job.SUCCEEDED and r["creator"] == "alice"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def list_stub(populated):
    path, _ = populated
    app = await start_app(path)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        yield job_service_pb2_grpc.JobServiceStub(ch)
    await app.stop(None)


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("order_by", ORDERS)
async def test_every_order_pages_through_all_jobs(populated, list_stub, order_by):
    _, rows = populated
    req = svc.ListJobsRequest(page_size=997, order_by=order_by, read_mask=field_mask_pb2.FieldMask(paths=["id"]))
    ids, total = await walk(list_stub, req)
    assert total == N
    assert ids == expected_order(rows, order_by)


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("filt_idx", range(len(FILTERS)))
@pytest.mark.parametrize("order_by", ["", "priority desc, create_time", "start_time desc"])
async def test_every_filter(populated, list_stub, filt_idx, order_by):
    _, rows = populated
    kw, pred = FILTERS[filt_idx]
    req = svc.ListJobsRequest(page_size=333, order_by=order_by, **kw)
    ids, total = await walk(list_stub, req)
    want = expected_order([r for r in rows if pred(r)], order_by)
    assert want, "the filter should match something"
    assert total == len(want)
    assert ids == want
