"""Live jobs' callbacks: every timing of a live job with a callback URL is
POSTed there as JSON, in order, signed (HMAC-SHA256 with the live job's
callback secret), and retried with back-off.

The timings' transactions write the POSTs into an outbox (`live_callbacks`,
store/live_jobs.py) and wake the sender after the commit, so a callback is
never lost by a crash and never sent for a change that did not commit. The
sender sends them oldest first; when one fails, the later ones of the same
live job wait for it (order per live job), others go on. A stream is never
blocked by a slow receiver: sending runs in threads, apart from the writer
and the workers' calls.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable

from .addresses import private_address
from .convert import now_us
from .store import Store
from .store import live_jobs as store_live

log = logging.getLogger("mediajobs.live.callbacks")

TIMEOUT_S = 5.0
# Back-off after a failed POST: 1, 2, 4, ... 128 s; the 9th failure drops it
# (about 4 minutes after the first try).
MAX_ATTEMPTS = 9
MAX_BACKOFF_S = 128.0
USER_AGENT = "mediajobs-live-callbacks/1"


class CallbackRefused(Exception):
    """The URL may not be sent to (a private address on a deployment that
    does not allow them): dropped at once, not retried."""


def check_destination(url: str, allow_private: bool) -> None:
    if allow_private:
        return
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        addr = private_address(host)
    except OSError as e:
        raise OSError(f"cannot resolve {host}: {e}") from None
    if addr is not None:
        raise CallbackRefused(f"{host} resolves to {addr}, a private address; the server refuses those "
                              "unless it runs with --allow-private-callbacks")


def post(cb: store_live.Callback, allow_private: bool) -> None:
    """One POST; raises on anything but a 2xx answer."""
    check_destination(cb.url, allow_private)
    ts = int(time.time())
    req = urllib.request.Request(cb.url, data=cb.body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": USER_AGENT,
        "Mediajobs-Signature": store_live.sign(cb.secret, ts, cb.body)})
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:  # noqa: S310 (http/https only: checked at create)
        if not 200 <= resp.status < 300:
            raise OSError(f"HTTP {resp.status}")


class CallbackSender:
    def __init__(self, store: Store, allow_private: bool = False, clock: Callable[[], int] = now_us) -> None:
        self.store = store
        self.allow_private = allow_private
        self.clock = clock
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sent = 0
        self.dropped = 0

    def wake_threadsafe(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run_forever(self) -> None:
        self._loop = asyncio.get_running_loop()
        store_live.CALLBACK_WAKERS.append(self.wake_threadsafe)
        try:
            while True:
                self._wake.clear()
                next_due = await self.send_due()
                wait = None if not next_due else max(0.0, (next_due - self.clock()) / 1e6)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait if wait is not None else 3600)
        finally:
            with contextlib.suppress(ValueError):
                store_live.CALLBACK_WAKERS.remove(self.wake_threadsafe)

    async def send_due(self) -> int:
        """Send what is due; returns when the next one falls due (0: none)."""
        while True:
            due, next_due = await self.store.read(store_live.due_callbacks, self.clock())
            if not due:
                return next_due
            held: set[str] = set()  # live jobs with a failed callback in this round: keep their order
            progressed = False
            for cb in due:
                if cb.live_job_id in held:
                    continue
                try:
                    await asyncio.to_thread(post, cb, self.allow_private)
                except CallbackRefused as e:
                    log.warning("live job %s: callback dropped: %s", cb.live_job_id, e)
                    self.dropped += 1
                    await self.store.write(lambda tx: store_live.callback_done(tx, cb.id), bounded=False)
                    progressed = True
                except (OSError, urllib.error.URLError, ValueError) as e:
                    held.add(cb.live_job_id)
                    attempts = cb.attempts + 1
                    if attempts >= MAX_ATTEMPTS:
                        log.warning("live job %s: callback to %s dropped after %d attempts: %s", cb.live_job_id,
                                    urllib.parse.urlsplit(cb.url).netloc, attempts, e)
                        self.dropped += 1
                        await self.store.write(lambda tx: store_live.callback_done(tx, cb.id), bounded=False)
                    else:
                        delay = min(MAX_BACKOFF_S, 2.0 ** (attempts - 1))
                        due_us = self.clock() + int(delay * 1e6)
                        await self.store.write(lambda tx: store_live.callback_retry(tx, cb.id, attempts, due_us),
                                               bounded=False)
                else:
                    self.sent += 1
                    await self.store.write(lambda tx: store_live.callback_done(tx, cb.id), bounded=False)
                    progressed = True
            if not progressed:
                return (await self.store.read(store_live.due_callbacks, 0))[1]
