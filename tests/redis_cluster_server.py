"""A real three-master Redis Cluster on free loopback ports (`RedisClusterServer`; the
fixtures that share one per test session, `redis_cluster` and `redis_cluster_url`, are in
conftest.py).

Each node is `redis-server --cluster-enabled yes` (no persistence: a node killed and started
again comes back with its slots, from its nodes-<port>.conf, and no data); `redis-cli --cluster
create` assigns the slots. Skipped, saying why, when `redis-server` or `redis-cli` is missing
(CI installs both with `apt-get install redis-server`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from helpers import MS, REDIS_BIN, free_port

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def _command(port: int, *args: str, timeout: float = 1000 * MS) -> bytes:
    """One command in RESP (inline arguments, no spaces in them), its raw reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(" ".join(args).encode() + b"\r\n")
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if data[:1] == b"$":  # a bulk string: read it whole
                head, _, rest = data.partition(b"\r\n")
                n = int(head[1:])
                while n >= 0 and len(rest) < n + 2:
                    rest += s.recv(65536)
                return rest[:n] if n >= 0 else b""
        return data


def cluster_info(port: int) -> dict[str, str]:
    """CLUSTER INFO of one node ({} when it does not answer)."""
    try:
        text = _command(port, "CLUSTER", "INFO").decode()
    except OSError:
        return {}
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


class ClusterNodeProcess:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.bus_port = free_port()
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 5000 * MS) -> None:
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(
            [
                REDIS_BIN,
                "--port", str(self.port),
                "--cluster-port", str(self.bus_port),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.dir / f"nodes-{self.port}.conf"),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--protected-mode", "no",
                "--loglevel", "warning",
                "--dir", str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                if _command(self.port, "PING", timeout=200 * MS).startswith(b"+PONG"):
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server (cluster node) exited: {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster node on port {self.port} did not answer")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: a crash; its data is gone (its slots come back with it, from its conf)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class RedisClusterServer:
    """Three masters, no replicas, all 16384 slots assigned."""

    def __init__(self, masters: int = 3) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="relay-cluster-")
        self.dir = Path(self._tmp.name)
        self.nodes = [ClusterNodeProcess(self.dir) for _ in range(masters)]

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def url(self) -> str:
        """A URL naming one node: the client finds the others."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def url_of(self, i: int) -> str:
        return f"redis://127.0.0.1:{self.nodes[i].port}/0"

    def start(self, timeout: float = 20000 * MS) -> RedisClusterServer:
        for n in self.nodes:
            n.start()
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            timeout=timeout,
        )  # fmt: skip
        self.wait_ok(timeout)
        return self

    def wait_ok(self, timeout: float = 20000 * MS) -> None:
        """Until every node says cluster_state:ok and knows every other node (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            infos = [cluster_info(p) for p in self.ports]
            states = [i.get("cluster_state") for i in infos]
            known = [i.get("cluster_known_nodes") for i in infos]
            if all(s == "ok" for s in states) and all(k == str(len(self.nodes)) for k in known):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ok: states {states}, known nodes {known}")
            time.sleep(0.05)

    def ensure_running(self) -> None:
        """Start the nodes a test killed (same port, same conf: same slots), wait until ok."""
        stopped = [n for n in self.nodes if not n.running]
        for n in stopped:
            n.proc = None
            n.start()
        if stopped:
            self.wait_ok()

    def flushall(self) -> None:
        for p in self.ports:
            assert _command(p, "FLUSHALL").startswith(b"+OK")

    def keyslot(self, key: str) -> int:
        return int(_command(self.ports[0], "CLUSTER", "KEYSLOT", key).strip()[1:])

    def keys_in_slot(self, slot: int) -> int:
        node = self.owner_of_slot(slot)
        return int(_command(node.port, "CLUSTER", "COUNTKEYSINSLOT", str(slot)).strip()[1:])

    def move_slot(self, slot: int, to: ClusterNodeProcess) -> None:
        """Give an empty slot to another master (CLUSTER SETSLOT ... NODE on every node, the
        new owner first, as a reshard ends); wait until every node agrees."""
        target = _command(to.port, "CLUSTER", "MYID").decode().strip()
        for n in [to, *[m for m in self.nodes if m is not to]]:
            reply = _command(n.port, "CLUSTER", "SETSLOT", str(slot), "NODE", target)
            assert reply.startswith(b"+OK"), reply
        deadline = time.monotonic() + 10000 * MS
        while any(self.owner_of_slot(slot, ask=n) is not to for n in self.nodes):
            assert time.monotonic() < deadline, f"slot {slot} not moved everywhere"
            time.sleep(0.05)

    def owner_of(self, key: str) -> ClusterNodeProcess:
        """The node that serves `key`'s slot (or a channel's: the same hash)."""
        return self.owner_of_slot(self.keyslot(key))

    def owner_of_slot(self, slot: int, ask: ClusterNodeProcess | None = None) -> ClusterNodeProcess:
        """Who serves `slot`, as `ask` (by default the first node) sees it."""
        port_asked = (ask or self.nodes[0]).port
        for line in _command(port_asked, "CLUSTER", "NODES").decode().splitlines():
            fields = line.split()
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            for r in fields[8:]:
                lo, _, hi = r.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no node serves slot {slot}")

    def kill(self) -> None:
        for n in self.nodes:
            n.kill()
        self._tmp.cleanup()


def require_binaries() -> None:
    if not os.path.exists(REDIS_BIN):
        pytest.skip("redis-server is not installed (apt-get install redis-server installs it)")
    if not os.path.exists(REDIS_CLI):
        pytest.skip(
            "redis-cli is not installed: it creates the test Redis Cluster "
            "(apt-get install redis-server installs both)"
        )
