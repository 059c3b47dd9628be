"""The transcoding shim (POST/GET/DELETE /v1/transcodes, Bytescale's async-job
shape, mediajobs' errors) and the Bytescale dialect, driven by the published
@bytescale/sdk 3.62.0, unmodified, from Node (tests/node: installed here
with `npm ci`, once per session): JobApi getJob / listRecentJobs (its
`0=...&1=...` query) / cancelJob and FileApi.processFileAndSave, Bytescale
keys made from mediajobs keys, another project's account not found, bad
keys refused with Bytescale's errors. A real transcode by the reference
media worker ends Succeeded with its outputs on disk, seen through both
fronts. Every server is real, every call real HTTP; waits are on WatchJobs."""
from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import grpc
import pytest
import yarl
from google.rpc import error_details_pb2

from mediajobs.client.media import synthesize_clip
from mediajobs.client.media_worker import build_media_worker
from mediajobs.server.app import App
from mediajobs.server.gateway.bytescale import bytescale_key
from mediajobs.server.gateway.transcode import account_id, bytescale_status, job_summary, job_type
from mediajobs.v1 import job_service_pb2 as jsvc
from mediajobs.v1 import job_service_pb2_grpc
from mediajobs.v1 import resources_pb2 as res

from conftest import IN_CI, start_app
from test_auth import make_key

Job = res.Job
NODE_DIR = Path(__file__).parent / "node"
DRIVER = NODE_DIR / "bytescale_driver.mjs"
SDK_VERSION = "3.62.0"
SUMMARY_KEYS = {"jobUrl", "jobDocs", "jobId", "jobType", "accountId", "created", "lastUpdated", "status", "summary",
                "error"}
TERMINAL = (Job.SUCCEEDED, Job.FAILED, Job.ABORTED)
HOME = account_id("default")
ACME = account_id("acme")


# -- the Node side --------------------------------------------------------------------


def _installed_sdk() -> str:
    try:
        return str(json.loads((NODE_DIR / "node_modules/@bytescale/sdk/package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return ""


@pytest.fixture(scope="session")
def bytescale_sdk() -> Path:
    """tests/node with @bytescale/sdk installed by npm ci from its lock file
    (once; a lock keeps parallel sessions from installing over each other)."""
    npm = shutil.which("npm")
    if not shutil.which("node") or not npm:
        if IN_CI:
            pytest.fail("node and npm are needed to drive @bytescale/sdk, and CI requires these tests to run")
        pytest.skip("node and npm are needed to drive @bytescale/sdk (with CI=true this fails instead)")
    with open(Path(tempfile.gettempdir()) / "mediajobs-tests-npm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_sdk() != SDK_VERSION:
            out = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR)],
                                 capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
            assert out.returncode == 0, f"npm ci failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    assert _installed_sdk() == SDK_VERSION
    return DRIVER


async def sdk(driver: Path, base: str, api_key: str, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run `steps` with the SDK (apiUrl and cdnUrl: the gateway); each
    result is {"ok": true, "value"} or {"ok": false, "error"}."""
    plan = {"apiUrl": base, "cdnUrl": base, "apiKey": api_key, "steps": steps}
    proc = await asyncio.create_subprocess_exec("node", str(driver), stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(json.dumps(plan).encode()), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    reply = json.loads(out)
    assert reply["sdkVersion"] == SDK_VERSION
    assert len(reply["results"]) == len(steps)
    return list(reply["results"])


def api_error(result: dict[str, Any]) -> tuple[str, str]:
    """(errorCode, message) of a step that threw BytescaleApiError."""
    assert not result["ok"], result
    assert result["error"]["name"] == "BytescaleApiError", result
    return result["error"]["errorCode"], result["error"]["message"]


def ref(step: int, key: str = "jobId") -> dict[str, Any]:
    return {"$result": step, "key": key}


# -- servers ------------------------------------------------------------------------


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[tuple[App, str]]:
    """A server with --auth keys and its gateway; no worker, so jobs wait."""
    app = await start_app(str(tmp_path / "db.sqlite"), auth="keys", http_listen="127.0.0.1:0",
                          storage_root=tmp_path / "storage")
    try:
        yield app, f"http://127.0.0.1:{app.gateway.port}"
    finally:
        await app.stop(None)


@pytest.fixture
async def with_worker(tmp_path: Path) -> AsyncIterator[tuple[App, str, Path]]:
    """A server without keys, its gateway, the reference media worker, and
    a 1 s 160x120 clip at in/clip.mp4 of the storage root."""
    app = await start_app(str(tmp_path / "db.sqlite"), http_listen="127.0.0.1:0", storage_root=tmp_path / "storage")
    root = app.cfg.storage_dir()
    synthesize_clip(root / "in" / "clip.mp4", 1.0, 160, 120, fps=25)
    worker = build_media_worker(f"127.0.0.1:{app.port}", root, concurrency=2, progress_interval=0.05)
    run = asyncio.create_task(worker.run(handle_signals=False))
    try:
        yield app, f"http://127.0.0.1:{app.gateway.port}", root
    finally:
        worker.stop(0)
        await run
        await app.stop(None)


async def until_finished(app: App, job_ids: list[str]) -> dict[str, int]:
    """Wait on WatchJobs until every job is SUCCEEDED, FAILED or ABORTED."""
    states: dict[str, int] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        call = job_service_pb2_grpc.JobServiceStub(ch).WatchJobs(
            jsvc.WatchJobsRequest(job_ids=job_ids, start_revision=1))
        async with asyncio.timeout(120):
            async for msg in call:
                states.update({ev.job.id: ev.job.state for ev in msg.events})
                if all(states.get(i) in TERMINAL for i in job_ids):
                    call.cancel()
                    break
    return states


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- credentials, states, types ---------------------------------------------------------


def test_account_ids_and_keys_fit_the_sdk() -> None:
    assert re.fullmatch(r"[A-Za-z0-9]{7}", HOME) and re.fullmatch(r"[A-Za-z0-9]{7}", ACME)
    assert HOME == account_id("default") and HOME != ACME
    mjk = "mjk_" + "0" * 26 + "_se_cr-et"
    key = bytescale_key("acme", mjk)
    assert key == f"secret_{ACME}{mjk}"
    assert key.split("_")[1][:7] == ACME  # the SDK's own reading of a key's account id
    with pytest.raises(ValueError):
        bytescale_key("acme", "not-a-mediajobs-key")
    # The documented one-liner.
    out = subprocess.run([sys.executable, "-m", "mediajobs.server.gateway.bytescale", "acme"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "MEDIAJOBS_API_KEY": mjk}, stdin=subprocess.DEVNULL)
    assert out.returncode == 0 and out.stdout.strip() == key and ACME in out.stderr
    out = subprocess.run([sys.executable, "-m", "mediajobs.server.gateway.bytescale", "acme"], capture_output=True,
                         text=True, timeout=60, input="nope\n",
                         env={k: v for k, v in os.environ.items() if k != "MEDIAJOBS_API_KEY"})
    assert out.returncode == 2 and "mjk_" in out.stderr


def _bytescale_vocabulary() -> dict[str, set[str]]:
    """resources.proto's vocabulary comment: state -> its Bytescale statuses."""
    text = (Path(__file__).parents[1] / "protos/mediajobs/v1/resources.proto").read_text()
    out = {}
    for m in re.finditer(r"//\s+([A-Z]+)\s+<-\s+(.+)", text):
        columns = m.group(2).split(" / ")
        if len(columns) == 3:
            out[m.group(1)] = {s.strip() for s in columns[1].split(",")}
    return out


def test_states_map_as_the_proto_says() -> None:
    vocabulary = _bytescale_vocabulary()
    assert set(vocabulary) == {"PENDING", "RUNNING", "ABORTING", "SUCCEEDED", "FAILED", "ABORTED"}
    seen = set()
    for name, statuses in vocabulary.items():
        for attempts in (0, 1):
            status = bytescale_status(Job(state=Job.State.Value(name), attempt_count=attempts))
            assert status in statuses, (name, status)
            seen.add(status)
    # Both of PENDING's: Created before any attempt, Pending when waiting for a retry.
    assert bytescale_status(Job(state=Job.PENDING)) == "Created"
    assert bytescale_status(Job(state=Job.PENDING, attempt_count=1)) == "Pending"
    assert seen == {"Created", "Pending", "Running", "Cancelling", "Succeeded", "Failed", "Cancelled"}


def test_a_failed_job_carries_its_error_and_audio_only_is_an_audio_job() -> None:
    job = Job(id="01J00000000000000000000000", type="TRANSCODE", state=Job.FAILED, project="default")
    job.params.update({"source": "in/a.mov", "outputs": [{"name": "a", "container": "mp4", "audio_codec": "aac"}]})
    job.create_time.FromMilliseconds(1_700_000_000_123)
    job.update_time.FromMilliseconds(1_700_000_005_456)
    job.end_time.FromMilliseconds(1_700_000_005_456)
    job.error.code, job.error.message = 3, "source in/a.mov has no audio"
    job.error.details.add().Pack(error_details_pb2.ErrorInfo(reason="UNSUPPORTED_OUTPUT", domain="mediajobs",
                                                             metadata={"output": "a"}))
    assert job_type(job) == "ProcessAudioJob"
    body = job_summary(job, "http://gw/x", HOME)
    assert set(body) == SUMMARY_KEYS and body["status"] == "Failed"
    assert (body["created"], body["lastUpdated"]) == (1_700_000_000_123, 1_700_000_005_456)
    assert body["error"] == {"timestamp": "2023-11-14T22:13:25.456Z", "message": "source in/a.mov has no audio",
                             "code": "unsupported_output", "details": {"output": "a"}}
    assert body["summary"]["outputs"] == [{"name": "a", "container": "mp4", "audioCodec": "aac",
                                           "path": f"transcodes/{job.id}/a.mp4"}]


# -- the shim ---------------------------------------------------------------------------


async def test_shim_submit_poll_cancel(keyed: tuple[App, str]) -> None:
    app, base = keyed
    editor, viewer = bearer(await make_key(app, "editor")), bearer(await make_key(app, "viewer"))
    other = bearer(await make_key(app, "editor", project="acme"))
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{base}/v1/transcodes", json={"source": "in/clip.mp4", "templateId": "mp4-h264-720p"},
                         headers={**editor, "Idempotency-Key": "t-1"})
        assert r.status == 202, await r.text()
        job = await r.json()
        assert set(job) == SUMMARY_KEYS | {"async"} and job["async"] is True
        assert job["jobUrl"] == f"{base}/v1/transcodes/{job['jobId']}" == r.headers["Location"]
        assert re.fullmatch(r"[0-9A-Z]{26}", job["jobId"])
        assert job["jobDocs"] == "https://www.bytescale.com/docs/job-api/GetJob"
        assert (job["jobType"], job["accountId"], job["status"], job["error"]) == ("ProcessVideoJob", HOME,
                                                                                   "Created", None)
        assert isinstance(job["created"], int) and job["created"] == job["lastUpdated"] > 1_600_000_000_000
        assert job["summary"]["source"] == "in/clip.mp4" and job["summary"]["templateId"] == "mp4-h264-720p"
        (out,) = job["summary"]["outputs"]
        assert (out["name"], out["height"], out["path"]) == ("720p", 720, f"transcodes/{job['jobId']}/720p.mp4")
        # The same Idempotency-Key is the same job.
        again = await (await s.post(f"{base}/v1/transcodes", json={"source": "in/clip.mp4",
                                                                   "templateId": "mp4-h264-720p"},
                                    headers={**editor, "Idempotency-Key": "t-1"})).json()
        assert again["jobId"] == job["jobId"]

        # Poll the jobUrl (a viewer may); behind a proxy the jobUrl is the proxy's.
        polled = await (await s.get(job["jobUrl"], headers=viewer)).json()
        assert polled == {**job, "lastUpdated": polled["lastUpdated"]}
        proxied = await (await s.get(job["jobUrl"], headers={**viewer, "X-Forwarded-Proto": "https",
                                                             "X-Forwarded-Host": "media.example.org"})).json()
        assert proxied["jobUrl"] == f"https://media.example.org/v1/transcodes/{job['jobId']}"

        # Cancel: a waiting job is Cancelled at once; again is the same.
        r = await s.delete(job["jobUrl"], headers=viewer)
        assert r.status == 403 and (await r.json())["error"]["status"] == "PERMISSION_DENIED"
        cancelled = await (await s.delete(job["jobUrl"], headers=editor)).json()
        assert cancelled["status"] == "Cancelled" and cancelled["summary"]["cancelReason"]
        assert cancelled["lastUpdated"] >= job["lastUpdated"]
        assert (await (await s.get(job["jobUrl"], headers=editor)).json())["status"] == "Cancelled"
        assert (await (await s.delete(job["jobUrl"], headers=editor)).json())["status"] == "Cancelled"

        # Explicit outputs, audio only: an audio job; outputDir places it.
        r = await s.post(f"{base}/v1/transcodes", headers=editor, json={
            "source": "in/clip.mp4", "outputDir": "out/a/", "priority": "HIGH", "metadata": {"team": "news"},
            "outputs": [{"name": "m4a", "audioCodec": "aac", "audio_bit_rate_bps": 96000}]})
        audio = await r.json()
        assert r.status == 202 and audio["jobType"] == "ProcessAudioJob"
        assert audio["summary"]["outputs"] == [{"name": "m4a", "container": "mp4", "audioCodec": "aac",
                                                "audioBitRateBps": 96000, "path": "out/a/m4a.mp4"}]

        # Keys and projects hold: no key, another project's key.
        r = await s.get(job["jobUrl"])
        assert r.status == 401 and (await r.json())["error"]["status"] == "UNAUTHENTICATED"
        r = await s.get(job["jobUrl"], headers=other)
        assert r.status == 404 and (await r.json())["error"]["status"] == "NOT_FOUND"
        r = await s.get(job["jobUrl"], headers=bearer("mjk_\u00e9t\u00e9"))  # gRPC metadata could not carry it
        assert r.status == 401 and (await r.json())["error"]["status"] == "UNAUTHENTICATED"
        # A job that is not a transcode is not found here.
        probe = await (await s.post(f"{base}/v1/jobs", json={"type": "PROBE"}, headers=editor)).json()
        r = await s.get(f"{base}/v1/transcodes/{probe['id']}", headers=editor)
        assert r.status == 404 and (await r.json())["error"]["status"] == "NOT_FOUND"
        r = await s.delete(f"{base}/v1/transcodes/{probe['id']}", headers=editor)
        assert r.status == 404
        probe = await (await s.get(f"{base}/v1/jobs/{probe['id']}", headers=editor)).json()
        assert probe["state"] == "PENDING"  # untouched
        # The shim is described in /openapi.json with mediajobs' own routes.
        paths = (await (await s.get(f"{base}/openapi.json")).json())["paths"]
        assert paths["/v1/transcodes"]["post"]["operationId"] == "CreateTranscode"
        assert set(paths["/v1/transcodes/{jobId}"]) == {"get", "delete"}


async def test_shim_refuses_bad_requests_with_mediajobs_errors(keyed: tuple[App, str]) -> None:
    app, base = keyed
    editor = bearer(await make_key(app, "editor"))

    def violations(body: dict[str, Any]) -> dict[str, str]:
        out = {}
        for d in body["error"]["details"]:
            for v in d.get("fieldViolations", []):
                out[v["field"]] = v["description"]
        return out

    async with aiohttp.ClientSession() as s:
        async def refused(body: Any, field: str, text: str, status: int = 400) -> None:
            kw = {"data": body} if isinstance(body, (bytes, str)) else {"json": body}
            r = await s.post(f"{base}/v1/transcodes", headers={**editor, "Content-Type": "application/json"}, **kw)
            got = await r.json()
            assert r.status == status, (body, got)
            assert got["error"]["status"] == "INVALID_ARGUMENT", got
            assert field in violations(got), (body, got)
            assert text in got["error"]["message"], (body, got)

        ok = {"source": "in/clip.mp4", "templateId": "mp4-h264-720p"}
        await refused({"templateId": "mp4-h264-720p"}, "source", "required")
        await refused({**ok, "outputs": [{"name": "a", "audioCodec": "aac"}]}, "templateId", "exactly one")
        await refused({"source": "in/clip.mp4"}, "outputs", "exactly one")
        await refused({**ok, "source": "../secret.mp4"}, "source", "'..'")
        await refused({**ok, "source": "/etc/passwd"}, "source", "relative")
        await refused({**ok, "source": "file:///etc/passwd"}, "source", "relative")
        await refused({**ok, "source": "a" * 1025}, "source", "1024")
        await refused({**ok, "nosuch": 1}, "nosuch", "unknown field")
        await refused({**ok, "metadata": None}, "metadata", "null")
        await refused({**ok, "priority": "URGENT"}, "priority", "HIGHEST")
        await refused({**ok, "templateId": "Not A Template"}, "templateId", "template id")
        await refused({**ok, "outputDir": "a/../b"}, "outputDir", "'..'")
        await refused(b"{nope", "body", "not JSON")
        await refused(b'{"source": "a\\ud800b", "templateId": "mp4-h264-720p"}', "body", "surrogate")
        await refused([1, 2], "body", "JSON object")
        await refused(b"[" * 100_000, "body", "not JSON")
        base_out = {"source": "in/clip.mp4"}
        await refused({**base_out, "outputs": []}, "outputs", "non-empty")
        await refused({**base_out, "outputs": [{"name": "v", "container": "webm", "videoCodec": "h264"}]},
                      "outputs[0].container", "webm")
        await refused({**base_out, "outputs": [{"name": "v", "videoCodec": "h264", "width": 161}]},
                      "outputs[0].width", "even")
        await refused({**base_out, "outputs": [{"name": "v", "videoCodec": "h264", "frameRate": "25"}]},
                      "outputs[0].frameRate", "number")
        await refused({**base_out, "outputs": [{"name": "v"}]}, "outputs[0]", "videoCodec")
        await refused({**base_out, "outputs": [{"name": "v", "videoCodec": "h264", "bogus": 1}]}, "outputs[0]",
                      "bogus")
        await refused({**base_out, "outputs": [{"name": "v", "audioCodec": "aac"}] * 2}, "outputs[1].name", "twice")
        await refused({**base_out, "outputs": [{"name": "v", "audioCodec": "aac", "path": "x/../../y.mp4"}]},
                      "outputs[0].path", "'..'")
        await refused({**base_out, "outputs": [{"name": "v", "audioCodec": "aac"}] * 17}, "outputs", "at most 16")
        r = await s.post(f"{base}/v1/transcodes", json=ok, headers={**editor, "Idempotency-Key": "k" * 129})
        assert r.status == 400 and "Idempotency-Key" in violations(await r.json())
        # The API's own refusals come through: an unknown template, a bad id.
        r = await s.post(f"{base}/v1/transcodes", json={**ok, "templateId": "no-such-one"}, headers=editor)
        got = await r.json()
        assert r.status == 404 and any(d.get("reason") == "TEMPLATE_NOT_FOUND" for d in got["error"]["details"])
        r = await s.get(f"{base}/v1/transcodes/not-an-id", headers=editor)
        assert r.status == 400 and (await r.json())["error"]["status"] == "INVALID_ARGUMENT"
        # Limits: a body past 256 KiB.
        r = await s.post(f"{base}/v1/transcodes", json={**ok, "metadata": {"x": "y" * 300_000}}, headers=editor)
        assert r.status == 413 and "bytes" in (await r.json())["error"]["message"]
        async def chunked(*parts: bytes) -> AsyncIterator[bytes]:  # no Content-Length to check up front
            for part in parts:
                yield part

        r = await s.post(f"{base}/v1/transcodes", data=chunked(*[b" " * 65536] * 5), headers=editor)
        assert r.status == 413
        # Nothing above made a job.
        listed = await (await s.get(f"{base}/v1/jobs", headers=editor)).json()
        assert listed.get("jobs", []) == []
        r = await s.post(f"{base}/v1/transcodes", data=chunked(b'{"source": "in/clip.mp4", ',
                                                               b'"templateId": "mp4-h264-720p"}'), headers=editor)
        assert r.status == 202 and (await r.json())["summary"]["templateId"] == "mp4-h264-720p"


# -- the Bytescale SDK ---------------------------------------------------------------------


async def test_the_bytescale_sdk_unmodified(keyed: tuple[App, str], bytescale_sdk: Path) -> None:
    app, base = keyed
    home_mjk, acme_mjk = await make_key(app, "editor"), await make_key(app, "editor", project="acme")
    home, acme = bytescale_key("default", home_mjk), bytescale_key("acme", acme_mjk)
    viewer = bytescale_key("default", await make_key(app, "viewer"))
    forged = f"secret_{HOME}{acme_mjk}"  # acme's key claiming the home project's account

    def job(account: str, kind: str, step: int) -> dict[str, Any]:
        return {"accountId": account, "jobType": kind, "jobId": ref(step)}

    def save(transformation: str, params: dict[str, Any] | None = None, body: dict[str, Any] | None = None,
             account: str = HOME, path: str = "/in/clip.mp4") -> dict[str, Any]:
        out: dict[str, Any] = {"accountId": account, "filePath": path, "transformation": transformation,
                               "processFileAndSaveRequest": body or {}}
        if params is not None:
            out["transformationParams"] = params
        return out

    V, A = "ProcessVideoJob", "ProcessAudioJob"
    steps: list[dict[str, Any]] = [
        {"op": "processFileAndSave", "params": save("video", {"w": 160, "h": 120, "fps": 25, "vb": 300},
                                                    {"destination": "/out/v.mp4"})},  # 0
        {"op": "processFileAndSave", "params": save("audio", {"br": 96, "ch": 1})},  # 1
        {"op": "processFileAndSave", "params": save("audio-aac", None, {"destination": "/out/t/"})},  # 2
        {"op": "getJob", "params": job(HOME, V, 0)},  # 3
        {"op": "getJob", "params": job(HOME, A, 1)},  # 4
        {"op": "listRecentJobs", "params": {"accountId": HOME, "jobType": [V, A]}},  # 5: the 0=&1= query
        {"op": "listRecentJobs", "params": {"accountId": HOME, "jobType": [A]}},  # 6
        {"op": "getJob", "params": job(HOME, A, 0)},  # 7: the wrong jobType
        {"op": "getJob", "apiKey": acme, "params": job(ACME, V, 0)},  # 8: another project's job
        {"op": "getJob", "apiKey": acme, "params": job(HOME, V, 0)},  # 9: another project's account
        {"op": "listRecentJobs", "apiKey": acme, "params": {"accountId": ACME, "jobType": [V, A]}},  # 10
        {"op": "getJob", "apiKey": f"secret_{HOME}mjk_{'0' * 26}_nope", "params": job(HOME, V, 0)},  # 11
        {"op": "getJob", "apiKey": f"secret_{HOME}", "params": job(HOME, V, 0)},  # 12: no mediajobs key
        {"op": "cancelJob", "apiKey": viewer, "params": job(HOME, V, 0)},  # 13
        {"op": "cancelJob", "params": job(HOME, V, 0)},  # 14
        {"op": "getJob", "apiKey": viewer, "params": job(HOME, V, 0)},  # 15
        {"op": "processFileAndSave", "params": save("image")},  # 16
        {"op": "processFileAndSave", "params": save("video", {"q": 5})},  # 17
        {"op": "processFileAndSave", "params": save("video", {"w": 161})},  # 18
        {"op": "processFileAndSave", "params": save("no-such-preset")},  # 19
        {"op": "processFileAndSave", "params": save("video", None, {"metadata": {"a": 1}})},  # 20
        {"op": "processFileAndSave", "params": save("hls-live-360p-240p")},  # 21: a live template
        {"op": "construct", "apiKey": "secret_abc"},  # 22: the SDK's own check of a key
        {"op": "processFileAndSave", "apiKey": acme, "params": save("video", account=ACME)},  # 23
        {"op": "getJob", "apiKey": forged, "params": job(HOME, V, 23)},  # 24
        {"op": "processFileAndSave", "apiKey": forged, "params": save("video")},  # 25
        {"op": "processFileAndSave", "params": save("video", path="/in//clip.mp4")},  # 26
    ]
    r = await sdk(bytescale_sdk, base, home, steps)

    video, audio, preset = (r[i]["value"] for i in range(3))
    for made, kind in ((video, V), (audio, A), (preset, A)):
        assert set(made) == SUMMARY_KEYS | {"async"} and made["async"] is True, made
        assert (made["jobType"], made["accountId"], made["status"]) == (kind, HOME, "Created")
        assert made["jobUrl"] == f"{base}/v2/accounts/{HOME}/jobs/{kind}/{made['jobId']}"
    assert video["summary"]["source"] == "/in/clip.mp4"
    assert video["summary"]["outputs"] == [{"name": "video", "container": "mp4", "videoCodec": "h264", "width": 160,
                                            "height": 120, "videoBitRateBps": 300000, "frameRate": 25.0,
                                            "audioCodec": "aac", "path": "/out/v.mp4"}]
    assert audio["summary"]["outputs"] == [{"name": "audio", "container": "mp4", "audioCodec": "aac",
                                            "audioBitRateBps": 96000, "audioChannels": 1,
                                            "path": f"/transcodes/{audio['jobId']}/audio.mp4"}]
    assert preset["summary"]["templateId"] == "audio-aac"
    assert [o["path"] for o in preset["summary"]["outputs"]] == ["/out/t/audio.mp4"]
    # getJob: the same job, without `async`.
    assert r[3]["value"] == {k: v for k, v in video.items() if k != "async"}
    assert r[4]["value"]["jobId"] == audio["jobId"]
    # listRecentJobs: newest first; one type alone.
    assert [i["jobId"] for i in r[5]["value"]["items"]] == [preset["jobId"], audio["jobId"], video["jobId"]]
    assert [i["jobId"] for i in r[6]["value"]["items"]] == [preset["jobId"], audio["jobId"]]
    assert api_error(r[7])[0] == "job_not_found"
    # Another project: its account does not see this one's jobs, nor this account.
    assert api_error(r[8])[0] == "job_not_found"
    assert api_error(r[9])[0] == "account_not_found"
    assert r[10]["value"] == {"items": []}
    # Bad keys: unknown, without a mediajobs key (the server has keys), a viewer cancelling.
    code, message = api_error(r[11])
    assert code == "invalid_api_key" and "secret_<account id>" in message
    assert api_error(r[12])[0] == "invalid_api_key"
    assert api_error(r[13])[0] == "permission_denied"
    # cancelJob: a waiting job is Cancelled.
    assert r[14] == {"ok": True, "value": None}
    assert r[15]["value"]["status"] == "Cancelled" and r[15]["value"]["summary"]["cancelReason"]
    # processFileAndSave refusals.
    assert api_error(r[16])[0] == "unsupported_transformation"
    code, message = api_error(r[17])
    assert code == "unsupported_transformation_param" and "'q'" in message
    code, message = api_error(r[18])
    assert code == "invalid_transformation_param" and "even" in message
    assert api_error(r[19])[0] == "transformation_not_found"
    assert api_error(r[20])[0] == "unsupported_request_field"
    assert api_error(r[21])[0] == "unsupported_transformation"
    assert r[22]["error"] == {"name": "Error", "message": "Invalid Bytescale API key."}
    # A key whose account id is not its project's account is refused before anything is made.
    assert r[23]["value"]["accountId"] == ACME
    assert api_error(r[24])[0] == "invalid_api_key"
    assert api_error(r[25])[0] == "invalid_api_key"
    assert api_error(r[26])[0] == "invalid_file_path"
    async with aiohttp.ClientSession() as s:
        acme_jobs = await (await s.get(f"{base}/v1/jobs", params={"includeMetadata": "true"},
                                       headers=bearer(acme_mjk))).json()
        states = sorted(j["state"] for j in acme_jobs["jobs"])
        assert states == ["PENDING"]  # step 23's job; the forged key of step 25 made none
        home_jobs = await (await s.get(f"{base}/v1/jobs", headers=bearer(home_mjk))).json()
        assert len(home_jobs["jobs"]) == 3  # the refused requests made none


async def test_bytescale_errors_over_http(keyed: tuple[App, str]) -> None:
    app, base = keyed
    key = bearer(bytescale_key("default", await make_key(app, "editor")))
    jobs = f"{base}/v2/accounts/{HOME}/jobs"

    async def error(r: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
        body = await r.json()
        assert r.status == status and set(body) == {"error"}, (r.status, body)
        assert body["error"]["code"] == code and body["error"]["message"], body
        return dict(body["error"])

    async with aiohttp.ClientSession() as s:
        r = await s.get(jobs)
        await error(r, 401, "unauthorized")
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        await error(await s.get(jobs, headers=bearer(f"public_{HOME}xyz")), 401, "invalid_api_key")
        await error(await s.get(jobs, headers=bearer("secret_ab!defghmjk_x")), 401, "invalid_api_key")
        await error(await s.get(jobs, headers=bearer("secret_" + "a" * 600)), 401, "invalid_api_key")
        await error(await s.get(jobs, headers=bearer(f"secret_{HOME}mjk_\u00e9t\u00e9")), 401, "invalid_api_key")
        # listRecentJobs' two query forms, and what is refused.
        made = await (await s.post(f"{base}/{HOME}/save/audio/in/x.mp4", headers=key)).json()
        for query in ("jobType=ProcessAudioJob", "0=ProcessAudioJob&1=ProcessVideoJob",
                      "jobType=ProcessVideoJob,ProcessAudioJob", ""):
            listed = await (await s.get(f"{jobs}?{query}", headers=key)).json()
            assert [i["jobId"] for i in listed["items"]] == [made["jobId"]], query
        for query in ("jobType=ProcessVideoJob", "jobType=AntivirusJob"):
            assert await (await s.get(f"{jobs}?{query}", headers=key)).json() == {"items": []}
        await error(await s.get(f"{jobs}?jobType=Bogus", headers=key), 400, "invalid_job_type")
        await error(await s.get(f"{jobs}?limit=5", headers=key), 400, "invalid_request")
        await error(await s.get(f"{jobs}/Bogus/{made['jobId']}", headers=key), 400, "invalid_job_type")
        await error(await s.get(f"{jobs}/ProcessAudioJob/not-an-id", headers=key), 400, "invalid_request")
        got = await (await s.get(f"{jobs}/ProcessAudioJob/{made['jobId']}", headers=key)).json()
        assert got["jobId"] == made["jobId"] and got["summary"]["source"] == "/in/x.mp4"
        # The gateway's own errors under /v2/ are Bytescale's too.
        await error(await s.get(f"{base}/v2/nowhere", headers=key), 404, "route_not_found")
        r = await s.post(jobs, headers=key)
        await error(r, 405, "method_not_allowed")
        assert r.headers["Allow"] == "GET"
        # The save route: method, size, body, destination, parameters, path.
        save = f"{base}/{HOME}/save"
        r = await s.get(f"{save}/video/in/x.mp4", headers=key)
        await error(r, 405, "method_not_allowed")
        assert r.headers["Allow"] == "POST"
        await error(await s.post(f"{save}/video/in/x.mp4", headers=key, data=b"x" * 300_000), 413,
                    "request_too_large")
        await error(await s.post(f"{save}/video/in/x.mp4", headers=key, data=b"{nope"), 400, "invalid_request")
        await error(await s.post(f"{save}/video/in/x.mp4", headers=key, json=[1]), 400, "invalid_request")
        await error(await s.post(f"{save}/video/in/x.mp4", headers=key, data=b'{"destination": "/\\udc00"}'), 400,
                    "invalid_request")
        await error(await s.post(f"{save}/video/in/x.mp4", headers=key,
                                 json={"destination": {"folderPath": "/o", "fileNameVariablesEnabled": True}}),
                    400, "unsupported_destination")
        await error(await s.post(f"{save}/audio-aac/in/x.mp4", headers=key, json={"destination": "/o/a.mp4"}),
                    400, "invalid_request")
        await error(await s.post(f"{save}/video/in/x.mp4?h=480&h=720", headers=key), 400,
                    "invalid_transformation_param")
        await error(await s.post(f"{save}/video/in/x.mp4?f=webm-vp9", headers=key), 400,
                    "unsupported_transformation_param")
        await error(await s.post(f"{save}/video", headers=key), 400, "invalid_file_path")
        await error(await s.post(f"{save}/video/in//x.mp4", headers=key), 400, "invalid_file_path")
        # (clients fold "..", so send it encoded, as a client that does not would)
        dotdot = yarl.URL(f"{save}/video/in/%2E%2E/%2E%2E/etc/passwd", encoded=True)
        await error(await s.post(dotdot, headers=key), 400, "invalid_file_path")
        await error(await s.post(f"{save}", headers=key), 404, "route_not_found")
        placed = await (await s.post(f"{save}/video/in/x.mp4?mute=true", headers=key,
                                     json={"destination": {"folderPath": "/o/p", "fileName": "v.mp4"}})).json()
        assert [(o["path"], o.get("audioCodec")) for o in placed["summary"]["outputs"]] == [("/o/p/v.mp4", None)]
        # mediajobs' own routes keep mediajobs' errors.
        body = await (await s.get(f"{base}/v1/nowhere")).json()
        assert body["error"]["status"] == "NOT_FOUND"


# -- a real transcode ----------------------------------------------------------------------


async def test_a_real_transcode_through_the_shim_and_the_sdk(with_worker: tuple[App, str, Path],
                                                             bytescale_sdk: Path) -> None:
    app, base, root = with_worker
    account = "Any7chr"  # without keys any well-formed key works, in the home project
    key = f"secret_{account}whatever"
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{base}/v1/transcodes", json={"source": "in/clip.mp4", "outputs": [
            {"name": "small", "videoCodec": "h264", "audioCodec": "aac", "width": 80, "height": 60}]})
        assert r.status == 202
        shim_job = await r.json()
        made = await sdk(bytescale_sdk, base, key, [
            {"op": "processFileAndSave", "params": {
                "accountId": account, "filePath": "/in/clip.mp4", "transformation": "video",
                "transformationParams": {"h": 60}, "processFileAndSaveRequest": {"destination": "/out/sdk.mp4"}}},
            {"op": "processFileAndSave", "params": {
                "accountId": account, "filePath": "/in/clip.mp4", "transformation": "audio",
                "processFileAndSaveRequest": {"destination": "/out/sound/"}}},
            {"op": "processFileAndSave", "params": {
                "accountId": account, "filePath": "/in/missing.mp4", "transformation": "audio"}},
        ])
        video, audio, missing = (m["value"] for m in made)
        assert video["accountId"] == account and video["jobUrl"].startswith(f"{base}/v2/accounts/{account}/")
        ids = [shim_job["jobId"], video["jobId"], audio["jobId"], missing["jobId"]]
        states = await until_finished(app, ids)
        assert [states[i] for i in ids] == [Job.SUCCEEDED, Job.SUCCEEDED, Job.SUCCEEDED, Job.FAILED]

        done = await (await s.get(shim_job["jobUrl"])).json()
        assert done["status"] == "Succeeded" and done["summary"]["progress"] == 100 and done["error"] is None
        (out,) = done["summary"]["result"]["outputs"]
        path = root / out["path"]
        assert out["path"] == f"transcodes/{shim_job['jobId']}/small.mp4"
        assert path.is_file() and path.stat().st_size == out["sizeBytes"] > 0
        # A finished job cannot be cancelled.
        r = await s.delete(shim_job["jobUrl"])
        assert r.status == 400 and (await r.json())["error"]["status"] == "FAILED_PRECONDITION"

    polled = await sdk(bytescale_sdk, base, key, [
        {"op": "getJob", "params": {"accountId": account, "jobType": "ProcessVideoJob", "jobId": video["jobId"]}},
        {"op": "getJob", "params": {"accountId": account, "jobType": "ProcessAudioJob", "jobId": audio["jobId"]}},
        {"op": "getJob", "params": {"accountId": account, "jobType": "ProcessAudioJob", "jobId": missing["jobId"]}},
        {"op": "listRecentJobs", "params": {"accountId": account, "jobType": ["ProcessAudioJob"]}},
        {"op": "cancelJob", "params": {"accountId": account, "jobType": "ProcessVideoJob", "jobId": video["jobId"]}},
        {"op": "getJob", "apiKey": "secret_Other12x", "params": {
            "accountId": account, "jobType": "ProcessVideoJob", "jobId": video["jobId"]}},
    ])
    got_video, got_audio, failed, recent = (p["value"] for p in polled[:4])
    assert got_video["status"] == got_audio["status"] == "Succeeded"
    assert [o["path"] for o in got_video["summary"]["result"]["outputs"]] == ["/out/sdk.mp4"]
    assert [o["path"] for o in got_audio["summary"]["result"]["outputs"]] == ["/out/sound/audio.mp4"]
    for o in got_video["summary"]["result"]["outputs"] + got_audio["summary"]["result"]["outputs"]:
        assert (root / o["path"].lstrip("/")).stat().st_size == o["sizeBytes"] > 0
    assert failed["status"] == "Failed" and failed["error"]["message"] and failed["error"]["code"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", failed["error"]["timestamp"])
    assert [i["jobId"] for i in recent["items"]] == [missing["jobId"], audio["jobId"]]
    assert api_error(polled[4])[0] == "job_finished"
    assert api_error(polled[5])[0] == "account_not_found"  # a key of account Other12 asking for account Any7chr
