"""A rolling deploy, as an operator runs one: two relay processes on one real redis-server,
200 clients of the Python SDK behind a TCP balancer, SIGTERM to the node they are on. Every
client resumes through the other node with its sids, and the members watching each document
never see any of them leave or join.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from helpers import MS, RelayProcess, eventually
from presence_client import Connection
from websockets.asyncio.client import connect

from relay.core import protocol as p

pytestmark = pytest.mark.timeout(180)

CLIENTS = 200
DOCS = 10
GRACE_MS = 30_000


class Balancer:
    """A TCP front: each new connection goes to the first backend that accepts it (what a
    load balancer does once a node stops listening)."""

    def __init__(self, backends: Callable[[], list[int]]) -> None:
        self.backends = backends
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for port in self.backends():
            try:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                continue
        else:
            writer.close()
            return

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            with contextlib.suppress(OSError, RuntimeError):
                w.close()

        for t in (pipe(reader, up_w), pipe(up_r, writer)):
            task = asyncio.ensure_future(t)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in list(self.tasks):
            t.cancel()


async def watch(port: int, doc: str, seen: list[list[Any]], ready: asyncio.Event) -> None:
    """A raw member of `doc` on the surviving node, recording every event."""
    async with connect(
        f"ws://127.0.0.1:{port}/ws",
        subprotocols=[p.SUBPROTOCOL],  # type: ignore[list-item]
        compression=None,
        max_queue=None,
    ) as ws:
        await ws.send(msgpack.packb([1, 1, None, {"user_id": "watch-" + doc, "name": "W"}]))
        await ws.recv()
        await ws.send(msgpack.packb([2, 1, doc]))
        ready.set()
        async for raw in ws:
            f = msgpack.unpackb(raw)
            if f[0] == p.BATCH:
                seen.extend(f[3])


async def test_sigterm_of_a_node_with_200_clients_is_invisible(
    redis_url: str,
) -> None:
    args = ["--redis-url", redis_url, "--reconnect-grace-ms", str(GRACE_MS), "--batch-ms", "20"]
    one, two = RelayProcess(*args), RelayProcess(*args)
    alive = [one.port, two.port]
    balancer = Balancer(lambda: list(alive))
    conns: list[Connection] = []
    watchers: list[asyncio.Task[None]] = []
    try:
        await asyncio.gather(one.ready(), two.ready())
        front = await balancer.start()
        seen: dict[str, list[list[Any]]] = {f"doc-{d}": [] for d in range(DOCS)}
        for doc, events in seen.items():
            ready = asyncio.Event()
            watchers.append(asyncio.ensure_future(watch(two.port, doc, events, ready)))
            await asyncio.wait_for(ready.wait(), 5000 * MS)
        # Every client enters through the balancer, so on node one.
        docs = []
        for i in range(CLIENTS):
            c = Connection(f"ws://127.0.0.1:{front}/ws", user_id=f"u{i}", name=f"U{i}",
                           backoff_base=0.05, backoff_cap=0.5)  # fmt: skip
            await c.start()
            conns.append(c)
            docs.append(await c.join(f"doc-{i % DOCS}"))
        sids = {d.doc_id: set() for d in docs}
        for d in docs:
            sids[d.doc_id].add(d.sid)
        before = {id(d): d.sid for d in docs}

        def everyone_seen() -> bool:
            return all(
                sids[doc] <= {e[1][0] for e in events if e[0] == p.EV_JOINED}
                for doc, events in seen.items()
            )

        assert await eventually(everyone_seen, 10000 * MS)
        for events in seen.values():
            events.clear()
        alive.remove(one.port)  # the balancer sends new connections to node two
        took = one.terminate(timeout=20000 * MS)
        assert took is not None, "SIGTERM did not end the relay"

        def all_resumed() -> bool:
            return all(c.reconnects >= 1 and c.resumed for c in conns)

        assert await eventually(all_resumed, 30000 * MS), sum(c.resumed for c in conns)
        assert {id(d): d.sid for d in docs} == before, "every sid kept"
        # Each client moves once more: it is live on node two.
        for i, d in enumerate(docs):
            d.move_cursor(i + 1, 1, i + 1)

        def moved() -> bool:
            return all(
                sids[doc] <= {e[1] for e in events if e[0] == p.EV_CURSOR}
                for doc, events in seen.items()
            )

        assert await eventually(moved, 10000 * MS)
        for doc, events in seen.items():
            flicker = [
                e
                for e in events
                if (e[0] == p.EV_LEFT and e[1] in sids[doc])
                or (e[0] == p.EV_JOINED and e[1][0] in sids[doc])
            ]
            assert not flicker, (doc, flicker[:5])
    finally:
        for c in conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.close(), 2000 * MS)
        for t in watchers:
            t.cancel()
        await balancer.stop()
        one.kill()
        two.kill()
