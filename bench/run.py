"""One load run in this process (the generator side): set up every connection, drive the
schedule, take the snapshots the numbers are computed from (bench/result.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import random
import resource
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.relay_proc import cpu_split, cpu_times, fetch_metrics, status_kib
from bench.result import summarize
from bench.wsclient import SetupError, SetupProtocol, open_joined, parse_url

HANDLE = 1
DRAIN_S = 1.5  # senders keep going this long after the window (not counted)
SETTLE_S = 0.5  # then stop and wait this long for the last batches
SETUP_CONCURRENCY = 64


class BenchError(Exception):
    """A run that cannot start or complete (exit status 3)."""


def log(quiet: bool, msg: str) -> None:
    if not quiet:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def gen_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def gen_sys_cpu() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


class Run:
    """One load run in this process (the generator)."""

    def __init__(
        self,
        wsgen: Any,
        cfg: dict[str, Any],
        url: str | Sequence[str],
        relay_pid: int | None,
        seed: int,
        quiet: bool,
        setup_timeout: float,
        cpus: tuple[int | None, int | None] = (None, None),
    ) -> None:
        self.w = wsgen
        self.cpus = cpus  # (relay CPU, generator CPU) when pinned
        self.cfg = cfg
        # Several URLs (bench.cluster): connection i goes to urls[i % len(urls)].
        self.addrs = [parse_url(u) for u in ([url] if isinstance(url, str) else url)]
        self.host, self.port, self.path = self.addrs[0]
        self.relay_pid = relay_pid
        self.quiet = quiet
        self.setup_timeout = setup_timeout
        self.rng = random.Random(seed)
        docs, users = cfg["docs"], cfg["users"]
        self.n = docs * users
        self.total_s = cfg["warmup"] + cfg["seconds"] + DRAIN_S + SETTLE_S
        self.sh = wsgen.Shared(self.n, users, int(self.total_s) + 3)
        period_ns = int(1e9 / cfg["rate"])
        self.period_ns = period_ns
        self.sender = wsgen.Sender(
            self.sh, self.n, period_ns, int(period_ns * cfg["jitter"]), seed * 2654435761 + 12345
        )
        # Every Shared and Sender of the run; `route` gives each connection one of each.
        self.shareds: list[Any] = [self.sh]
        self.senders: list[Any] = [self.sender]
        self.conns: list[Any] = [None] * self.n
        self.run_id = f"{os.getpid():x}{int(time.time()) % 100000:x}"
        self.stopping = False
        self.disconnected = 0
        self.setup_failed = 0
        self.setup_errors: dict[str, int] = {}
        self.closes: dict[int, int] = {}
        self.errors: dict[int, int] = {}
        self.pings = 0
        self.slow_other = 0
        self.rss_samples: list[tuple[float, int]] = []
        self.snap: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------ rare frames

    def on_slow(self, conn: Any, b0: int, payload: bytes) -> None:
        op = b0 & 0x0F
        if b0 & 0x100:
            self.slow_other += 1  # a masked server frame: RFC 6455 violation
        elif op == 0x9:
            self.pings += 1
            conn.sender.send_raw(conn.idx, self.w.client_frame(0xA, payload))
        elif op == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.closes[code] = self.closes.get(code, 0) + 1
            conn.sender.send_raw(conn.idx, self.w.client_frame(0x8, payload[:2]))
            conn.sender.stop(conn.idx)
            if conn.transport is not None:
                conn.transport.close()
        elif op == 0x2:
            import msgpack

            try:
                msg = msgpack.unpackb(payload, raw=False, strict_map_key=False)
            except Exception:
                self.slow_other += 1
                return
            if isinstance(msg, list) and msg and msg[0] == 35 and len(msg) >= 3:
                self.errors[msg[2]] = self.errors.get(msg[2], 0) + 1
            elif not (isinstance(msg, list) and msg and msg[0] == 36):
                self.slow_other += 1
        elif op != 0xA:
            self.slow_other += 1

    def on_lost(self, conn: Any, exc: BaseException | None) -> None:
        conn.sender.stop(conn.idx)
        if not self.stopping:
            self.disconnected += 1

    # ------------------------------------------------------------ setup

    def route(self, idx: int, proto: SetupProtocol) -> tuple[Any, Any]:
        """(the Shared its Conn reads into, the Sender that writes its frames) for a joined
        connection; `proto.welcome` is its WELCOME. One of each here (bench.cluster splits)."""
        return self.sh, self.sender

    async def _open(self, idx: int, sem: asyncio.Semaphore) -> None:
        users = self.cfg["users"]
        doc = idx // users
        doc_id = f"bench-{self.run_id}-{doc}"
        host, port, path = self.addrs[idx % len(self.addrs)]
        async with sem:
            try:
                transport, proto, _sid = await asyncio.wait_for(
                    open_joined(
                        host,
                        port,
                        path,
                        f"u{idx}",
                        doc_id,
                        HANDLE,
                        self.w.client_frame,
                    ),
                    timeout=30.0,
                )
            except (OSError, SetupError, TimeoutError) as exc:
                self.setup_failed += 1
                key = f"{type(exc).__name__}: {str(exc)[:120]}"
                self.setup_errors[key] = self.setup_errors.get(key, 0) + 1
                return
        sh, sender = self.route(idx, proto)
        conn = self.w.Conn(sh, idx, doc * users, self.on_slow, self.on_lost, transport)
        conn.sender = sender
        transport.set_protocol(conn)
        self.conns[idx] = conn
        sock = transport.get_extra_info("socket")
        sender.add(idx, sock.fileno(), HANDLE)
        if proto.closed:
            conn.connection_lost(proto.lost)
            return
        leftover = bytes(proto.buf)
        proto.buf.clear()
        if leftover:
            conn.data_received(leftover)

    async def setup(self) -> None:
        sem = asyncio.Semaphore(SETUP_CONCURRENCY)
        started = time.monotonic()
        tasks = [asyncio.ensure_future(self._open(i, sem)) for i in range(self.n)]
        done, pending = await asyncio.wait(tasks, timeout=self.setup_timeout)
        for t in pending:
            t.cancel()
        for t in done:
            if t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        if pending:
            raise BenchError(
                f"setup did not finish in {self.setup_timeout} s ({len(done)}/{self.n} connections)"
            )
        log(
            self.quiet,
            f"{self.n - self.setup_failed}/{self.n} connections joined in "
            f"{time.monotonic() - started:.1f} s",
        )
        if self.setup_failed:
            raise BenchError(
                f"{self.setup_failed} connections failed to set up: {self.setup_errors}"
            )

    # ------------------------------------------------------------ measuring

    def _snapshot(self, name: str) -> None:
        shs, ses = self.shareds, self.senders
        snap = {
            "mono": time.monotonic(),
            "gen_cpu": gen_cpu(),
            "gen_sys": gen_sys_cpu(),
            "frames_in": sum(sh.frames_in for sh in shs),
            "bytes_in": sum(sh.bytes_in for sh in shs),
            "batches": sum(sh.batches for sh in shs),
            "events": sum(sh.events_total for sh in shs),
            "frames_out": sum(se.frames_out for se in ses),
            "bytes_out": sum(se.bytes_out for se in ses),
            "sent": sum(se.sent for se in ses),
        }
        if self.relay_pid is not None:
            with contextlib.suppress(OSError):
                user, system = cpu_split(self.relay_pid)
                snap["relay_cpu"], snap["relay_sys"] = user + system, system
        for role, cpu in zip(("relay_core", "gen_core"), self.cpus, strict=True):
            t = cpu_times(cpu) if cpu is not None else None
            if t is not None:
                snap[role + "_busy"] = t["busy"]
                snap[role + "_softirq"] = t["softirq"]
        self.snap[name] = snap

    def _sample_rss(self) -> None:
        if self.relay_pid is None:
            return
        with contextlib.suppress(OSError):
            self.rss_samples.append((time.monotonic(), status_kib(self.relay_pid, "VmRSS")))

    async def _sleep_until(self, t_ns: int) -> None:
        while True:
            left = (t_ns - self.w.monotonic_ns()) / 1e9
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.25))
            self._sample_rss()

    async def drive(self) -> None:
        cfg, shareds, senders = self.cfg, self.shareds, self.senders
        loop = asyncio.get_running_loop()
        now = self.w.monotonic_ns()
        t_start = now + 100_000_000
        t0 = t_start + int(cfg["warmup"] * 1e9)
        t1 = t0 + int(cfg["seconds"] * 1e9)
        t_stop = t1 + int(DRAIN_S * 1e9)
        for sh in shareds:
            sh.t_start = t_start
            # Coalescing allowance: an update the next one from the same sender followed
            # within 1.25 batch intervals may legitimately be replaced by it (latest wins).
            sh.coalesce_ns = int(cfg["batch_ms"] * 1.25e6)
        order = list(range(self.n))
        self.rng.shuffle(order)
        for rank, idx in enumerate(order):
            conn = self.conns[idx]
            if conn is not None and not conn.closed:
                conn.sender.start(idx, t_start + rank * self.period_ns // self.n)
        running = True

        def tick() -> None:
            for sender in senders:
                sender.tick()
            if running:
                loop.call_later(0.001, tick)

        loop.call_later(0.0, tick)
        log(
            self.quiet,
            f"load on: {self.n} connections x {cfg['rate']} Hz; warmup "
            f"{cfg['warmup']} s, window {cfg['seconds']} s",
        )
        for sh in shareds:
            sh.t0, sh.t1 = t0, t1
        await self._sleep_until(t0)
        self._snapshot("t0")
        await self._sleep_until(t1)
        self._snapshot("t1")
        await self._sleep_until(t_stop)
        for sender in senders:
            sender.stop_all()
        running = False
        await asyncio.sleep(SETTLE_S)
        self._snapshot("end")

    async def close_all(self) -> None:
        self.stopping = True
        for i, conn in enumerate(self.conns):
            if conn is not None and not conn.closed:
                conn.sender.send_raw(i, self.w.client_frame(0x8, (1000).to_bytes(2, "big")))
                conn.transport.close()
        await asyncio.sleep(0.2)

    def result(self, metrics: dict[str, float]) -> dict[str, Any]:
        return summarize(self, metrics)


async def run_async(
    wsgen: Any,
    cfg: dict[str, Any],
    url: str,
    relay_pid: int | None,
    ns: argparse.Namespace,
    port_for_metrics: int | None,
    cpus: tuple[int | None, int | None],
) -> dict[str, Any]:
    run = Run(wsgen, cfg, url, relay_pid, ns.seed, ns.quiet, ns.setup_timeout, cpus)
    return await execute(run, port_for_metrics)


async def execute(run: Run, port_for_metrics: int | None) -> dict[str, Any]:
    """Set up, drive and summarize `run` (a Run or a subclass), then close its connections."""
    try:
        await run.setup()
        # The hot path makes no reference cycles; a gen-2 collection over thousands of
        # connection objects would stall the loop for milliseconds mid-window.
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            await run.drive()
        finally:
            gc.enable()
        metrics = (
            await asyncio.to_thread(fetch_metrics, port_for_metrics) if port_for_metrics else {}
        )
        return run.result(metrics)
    finally:
        await run.close_all()
