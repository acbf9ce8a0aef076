"""Webhook delivery delay on loopback, memory backend and a real redis-server: from the
client sending JOIN / LEAVE to the endpoint receiving `user.joined` / `user.left`. A
measurement, not a test (nothing here is collected by pytest):

    .venv/bin/python tests/measure_webhook_delay.py        # 200 documents per backend

It reuses the test suite's loopback endpoint (tests/test_webhooks.py `Receiver`).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import RawClient, RedisServer
from test_webhooks import SECRET, Receiver
from websockets.asyncio.client import connect

from relay.config import PresenceConfig
from relay.server.app import Relay


class Stamped(list[Any]):
    """The receiver's request list, noting when each request arrived."""

    def __init__(self, stamps: list[float]) -> None:
        super().__init__()
        self.stamps = stamps

    def append(self, item: Any) -> None:
        self.stamps.append(time.monotonic())
        super().append(item)


async def until(n: int, requests: list[Any]) -> None:
    while len(requests) < n:
        await asyncio.sleep(0.0005)


def pct(xs: list[float], f: float) -> float:
    return sorted(xs)[int(f * (len(xs) - 1))] * 1000


async def run(redis_url: str | None, n: int) -> None:
    rec = Receiver()
    await rec.start()
    stamps: list[float] = []
    rec.requests = Stamped(stamps)
    kw: dict[str, Any] = {"port": 0, "batch_ms": 20, "webhook_urls": rec.url,
                          "webhook_secret": SECRET, "reconnect_grace_ms": 0}  # fmt: skip
    if redis_url:
        kw["redis_url"] = redis_url
    relay = Relay(PresenceConfig(**kw))
    await relay.start()
    ws = await connect(f"ws://127.0.0.1:{relay.port}/ws", subprotocols=["presence.v1"],  # type: ignore[list-item]
                       compression=None)  # fmt: skip
    c = RawClient(ws)
    await c.hello("ann")
    joined, left = [], []
    for i in range(n):
        before = len(rec.requests)
        t0 = time.monotonic()
        await c.send([2, 1, f"doc-{i}"])
        await c.recv_until(lambda f: f[0] == 33)
        await until(before + 2, rec.requests)  # document.active, then user.joined
        joined.append(stamps[before + 1] - t0)
        await asyncio.sleep(0.02)
        before = len(rec.requests)
        t0 = time.monotonic()
        await c.send([3, 1])
        await until(before + 2, rec.requests)  # user.left, then document.empty
        left.append(stamps[before] - t0)
    await ws.close()
    await relay.stop()
    await rec.stop()
    name = "redis" if redis_url else "memory"
    print(f"{name}: user.joined p50 {pct(joined, 0.5):.2f} ms, p90 {pct(joined, 0.9):.2f}; "
          f"user.left p50 {pct(left, 0.5):.2f} ms, p90 {pct(left, 0.9):.2f} (n={n})")  # fmt: skip


async def main() -> None:
    await run(None, 200)
    server = RedisServer().start()
    try:
        await run(server.url, 200)
    finally:
        server.kill()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
