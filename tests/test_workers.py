"""`presence-relay serve --workers N` (docs/workers.md): a supervisor process and N worker
processes on one port (SO_REUSEPORT), each a node of one real redis-server.

Which worker a connection landed on is read from WELCOME's connection id, which starts
with the node id (`<node id>-<n>`, relay/server/hub.py); each worker logs the node id it
is (`worker N (pid P) is node X`), which ties a node to a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from helpers import (
    EV_CURSOR,
    EV_JOINED,
    MS,
    RawClient,
    RelayProcess,
    eventually,
    free_port,
    http_get,
    joined,
    wait_event,
)
from websockets.asyncio.client import connect

from relay.server import workers

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are Linux-only"),
]

# The supervisor's stop waits STOP_TIMEOUT_S for the workers, then kills: with a little
# for its own exit, everything is gone within this.
STOP_BOUND_S = workers.STOP_TIMEOUT_S + 3
NODE_LINE = re.compile(r"worker (\d+) \(pid (\d+)\) is node ([0-9a-f]+)")
LISTEN_LINE = re.compile(r"listening on ws://[^ ]*:(\d+)/ws")


# ---------------------------------------------------------------- processes, from /proc


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def alive(pid: int) -> bool:
    """Running (a zombie no parent has reaped yet counts as gone)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def children(pid: int) -> set[int]:
    """The live processes whose parent is `pid`."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] == str(pid) and stat[0] != "Z":
                out.add(int(entry))
    return out


def free_port_pair() -> int:
    """A free port whose successor is free too (metrics_port + 0 and + 1, for 2 workers)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


class Supervised:
    """`python -m relay serve --workers ...` in a subprocess, its output (the supervisor's
    and every worker's: they share it) in a file."""

    def __init__(self, *args: str, port: int | None = None) -> None:
        self.port = free_port() if port is None else port
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by cleanup()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_WORKER")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--port", str(self.port), *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.seen_pids: set[int] = set()  # every worker pid ever seen, for cleanup()

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def nodes(self) -> dict[str, int]:
        """node id -> pid of every worker that said it is ready, still running."""
        found = {node: int(pid) for _, pid, node in NODE_LINE.findall(self.output())}
        self.seen_pids |= set(found.values())
        return {node: pid for node, pid in found.items() if alive(pid)}

    async def ready(self, n: int, timeout: float = 20000 * MS) -> dict[str, int]:
        """Wait until `n` workers are ready and they are all the supervisor's children."""

        def check() -> dict[str, int] | None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"supervisor exited: {self.output()[-4000:]}")
            nodes = self.nodes()
            kids = children(self.proc.pid)
            return nodes if len(nodes) == n and set(nodes.values()) == kids else None

        nodes = await eventually(check, timeout, 50 * MS)
        assert nodes, self.output()[-4000:]
        return nodes  # type: ignore[no-any-return]

    async def wait_exit(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(50 * MS)
        return self.proc.poll()

    def cleanup(self) -> None:
        """Whatever a failed test left running: SIGKILL it (the supervisor and workers)."""
        self.nodes()
        for pid in [self.proc.pid, *self.seen_pids]:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.log.close()


@pytest.fixture
def supervised() -> Iterator[Callable[..., Supervised]]:
    made: list[Supervised] = []

    def make(*args: str, port: int | None = None) -> Supervised:
        s = Supervised(*args, port=port)
        made.append(s)
        return s

    yield make
    for s in made:
        s.cleanup()


@pytest.fixture
async def rds(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.from_url(redis_url)
    yield r
    await r.aclose()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Any]]:
    """Open a client on `port` and say HELLO: (client, the node it landed on)."""
    opened: list[RawClient] = []

    async def open_client(port: int, user_id: str) -> tuple[RawClient, str]:
        ws = await connect(
            f"ws://127.0.0.1:{port}/ws", subprotocols=["presence.v1"], compression=None
        )
        c = RawClient(ws)
        opened.append(c)
        welcome = await c.hello(user_id)
        assert welcome[0] == 32, welcome
        return c, welcome[2].rpartition("-")[0]

    yield open_client
    for c in opened:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(c.ws.close(), 2000 * MS)


async def one_client_per_node(
    open_client: Callable[..., Any], port: int, want: set[str], tries: int = 40
) -> dict[str, RawClient]:
    """Connect until there is a client on every node in `want` (the kernel picks the
    listener per connection, by a hash of the addresses: 40 tries miss a worker of two
    with odds of 2**-40). Clients on a node already covered are closed at once."""
    got: dict[str, RawClient] = {}
    for i in range(tries):
        c, node = await open_client(port, f"user{i}")
        if node in want and node not in got:
            got[node] = c
            if set(got) == want:
                return got
        else:
            await c.ws.close()
    raise AssertionError(f"after {tries} connections, clients only on {sorted(got)} of {want}")


def worker_args(redis_url: str, *extra: str) -> tuple[str, ...]:
    # No reconnect grace: a stopped worker cleans its Redis keys at once (what is checked).
    return ("--workers", "2", "--redis-url", redis_url, "--reconnect-grace-ms", "0", *extra)


# ---------------------------------------------------------------- the tests


async def test_two_workers_serve_one_port_as_two_nodes_of_one_document(
    supervised: Callable[..., Supervised],
    clients: Callable[..., Any],
    redis_url: str,
    rds: aioredis.Redis,
) -> None:
    metrics = free_port_pair()
    sup = supervised(*worker_args(redis_url, "--batch-ms", "20", "--metrics-port", str(metrics)))
    nodes = await sup.ready(2)
    assert len(set(nodes.values())) == 2 and sup.proc.pid not in nodes.values()

    # Each worker its own /metrics port (metrics_port + i): one Prometheus target each.
    for port in (metrics, metrics + 1):
        status, body = await http_get(port, "/metrics")
        assert status == 200 and b"materi_presence_active_users" in body

    # Connections on the one port land on both processes...
    on = await one_client_per_node(clients, sup.port, set(nodes))
    (node_a, a), (node_b, b) = sorted(on.items())
    assert nodes[node_a] != nodes[node_b]

    # ... which are two nodes of one Redis: joins and cursors cross between them.
    sid_a, _ = await joined(a, 1, "doc-workers")
    sid_b, members = await joined(b, 1, "doc-workers")
    if sid_a not in {m[0] for m in members}:  # a's join raced b's node opening the document
        await wait_event(b, lambda e: e[0] == EV_JOINED and e[1][0] == sid_a)
    await wait_event(a, lambda e: e[0] == EV_JOINED and e[1][0] == sid_b)
    await a.send([4, 1, 42, 7, 0])
    await wait_event(b, lambda e: e == [EV_CURSOR, sid_a, 42, 7, 0])
    await b.send([4, 1, 9, 1, 0])
    await wait_event(a, lambda e: e == [EV_CURSOR, sid_b, 9, 1, 0])

    async def registered() -> bool:
        listed = {n.decode() for n in await rds.smembers("presence:node:registry")}
        return listed == set(nodes)

    assert await eventually(registered)

    # Every line says whose it is.
    out = sup.output()
    for who in ("supervisor ", "worker=0 ", "worker=1 "):
        assert f" {who}relay" in out, out[-3000:]
    for node in nodes:
        assert re.search(rf"worker=(\d) relay.workers: worker \1 \(pid \d+\) is node {node}", out)


async def test_a_killed_worker_is_replaced_and_sigterm_stops_everything(
    supervised: Callable[..., Supervised],
    clients: Callable[..., Any],
    redis_url: str,
    rds: aioredis.Redis,
) -> None:
    # port 0: the supervisor picks one port for both workers (the log says which).
    sup = supervised(*worker_args(redis_url), port=0)
    before = await sup.ready(2)
    ports = set(LISTEN_LINE.findall(sup.output()))
    assert len(ports) == 1, sup.output()[-3000:]
    port = int(ports.pop())
    await one_client_per_node(clients, port, set(before))

    # kill -9 one worker: the supervisor starts a new process, a new node, which serves.
    victim_node, victim = sorted(before.items())[0]
    survivor = next(pid for node, pid in before.items() if node != victim_node)
    os.kill(victim, signal.SIGKILL)
    assert await eventually(lambda: not alive(victim))
    after = await sup.ready(2)
    assert victim not in after.values() and survivor in after.values()
    (new_node,) = set(after) - set(before)
    assert "killed by SIGKILL; restarting it" in sup.output()
    on = await one_client_per_node(clients, port, {new_node})
    await joined(on[new_node], 1, "doc-after-restart")

    # SIGTERM to the supervisor: every worker stops gracefully, then the supervisor, 0.
    t0 = time.monotonic()
    sup.proc.send_signal(signal.SIGTERM)
    assert await sup.wait_exit(STOP_BOUND_S) == 0, sup.output()[-3000:]
    took = time.monotonic() - t0
    assert not any(alive(pid) for pid in after.values())
    assert took < STOP_BOUND_S
    out = sup.output()
    assert out.count("relay: shutting down") >= 2 and "all workers stopped\n" in out
    # The two live nodes deregistered on their way out (the SIGKILLed one could not: other
    # nodes' reapers remove it after presence_ttl_seconds).
    listed = {n.decode() for n in await rds.smembers("presence:node:registry")}
    assert listed <= {victim_node}, listed


async def test_a_worker_that_does_not_stop_is_killed(
    supervised: Callable[..., Supervised], redis_url: str
) -> None:
    """A worker that cannot act on SIGTERM (SIGSTOPped here) holds the stop up until
    STOP_TIMEOUT_S, or until a second SIGTERM: then it is SIGKILLed and the supervisor
    exits 1 (not a clean stop)."""
    sup = supervised(*worker_args(redis_url))
    nodes = await sup.ready(2)
    frozen, other = sorted(nodes.values())
    os.kill(frozen, signal.SIGSTOP)
    sup.proc.send_signal(signal.SIGTERM)
    assert await eventually(lambda: not alive(other), STOP_BOUND_S * 1000 * MS)
    assert sup.proc.poll() is None and alive(frozen)  # still waiting for the frozen one
    sup.proc.send_signal(signal.SIGTERM)
    assert await sup.wait_exit(5) == 1, sup.output()[-3000:]
    assert not alive(frozen)
    assert f"worker pid {frozen} did not stop in time: SIGKILL" in sup.output()


async def test_workers_stop_when_the_supervisor_is_killed(
    supervised: Callable[..., Supervised], redis_url: str
) -> None:
    sup = supervised(*worker_args(redis_url))
    pids = set((await sup.ready(2)).values())
    os.kill(sup.proc.pid, signal.SIGKILL)
    sup.proc.wait(5)

    async def all_gone() -> bool:
        return not any(alive(pid) for pid in pids)

    # PR_SET_PDEATHSIG: each worker gets SIGTERM, a graceful stop (bounded, a few seconds).
    assert await eventually(all_gone, STOP_BOUND_S * 1000 * MS, 100 * MS), sup.output()[-3000:]


async def test_a_worker_that_keeps_dying_makes_the_supervisor_give_up(
    supervised: Callable[..., Supervised], redis_url: str
) -> None:
    """A restart storm: every worker is SIGKILLed as soon as it appears. After
    RESTART_LIMIT restarts of one slot (backoff 0.1 s doubling: ~3 s) the supervisor stops
    the rest and exits 1, saying why."""
    sup = supervised(*worker_args(redis_url))
    killed: set[int] = set()
    deadline = time.monotonic() + 30
    while sup.proc.poll() is None and time.monotonic() < deadline and len(killed) < 40:
        for pid in children(sup.proc.pid) - killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        await asyncio.sleep(10 * MS)
    code = await sup.wait_exit(STOP_BOUND_S)
    out = sup.output()
    assert code == 1, out[-3000:]
    limit = workers.RESTART_LIMIT
    assert re.search(rf"worker \d died {limit + 1} times within 60 s \(.*\): giving up", out), out
    assert limit + 1 <= len(killed) <= 2 * (limit + 1)
    assert not any(alive(pid) for pid in killed)


REDIS_ELSEWHERE = ("--redis-url", "redis://127.0.0.1:1/0")  # never reached: refused first


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ("--workers", "2"),
            {},
            "workers=2: needs redis_url (each worker is a separate node; without Redis they "
            "would not see each other's members)",
        ),
        (("--workers", "0"), {}, "workers=0 is out of range [1, 256]"),
        ((), {"PRESENCE_WORKERS": "257"}, "workers=257 is out of range [1, 256]"),
        (("--workers", "two"), {}, "workers: 'two' is not a valid int"),
        (
            ("--workers", "2", *REDIS_ELSEWHERE, "--metrics-port", "65535"),
            {},
            "metrics_port=65535: with workers=2, worker i listens on metrics_port + i; "
            "65536 is past 65535",
        ),
        (
            ("--workers", "3", *REDIS_ELSEWHERE, "--port", "9002", "--metrics-port", "9000"),
            {},
            "metrics_port=9000: with workers=3 it takes ports 9000-9002, which include port=9002",
        ),
    ],
)
def test_invalid_worker_settings_refuse_to_start(
    args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "relay", "serve", "--port", str(free_port()), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"presence-relay: invalid configuration: {message}\n" in proc.stderr


async def test_one_worker_is_one_process_as_before() -> None:
    r = RelayProcess("--workers", "1")
    try:
        await r.ready()
        assert not children(r.proc.pid)
        assert "supervisor" not in r.output() and "worker=" not in r.output()
        assert r.terminate() is not None and r.proc.returncode == 0
    finally:
        r.kill()
