"""The store on its own, against SQLite and the local PostgreSQL: revisions,
events in the same transaction, group commit isolation, concurrency."""
from __future__ import annotations

import asyncio
import threading

import pytest

from mediajobs.server.errors import ServiceError
from mediajobs.server.store import Store
from mediajobs.server.store import events as store_events
from mediajobs.server.store import jobs as store_jobs
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import resources_pb2 as res

from conftest import FakeClock

Job = res.Job


@pytest.fixture
def store(db_url):
    s = Store(db_url, clock=FakeClock()).open()
    yield s
    s.close()


def create(tx, type_="T", **kw):
    return store_jobs.new_job(tx, svc.CreateJobRequest(type=type_, **kw))


def test_every_change_writes_one_event_with_the_next_revision(store):
    j = store.write_sync(create)
    assert j.revision == 1
    store.write_sync(lambda tx: store_jobs.update_priority(tx, j.id, Job.HIGH))
    store.write_sync(lambda tx: store_jobs.abort_job(tx, j.id, "why", False))
    rows, compacted = store.read_sync(store_events.read_events, 1, 100, 100)
    assert compacted == 0
    assert [r.revision for r in rows] == [1, 2, 3]
    assert [(r.job_id, r.job_type, r.state, r.previous_state) for r in rows][-1] == (j.id, "T", Job.ABORTED, Job.PENDING)
    evs = [res.JobEvent.FromString(r.data) for r in rows]
    assert [e.type for e in evs] == [res.JobEvent.CREATED, res.JobEvent.UPDATED, res.JobEvent.UPDATED]
    assert [e.job.state for e in evs] == [Job.PENDING, Job.PENDING, Job.ABORTED]
    assert store.read_sync(store_jobs.get_job, j.id).revision == 3
    assert store.read_sync(lambda db, p: store_jobs.current_revision(db)) == 3


def test_failed_mutation_writes_nothing_and_keeps_revisions_dense(store):
    j = store.write_sync(create)
    store.write_sync(lambda tx: store_jobs.abort_job(tx, j.id, "", False))
    with pytest.raises(ServiceError) as e:
        store.write_sync(lambda tx: store_jobs.update_priority(tx, j.id, Job.LOW))
    assert e.value.reason == "JOB_FINISHED"
    k = store.write_sync(create)
    assert k.revision == 3


async def test_one_failing_mutation_in_a_batch_leaves_the_others_committed(store):
    done = await store.write(create)
    await store.write(lambda tx: store_jobs.abort_job(tx, done.id, "", False))

    def half_write_then_fail(tx):
        create(tx, "SHOULD_VANISH")
        raise RuntimeError("boom after a write")

    results = await asyncio.gather(
        *[store.write(create) for _ in range(20)],
        store.write(half_write_then_fail),
        store.write(lambda tx: store_jobs.update_priority(tx, done.id, Job.LOW)),
        *[store.write(create) for _ in range(20)],
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 2
    made = [r for r in results if isinstance(r, res.Job)]
    assert len(made) == 40
    listed = store.read_sync(store_jobs.list_jobs, svc.ListJobsRequest(page_size=1000))
    assert listed.total_size == 41
    assert not store.read_sync(store_jobs.list_jobs, svc.ListJobsRequest(types=["SHOULD_VANISH"])).jobs
    assert sorted(j.revision for j in made) == list(range(3, 43)), "dense revisions"


async def test_64_concurrent_writers_never_see_database_locked(store):
    made = await asyncio.gather(*[store.write(create) for _ in range(64 * 10)])
    assert len({j.id for j in made}) == 640
    assert store.writer.batches < 640, "concurrent writes were group-committed"


def test_two_stores_on_one_sqlite_file_share_one_revision_sequence(tmp_path):
    """Two server processes on one SQLite file (two writers): no 'database is
    locked', and revisions stay unique and dense."""
    path = str(tmp_path / "shared.db")
    a, b = Store(path).open(), Store(path).open()
    try:
        out: list[int] = []
        errors: list[BaseException] = []

        def worker(s: Store) -> None:
            try:
                for _ in range(150):
                    out.append(s.write_sync(create).revision)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(s,)) for s in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert sorted(out) == list(range(1, 601))
    finally:
        a.close()
        b.close()


def test_idempotency_record_replays_and_rejects_changed_payload(store):
    req = svc.CreateJobRequest(type="T", request_id="abc")
    first = store.write_sync(lambda tx: store_jobs.idempotent(tx, "CreateJob", req, Job, lambda t: store_jobs.new_job(t, req)))
    again = store.write_sync(lambda tx: store_jobs.idempotent(tx, "CreateJob", req, Job, lambda t: store_jobs.new_job(t, req)))
    assert again == first
    other = svc.CreateJobRequest(type="U", request_id="abc")
    with pytest.raises(ServiceError) as e:
        store.write_sync(lambda tx: store_jobs.idempotent(tx, "CreateJob", other, Job, lambda t: store_jobs.new_job(t, other)))
    assert e.value.reason == "REQUEST_ID_REUSED"
    # Expired records no longer replay.
    assert store.write_sync(lambda tx: store_jobs.expire_request_ids(tx, tx.now + 1)) == 1
    fresh = store.write_sync(lambda tx: store_jobs.idempotent(tx, "CreateJob", other, Job, lambda t: store_jobs.new_job(t, other)))
    assert fresh.id != first.id


def test_delete_turns_past_events_into_tombstones(store):
    j = store.write_sync(lambda tx: create(tx, metadata={"secret": "x"}))
    store.write_sync(lambda tx: store_jobs.delete_jobs(tx, [j.id], False, False))
    evs = [res.JobEvent.FromString(r.data) for r in store.read_sync(store_events.read_events, 1, 10, 10)[0]]
    assert [e.type for e in evs] == [res.JobEvent.CREATED, res.JobEvent.DELETED]
    assert all(not e.job.metadata and e.job.id == j.id for e in evs)


def test_compaction(store):
    clock = store.clock
    for _ in range(3):
        store.write_sync(create)
    clock.advance(100)  # type: ignore[attr-defined]
    store.write_sync(create)
    rev, more = store.write_sync(lambda tx: store_events.compact(tx, tx.now - 50_000_000))
    assert (rev, more) == (3, False)
    assert store.read_sync(lambda db, p: store_jobs.compact_revision(db)) == 3
    rows, compacted = store.read_sync(store_events.read_events, 4, 10, 10)
    assert [r.revision for r in rows] == [4] and compacted == 3


def test_compaction_works_in_bounded_steps(store):
    for _ in range(7):
        store.write_sync(create)
    store.clock.advance(100)  # type: ignore[attr-defined]
    steps = []
    more = True
    while more:
        rev, more = store.write_sync(lambda tx: store_events.compact(tx, tx.now, step=3))
        steps.append(rev)
    assert steps == [3, 6, 7]


def test_read_events_filters_like_a_watcher(store):
    a = store.write_sync(lambda tx: create(tx, "A"))
    b = store.write_sync(lambda tx: create(tx, "B"))
    store.write_sync(lambda tx: store_jobs.abort_job(tx, a.id, "", False))
    flt = store_events.EventFilter
    by_id, _ = store.read_sync(store_events.read_events, 1, 100, 100, flt(job_ids=[a.id]))
    assert [r.revision for r in by_id] == [1, 3]
    by_type, _ = store.read_sync(store_events.read_events, 1, 100, 100, flt(types=["B"]))
    assert [r.job_id for r in by_type] == [b.id]
    by_state, _ = store.read_sync(store_events.read_events, 1, 100, 100, flt(states=[Job.ABORTED]))
    assert [r.revision for r in by_state] == [3]
