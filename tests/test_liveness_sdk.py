"""The Python SDK, as a real process, comes back from vanishing without anyone seeing it go.

A client process runs `presence_client.Connection` (reconnect on) in document "doc". It is
frozen with SIGSTOP, or cut off behind a veth pair set down in a network namespace (skipped,
saying why, where namespaces cannot be built). A watcher in the same document sees it
DISCONNECTED within `liveness_timeout_ms`; then, inside `reconnect_grace_ms`, the process is
let go again (SIGCONT, or the link set up). The SDK finds its socket dead (a reset, or its
own keepalive ping), reconnects and resumes: the watcher sees the member's activity come
back, the cursor it moves after the resume, and never a `left` or a `joined` for it, not
even past the end of the grace; its sid is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import msgpack
import pytest
from helpers import MS
from websockets.asyncio.client import ClientConnection

from bench import vanish
from relay.auth import mint_token

pytestmark = pytest.mark.timeout(90)

SECRET = "liveness-sdk-tests-secret-that-is-long-enough-for-hs256"
LIVENESS_MS = round(1500 * MS * 1000)
GRACE_MS = round(6000 * MS * 1000)
SLACK_S = 400 * MS  # a batch, a sweep period's rounding, a loaded machine
PAUSE_S = 300 * MS  # how long past DISCONNECTED the client stays gone
# The SDK's own keepalive (websockets' ping_interval, ping_timeout and close_timeout, passed
# through Connection's options). The SDK sets none of its own, so websockets' defaults apply
# (a ping every 20 s): after a cut, the relay's reset is lost and nothing else tells the
# SDK its socket is dead, so with the defaults it would only find out at its next ping, well
# past this test's grace (it would then join afresh, with a new sid, after a LOST).
KEEPALIVE_S = 500 * MS

# The SDK client: join "doc", print its sid, move the cursor once, then wait. On every
# Resynced it prints the sids again (and whether it resumed) and moves the cursor anew.
SDK_CLIENT = r"""
import asyncio, logging, sys
from presence_client import Connection, Resynced

async def main(url, token, keepalive):
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(relativeCreated)8.0f ms %(name)s %(message)s")
    ws = {} if keepalive == "-" else {"ping_interval": float(keepalive),
                                      "ping_timeout": float(keepalive),
                                      "close_timeout": float(keepalive)}
    conn = Connection(url, token=token, reconnect=True, backoff_base=0.05,
                      backoff_cap=0.2, proxy=None, **ws)
    await conn.start()
    doc = await conn.join("doc")
    print("joined", doc.sid, flush=True)
    doc.move_cursor(1, 1, 1)
    n = 1
    async for ev in doc.events():
        if isinstance(ev, Resynced):
            n += 1
            code = conn.last_close[0] if conn.last_close else 0
            print("resynced", ev.sid, ev.old_sid, int(ev.resumed), conn.reconnects, code,
                  flush=True)
            doc.move_cursor(n, n, n)

asyncio.run(main(*sys.argv[1:4]))
"""


def token(user: str) -> str:
    return mint_token(SECRET, user, user, "w", ["*"], 600)


class SdkProcess:
    """The SDK client as a process (in `netns` if given); its log in a temporary file."""

    def __init__(self, url: str, tok: str, netns: str | None, keepalive: str) -> None:
        cmd = [sys.executable, "-c", SDK_CLIENT, url, tok, keepalive]
        if netns is not None:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by kill()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log)
        self.lines: asyncio.Queue[str] = asyncio.Queue()
        self._reader = asyncio.create_task(asyncio.to_thread(self._read))
        self._loop = asyncio.get_running_loop()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:  # ends at EOF: the process exited or was killed
            line = raw.decode(errors="replace").strip()
            self._loop.call_soon_threadsafe(self.lines.put_nowait, line)

    async def line(self, timeout: float) -> list[str]:
        try:
            return (await asyncio.wait_for(self.lines.get(), timeout)).split()
        except TimeoutError:
            raise AssertionError(f"no line from the SDK in {timeout:.1f} s: {self}") from None

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    async def kill(self) -> None:
        self.signal(signal.SIGCONT)  # a stopped process dies of SIGKILL too; this is tidier
        self.signal(signal.SIGKILL)
        await asyncio.to_thread(self.proc.wait, 10)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reader, 5)
        self.log.close()

    def __str__(self) -> str:
        self.log.seek(0)
        return f"rc={self.proc.poll()} log:\n" + self.log.read().decode(errors="replace")[-4000:]


class Watch:
    """Every BATCH event the watcher receives, with the monotonic time it arrived."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[tuple[float, list[Any]]] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for data in self.ws:
                f = msgpack.unpackb(data)
                if f[0] == 34:
                    now = time.monotonic()
                    self.events.extend((now, list(e)) for e in f[3])
                    self._changed.set()
        finally:
            self._changed.set()

    async def wait(
        self, pred: Callable[[list[Any]], bool], timeout: float, since: float = 0.0
    ) -> tuple[float, list[Any]]:
        """The first event at or after `since` matching `pred`: (arrival time, event)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        i = 0
        while True:
            for t, e in self.events[i:]:
                if t >= since and pred(e):
                    return t, e
            i = len(self.events)
            self._changed.clear()
            left = deadline - loop.time()
            if self._task.done():
                exc = None if self._task.cancelled() else self._task.exception()
                raise AssertionError(f"the watcher's connection ended ({exc!r}): {self.events}")
            if left <= 0:
                raise AssertionError(f"not seen within {timeout:.1f} s; got {self.events}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task


def _set_link_up() -> None:
    vanish.restore()


@contextlib.contextmanager
def _network(how: str) -> Iterator[tuple[str, str | None]]:
    """(the relay's host, the SDK's namespace or None)."""
    if how != "cut":
        yield "127.0.0.1", None
        return
    why = vanish.netns_unavailable()
    if why is not None:
        pytest.skip(f"a network cut needs a network namespace: {why}")
    with vanish.cuttable_network() as netns:
        yield vanish.HOST_IP, netns


@pytest.mark.parametrize("how", ["stop", "cut"])
async def test_the_sdk_resumes_after_vanishing_and_is_never_seen_leaving(
    relay_factory: Any, how: str
) -> None:
    with _network(how) as (host, netns):
        r = await relay_factory(
            host=host,
            jwt_secret=SECRET,
            liveness_timeout_ms=LIVENESS_MS,
            reconnect_grace_ms=GRACE_MS,
        )
        url = f"ws://{host}:{r.port}/ws"
        async with vanish.watcher(url, token("watcher")) as ws:
            watch = Watch(ws)
            sdk = SdkProcess(url, token("bob"), netns, str(KEEPALIVE_S))
            try:
                first = await sdk.line(10000 * MS)
                assert first[0] == "joined", (first, str(sdk))
                sid = int(first[1])
                await watch.wait(lambda e: e[:5] == [1, sid, 1, 1, 1], 5000 * MS)

                t0 = time.monotonic()
                if how == "stop":
                    sdk.signal(signal.SIGSTOP)
                else:
                    vanish.cut()
                t_disc, _ = await watch.wait(
                    lambda e: e == [6, sid, 5], LIVENESS_MS / 1000 + 10000 * MS, since=t0
                )
                await asyncio.sleep(PAUSE_S)
                t_back = time.monotonic()
                if how == "stop":
                    sdk.signal(signal.SIGCONT)
                else:
                    _set_link_up()

                # The SDK must be back before the grace runs out (it began about t_disc).
                within = t_disc + GRACE_MS / 1000 - time.monotonic()
                again = await sdk.line(within)
                t_resynced = time.monotonic()
                assert again[0] == "resynced", (again, str(sdk))
                new_sid, old_sid, resumed, reconnects = map(int, again[1:5])
                assert (new_sid, old_sid) == (sid, sid), f"the sid changed: {again}"
                assert resumed == 1, f"joined afresh, not resumed: {again}\n{sdk}"
                assert reconnects == 1, again

                t_active, active = await watch.wait(
                    lambda e: e[:2] == [6, sid] and e[2] != 5, 5000 * MS, since=t_back
                )
                t_cursor, _ = await watch.wait(
                    lambda e: e[:5] == [1, sid, 2, 2, 2], 5000 * MS, since=t_back
                )

                # Past the end of the grace (had the place not been taken back, the member
                # would leave with LOST about then): still no `left`, no `joined`.
                end = t_disc + GRACE_MS / 1000 + SLACK_S
                await asyncio.sleep(max(0.0, end - time.monotonic()))
                print(
                    f"\n{how}: DISCONNECTED after {t_disc - t0:.2f} s; let go at "
                    f"{t_back - t0:.2f} s; resynced after {t_resynced - t_back:.2f} s, "
                    f"activity {active[2]} after {t_active - t_back:.2f} s, cursor after "
                    f"{t_cursor - t_back:.2f} s (the SDK's socket closed with {again[5]})"
                )
                assert sdk.proc.poll() is None, str(sdk)
                seen = [e for _, e in watch.events]  # before the kill shows it DISCONNECTED
            finally:
                await sdk.kill()
                await watch.stop()

        mine = [e for e in seen if len(e) > 1 and e[1] == sid]
        assert not [e for e in mine if e[0] == 3], f"seen leaving: {mine}"
        bob_joined = [e for e in seen if e[0] == 2 and e[1][1] == "bob"]
        assert len(bob_joined) == 1, f"joined again: {bob_joined}"  # only the first join
        assert mine.count([6, sid, 5]) == 1, mine
        assert t_disc - t0 <= LIVENESS_MS / 1000 + SLACK_S, f"DISCONNECTED after {t_disc - t0}"
        # It answered pings until stopped: at the earliest, it is given up 40 % of the timeout
        # after a ping it could no longer answer (the sweep's two periods early).
        assert t_disc - t0 >= LIVENESS_MS / 1000 * 0.35, "not before it could have answered"
        assert r.liveness is not None and r.liveness.aborts == 1
