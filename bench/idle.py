"""Idle connections: what keepalive costs when nobody moves.

N clients (default 19 000: 950 documents x 20) connect, HELLO and JOIN, then only answer the
relay's pings (echoing the payload, as a browser does on its own). The relay runs as its
own process, pinned to one core when `taskset` exists; after a settling pause the bench
reads the relay's CPU time over a window and its resident memory, and reports:

- relay CPU in percent of one core while everyone idles (keepalive and timers alone);
- memory per connection: (RSS with the clients - RSS before any) / N;
- how many pings the relay sent per second (counted by the clients).

    python -m bench.idle                        # 19 000 connections, relay defaults
    python -m bench.idle --relay-src /tmp/old   # the same against another checkout
    python -m bench.idle -- --liveness-timeout-ms 0   # extra args go to the relay
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack

from bench.relay_proc import RelayProcess, pinning_cpus, status_kib


def pong(payload: bytes) -> bytes:
    """The pong a browser sends: the ping's payload echoed, masked (with a zero key)."""
    return bytes((0x8A, 0x80 | len(payload))) + b"\x00\x00\x00\x00" + payload


def frame(payload: bytes) -> bytes:
    """A masked binary client frame (the zero mask keeps the payload as is)."""
    n = len(payload)
    head = bytes((0x82, 0x80 | n)) if n < 126 else bytes((0x82, 0xFE, n >> 8, n & 0xFF))
    return head + b"\x00\x00\x00\x00" + payload


class Idle(asyncio.Protocol):
    """One idle member: its setup replies, then pongs for pings, nothing else."""

    pings = 0

    def __init__(self) -> None:
        self.buf = bytearray()
        self.ready = asyncio.get_running_loop().create_future()
        self.stage = 0  # 0: HTTP response, 1: WELCOME, 2: JOINED, 3: idle
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.stage == 0:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                return
            if b" 101 " not in bytes(buf[:20]):
                self._fail(f"handshake refused: {bytes(buf[:100])!r}")
                return
            del buf[: i + 4]
            self.stage = 1
        while len(buf) >= 2:
            n = buf[1] & 0x7F
            hl = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, hl = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, hl = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < hl + n:
                return
            op = buf[0] & 0x0F
            payload = bytes(buf[hl : hl + n])
            del buf[: hl + n]
            if op == 0x9:
                Idle.pings += 1
                self.transport.write(pong(payload))
            elif op == 0x2 and self.stage in (1, 2):
                kind = msgpack.unpackb(payload)[0]
                if self.stage == 1 and kind == 32:
                    self.stage = 2
                elif self.stage == 2 and kind == 33:
                    self.stage = 3
                    if not self.ready.done():
                        self.ready.set_result(None)
                elif kind == 35:
                    self._fail(f"refused: {msgpack.unpackb(payload)!r}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"connection lost: {exc}")

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(why))


async def open_idle(port: int, user: str, doc: str) -> Idle:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(Idle, "127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    proto.transport.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: presence.v1\r\n\r\n"
        ).encode()
        + frame(msgpack.packb([1, 1, None, {"user_id": user, "name": user}]))
        + frame(msgpack.packb([2, 1, doc]))
    )
    await asyncio.wait_for(proto.ready, 30)
    return proto


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cpus = pinning_cpus()
    log = Path(tempfile.mkstemp(prefix="idle-relay-", suffix=".log")[1])
    relay = RelayProcess(
        50, cpus[0] if cpus else None, args.relay_args, log,
        relay_src=Path(args.relay_src) if args.relay_src else None,
    )  # fmt: skip
    if cpus:
        os.sched_setaffinity(0, {cpus[1]})
    conns: list[Idle] = []
    try:
        relay.wait_ready()
        await asyncio.sleep(1.0)
        rss0 = status_kib(relay.pid, "VmRSS")
        t0 = time.monotonic()
        sem = asyncio.Semaphore(200)

        async def one(i: int) -> None:
            async with sem:
                conns.append(await open_idle(relay.port, f"u{i}", f"doc-{i // args.per_doc}"))

        await asyncio.gather(*(one(i) for i in range(args.connections)))
        setup_s = time.monotonic() - t0
        await asyncio.sleep(args.settle)
        rss1 = status_kib(relay.pid, "VmRSS")
        pings0, c0, w0 = Idle.pings, cpu_seconds(relay.pid), time.monotonic()
        await asyncio.sleep(args.window)
        pings1, c1, w1 = Idle.pings, cpu_seconds(relay.pid), time.monotonic()
        lost = sum(1 for c in conns if c.transport.is_closing())
        return {
            "connections": args.connections,
            "relay_args": args.relay_args,
            "relay_src": args.relay_src,
            "setup_s": round(setup_s, 1),
            "window_s": round(w1 - w0, 1),
            "relay_cpu_pct": round(100 * (c1 - c0) / (w1 - w0), 2),
            "rss_before_mib": round(rss0 / 1024, 1),
            "rss_with_clients_mib": round(rss1 / 1024, 1),
            "kib_per_connection": round((rss1 - rss0) / args.connections, 1),
            "pings_per_s": round((pings1 - pings0) / (w1 - w0), 1),
            "connections_lost": lost,
        }
    finally:
        for c in conns:
            c.transport.abort()
        relay.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--connections", type=int, default=19_000)
    ap.add_argument("--per-doc", type=int, default=20)
    ap.add_argument("--settle", type=float, default=15.0, help="seconds after setup")
    ap.add_argument("--window", type=float, default=60.0, help="seconds measured")
    ap.add_argument("--relay-src", default=None, help="run the relay from this checkout")
    ap.add_argument("--json", default=None, help="also write the result here")
    ap.add_argument("relay_args", nargs="*", help="after --: arguments for the relay")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    sys.exit(1 if result["connections_lost"] else 0)


if __name__ == "__main__":
    main()
