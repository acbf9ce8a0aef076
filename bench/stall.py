"""Clients that stop reading: how long the relay keeps them, and what they cost it.

    python -m bench.stall nonreader   # one member of a 40-member document stops reading
    python -m bench.stall shutdown    # SIGTERM with 100 members that never read

`nonreader`: 39 members move their cursors (with selections) at 20 Hz; the 40th joined with
a 4 KiB receive buffer and never reads again. Every 0.25 s the relay's RSS and the kernel's
send queue of the stalled member's socket (`/proc/net/tcp`, tx_queue) are sampled: when the
relay let go of the socket (no fd of its process links to it) and when the kernel did (a
socket closed with unsent data lingers in the kernel until it gives up on the peer), or
until `--seconds` pass. `shutdown`: 100 members that never read
(4 KiB receive buffers, long names), three more that JOIN and LEAVE in a loop without
reading (each JOINED a 30 KB snapshot), three seconds of traffic, then SIGTERM; the time to
exit. Both run the relay with its defaults unless flags say otherwise (`--relay-args`), and
`--relay-src DIR` runs another checkout (before/after).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import msgpack
from websockets.asyncio.client import connect

from bench.relay_proc import RelayProcess, fetch_metrics, status_kib

HERE = Path(__file__).resolve().parent


def mask_frame(payload: bytes, opcode: int = 2) -> bytes:
    n = len(payload)
    head = (
        bytes([0x80 | opcode, 0x80 | n])
        if n < 126
        else (bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big"))
    )
    return head + b"\0\0\0\0" + payload  # a zero mask is a valid mask


async def stalled_member(
    port: int,
    user: str,
    doc: str | None,
    name: str | None = None,
) -> socket.socket:
    """A raw socket that says HELLO (and JOIN), then never reads again."""
    loop = asyncio.get_running_loop()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    await loop.sock_connect(s, ("127.0.0.1", port))
    req = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: presence.v1\r\n\r\n"
    )
    await loop.sock_sendall(s, req)
    info = {"sdk": "bench/stall", "user_id": user, "name": name or user}
    frames = mask_frame(msgpack.packb([1, 1, None, info]))
    if doc is not None:
        frames += mask_frame(msgpack.packb([2, 1, doc]))
    await loop.sock_sendall(s, frames)
    await asyncio.sleep(0.05)
    with contextlib.suppress(BlockingIOError):
        s.recv(65536)  # the 101 and WELCOME/JOINED; from here on nothing is read
    return s


def tcp_entry(relay_port: int, peer_port: int) -> tuple[int, str] | None:
    """(send queue, inode) of the relay side of one connection (None: the kernel has no
    such socket any more)."""
    want_local = f"{relay_port:04X}"
    want_peer = f"{peer_port:04X}"
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            f = line.split()
            local, remote, state = f[1], f[2], f[3]
            if local.endswith(":" + want_local) and remote.endswith(":" + want_peer):
                if state == "06":  # TIME_WAIT: closed
                    return None
                return int(f[4].split(":")[0], 16), f[9]
    return None


def holds(pid: int, inode: str) -> bool:
    """Whether the process still has the socket open (an fd links to it)."""
    want = f"socket:[{inode}]"
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd) == want:
                return True
    return False


async def nonreader(ns: argparse.Namespace, relay: RelayProcess) -> dict[str, Any]:
    doc = "stall-doc"
    movers = []
    for i in range(39):
        ws = await connect(
            relay.url,
            subprotocols=["presence.v1"],  # type: ignore[list-item]
            compression=None,
        )
        await ws.send(
            msgpack.packb([1, 1, None, {"sdk": "b", "user_id": f"m{i}", "name": f"Mover {i}"}])
        )
        await ws.recv()
        await ws.send(msgpack.packb([2, 1, doc]))
        await ws.recv()
        movers.append(ws)
    stop = asyncio.Event()

    async def move(ws: Any, i: int) -> None:
        n = 0
        with contextlib.suppress(Exception):
            while not stop.is_set():
                n += 1
                await ws.send(msgpack.packb([4, 1, n % 500, i, n, n % 500, 0, n, False]))
                await asyncio.sleep(0.05)

    async def drain(ws: Any) -> None:
        with contextlib.suppress(Exception):
            while True:
                await ws.recv()

    tasks = [asyncio.ensure_future(move(ws, i)) for i, ws in enumerate(movers)]
    tasks += [asyncio.ensure_future(drain(ws)) for ws in movers]
    await asyncio.sleep(1.0)
    rss0 = status_kib(relay.pid, "VmRSS")
    s = await stalled_member(relay.port, "stalled", doc)
    peer = s.getsockname()[1]
    t0 = time.monotonic()
    peak_q = peak_rss = 0
    released_at = gone_at = None  # the relay closed its fd; the kernel dropped the socket
    inode = None
    while time.monotonic() - t0 < ns.seconds:
        entry = tcp_entry(relay.port, peer)
        if entry is None:
            gone_at = time.monotonic() - t0
            released_at = released_at or gone_at
            break
        q, inode = entry
        peak_q = max(peak_q, q)
        if released_at is None:
            if not holds(relay.pid, inode):
                released_at = time.monotonic() - t0
            peak_rss = max(peak_rss, status_kib(relay.pid, "VmRSS") - rss0)
        await asyncio.sleep(0.25)
    metrics = fetch_metrics(relay.port)
    stop.set()
    for t in tasks:
        t.cancel()
    for ws in movers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 2)
    s.close()
    return {
        "released_by_relay_s": None if released_at is None else round(released_at, 2),
        "gone_from_kernel_s": None if gone_at is None else round(gone_at, 2),
        "peak_kernel_send_queue_bytes": peak_q,
        "peak_relay_rss_growth_kib": peak_rss,
        "closes": {k: v for k, v in metrics.items() if k.startswith("presence_relay_closes")},
    }


async def shutdown(ns: argparse.Namespace, relay: RelayProcess) -> dict[str, Any]:
    stalled = [
        await stalled_member(relay.port, f"u{i}", "busy", f"{i:03d}" + "n" * 200)
        for i in range(100)
    ]
    pumps = [await stalled_member(relay.port, f"pump{i}", None) for i in range(3)]
    burst = b"".join(mask_frame(msgpack.packb([6, 1, n, n + 40, 50.0])) for n in range(10))
    churn = (mask_frame(msgpack.packb([2, 2, "busy"])) + mask_frame(msgpack.packb([3, 2]))) * 20
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        for s in stalled + pumps:
            with contextlib.suppress(BlockingIOError, OSError):
                s.send(churn if s in pumps else burst)
        await asyncio.sleep(0.2)
    rss = status_kib(relay.pid, "VmRSS")
    t0 = time.monotonic()
    relay.proc.send_signal(15)
    exited = None
    while time.monotonic() - t0 < ns.seconds:
        if relay.proc.poll() is not None:
            exited = time.monotonic() - t0
            break
        await asyncio.sleep(0.02)
    for s in stalled + pumps:
        s.close()
    return {
        "sigterm_to_exit_s": None if exited is None else round(exited, 2),
        "exit_code": relay.proc.poll(),
        "relay_rss_before_kib": rss,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["nonreader", "shutdown"])
    ap.add_argument("--seconds", type=float, default=90.0, help="give up after this long")
    ap.add_argument("--relay-src", type=Path, default=None, help="run another checkout")
    ap.add_argument("--relay-args", default="", help="extra `serve` flags, one string")
    ns = ap.parse_args()
    log = Path("/tmp") / f"stall-{ns.what}.log"
    relay = RelayProcess(50, None, ns.relay_args.split(), log, relay_src=ns.relay_src)
    try:
        relay.wait_ready()
        run = nonreader if ns.what == "nonreader" else shutdown
        result = asyncio.run(run(ns, relay))
    finally:
        relay.stop()
    print(
        json.dumps(
            {"what": ns.what, "relay_src": str(ns.relay_src or HERE.parent), **result}, indent=2
        )
    )


if __name__ == "__main__":
    main()
