"""The live-jobs REST API of seed 004 (server/gateway/livejobs.py) over a real
server with the gateway embedded and real HTTP: every seed operation end to
end in the seed's envelope and field shapes, a whole session (the live
worker's calls made over gRPC by the test, as tests/test_live_jobs.py
does), client mistakes as envelope errors, and API keys: roles, and a
project in the path that is not the key's answering exactly as one that
does not exist."""
from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import grpc
import pytest
from google.protobuf import duration_pb2

from mediajobs.server.app import App
from mediajobs.v1 import live_resources_pb2 as lres
from mediajobs.v1 import resources_pb2 as res
from mediajobs.v1 import worker_service_pb2 as wsvc
from mediajobs.v1 import worker_service_pb2_grpc

from conftest import start_app
from test_auth import make_key

S = lres.LiveJob.State

# The seed's JSON examples, key by key.
ENVELOPE_KEYS = {"success", "errors", "messages", "result", "resultInfo"}
RESULT_INFO_KEYS = {"totalCount", "pageIndex", "pageSize", "totalPages", "hasNextPage", "hasPreviousPage"}
LIST_ITEM_KEYS = {"id", "name", "key", "status", "description", "filePath", "insertDate", "startDateTime",
                  "endDateTime"}
LIVE_JOB_KEYS = {"name", "key", "destination", "description", "projectId", "status", "startDateTime",
                 "endDateTime", "jobTemplateId", "argoResourceName", "resourceName", "bucket", "cdnDistribution",
                 "rtmpServer", "webSocketConnection", "cdn", "storageMasterFile", "outputManifests", "input",
                 "statistics", "tags"}  # `tags`: in the seed's field table, not its example
INPUT_KEYS = {"filePath", "serverType", "serverTypeOptions", "inputClass", "inputClassOptions", "callbackUrl"}
OPTION_KEYS = {"id", "value", "enabled"}
STATISTICS_KEYS = {"width", "height", "framerate", "videoDataRate", "videoCodecId", "audioDataRate",
                   "audioSampleRate", "audioSampleSize", "audioCodecId", "audioChannels", "stereo", "encoder"}
OUTPUT_KEYS = {"liveJobId", "outputId", "progress", "status", "lockKey", "counter", "encoderId"}
TIMING_KEYS = {"status", "childStatus", "startDateTime", "messageComment"}
ENCODING_KEYS = {"online", "playBackPathURL"}
ONE_ITEM = {"totalCount": 1, "pageIndex": 1, "pageSize": 1, "totalPages": 1, "hasNextPage": False,
            "hasPreviousPage": False}
SEED_DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
PLAYBACK = "https://play.example.com/media"


class Api:
    """The seed's API at one project, as a client sees it."""

    def __init__(self, session: aiohttp.ClientSession, port: int, project: str = "default", key: str = "") -> None:
        self.s = session
        self.root = f"http://127.0.0.1:{port}"
        self.base = f"{self.root}/api/v1/projects/{project}/livejobs"
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def __call__(self, method: str, path: str = "", *, url: str = "", **kw: Any) -> tuple[int, dict[str, Any]]:
        """(HTTP status, envelope), with the envelope's form checked."""
        headers = {**self.headers, **kw.pop("headers", {})}
        async with self.s.request(method, url or self.base + path, headers=headers, **kw) as r:
            assert r.content_type == "application/json", (r.status, await r.text())
            body = await r.json()
        assert set(body) == ENVELOPE_KEYS, body
        assert isinstance(body["messages"], list)
        if body["success"]:
            assert r.status in (200, 201) and body["errors"] == [], body
            assert set(body["resultInfo"]) == RESULT_INFO_KEYS
        else:
            assert r.status >= 400 and body["result"] is None and body["resultInfo"] is None, body
            assert body["errors"] and all(set(e) == {"code", "message"} and e["code"] and e["message"]
                                          for e in body["errors"]), body
        return r.status, body

    async def ok(self, method: str, path: str = "", status: int = 200, **kw: Any) -> Any:
        got, body = await self(method, path, **kw)
        assert got == status and body["success"], (got, body)
        return body

    async def fails(self, method: str, path: str = "", **kw: Any) -> tuple[int, str, str]:
        """(HTTP status, the first error's code, every error message joined)."""
        got, body = await self(method, path, **kw)
        assert not body["success"], body
        return got, body["errors"][0]["code"], " | ".join(e["message"] for e in body["errors"])


def create_body(destination: str, **kw: Any) -> dict[str, Any]:
    return {"jobTemplateId": 0, "destination": destination, "description": kw.pop("description", ""),
            "bucket": kw.pop("bucket", "events"), "cdnDistribution": kw.pop("cdnDistribution", False),
            "input": {"filePath": "", "serverType": 1, "inputClass": 1, "callbackUrl": ""}, **kw}


def is_guid(text: Any) -> bool:
    return isinstance(text, str) and str(uuid.UUID(text)) == text


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[tuple[App, Api]]:
    app = await start_app(str(tmp_path / "db.sqlite"), http_listen="127.0.0.1:0", storage_root=tmp_path / "storage",
                          live_ingest_url="rtmp://live.example.com:1935/live", live_playback_base_url=PLAYBACK,
                          live_cdn_base_url="https://cdn.example.com")
    try:
        async with aiohttp.ClientSession() as s:
            yield app, Api(s, app.gateway.port)
    finally:
        await app.stop(None)


async def test_create_get_and_list_in_the_seed_shapes(gw: tuple[App, Api]) -> None:
    _app, api = gw
    body = await api.ok("POST", status=201, json=create_body(
        "studio-a/main", description="Studio A main feed", cdnDistribution=True, tags={"team": "news"}))
    made = body["result"]
    assert set(made) == LIVE_JOB_KEYS and body["resultInfo"] == ONE_ITEM
    assert is_guid(made["name"]) and is_guid(made["key"]) and made["name"] != made["key"]
    assert (made["projectId"], made["status"], made["jobTemplateId"]) == ("default", S.OFFLINE, "hls-live-360p-240p")
    assert (made["destination"], made["bucket"], made["description"]) == ("studio-a/main", "events",
                                                                          "Studio A main feed")
    assert made["rtmpServer"] == "rtmp://live.example.com:1935/live" and made["webSocketConnection"] == ""
    assert made["cdnDistribution"] is True
    assert made["cdn"] == "https://cdn.example.com/live/events/studio-a/main/master.m3u8"
    assert made["storageMasterFile"] == f"{PLAYBACK}/live/events/studio-a/main/master.m3u8"
    assert made["outputManifests"] == {"360p": f"{PLAYBACK}/live/events/studio-a/main/360p/index.m3u8",
                                       "240p": f"{PLAYBACK}/live/events/studio-a/main/240p/index.m3u8"}
    assert made["startDateTime"] is None and made["endDateTime"] is None and made["argoResourceName"] == ""
    assert made["tags"] == {"team": "news"}
    inp = made["input"]
    assert set(inp) == INPUT_KEYS and (inp["serverType"], inp["inputClass"]) == (1, 1)
    assert all(set(o) == OPTION_KEYS for o in inp["serverTypeOptions"] + inp["inputClassOptions"])
    assert [(o["id"], o["value"], o["enabled"]) for o in inp["serverTypeOptions"]] == [
        (1, "RTMP", True), (2, "SRT", False), (3, "HLS", False)]
    assert [(o["id"], o["value"], o["enabled"]) for o in inp["inputClassOptions"]] == [
        (1, "SINGLE", True), (2, "STANDARD", False)]
    assert set(made["statistics"]) == STATISTICS_KEYS and made["statistics"]["width"] == 0

    # GET by name (the seed's GUID) and by the integer id the list shows: the same live job.
    got = (await api.ok("GET", f"/{made['name']}"))["result"]
    assert got == made
    listed = (await api.ok("GET"))["result"]
    assert len(listed) == 1 and set(listed[0]) == LIST_ITEM_KEYS
    item = listed[0]
    assert isinstance(item["id"], int) and item["id"] >= 1 and item["name"] == made["name"]
    assert (item["key"], item["status"], item["description"], item["filePath"]) == (
        made["key"], "Offline", "Studio A main feed", "")
    assert SEED_DATE.fullmatch(item["insertDate"]) and item["startDateTime"] is None
    assert (await api.ok("GET", f"/{item['id']}"))["result"] == made

    # The input at the top level (the seed's parameter list), names in any case, enums by name.
    flat = await api.ok("POST", status=201, json={"Bucket": "events", "DESTINATION": "room-0",
                                                  "description": "Panel stream 0", "serverType": "rtmp"})
    assert flat["result"]["input"]["serverType"] == 1 and flat["result"]["destination"] == "room-0"
    for i in range(1, 5):
        await api.ok("POST", status=201, json=create_body(f"room-{i}", description=f"{'Keynote' if i % 2 else 'Panel'}"
                                                                                  f" stream {i}"))
    # Idempotency-Key: a retry is the same live job.
    again = [(await api.ok("POST", status=201, json=create_body("retried"), headers={"Idempotency-Key": "c-1"})
              )["result"]["name"] for _ in range(2)]
    assert again[0] == again[1]

    page = await api.ok("GET", params={"pageIndex": "2", "pageSize": "2"})
    assert page["resultInfo"] == {"totalCount": 7, "pageIndex": 2, "pageSize": 2, "totalPages": 4,
                                  "hasNextPage": True, "hasPreviousPage": True}
    everything = (await api.ok("GET", params={"pageSize": "100"}))["result"]
    assert [x["id"] for x in page["result"]] == [x["id"] for x in everything[2:4]]
    assert [x["id"] for x in everything] == sorted((x["id"] for x in everything), reverse=True)  # newest first
    assert all(is_guid(x["key"]) for x in everything)
    found = await api.ok("GET", params={"Search": "KEYNOTE", "PageIndex": "1", "pagesize": "10"})
    assert sorted(x["description"] for x in found["result"]) == ["Keynote stream 1", "Keynote stream 3"]
    assert found["resultInfo"]["totalCount"] == 2 and not found["resultInfo"]["hasNextPage"]
    first = await api.ok("GET")
    assert (first["resultInfo"]["pageIndex"], first["resultInfo"]["pageSize"]) == (1, 20)


async def test_a_session_start_to_stop_over_http(gw: tuple[App, Api]) -> None:
    app, api = gw
    made = (await api.ok("POST", status=201, json=create_body("studio-b")))["result"]
    key, name = made["key"], made["name"]
    number = (await api.ok("GET"))["result"][0]["id"]
    # Start: the seed's clients send both dates; DateTime.MinValue means "not set".
    started = await api.ok("POST", f"/{key}", status=201, json={
        "online": True, "startDateTime": "0001-01-01T00:00:00", "finishDateTime": "0001-01-01T00:00:00"})
    assert set(started["result"]) == ENCODING_KEYS and started["resultInfo"] == ONE_ITEM
    assert started["result"] == {"online": True,
                                 "playBackPathURL": f"{PLAYBACK}/live/events/studio-b/master.m3u8"}
    got = (await api.ok("GET", f"/{name}"))["result"]
    assert got["status"] == S.STARTING and SEED_DATE.fullmatch(got["startDateTime"]) and got["argoResourceName"]

    # The live worker's part, over gRPC.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        workers = worker_service_pb2_grpc.WorkerServiceStub(ch)
        leased = (await workers.AcquireJobs(wsvc.AcquireJobsRequest(
            job_types=["LIVE_ENCODE"], max_jobs=1, no_wait=True, identity="live-worker-1",
            lease_duration=duration_pb2.Duration(seconds=60),
            lock_key=res.LockKey(scheduler_id="host1", worker_id="live", batch_index=0)))).jobs[0]
        assert leased.job.id == got["argoResourceName"]

        async def report(state: int = 0, **kw: Any) -> wsvc.ReportLiveStatusResponse:
            return await workers.ReportLiveStatus(wsvc.ReportLiveStatusRequest(
                job_id=leased.job.id, lease_token=leased.lease_token, live_state=state, **kw))

        await report(S.AWAITING_INPUT)
        ok = await workers.AuthorizePublish(wsvc.AuthorizePublishRequest(
            stream_key=key, leases=[wsvc.LeaseRef(job_id=leased.job.id, lease_token=leased.lease_token)]))
        assert ok.allowed
        await report(S.LIVE, statistics=lres.LiveStatistics(
            width=320, height=180, frame_rate=29.97, video_data_rate=399.6, video_codec_id=7, audio_data_rate=64,
            audio_sample_rate=48000, audio_sample_size=16, audio_codec_id=10, audio_channels=2, stereo=True,
            encoder="Lavf62.12.102"), outputs=[lres.LiveOutput(output_id=1, counter=3),
                                               lres.LiveOutput(output_id=2, counter=3)])

        stats = await api.ok("GET", f"/{name}/stats")
        assert stats["resultInfo"] == ONE_ITEM and len(stats["result"]) == 1
        assert stats["result"][0] == {"width": 320, "height": 180, "framerate": 30, "videoDataRate": 400,
                                      "videoCodecId": 7, "audioDataRate": 64, "audioSampleRate": 48000,
                                      "audioSampleSize": 16, "audioCodecId": 10, "audioChannels": 2, "stereo": True,
                                      "encoder": "Lavf62.12.102"}
        live = (await api.ok("GET", f"/{number}"))["result"]
        assert live["status"] == S.LIVE and live["statistics"] == stats["result"][0]
        assert live["resourceName"].startswith("host1/live/0")
        assert (await api.ok("GET", params={"search": "studio-b"}))["result"][0]["status"] == "Live"

        outs = await api.ok("GET", "/outputs", params={"liveJobId": str(number)})
        assert outs["resultInfo"]["totalCount"] == 2 and len(outs["result"]) == 2
        assert all(set(o) == OUTPUT_KEYS for o in outs["result"])
        assert [(o["liveJobId"], o["outputId"], o["status"], o["lockKey"], o["counter"]) for o in outs["result"]] \
            == [(number, 1, lres.LiveOutput.ENCODING, "host1/live/0", 3), (number, 2, lres.LiveOutput.ENCODING,
                                                                            "host1/live/0", 3)]
        assert all(isinstance(o["encoderId"], str) and o["encoderId"] for o in outs["result"])
        one = await api.ok("GET", "/outputs", params={"LiveJobId": name, "pageSize": "1"})
        assert [o["outputId"] for o in one["result"]] == [1]
        assert (one["resultInfo"]["totalPages"], one["resultInfo"]["hasNextPage"]) == (2, True)

        # Stop (the dates a stop carries are ignored); a start while stopping is refused.
        stopped = await api.ok("POST", f"/{key}", status=201, json={
            "online": False, "startDateTime": "2022-01-28T23:33:39.961Z", "finishDateTime": "2022-01-28T23:33:39Z"})
        assert stopped["result"]["online"] is False
        code, reason, msg = await api.fails("POST", f"/{key}", json={"online": True})
        assert (code, reason) == (400, "LIVE_JOB_STOPPING") and "STOPPING" in msg
        assert (await report()).stop_requested
        await workers.CompleteJob(wsvc.CompleteJobRequest(job_id=leased.job.id, lease_token=leased.lease_token))

    done = (await api.ok("GET", f"/{name}"))["result"]
    assert done["status"] == S.STOPPED and SEED_DATE.fullmatch(done["endDateTime"])
    outs = (await api.ok("GET", "/outputs", params={"liveJobId": name}))["result"]
    assert {(o["status"], o["progress"]) for o in outs} == {(lres.LiveOutput.STOPPED, 100)}
    timings = await api.ok("GET", f"/{number}/timings", params={"pageSize": "3"})
    assert len(timings["result"]) == 3 and all(set(t) == TIMING_KEYS for t in timings["result"])
    assert timings["resultInfo"]["pageSize"] == 3 and timings["resultInfo"]["hasNextPage"]
    every = (await api.ok("GET", f"/{name}/timings", params={"pageSize": "100"}))["result"]
    assert [(t["childStatus"], t["status"]) for t in every] == [
        ("CREATED", "Offline"), ("START_REQUESTED", "Starting"), ("WORKER_LEASED", "Starting"),
        ("WORKER_READY", "AwaitingInput"), ("CONNECTED", "Live"), ("STOP_REQUESTED", "Stopping"),
        ("STOPPED", "Stopped")]
    assert all(SEED_DATE.fullmatch(t["startDateTime"]) for t in every)
    assert timings["result"] == every[:3]
    only1 = (await api.ok("GET", f"/{name}/timings", params={"outputId": "1", "pageSize": "100"}))["result"]
    assert len(only1) == len(every)  # an output's entries and the live job's own

    # A scheduled window: the session starts no earlier than startDateTime.
    later = (await api.ok("POST", status=201, json=create_body("studio-c")))["result"]
    start = datetime.now(timezone.utc).replace(microsecond=123000) + timedelta(hours=1)
    code, _reason, msg = await api.fails("POST", f"/{later['key']}", json={
        "online": True, "startDateTime": iso(start), "finishDateTime": iso(start - timedelta(minutes=5))})
    assert code == 400 and "finishDateTime" in msg
    await api.ok("POST", f"/{later['key']}", status=201, json={
        "online": True, "startDateTime": iso(start), "finishDateTime": iso(start + timedelta(hours=1))})
    scheduled = (await api.ok("GET", f"/{later['name']}"))["result"]
    assert scheduled["status"] == S.STARTING and scheduled["startDateTime"] == iso(start)


async def test_mistakes_answer_the_envelope_never_a_stack_trace(gw: tuple[App, Api]) -> None:
    _app, api = gw
    made = (await api.ok("POST", status=201, json=create_body("taken")))["result"]
    v2 = api.base.replace("/api/v1/", "/api/v2/")
    assert (await api.fails("GET", url=v2))[:2] == (400, "UNSUPPORTED_API_VERSION")
    assert (await api.fails("POST", url=v2.replace("/v2/", "/vnext/"), json={}))[:2] == (400,
                                                                                       "UNSUPPORTED_API_VERSION")
    assert (await api.ok("GET", url=api.base.replace("/api/v1/", "/api/v1.0/")))["result"]

    # Bodies.
    cases: list[tuple[Any, int, str, str]] = [
        (b"{nope", 400, "BODY_NOT_JSON", "JSON"),
        ([1, 2], 400, "BODY_NOT_JSON", "object"),
        ({}, 400, "INVALID_ARGUMENT", "bucket"),
        ({"bucket": "b", "destination": "d", "nosuch": 1}, 400, "INVALID_REQUEST", "nosuch"),
        ({**create_body("d"), "destination": 5}, 400, "INVALID_REQUEST", "destination must be a string"),
        ({**create_body("d"), "input": {"serverType": 9}}, 400, "INVALID_REQUEST", "input.serverType"),
        ({**create_body("d"), "input": {"serverType": "carrier-pigeon"}}, 400, "INVALID_REQUEST", "RTMP"),
        ({**create_body("d"), "input": {"serverType": 0}}, 400, "INVALID_ARGUMENT", "input.serverType"),
        ({**create_body("d"), "input": {"serverType": 3}}, 400, "INVALID_ARGUMENT", "input.filePath"),
        ({**create_body("d"), "input": "rtmp"}, 400, "INVALID_REQUEST", "input must be a JSON object"),
        ({**create_body("d"), "serverType": 1}, 400, "INVALID_REQUEST", "both"),
        ({**create_body("d"), "tags": {"a": 1}}, 400, "INVALID_REQUEST", "tags"),
        ({**create_body("d"), "cdnDistribution": "yes"}, 400, "INVALID_REQUEST", "cdnDistribution"),
        (create_body("../etc"), 400, "INVALID_ARGUMENT", "destination"),
        (create_body("d", description="x" * 1025), 400, "INVALID_ARGUMENT", "description"),
        (create_body("d", jobTemplateId="no-such-template"), 404, "TEMPLATE_NOT_FOUND", "no-such-template"),
        (create_body("taken"), 409, "DESTINATION_IN_USE", "taken"),
        (b"x" * (65 * 1024), 413, "BODY_TOO_LARGE", "limit"),
        (b"", 400, "BODY_MISSING", "body"),
    ]
    for sent, status, code, text in cases:
        kw: dict[str, Any] = {"data": sent, "headers": {"Content-Type": "application/json"}} \
            if isinstance(sent, bytes) else {"json": sent}
        got = await api.fails("POST", **kw)
        assert got[:2] == (status, code) and text in got[2], (sent if not isinstance(sent, bytes) else sent[:20], got)
    got = await api.fails("POST", json={})
    assert all(f in got[2] for f in ("bucket", "destination", "input.serverType")), got  # one error per field

    # Query parameters.
    for params, text in [({"pageSize": "abc"}, "pageSize"), ({"pageSize": "101"}, "pageSize"),
                         ({"pageIndex": "0"}, "pageIndex"), ({"pageIndex": "99999999999999"}, "pageIndex"),
                         ({"bogus": "1"}, "bogus"), ({"search": "x" * 300}, "search"),
                         ({"pageIndex": "1000", "pageSize": "100"}, "pageIndex")]:
        got = await api.fails("GET", params=params)
        assert got[0] == 400 and text in got[2], (params, got)
    assert (await api.fails("GET", f"/{made['name']}", params={"x": "1"}))[0] == 400
    got = await api.fails("GET", "/outputs")
    assert got[0] == 400 and "liveJobId" in got[2]

    # Live jobs and keys that are not there.
    for ref in (str(uuid.uuid4()), "424242", "01M8SB5581KXZ3YVM2NAQTGBC0", "not-a-thing"):
        assert (await api.fails("GET", f"/{ref}"))[:2] == (404, "LIVE_JOB_NOT_FOUND"), ref
        assert (await api.fails("GET", f"/{ref}/timings"))[:2] == (404, "LIVE_JOB_NOT_FOUND"), ref
        assert (await api.fails("GET", f"/{ref}/stats"))[:2] == (404, "LIVE_JOB_NOT_FOUND"), ref
        assert (await api.fails("GET", "/outputs", params={"liveJobId": ref}))[:2] == (404, "LIVE_JOB_NOT_FOUND")
    assert (await api.fails("GET", "/" + "x" * 300))[0] == 400
    unknown_key = str(uuid.uuid4())
    got = await api.fails("POST", f"/{unknown_key}", json={"online": True})
    assert got[:2] == (404, "LIVE_JOB_NOT_FOUND") and unknown_key not in got[2]  # a key is never echoed
    for sent, text in [({}, "online is required"), ({"online": "yes"}, "online must be true or false"),
                       ({"online": True, "startDateTime": "tomorrow"}, "startDateTime"),
                       ({"online": True, "finishDateTime": 5}, "finishDateTime"),
                       ({"online": True, "finishDateTime": "2001-01-01T00:00:00Z"}, "finishDateTime"),
                       ({"online": True, "later": True}, "later")]:
        got = await api.fails("POST", f"/{made['key']}", json=sent)
        assert got[0] == 400 and text in got[2], (sent, got)

    # Projects that do not exist: the name rule, a GUID, and another project
    # (to an anonymous caller only the home project exists).
    async with api.s.post(f"{api.root}/v1/projects", json={"project": {"name": "acme"}}) as r:
        assert r.status == 200
    answers = []
    for project in ("nosuch", "2e21fae6-af4c-4a4a-e0fc-08d903f55711", "acme", "x" * 100):
        url = api.base.replace("/projects/default/", f"/projects/{project}/")
        for method, path, kw in [("GET", "", {}), ("POST", "", {"json": create_body("elsewhere")}),
                                 ("GET", f"/{made['name']}", {}),
                                 ("POST", f"/{made['key']}", {"json": {"online": True}}),
                                 ("GET", "/outputs", {"params": {"liveJobId": made["name"]}})]:
            status, body = await api(method, url=url + path, **kw)
            assert (status, body["errors"][0]["code"]) == (404, "PROJECT_NOT_FOUND"), (project, method, path)
            answers.append(body["errors"][0]["message"].replace(repr(project if len(project) < 80 else
                                                                    project[:80] + "..."), "P"))
    assert set(answers) == {"project P does not exist"}
    assert (await api.ok("GET", f"/{made['name']}"))["result"]["status"] == S.OFFLINE  # nothing was started
    assert len((await api.ok("GET"))["result"]) == 1  # nothing was created

    # The gateway's own errors under /api/ are envelopes too.
    got = await api.fails("GET", url=f"{api.root}/api/v1/nowhere")
    assert got[:2] == (404, "ROUTE_NOT_FOUND")
    async with api.s.delete(f"{api.base}/{made['name']}") as r:
        body = await r.json()
        assert r.status == 405 and {"GET", "POST"} <= set(r.headers["Allow"].replace(" ", "").split(","))
        assert body["success"] is False and body["errors"][0]["code"] == "METHOD_NOT_ALLOWED"


async def test_keys_roles_and_projects(tmp_path: Path) -> None:
    app = await start_app(str(tmp_path / "db.sqlite"), auth="keys", http_listen="127.0.0.1:0",
                          storage_root=tmp_path / "storage")
    try:
        system_admin = await make_key(app, "admin")
        editor, viewer = await make_key(app, "editor"), await make_key(app, "viewer")
        async with aiohttp.ClientSession() as s:
            port = app.gateway.port
            r = await s.post(f"http://127.0.0.1:{port}/v1/projects", json={"project": {"name": "acme"}},
                             headers={"Authorization": f"Bearer {system_admin}"})
            assert r.status == 200
            acme_editor, acme_admin = await make_key(app, "editor", "acme"), await make_key(app, "admin", "acme")

            # Credentials: none, unknown, another scheme -> 401 with the envelope.
            for headers in ({}, {"Authorization": "Bearer mjk_nope"}, {"Authorization": "Basic dXNlcjpwYXNz"}):
                status, body = await Api(s, port)("GET", headers=headers)
                assert status == 401 and body["errors"][0]["code"] in ("API_KEY_MISSING", "API_KEY_INVALID")
            async with s.get(Api(s, port).base) as r:
                assert r.headers["WWW-Authenticate"].startswith("Bearer")

            # Admin keys whose projects hold nothing are placed through AdminService.
            home, acme = Api(s, port, "default", system_admin), Api(s, port, "acme", acme_admin)
            assert (await home.ok("GET"))["result"] == [] and (await acme.ok("GET"))["result"] == []
            for api, other in ((home, "acme"), (home, "nosuch"), (acme, "default"), (acme, "nosuch")):
                elsewhere = Api(s, port, other, api.headers["Authorization"][7:])
                assert (await elsewhere.fails("GET"))[:2] == (404, "PROJECT_NOT_FOUND"), other

            # Roles: a viewer reads (keys blanked), only an editor creates. A bare key works too.
            assert (await Api(s, port, key=viewer).fails("POST", json=create_body("v")))[:2] == (
                403, "ROLE_NOT_ALLOWED")
            mine = Api(s, port)
            mine.headers = {"Authorization": editor}
            home_job = (await mine.ok("POST", status=201, json=create_body("home")))["result"]
            assert home_job["projectId"] == "default" and is_guid(home_job["key"])
            seen = Api(s, port, key=viewer)
            assert (await seen.ok("GET"))["result"][0]["key"] is None
            assert (await seen.ok("GET", f"/{home_job['name']}"))["result"]["key"] is None
            assert (await seen.fails("POST", f"/{home_job['key']}", json={"online": True}))[0] == 403

            # An editor of acme while acme holds nothing: default's path is, to it, a project that
            # does not exist, for a create and a list alike (nothing is made).
            acme_at_home = Api(s, port, "default", acme_editor)
            assert (await acme_at_home.fails("POST", json=create_body("sneaky")))[:2] == (404, "PROJECT_NOT_FOUND")
            assert (await acme_at_home.fails("GET"))[:2] == (404, "PROJECT_NOT_FOUND")
            assert [x["name"] for x in (await Api(s, port, key=editor).ok("GET"))["result"]] == [home_job["name"]]
            assert (await acme.ok("GET"))["result"] == []

            # Once acme holds a live job, default's path is a project that does not exist to its key.
            in_acme = Api(s, port, "acme", acme_editor)
            acme_job = (await in_acme.ok("POST", status=201, json=create_body("acme-feed")))["result"]
            assert acme_job["projectId"] == "acme"
            acme_number = (await in_acme.ok("GET"))["result"][0]["id"]
            nowhere = Api(s, port, "nosuch", acme_editor)
            for method, path, kw in [
                    ("GET", "", {}), ("POST", "", {"json": create_body("sneaky")}),
                    ("GET", f"/{acme_job['name']}", {}), ("GET", f"/{acme_number}/timings", {}),
                    ("GET", f"/{acme_job['name']}/stats", {}),
                    ("GET", "/outputs", {"params": {"liveJobId": acme_job["name"]}}),
                    ("GET", f"/{home_job['name']}", {}),
                    ("POST", f"/{home_job['key']}", {"json": {"online": True}}),
                    ("POST", f"/{acme_job['key']}", {"json": {"online": True}})]:
                there = await acme_at_home(method, path, **kw)
                absent = await nowhere(method, path, **kw)
                assert there[0] == absent[0] == 404, (method, path, there, absent)
                assert there[1]["errors"][0]["code"] == absent[1]["errors"][0]["code"] == "PROJECT_NOT_FOUND"
                assert there[1]["errors"][0]["message"].replace("'default'", "P") == \
                    absent[1]["errors"][0]["message"].replace("'nosuch'", "P")
            # Default's live job under acme's own path: not found, as one that never existed.
            for ref in (home_job["name"], str(uuid.uuid4())):
                assert (await in_acme.fails("GET", f"/{ref}"))[:2] == (404, "LIVE_JOB_NOT_FOUND")
            assert (await in_acme.fails("POST", f"/{home_job['key']}", json={"online": True}))[:2] == (
                404, "LIVE_JOB_NOT_FOUND")
            assert (await Api(s, port, key=editor).fails("GET", f"/{acme_number}"))[:2] == (
                404, "LIVE_JOB_NOT_FOUND")
            # Nothing of default's changed, nothing was made there.
            home_now = await Api(s, port, key=editor).ok("GET")
            assert [(x["name"], x["status"]) for x in home_now["result"]] == [(home_job["name"], "Offline")]
            assert (await in_acme.ok("POST", f"/{acme_job['key']}", status=201, json={"online": True}))[
                "result"]["online"] is True
    finally:
        await app.stop(None)
