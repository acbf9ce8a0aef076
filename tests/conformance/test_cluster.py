"""Two relay nodes sharing Redis (docs/protocol.md: sid unique across nodes, bytes forwarded
unchanged).

Skipped when no `redis-server` binary is installed.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time

import pytest

from .conftest import (
    BATCH,
    CURSOR,
    ERROR,
    EV_CURSOR,
    EV_JOINED,
    EV_LEFT,
    JOIN,
    JOINED,
    LEAVE,
    free_port,
    new_doc_id,
    start_server,
)

pytestmark = pytest.mark.timeout(60)

E_UNAVAILABLE = 10

NODE_SETTINGS = {"batch_ms": 50}


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server not installed")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _redis_ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture(scope="module")
def redis_url():
    redis = RedisServer()
    yield redis.url
    redis.stop()


@pytest.fixture(scope="module")
def nodes(redis_url):
    n1 = start_server(NODE_SETTINGS, ["--redis-url", redis_url])
    try:
        n2 = start_server(NODE_SETTINGS, ["--redis-url", redis_url])
    except BaseException:
        n1.stop()
        raise
    yield n1, n2
    n2.stop()
    n1.stop()


async def test_sids_unique_and_snapshot_spans_nodes(nodes, client_factory):
    n1, n2 = nodes
    doc = new_doc_id()
    a = await client_factory(n1, user_id="node-a")
    b = await client_factory(n2, user_id="node-b")
    sid_a, _ = await a.join(1, doc)
    await asyncio.sleep(0.3)
    sid_b, members = await b.join(1, doc)
    assert sid_a != sid_b, "sid is unique within the document across every relay node"
    assert {m[0] for m in members} >= {sid_a, sid_b}, (
        f"the JOINED snapshot is the document's full state (joiner on another node): {members}"
    )
    await a.wait_event(lambda d, e: e[0] == EV_JOINED and e[1][0] == sid_b, timeout=3)


async def test_events_cross_nodes_and_bytes_are_forwarded_unchanged(nodes, client_factory):
    n1, n2 = nodes
    doc = new_doc_id()
    a = await client_factory(n1)
    c = await client_factory(n1)  # same node as the sender
    b = await client_factory(n2)  # other node
    sid_a, _ = await a.join(1, doc)
    await c.join(1, doc)
    await asyncio.sleep(0.2)
    await b.join(1, doc)
    await asyncio.sleep(0.5)
    await asyncio.gather(a.drain(0.05), b.drain(0.05), c.drain(0.05))
    t0 = time.monotonic()
    await a.send([CURSOR, 1, 123, 4, 5])
    want = [EV_CURSOR, sid_a, 123, 4, 5]
    t_b, _ = await b.wait_event(lambda d, e: e == want, timeout=3)
    await c.wait_event(lambda d, e: e == want, timeout=3)
    assert t_b - t0 < 1.0, f"cross-node cursor took {t_b - t0:.2f}s"
    raw_b = [raw for _, f, raw in b.frames if f[0] == BATCH and want in f[3]]
    raw_c = [raw for _, f, raw in c.frames if f[0] == BATCH and want in f[3]]
    assert raw_b == raw_c, (
        "bytes received from another node are forwarded unchanged: the other node's member "
        "gets the same BATCH bytes as the sender node's members"
    )


async def test_leave_and_disconnect_cross_nodes(nodes, client_factory):
    n1, n2 = nodes
    doc = new_doc_id()
    a = await client_factory(n1)
    a2 = await client_factory(n1)
    b = await client_factory(n2)
    await b.join(1, doc)
    sid_a, _ = await a.join(1, doc)
    sid_a2, _ = await a2.join(1, doc)
    await b.wait_event(lambda d, e: e[0] == EV_JOINED and e[1][0] == sid_a2, timeout=3)
    await a.send([LEAVE, 1])
    await b.wait_event(lambda d, e: e[:2] == [EV_LEFT, sid_a], timeout=3)
    await a2.close()
    await b.wait_event(lambda d, e: e[:2] == [EV_LEFT, sid_a2], timeout=3)


async def test_backend_down_join_is_answered(fresh_server_factory, client_factory):
    """With Redis gone a JOIN is still answered: JOINED, or ERROR 10 UNAVAILABLE."""
    redis = RedisServer()
    try:
        srv = fresh_server_factory(NODE_SETTINGS, ["--redis-url", redis.url])
        c = await client_factory(srv)
        await c.join(1, new_doc_id())
        redis.stop()
        await asyncio.sleep(0.3)
        await c.ping(timeout=5)
        await c.send([JOIN, 2, new_doc_id()])
        reply = await c.reply(timeout=8)
        assert reply[0] == JOINED or (reply[0] == ERROR and reply[2] == E_UNAVAILABLE), (
            f"JOIN with the backend down must get JOINED or ERROR 10, got {reply!r}"
        )
    finally:
        redis.stop()
