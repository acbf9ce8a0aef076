"""SIGTERM ends the relay within a bound, whatever its clients do.

A real `presence-relay serve` process and 100 members that never read (tiny receive
buffers, zero window), with long names, so that their unsent batches and snapshots fill the
relay's buffers; three more clients that never read JOIN and LEAVE the document in a loop,
each JOINED a 30 KB snapshot. A close frame can reach none of them. Before the fix the 4408
and 1001 closes waited on a drain that never came, and the process did not exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from helpers import MS, RawSocket, RelayProcess, pk, ws_frame

pytestmark = pytest.mark.timeout(90)

CLOSE_TIMEOUT_S = 1.0
CLIENTS = 100


async def test_sigterm_with_zero_window_clients_exits_in_time() -> None:
    relay = RelayProcess(
        "--close-timeout-s",
        str(CLOSE_TIMEOUT_S),
        "--batch-ms",
        "20",
        "--socket-send-buffer",
        "4096",
    )
    try:
        await relay.ready()
        stalled = []
        for i in range(CLIENTS):
            c = await RawSocket.open(relay.port, rcvbuf=4096)
            await c.send_msg([1, 1, None, {"user_id": f"u{i}", "name": f"{i:03d}" + "n" * 200}])
            assert (await c.join(1, "busy"))[0] == 33
            stalled.append(c)
        pumps = [await RawSocket.open(relay.port, rcvbuf=4096) for _ in range(3)]
        for i, c in enumerate(pumps):
            await c.hello(f"pump{i}")
        stalled += pumps
        # Members write viewports (events for everyone else), pumps JOIN and LEAVE, and
        # nobody reads.
        burst = b"".join(ws_frame(pk([6, 1, n, n + 40, 50.0])) for n in range(10))
        churn = (ws_frame(pk([2, 2, "busy"])) + ws_frame(pk([3, 2]))) * 20
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            for c in stalled:
                # (our own send buffer full: the relay stopped reading us)
                with contextlib.suppress(BlockingIOError, OSError):
                    c.sock.send(churn if c in pumps else burst)
            await asyncio.sleep(200 * MS)
        took = relay.terminate(timeout=20000 * MS)
        assert took is not None, "SIGTERM did not end the relay in 20 s"
        # a close deadline, one second for the rest, and process start-up/teardown slack
        assert took < CLOSE_TIMEOUT_S + 4.0, f"shutdown took {took:.1f} s"
        assert relay.proc.returncode == 0, relay.output()
    finally:
        for c in locals().get("stalled", []):
            c.close()
        relay.kill()
