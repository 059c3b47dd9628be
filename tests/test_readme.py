"""Every example in README.md runs as written.

The README's fenced blocks are run in order, in one temp folder, against a
real server (started here on a free port, data dir and storage root under a
temp HOME, so `~/.local/share/mediajobs/storage` is the server's default
storage root as it is on a developer's machine):

- ```sh blocks: command by command in one bash process (so `JOB=$(...)`
  carries on to the next command, as in a terminal), `localhost:50051` and
  `127.0.0.1:50051` rewritten to the test server (`localhost:8080` and
  `127.0.0.1:8080` to its HTTP gateway), MEDIAJOBS_SERVER set to it,
  `.venv/bin` first on PATH (mediajobs, grpcurl 1.8.6 from the dev extra).
  Each command must exit 0, and some outputs are checked (CHECKS below).
  A command ending in `&`, or whose comment says "until Ctrl-C", runs in its
  own process; the next command starts once it has printed its first line,
  and it gets SIGINT (Ctrl-C) at the end of its block (`&`: at the end of the
  README), after which it must have exited 0 (grpcurl: printed what it
  should).
- a block whose first line names a file (`# handlers.py`, `<!-- cues.xml -->`)
  is written to that file where it stands; XML blocks must be well-formed.
- a block preceded by `<!-- readme-test: skip ... -->` is not run; only the
  `scripts/...` block may be.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from defusedxml import ElementTree

from mediajobs.server.app import App

from conftest import start_app

README = Path(__file__).resolve().parent.parent / "README.md"
VENV_BIN = Path(sys.executable).parent
SKIP_MARK = "<!-- readme-test: skip"
ADDRESSES = ("localhost:50051", "127.0.0.1:50051")
HTTP_ADDRESSES = ("localhost:8080", "127.0.0.1:8080")  # the HTTP gateway (--http-listen)
CTRL_C = re.compile(r"#.*\buntil Ctrl-C\b")
BACKGROUND = re.compile(r"\s&\s*(#.*)?$")
FILE_NAME = re.compile(r"^(?:#|<!--)\s*([\w.-]+\.(?:py|xml|json))\s*(?:-->)?\s*$")
# How long one command may take (transcoding included), and a stopped one to exit.
COMMAND_TIMEOUT = 120.0


@dataclass
class Block:
    lang: str
    text: str
    line: int  # of the opening fence, 1-based
    skip: bool


def readme_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        i += 1
        skip = start > 0 and lines[start - 1].startswith(SKIP_MARK)
        blocks.append(Block(m[1], "\n".join(body) + "\n", start + 1, skip))
    return blocks


def split_commands(script: str) -> list[str]:
    """Shell commands, one per logical line: backslash continuations and
    quotes spanning lines joined; blank and comment-only lines dropped."""
    commands: list[str] = []
    pending = ""
    for line in script.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line + "\n"
        if line.endswith("\\"):
            continue
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        commands.append(pending.rstrip("\n"))
        pending = ""
    assert not pending, f"unfinished command at the end of a block: {pending!r}"
    return commands


def rewrite(text: str, port: int, http_port: int = 0) -> str:
    for address in ADDRESSES:
        text = text.replace(address, f"127.0.0.1:{port}")
    for address in HTTP_ADDRESSES:
        text = text.replace(address, f"127.0.0.1:{http_port}")
    return text


# -- what some commands must print ----------------------------------------------------


@dataclass
class Result:
    command: str
    rc: int | None
    out: str
    err: str

    def json(self) -> dict:
        return json.loads(self.out)

    def json_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


def _job_state(r: Result, state: str) -> bool:
    return r.json()["state"] == state


# (a regular expression a README command matches, what its result must satisfy)
CHECKS: list[tuple[str, Callable[[Result], bool]]] = [
    ("python3 -m mediajobs.client.media", lambda r: r.out.startswith("wrote ")),
    (r"^grpcurl -plaintext \S+ list$", lambda r: {"mediajobs.v1.MediaService", "grpc.health.v1.Health"} <= set(r.out.split())),
    ("describe mediajobs.v1.JobService", lambda r: "rpc WatchJobs" in r.out),
    ("JobService/CreateJob", lambda r: _job_state(r, "PENDING") and r.json()["params"]["outputs"][0]["name"] == "360p"),
    ("\"include_metadata\": true", lambda r: r.json()["metadata"] == {"asset": "a1"}),
    ("read_mask", lambda r: set(r.json()) == {"id", "state", "priority"}),
    ("JobService/ListJobs", lambda r: [j["priority"] for j in r.json()["jobs"]] == ["HIGH"]),
    ("JobService/UpdateJob", lambda r: r.json()["priority"] == "HIGHEST"),
    ("JobService/AbortJob", lambda r: _job_state(r, "ABORTED") and r.json()["abort_reason"] == "wrong source"),
    ("JobService/WatchJobs", lambda r: '"type": "SNAPSHOT"' in r.out),
    ("Health/Check", lambda r: r.json() == {"status": "SERVING"}),
    ("MediaService/CreateEntry", lambda r: r.json()["source_uri"] == "incoming/clip.mov"),
    ("MediaService/GetEntry", lambda r: r.json()["name"] == "Launch clip"),
    ("MediaService/CheckEntryIsDone", lambda r: "entry" in r.json()),
    ("MediaService/ImportCuePoints", lambda r: len(r.json()["cue_points"]) == 1 and "errors" not in r.json()),
    ("jobs list --state PENDING", lambda r: r.out.splitlines()[0].split()[:2] == ["ID", "TYPE"]),
    (r"jobs get \$JOB --metadata", lambda r: re.search(r"^metadata:\s+asset=a1$", r.out, re.M) is not None),
    ("jobs watch --json --snapshot", lambda r: r.rc == 0 and "SNAPSHOT" in {e["type"] for e in r.json_lines()}),
    (r"jobs abort \$JOB", lambda r: "ABORTED" in r.out),
    (r"jobs delete \$JOB \$RERUN", lambda r: r.out.startswith("deleted 2 jobs")),
    ("jobs types", lambda r: "TRANSCODE" in r.out),
    ("worker handlers", lambda r: r.rc == 0 and "CHECKSUM" in r.err),
    ("jobs wait", lambda r: re.search(r"^state:\s+SUCCEEDED$", r.out, re.M) is not None),
    ("templates create tiny-240p", lambda r: "tiny-240p" in r.out),
    ("entries add incoming/clip.mov --template", lambda r: r.out.startswith("entry ") and " READY " in r.out),
    ("entries add incoming/clip.mov --json", lambda r: r.json()["state"] == "READY"),
    (r"mediainfo \$ENTRY", lambda r: "source incoming/clip.mov" in r.out),
    (r"live publish-test \"\$URL\"", lambda r: r.rc == 0),
    (r"live watch \$LIVE", lambda r: r.rc == 0 and "STOPPED" in r.out),
    (r"live stats \$LIVE", lambda r: "320x180" in r.out),
    (r"ls ~/.local/share/mediajobs/storage/live/events/studio-a", lambda r: {"master.m3u8", "240p", "360p"} <= set(r.out.split())),
    # The grpcurl block's "Launch clip" may still be processing: the one `entries add` followed is READY.
    ("entries list --state READY --tag launch", lambda r: any(ln.split()[1:4] == ["clip.mov", "READY", "tiny-240p"]
                                                              for ln in r.out.splitlines())),
    ("templates list", lambda r: "mp4-h264-ladder" in r.out and "tiny-240p" in r.out),
    ("cuepoints import chapters.xml", lambda r: "created 5 cue point(s)" in r.out),
    # No --storage-root: the server's default (under the test's HOME).
    ("worker --media", lambda r: r.rc == 0 and "stopped (" in r.err
     and re.search(r"storage root \S+/home/\.local/share/mediajobs/storage\)", r.err) is not None),
]


def check(result: Result) -> None:
    where = f"README command:\n{result.command}\nexit {result.rc}\nstdout:\n{result.out}\nstderr:\n{result.err}"
    assert "Traceback" not in result.err, where
    checks = [fn for key, fn in CHECKS if re.search(key, result.command)]
    grpcurl_stream = result.command.startswith("grpcurl") and CTRL_C.search(result.command)
    if not grpcurl_stream:  # grpcurl has no Ctrl-C handler: its exit status says nothing
        assert result.rc == 0, where
    for fn in checks:
        assert fn(result), where


# -- running ---------------------------------------------------------------------------


@dataclass
class Running:
    """A command of the README that runs until Ctrl-C (or in the background)."""

    command: str
    proc: asyncio.subprocess.Process
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    first_line: asyncio.Event = field(default_factory=asyncio.Event)
    readers: list[asyncio.Task[None]] = field(default_factory=list)

    async def _read(self, stream: asyncio.StreamReader, into: list[str]) -> None:
        while line := await stream.readline():
            into.append(line.decode())
            self.first_line.set()
        self.first_line.set()  # ended without a line: the check says why

    def start_reading(self) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.readers = [asyncio.create_task(self._read(self.proc.stdout, self.out)),
                        asyncio.create_task(self._read(self.proc.stderr, self.err))]

    async def stop(self) -> Result:
        """Ctrl-C: SIGINT to its process group, as a terminal sends it."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
        async with asyncio.timeout(COMMAND_TIMEOUT):
            await self.proc.wait()
            await asyncio.gather(*self.readers)
        return Result(self.command, self.proc.returncode, "".join(self.out), "".join(self.err))


class Shell:
    """One bash process reading commands from a pipe, as a terminal would
    run them; each command's output goes to its own files."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.env = env
        self.logs = cwd.parent / "logs"
        self.logs.mkdir()
        self.n = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.spawned: list[Running] = []  # every process spawn() started, stopped at the end in any case

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "bash", "--noprofile", "--norc", cwd=self.cwd, env=self.env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, start_new_session=True)
        # allexport: every variable a command sets reaches the processes started below.
        await self._send("set -a -o pipefail")

    async def _send(self, script: str) -> int:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.n += 1
        marker = f"__readme_test_done_{self.n}__"
        self.proc.stdin.write(f"{script}\necho \"{marker} $?\"\n".encode())
        await self.proc.stdin.drain()
        async with asyncio.timeout(COMMAND_TIMEOUT):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                assert line, "bash ended"
                if line.startswith(marker):
                    return int(line.split()[1])

    async def run(self, command: str) -> Result:
        out, err = self.logs / f"{self.n + 1}.out", self.logs / f"{self.n + 1}.err"
        rc = await self._send(f"{{ {command}\n}} < /dev/null > {out} 2> {err}")
        return Result(command, rc, out.read_text(), err.read_text())

    async def spawn(self, command: str) -> Running:
        """Run `command` (without a trailing `&`) in its own process group,
        with the shell's variables; returns once it has printed a line."""
        env_file = self.logs / f"{self.n + 1}.env"
        assert await self._send(f"env -0 > {env_file}") == 0
        env = dict(item.split("=", 1) for item in env_file.read_text().split("\0") if "=" in item)
        proc = await asyncio.create_subprocess_exec(
            "bash", "--noprofile", "--norc", "-c", BACKGROUND.sub("", command), cwd=self.cwd, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)
        running = Running(command, proc)
        self.spawned.append(running)
        running.start_reading()
        async with asyncio.timeout(COMMAND_TIMEOUT):
            await running.first_line.wait()
        return running

    async def close(self) -> None:
        """End everything started here: bash when its input ends, what is
        still running (a command that hung, a spawned one) by SIGKILL to its
        process group."""
        for running in self.spawned:
            await _end(running.proc)
        if self.proc is not None and self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                await _end(self.proc)


async def _end(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


def command_env(home: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MEDIAJOBS_") and k not in ("XDG_DATA_HOME", "PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HOME=str(home), MEDIAJOBS_SERVER=f"127.0.0.1:{port}",
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}")
    return env


# -- the tests --------------------------------------------------------------------------------


def test_readme_blocks_are_found_and_only_the_setup_block_is_skipped() -> None:
    blocks = readme_blocks(README.read_text())
    by_lang = {lang: [b for b in blocks if b.lang == lang] for lang in ("sh", "python", "xml")}
    assert len(by_lang["sh"]) >= 6 and len(by_lang["python"]) == 1 and len(by_lang["xml"]) == 1
    skipped = [b for b in blocks if b.skip]
    assert len(skipped) == 1, [b.line for b in skipped]
    assert all(c.startswith("scripts/") for c in split_commands(skipped[0].text)), skipped[0].text
    for b in by_lang["xml"]:
        ElementTree.fromstring(b.text.encode())  # well-formed (the sample once had `<... ...>` lines)
    assert "01J..." not in README.read_text(), "placeholder ids do not run"


def test_split_commands_joins_continuations_and_open_quotes() -> None:
    script = ("# a comment\n\nfoo a \\\n  b   # trailing\nX=$(bar -d '{\"a\": 1,\n  \"b\": 2}' | baz)\n"
              "echo \"it's\"\n")
    assert split_commands(script) == ["foo a \\\n  b   # trailing", "X=$(bar -d '{\"a\": 1,\n  \"b\": 2}' | baz)",
                                      "echo \"it's\""]


@pytest.mark.timeout(900)
async def test_every_readme_example_runs_as_written(tmp_path: Path) -> None:
    assert (VENV_BIN / "grpcurl").exists(), (
        f"grpcurl is not in {VENV_BIN}: install the dev extra (`pip install -e '.[dev]'`, scripts/setup does)")
    home, cwd = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    cwd.mkdir()
    data_dir = home / ".local" / "share" / "mediajobs"
    app: App = await start_app(str(data_dir / "mediajobs.db"), data_dir=data_dir, http_listen="127.0.0.1:0")
    assert app.cfg.storage_dir() == data_dir / "storage"  # the default, as `scripts/serve` has it
    shell = Shell(cwd, command_env(home, app.port))
    background: list[Running] = []
    ran: list[Result] = []
    try:
        await shell.start()
        for block in readme_blocks(README.read_text()):
            if block.skip or block.lang not in ("sh", "python", "xml"):
                continue
            text = rewrite(block.text, app.port, app.gateway.port)
            first = text.splitlines()[0]
            if block.lang == "xml":
                ElementTree.fromstring(text.encode())
            if block.lang in ("python", "xml"):
                m = FILE_NAME.match(first)
                assert m, f"README line {block.line}: a {block.lang} block must name its file on its first line"
                (cwd / m[1]).write_text(text)
                continue
            until_ctrl_c: list[Running] = []
            for command in split_commands(text):
                if BACKGROUND.search(command.splitlines()[-1]) or CTRL_C.search(command):
                    running = await shell.spawn(command)
                    (background if BACKGROUND.search(command.splitlines()[-1]) else until_ctrl_c).append(running)
                else:
                    result = await shell.run(command)
                    check(result)
                    ran.append(result)
            for running in until_ctrl_c:
                result = await running.stop()
                check(result)
                ran.append(result)
        for running in background:
            result = await running.stop()
            check(result)
            ran.append(result)
    finally:
        await shell.close()
        await app.stop(None)
    # What the commands left behind: the exported ads, and the plain TRANSCODE job's output.
    ads = ElementTree.fromstring((cwd / "ads.xml").read_bytes())
    assert [(c.tag, c.findtext("sourceUrl")) for c in ads] == [
        ("scene-ad-cue-point", "https://ads.example.com/vast.xml")]
    outputs = sorted((data_dir / "storage" / "transcodes").glob("*/240p.mp4"))
    assert len(outputs) == 1 and outputs[0].stat().st_size > 0, outputs
    commands = [r.command for r in ran]
    for key, _ in CHECKS:
        assert any(re.search(key, c) for c in commands), f"no README command matched the check {key!r} any more"
    assert len(ran) >= 40
