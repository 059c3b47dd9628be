"""The sync client and the `mediajobs` CLI against a real in-process server.

The server runs on the test's event loop, so every sync call runs in another
thread. Synchronisation is by queues and hub.wait_for_watchers, never by
sleeping."""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import queue
import socket
import threading
from typing import Any, Callable

import grpc
import pytest

from mediajobs.client import Backoff, MediaJobsClient, MediaJobsError, RetryInfo
from mediajobs.client.cli import main
from mediajobs.server.app import App, build_server
from mediajobs.server.config import Config
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc
from mediajobs.v1 import resources_pb2 as res

from conftest import start_app

Job = res.Job
TIMEOUT = 10


def in_thread(fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """Run a blocking call in a daemon thread: awaited with a timeout, a stuck
    call fails its test instead of hanging the run (asyncio.to_thread's pool
    is joined at loop shutdown)."""
    f: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        try:
            f.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the test
            f.set_exception(e)

    threading.Thread(target=run, daemon=True).start()
    return asyncio.wrap_future(f)


async def cli(capsys: pytest.CaptureFixture[str], app: App, *argv: str) -> tuple[int, str, str]:
    rc = await asyncio.wait_for(in_thread(main, ["--server", f"127.0.0.1:{app.port}", *argv]), TIMEOUT)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


async def test_cli_create_get_list_abort_delete(app, capsys):
    rc, out, err = await cli(capsys, app, "jobs", "create", "--type", "TRANSCODE", "--priority", "HIGH",
                             "--meta", "asset=a1", "--params", '{"input": "in.mov"}', "--creator", "alice", "--json")
    assert rc == 0, err
    first = json.loads(out)
    assert (first["type"], first["state"], first["priority"], first["creator"]) == (
        "TRANSCODE", "PENDING", "HIGH", "alice")
    assert first["params"] == {"input": "in.mov"}
    assert first["revision"] == 1
    rc, out, err = await cli(capsys, app, "--json", "jobs", "create", "--type", "THUMBNAIL")
    assert rc == 0, err
    second = json.loads(out)
    id1, id2 = first["id"], second["id"]

    rc, out, _ = await cli(capsys, app, "jobs", "get", id1, "--metadata", "--json")
    assert rc == 0 and json.loads(out)["metadata"] == {"asset": "a1"}
    rc, out, _ = await cli(capsys, app, "jobs", "get", id1, "--json")
    assert rc == 0 and "metadata" not in json.loads(out), "metadata only when asked for"
    rc, out, _ = await cli(capsys, app, "jobs", "get", id1, "--fields", "id,state", "--json")
    assert json.loads(out) == {"id": id1, "state": "PENDING"}

    rc, out, _ = await cli(capsys, app, "jobs", "list", "--type", "TRANSCODE", "--json")
    doc = json.loads(out)
    assert rc == 0 and [j["id"] for j in doc["jobs"]] == [id1]
    assert (doc["total_size"], doc["revision"]) == (1, 2)
    rc, out, _ = await cli(capsys, app, "jobs", "list", "--order-by", "priority asc", "--json")
    assert [j["id"] for j in json.loads(out)["jobs"]] == [id2, id1]
    rc, out, _ = await cli(capsys, app, "jobs", "list", "--meta", "asset=a1", "--json")
    assert [j["id"] for j in json.loads(out)["jobs"]] == [id1]
    rc, out, _ = await cli(capsys, app, "jobs", "list")
    table = out.splitlines()
    assert table[0].split()[:3] == ["ID", "TYPE", "STATE"] and len(table) == 3
    assert table[1].split()[:4] == [id1, "TRANSCODE", "PENDING", "HIGH"]

    rc, out, _ = await cli(capsys, app, "jobs", "abort", id1, "--reason", "wrong source", "--json")
    aborted = json.loads(out)
    assert rc == 0 and (aborted["state"], aborted["abort_reason"]) == ("ABORTED", "wrong source")
    rc, out, _ = await cli(capsys, app, "jobs", "list", "--state", "ABORTED", "--json")
    assert [j["id"] for j in json.loads(out)["jobs"]] == [id1]
    rc, out, err = await cli(capsys, app, "jobs", "update", id1, "--priority", "LOW")
    assert rc == 1 and err.startswith("mediajobs: FAILED_PRECONDITION: ") and "reason: JOB_FINISHED" in err

    rc, out, _ = await cli(capsys, app, "jobs", "delete", id1, id2, "--json")
    assert rc == 0 and sorted(json.loads(out)["deleted_ids"]) == sorted([id1, id2])
    rc, out, err = await cli(capsys, app, "jobs", "get", id1)
    assert (rc, out) == (1, "")
    assert err.startswith("mediajobs: NOT_FOUND: ") and "reason: JOB_NOT_FOUND" in err
    rc, out, err = await cli(capsys, app, "jobs", "get", "not-a-job-id")
    assert rc == 2 and "field id: 'not-a-job-id' is not a job id" in err


async def test_cli_types_problems_rerun(app, capsys):
    rc, out, _ = await cli(capsys, app, "jobs", "create", "--type", "MY_CUSTOM", "--json")
    old = json.loads(out)
    rc, out, _ = await cli(capsys, app, "jobs", "rerun", old["id"], "--priority", "HIGHEST", "--json")
    new = json.loads(out)
    assert rc == 0 and (new["rerun_of"], new["priority"], new["type"]) == (old["id"], "HIGHEST", "MY_CUSTOM")
    rc, out, _ = await cli(capsys, app, "jobs", "types", "--json")
    types = {t["name"]: t for t in json.loads(out)["job_types"]}
    assert types["TRANSCODE"]["built_in"] is True and "built_in" not in types["MY_CUSTOM"]
    rc, out, _ = await cli(capsys, app, "jobs", "types")
    assert ["MY_CUSTOM", "no"] in [ln.split()[:2] for ln in out.splitlines()]
    rc, out, _ = await cli(capsys, app, "jobs", "problems", "--json")
    assert rc == 0 and json.loads(out) == {"problems": []}


async def test_client_api_pages_idempotency_and_errors(app):
    def scenario() -> None:
        with MediaJobsClient(f"127.0.0.1:{app.port}") as c:
            a = c.create_job("IMPORT", request_id="same", metadata={"k": "v"})
            assert c.create_job("IMPORT", request_id="same", metadata={"k": "v"}).id == a.id, "idempotent"
            made = [a] + [c.create_job("IMPORT", priority=p) for p in ("LOW", "HIGH", 5, "lowest")]
            assert [j.id for j in c.iter_jobs(page_size=2)] == [j.id for j in made], "every page, in order"
            assert [j.id for j in c.iter_jobs(limit=3)] == [j.id for j in made[:3]]
            page = c.list_jobs(states=["pending"], order_by="priority desc", page_size=1)
            assert page.jobs[0].id == made[3].id and page.next_page_token and page.total_size == 5
            assert c.update_priority(a.id, "HIGHEST").priority == Job.HIGHEST
            assert c.get_job(a.id, include_metadata=True).metadata == {"k": "v"}
            assert c.rerun_job(a.id).rerun_of == a.id
            assert c.abort_job(a.id, reason="r").state == Job.ABORTED
            assert c.delete_jobs(made[1].id) == [made[1].id]
            assert c.delete_jobs([made[1].id], allow_missing=True) == []
            with pytest.raises(MediaJobsError) as e:
                c.create_job("", max_attempts=500)
            assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert {f for f, _ in e.value.field_violations} == {"type", "max_attempts"}
            with pytest.raises(MediaJobsError) as e:
                c.get_job(made[1].id)
            assert (e.value.code, e.value.reason) == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")
            with pytest.raises(MediaJobsError) as e:
                c.create_job("IMPORT", request_id="same", metadata={"k": "other"})
            assert (e.value.code, e.value.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
            assert any(t.name == "IMPORT" and t.built_in for t in c.list_job_types())

    await asyncio.wait_for(in_thread(scenario), 4 * TIMEOUT)


async def test_cli_watch_json_count_end_to_end(app, jobs, capsys):
    # From now: the watch is open (the hub counts it) before the changes,
    # which go through the stub so that stdout holds only the watch's lines.
    watching = in_thread(main, ["--server", f"127.0.0.1:{app.port}", "jobs", "watch", "--json", "--count", "3"])
    await asyncio.wait_for(app.hub.wait_for_watchers(1), TIMEOUT)
    j1 = await jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE"))
    await jobs.CreateJob(svc.CreateJobRequest(type="THUMBNAIL"))
    await jobs.AbortJob(svc.AbortJobRequest(id=j1.id))
    assert await asyncio.wait_for(watching, TIMEOUT) == 0
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [(ln["revision"], ln["type"]) for ln in lines] == [(1, "CREATED"), (2, "CREATED"), (3, "UPDATED")]
    assert lines[0]["job_id"] == j1.id and lines[0]["job"]["type"] == "TRANSCODE"
    assert (lines[2]["job_id"], lines[2]["previous_state"], lines[2]["job"]["state"]) == (
        j1.id, "PENDING", "ABORTED")

    # From a revision, with filters: replayed from the log.
    rc, out, err = await cli(capsys, app, "jobs", "watch", "--from-revision", "1", "--type", "TRANSCODE",
                             "--json", "--count", "2")
    assert rc == 0, err
    assert [(json.loads(ln)["revision"], json.loads(ln)["job_id"]) for ln in out.splitlines()] == [
        (1, j1.id), (3, j1.id)]
    # A snapshot first, then live changes.
    rc, out, err = await cli(capsys, app, "jobs", "watch", "--snapshot", "--json", "--count", "2")
    assert rc == 0, err
    assert [json.loads(ln)["type"] for ln in out.splitlines()] == ["SNAPSHOT", "SNAPSHOT"]


async def _restart(db: str, port: int) -> App:
    app = await build_server(Config(listen=f"127.0.0.1:{port}", db=db))
    await app.start()
    return app


async def test_watch_resumes_by_itself_across_a_server_restart(sqlite_path):
    app = await start_app(sqlite_path)
    port = app.port
    client = MediaJobsClient(f"127.0.0.1:{port}")
    retries: queue.Queue[RetryInfo] = queue.Queue()
    watch = client.watch_jobs(include_progress=False, backoff=Backoff(initial=0.02, maximum=0.2),
                              on_retry=retries.put)
    got: queue.Queue[Any] = queue.Queue()

    def consume() -> None:
        try:
            for msg in watch:
                got.put(msg)
            got.put(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            got.put(e)

    async def next_msg() -> svc.WatchJobsResponse:
        msg = await asyncio.to_thread(got.get, True, TIMEOUT)
        assert isinstance(msg, svc.WatchJobsResponse), f"the watch ended: {msg!r}"
        return msg

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    try:
        await asyncio.wait_for(app.hub.wait_for_watchers(1), TIMEOUT)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = job_service_pb2_grpc.JobServiceStub(ch)
            before = [await stub.CreateJob(svc.CreateJobRequest(type="BEFORE")) for _ in range(5)]
            received = [await next_msg()]  # live; the rest may or may not arrive before the stop
        await app.stop(None)
        info = await asyncio.to_thread(retries.get, True, TIMEOUT)
        assert info.error is not None and info.error.code == grpc.StatusCode.UNAVAILABLE
        assert info.next_revision is not None and 2 <= info.next_revision <= 6

        app = await _restart(sqlite_path, port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = job_service_pb2_grpc.JobServiceStub(ch)
            after = [await stub.CreateJob(svc.CreateJobRequest(type="AFTER")) for _ in range(5)]
            last = await stub.AbortJob(svc.AbortJobRequest(id=before[0].id))
        while received[-1].revision < last.revision:
            received.append(await next_msg())
    finally:
        watch.cancel()
        await asyncio.to_thread(consumer.join, TIMEOUT)
        client.close()
        await app.stop(None)
    assert not consumer.is_alive(), "cancel() ends the watch"
    assert [m.revision for m in received] == list(range(1, 12)), "every revision once, in order, no gap"
    assert [m.events[0].job.id for m in received[:10]] == [j.id for j in before + after]
    assert [m.events[0].type for m in received[:10]] == [res.JobEvent.CREATED] * 10
    assert (received[10].events[0].job.id, received[10].events[0].job.state) == (before[0].id, Job.ABORTED)
    assert watch.reconnects >= 1
    assert got.get(timeout=TIMEOUT) is None and got.empty(), "nothing after the cancel"


async def test_watch_cancel_interrupts_a_call_that_never_answers():
    """cancel() from another thread ends the watch even while its first call
    is pending (here: a peer that accepts TCP connections and never speaks)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(TIMEOUT)
        client = MediaJobsClient(f"127.0.0.1:{listener.getsockname()[1]}")
        watch = client.watch_jobs()
        ended = in_thread(list, watch)
        conn, _ = await asyncio.to_thread(listener.accept)  # the call is under way
        try:
            watch.cancel()
            assert await asyncio.wait_for(ended, TIMEOUT) == []
        finally:
            conn.close()
            client.close()
