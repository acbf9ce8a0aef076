"""Clients that vanish without closing, as real processes: frozen (SIGSTOP) or cut off (a
veth pair in a network namespace, set down: no FIN, no RST, packets just stop).

Used by tests/test_liveness.py with short timeouts and by `python -m bench.vanish` with the
relay's defaults, which prints how long the others take to see DISCONNECTED and `left`
(the README's "Liveness" numbers).

    python -m bench.vanish            # frozen, cut and closed-tab, default settings
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgpack
from websockets.asyncio.client import ClientConnection, connect

# The vanishing client: HELLO, JOIN, print its sid, then wait (and answer pings: websockets
# does, while the process runs). Stopped or cut off, it answers nothing.
CLIENT = r"""
import asyncio, sys, msgpack
from websockets.asyncio.client import connect

async def main(url, user, token):
    async with connect(url, subprotocols=["presence.v1"], compression=None,
                       ping_interval=None) as ws:
        info = {"user_id": user, "name": user} if token == "-" else {}
        await ws.send(msgpack.packb([1, 1, None if token == "-" else token, info]))
        msgpack.unpackb(await ws.recv())
        await ws.send(msgpack.packb([2, 1, "doc"]))
        while True:
            f = msgpack.unpackb(await ws.recv())
            if f[0] == 33:
                print(f[3], flush=True)
                break
        async for _ in ws:
            pass

asyncio.run(main(*sys.argv[1:4]))
"""


def start_client(url: str, user: str, token: str | None, netns: str | None = None) -> Any:
    cmd = [sys.executable, "-c", CLIENT, url, user, token or "-"]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def client_sid(proc: Any, timeout: float) -> int:
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout)
    if not line:
        raise RuntimeError(f"client exited: {proc.stderr.read().decode(errors='replace')}")
    return int(line)


# ---------------------------------------------------------------- a network that can be cut

# Named after this process, so that two runs at once (two test sessions) never cut or
# delete each other's network.
_PID = os.getpid()
NS = f"presence-cut-{_PID}"
HOST_IF, NS_IF = f"prc{_PID % 10**7}a", f"prc{_PID % 10**7}b"
_NET = f"10.{200 + _PID % 50}.{(_PID // 50) % 256}"
HOST_IP, NS_IP = f"{_NET}.1", f"{_NET}.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def netns_unavailable() -> str | None:
    """Why a cuttable network cannot be built here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (ip netns, veth)"
    try:
        _ip("netns", "add", NS + "-probe")
        _ip("netns", "del", NS + "-probe")
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"ip netns is not available: {exc}"
    return None


@contextlib.contextmanager
def cuttable_network() -> Iterator[str]:
    """A namespace reached over a veth pair: yields its name; the host end is HOST_IP."""
    with contextlib.suppress(subprocess.CalledProcessError):
        _ip("netns", "del", NS)
    with contextlib.suppress(subprocess.CalledProcessError):
        _ip("link", "del", HOST_IF)
    _ip("netns", "add", NS)
    try:
        _ip("link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF)
        _ip("link", "set", NS_IF, "netns", NS)
        _ip("addr", "add", f"{HOST_IP}/30", "dev", HOST_IF)
        _ip("link", "set", HOST_IF, "up")
        _ip("netns", "exec", NS, "ip", "addr", "add", f"{NS_IP}/30", "dev", NS_IF)
        _ip("netns", "exec", NS, "ip", "link", "set", NS_IF, "up")
        _ip("netns", "exec", NS, "ip", "link", "set", "lo", "up")
        yield NS
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", HOST_IF)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "del", NS)


def cut() -> None:
    """Packets stop both ways; neither end is told."""
    _ip("link", "set", HOST_IF, "down")


def restore() -> None:
    """The network is back (what was sent meanwhile is lost)."""
    _ip("link", "set", HOST_IF, "up")


# ---------------------------------------------------------------- the watcher


@contextlib.asynccontextmanager
async def watcher(url: str, token: str | None) -> AsyncIterator[ClientConnection]:
    async with connect(url, subprotocols=["presence.v1"], compression=None) as ws:  # type: ignore[list-item]
        info = {"user_id": "watcher", "name": "W"} if token is None else {}
        await ws.send(msgpack.packb([1, 1, token, info]))
        await ws.recv()
        await ws.send(msgpack.packb([2, 1, "doc"]))
        while msgpack.unpackb(await ws.recv())[0] != 33:
            pass
        yield ws


async def seen(ws: ClientConnection, want: list[Any], timeout: float) -> float:
    """Wait for a BATCH event whose prefix is `want`; the monotonic time it arrived."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        f = msgpack.unpackb(await asyncio.wait_for(ws.recv(), max(0.01, deadline - loop.time())))
        if f[0] == 34 and any(list(e[: len(want)]) == want for e in f[3]):
            return time.monotonic()


async def vanish(
    ws: ClientConnection, proc: Any, sid: int, how: str, timeout: float
) -> tuple[float, float]:
    """Make the client vanish (`stop`, `cut` or `close`: a tab closed, FIN sent); seconds
    until the watcher saw DISCONNECTED and until it saw `left`."""
    t0 = time.monotonic()
    if how == "stop":
        proc.send_signal(signal.SIGSTOP)
    elif how == "cut":
        cut()
    else:
        proc.send_signal(signal.SIGKILL)  # the kernel closes its socket: a FIN, no close frame
    t_disc = await seen(ws, [6, sid, 5], timeout)
    t_left = await seen(ws, [3, sid], timeout)
    return t_disc - t0, t_left - t0


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", default="stop,cut,close")
    args = ap.parse_args()
    from relay.config import PresenceConfig
    from relay.server.app import Relay

    secret = "vanish-bench-secret-" + "x" * 32
    from relay.auth import mint_token

    cfg = PresenceConfig(host="0.0.0.0", port=0, jwt_secret=secret)
    print(f"liveness_timeout_ms={cfg.liveness_timeout_ms}", end=" ")
    print(f"reconnect_grace_ms={cfg.reconnect_grace_ms}")
    r = Relay(cfg)
    await r.start()
    try:
        for how in args.cases.split(","):
            netns = None
            stack = contextlib.ExitStack()
            host = "127.0.0.1"
            if how == "cut":
                why = netns_unavailable()
                if why:
                    print(f"{how}: skipped ({why})")
                    continue
                netns = stack.enter_context(cuttable_network())
                host = HOST_IP
            with stack:
                url = f"ws://{host}:{r.port}/ws"
                async with watcher(url, mint_token(secret, "w", "W", "w", ["*"], 3600)) as ws:
                    tok = mint_token(secret, how, how, "w", ["*"], 3600)
                    proc = start_client(url, how, tok, netns)
                    try:
                        sid = await client_sid(proc, 10)
                        d, left = await vanish(ws, proc, sid, how, 120)
                        print(f"{how}: DISCONNECTED after {d:.2f} s, left after {left:.2f} s")
                    finally:
                        proc.kill()
                        proc.wait()
    finally:
        await r.stop()


if __name__ == "__main__":
    asyncio.run(main())
