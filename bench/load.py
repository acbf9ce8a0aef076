"""The load bench: D documents x U users moving cursors R times a second, end to end.

    python -m bench.load --scenario smoke
    python -m bench.load --docs 50 --users 20 --rate 20 --seconds 20 --json out.json

By default it starts the relay (`python -m relay serve`) pinned to one core with taskset and
pins itself (the generator) to another. Every connection is a real WebSocket client: a raw
HTTP upgrade, HELLO and JOIN once (bench/wsclient.py), then the compiled hot path
(bench/_wsgen.pyx) writes masked CURSOR frames on a schedule and parses the BATCH frames.
Each CURSOR carries (line = sender id, col = the sender's send counter, off = a global
sequence number); its send time goes into a table every receiver looks up when the BATCH
carrying it arrives. Exit status: 0 targets met (or none), 1 a target missed, 2 the
generator saturated (the run does not count), 3 the run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import resource
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from bench import stats as st
from bench.relay_proc import (
    RelayProcess,
    cpu_split,
    cpu_times,
    fetch_metrics,
    pinning_cpus,
    status_kib,
)
from bench.wsclient import SetupError, open_joined, parse_url

HERE = Path(__file__).resolve().parent
TARGETS_FILE = HERE / "targets.toml"
RESULTS_DIR = HERE / "results"
HANDLE = 1
DRAIN_S = 1.5  # senders keep going this long after the window (not counted)
SETTLE_S = 0.5  # then stop and wait this long for the last batches
SETUP_CONCURRENCY = 64
# A generator is saturated when it uses more than this share of its core, when more than
# 1 % of its sends went out over 5 ms late, or when it offered < 97 % of the requested rate.
SATURATED_CPU = 0.90
SATURATED_LATE_SHARE = 0.01
SATURATED_OFFERED = 0.97

LOAD_KEYS = ("docs", "users", "rate", "seconds", "warmup", "batch_ms")


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- configuration


def load_scenarios(path: Path = TARGETS_FILE) -> dict[str, dict[str, Any]]:
    with open(path, "rb") as fh:
        return dict(tomllib.load(fh).get("scenarios", {}))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", help="a scenario of bench/targets.toml (sets load + targets)")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--docs", type=int, help="documents (default 10)")
    ap.add_argument("--users", type=int, help="users per document (default 5)")
    ap.add_argument("--rate", type=float, help="cursor moves per user per second (default 10)")
    ap.add_argument("--seconds", type=float, help="measured window, s (default 10)")
    ap.add_argument("--warmup", type=float, help="load before the window, s (default 3)")
    ap.add_argument("--batch-ms", type=int, help="relay batch interval (default 50)")
    ap.add_argument(
        "--jitter",
        type=float,
        default=0.2,
        help="send-time jitter, fraction of the period, +/- (default 0.2)",
    )
    ap.add_argument("--url", help="ws://127.0.0.1:PORT/ws of a running relay (not started)")
    ap.add_argument(
        "--relay-pid", type=int, help="with --url: the relay's PID, for CPU and RSS from /proc"
    )
    ap.add_argument("--redis-url", help="passed to the relay it starts (--redis-url)")
    ap.add_argument(
        "--relay-src",
        type=Path,
        metavar="DIR",
        help="start the relay from this checkout (e.g. an older commit's worktree)",
    )
    ap.add_argument(
        "--relay-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `relay serve` (repeatable), e.g. "
        "--relay-arg=--max-frames-per-s=500",
    )
    ap.add_argument("--no-pin", action="store_true", help="do not pin relay / generator")
    ap.add_argument(
        "--nice",
        type=int,
        default=-15,
        help="niceness for relay and generator when permitted (default -15: "
        "other jobs on the machine disturb less; 0 to leave it)",
    )
    ap.add_argument("--json", help="report path (default bench/results/<name>-<time>.json)")
    ap.add_argument("--png", help="image path (default: next to the JSON)")
    ap.add_argument("--no-png", action="store_true", help="do not draw the image")
    ap.add_argument("--seed", type=int, default=1, help="schedule / mask seed")
    ap.add_argument(
        "--setup-timeout",
        type=float,
        default=180.0,
        help="seconds allowed to open and join every connection",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return ap


def resolve(ns: argparse.Namespace) -> tuple[dict[str, Any], dict[str, float], list[str]]:
    """The load settings, the targets and the names of settings overriding the scenario."""
    defaults = {
        "docs": 10,
        "users": 5,
        "rate": 10.0,
        "seconds": 10.0,
        "warmup": 3.0,
        "batch_ms": 50,
    }
    targets: dict[str, float] = {}
    overrides: list[str] = []
    cfg = dict(defaults)
    relay_args: list[str] = []
    if ns.scenario:
        scenarios = load_scenarios()
        if ns.scenario not in scenarios:
            raise BenchError(f"unknown scenario {ns.scenario!r}; have {sorted(scenarios)}")
        sc = scenarios[ns.scenario]
        cfg.update({k: sc[k] for k in LOAD_KEYS if k in sc})
        targets = {k: float(v) for k, v in sc.get("targets", {}).items()}
        relay_args = list(sc.get("relay_args", []))
    for k in LOAD_KEYS:
        v = getattr(ns, k)
        if v is not None:
            if ns.scenario and v != cfg[k]:
                overrides.append(k)
            cfg[k] = v
    cfg["relay_args"] = relay_args + list(ns.relay_arg)
    cfg["jitter"] = ns.jitter
    if cfg["docs"] < 1 or cfg["users"] < 2:
        raise BenchError("need at least 1 document and 2 users per document")
    if not 0 < cfg["rate"] <= 1000:
        raise BenchError("--rate must be in (0, 1000]")
    if cfg["seconds"] <= 0 or cfg["warmup"] < 0:
        raise BenchError("--seconds must be > 0 and --warmup >= 0")
    if not 0 <= ns.jitter < 0.5:
        raise BenchError("--jitter must be in [0, 0.5)")
    return cfg, targets, overrides


# ---------------------------------------------------------------- the run (generator side)


def log(quiet: bool, msg: str) -> None:
    if not quiet:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def gen_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def gen_sys_cpu() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def relay_version(relay_src: Path | None = None) -> dict[str, Any]:
    """The relay under test: its version, twin, commit, and whether relay/ had uncommitted
    changes (this checkout's, or `--relay-src`'s: read from its files, not imported)."""
    import subprocess

    out: dict[str, Any] = {}
    root = relay_src or HERE.parent
    if relay_src is None:
        with contextlib.suppress(Exception):
            import relay

            out["relay_version"] = relay.__version__
            out["relay_core"] = relay.implementation()
    else:
        out["relay_src"] = str(relay_src)
        out["relay_core"] = (
            "pure"
            if os.environ.get("RELAY_NO_EXTENSIONS") == "1"
            or not list((relay_src / "relay").glob("_fast*.so"))
            else "compiled"
        )
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["commit"] = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.strip()
            or None
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "relay"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
        out["relay_dirty"] = bool(status.strip())
    return out


class Run:
    """One load run in this process (the generator)."""

    def __init__(
        self,
        wsgen: Any,
        cfg: dict[str, Any],
        url: str,
        relay_pid: int | None,
        seed: int,
        quiet: bool,
        setup_timeout: float,
        cpus: tuple[int | None, int | None] = (None, None),
    ) -> None:
        self.w = wsgen
        self.cpus = cpus  # (relay CPU, generator CPU) when pinned
        self.cfg = cfg
        self.host, self.port, self.path = parse_url(url)
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
            self.sender.send_raw(conn.idx, self.w.client_frame(0xA, payload))
        elif op == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.closes[code] = self.closes.get(code, 0) + 1
            self.sender.send_raw(conn.idx, self.w.client_frame(0x8, payload[:2]))
            self.sender.stop(conn.idx)
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
        self.sender.stop(conn.idx)
        if not self.stopping:
            self.disconnected += 1

    # ------------------------------------------------------------ setup

    async def _open(self, idx: int, sem: asyncio.Semaphore) -> None:
        users = self.cfg["users"]
        doc = idx // users
        doc_id = f"bench-{self.run_id}-{doc}"
        async with sem:
            try:
                transport, proto, _sid = await asyncio.wait_for(
                    open_joined(
                        self.host,
                        self.port,
                        self.path,
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
        conn = self.w.Conn(self.sh, idx, doc * users, self.on_slow, self.on_lost, transport)
        conn.sender = self.sender
        transport.set_protocol(conn)
        self.conns[idx] = conn
        sock = transport.get_extra_info("socket")
        self.sender.add(idx, sock.fileno(), HANDLE)
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
        sh, se = self.sh, self.sender
        snap = {
            "mono": time.monotonic(),
            "gen_cpu": gen_cpu(),
            "gen_sys": gen_sys_cpu(),
            "frames_in": sh.frames_in,
            "bytes_in": sh.bytes_in,
            "batches": sh.batches,
            "events": sh.events_total,
            "frames_out": se.frames_out,
            "bytes_out": se.bytes_out,
            "sent": se.sent,
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
        cfg, sh, sender = self.cfg, self.sh, self.sender
        loop = asyncio.get_running_loop()
        now = self.w.monotonic_ns()
        t_start = now + 100_000_000
        sh.t_start = t_start
        t0 = t_start + int(cfg["warmup"] * 1e9)
        t1 = t0 + int(cfg["seconds"] * 1e9)
        t_stop = t1 + int(DRAIN_S * 1e9)
        # Coalescing allowance: an update the next one from the same sender followed within
        # 1.25 batch intervals may legitimately be replaced by it (latest wins per batch).
        sh.coalesce_ns = int(cfg["batch_ms"] * 1.25e6)
        order = list(range(self.n))
        self.rng.shuffle(order)
        for rank, idx in enumerate(order):
            if self.conns[idx] is not None and not self.conns[idx].closed:
                sender.start(idx, t_start + rank * self.period_ns // self.n)
        running = True

        def tick() -> None:
            sender.tick()
            if running:
                loop.call_later(0.001, tick)

        loop.call_later(0.0, tick)
        log(
            self.quiet,
            f"load on: {self.n} connections x {cfg['rate']} Hz; warmup "
            f"{cfg['warmup']} s, window {cfg['seconds']} s",
        )
        sh.t0, sh.t1 = t0, t1
        await self._sleep_until(t0)
        self._snapshot("t0")
        await self._sleep_until(t1)
        self._snapshot("t1")
        await self._sleep_until(t_stop)
        sender.stop_all()
        running = False
        await asyncio.sleep(SETTLE_S)
        self._snapshot("end")

    async def close_all(self) -> None:
        self.stopping = True
        for i, conn in enumerate(self.conns):
            if conn is not None and not conn.closed:
                self.sender.send_raw(i, self.w.client_frame(0x8, (1000).to_bytes(2, "big")))
                conn.transport.close()
        await asyncio.sleep(0.2)

    # ------------------------------------------------------------ the numbers

    def result(self, metrics: dict[str, float]) -> dict[str, Any]:
        cfg, sh, se = self.cfg, self.sh, self.sender
        a, b = self.snap["t0"], self.snap["t1"]
        window = (b["mono"] - a["mono"]) or cfg["seconds"]
        users = cfg["users"]
        edges = self.w.bucket_edges_us()
        counts = sh.histogram()
        expected = se.sent_window * (users - 1)
        delivered, coalesced, lost = sh.delivered, sh.coalesced, sh.lost
        missing = max(0, expected - delivered - coalesced - lost)
        denom = expected - coalesced
        ratio = delivered / denom if denom > 0 else None
        gen_cpu_s = b["gen_cpu"] - a["gen_cpu"]
        gen_frac = gen_cpu_s / window
        late_share = se.late_window_5ms / se.sent_window if se.sent_window else 0.0
        offered = se.sent_window / window
        requested = self.n * cfg["rate"]
        # The generator's core also runs the softirq work of its loopback sends, sometimes in
        # ksoftirqd (not charged to this process): the core's busy share is the better gauge.
        core = {}
        for role in ("relay_core", "gen_core"):
            if role + "_busy" in a and role + "_busy" in b:
                core[role + "_busy"] = round((b[role + "_busy"] - a[role + "_busy"]) / window, 4)
                core[role + "_softirq"] = round(
                    (b[role + "_softirq"] - a[role + "_softirq"]) / window, 4
                )
        gen_core = core.get("gen_core_busy")
        reasons = []
        if gen_frac > SATURATED_CPU:
            reasons.append(f"generator CPU {gen_frac:.0%} of one core > {SATURATED_CPU:.0%}")
        if gen_core is not None and gen_core > SATURATED_CPU:
            reasons.append(f"generator's core {gen_core:.0%} busy > {SATURATED_CPU:.0%}")
        if late_share > SATURATED_LATE_SHARE:
            reasons.append(
                f"{late_share:.1%} of sends > 5 ms behind schedule (the generator "
                "was CPU-starved: saturated, or another process on its core)"
            )
        if offered < SATURATED_OFFERED * requested:
            reasons.append(
                f"offered {offered:.0f}/s < {SATURATED_OFFERED:.0%} of requested {requested:.0f}/s"
            )
        timeline = []
        for s in range(sh.nsec):
            c = sh.second_histogram(s)
            total = sum(c)
            sent_s, late_s, gap_ns = se.second_stats(s)
            if not total and not sent_s:
                continue
            timeline.append(
                {
                    "t_s": s,
                    "in_window": cfg["warmup"] <= s < cfg["warmup"] + cfg["seconds"],
                    "count": total,
                    "p50_ms": st.percentile_ms(c, edges, 0.5),
                    "p99_ms": st.percentile_ms(c, edges, 0.99),
                    "sent": sent_s,
                    "sends_late_5ms": late_s,
                    "max_tick_gap_ms": round(gap_ns / 1e6, 2),
                }
            )
        out: dict[str, Any] = {
            "connections": self.n - self.setup_failed,
            "window_s": round(window, 3),
            "requested_per_s": requested,
            "offered_per_s": round(offered, 1),
            "delivered_per_s": round(delivered / window, 1),
            "expected_deliveries": expected,
            "delivered": delivered,
            "coalesced": coalesced,
            "lost": lost,
            "missing": missing,
            "delivered_ratio": None if ratio is None else round(ratio, 5),
            "coalesced_share": round(coalesced / expected, 5) if expected else None,
            "latency_ms": st.summary(counts, edges, sh.max_lat_ns, sh.lat_sum_us),
            "histogram": {
                "cumulative": st.cumulative(counts, edges),
                "buckets": st.fine_buckets(counts, edges),
            },
            "timeline": timeline,
            "frames": {
                "out": int(b["frames_out"] - a["frames_out"]),
                "in": int(b["frames_in"] - a["frames_in"]),
                "out_per_s": round((b["frames_out"] - a["frames_out"]) / window, 1),
                "in_per_s": round((b["frames_in"] - a["frames_in"]) / window, 1),
            },
            "bytes": {
                "out": int(b["bytes_out"] - a["bytes_out"]),
                "in": int(b["bytes_in"] - a["bytes_in"]),
                "out_per_s": round((b["bytes_out"] - a["bytes_out"]) / window, 1),
                "in_per_s": round((b["bytes_in"] - a["bytes_in"]) / window, 1),
            },
            "events_per_batch": round(
                (b["events"] - a["events"]) / max(1, b["batches"] - a["batches"]), 2
            ),
            "anomalies": {
                "duplicates": sh.dup,
                "stale": sh.stale,
                "foreign": sh.foreign,
                "parse_errors": sh.parse_errors,
                "unexpected_frames": self.slow_other,
                "send_blocked": se.blocked,
                "send_errors": se.errors,
                "disconnected": self.disconnected,
            },
            "server_closes": self.closes,
            "server_errors": self.errors,
            "server_pings": self.pings,
            "generator_cpu_s": round(gen_cpu_s, 3),
            "generator_cpu_sys_s": round(b["gen_sys"] - a["gen_sys"], 3),
            "generator_cpu_frac": round(gen_frac, 4),
            "generator_us_per_user_tick": None,
            "schedule_slip": {
                "late_over_1ms": se.late_1ms,
                "late_over_2ms": se.late_2ms,
                "late_over_5ms": se.late_5ms,
                "late_over_10ms": se.late_10ms,
                "late_over_25ms": se.late_25ms,
                "max_ms": round(se.max_late_ns / 1e6, 3),
                "window_share_over_5ms": round(late_share, 5),
                "skipped_periods": se.skipped,
                "ticks": se.ticks,
            },
            "cores": core,
            "generator_saturated": bool(reasons),
            "generator_saturation_reasons": reasons,
        }
        user_ticks = self.n * window * 1000.0 / cfg["batch_ms"]
        out["user_ticks_per_s"] = round(user_ticks / window, 1)
        out["generator_us_per_user_tick"] = round(gen_cpu_s * 1e6 / user_ticks, 3)
        if "relay_cpu" in a and "relay_cpu" in b:
            cpu = b["relay_cpu"] - a["relay_cpu"]
            out["server_cpu_s"] = round(cpu, 3)
            # The kernel's share (syscalls, loopback): what socket options change.
            out["server_cpu_sys_s"] = round(b["relay_sys"] - a["relay_sys"], 3)
            out["server_cpu_frac"] = round(cpu / window, 4)
            out["server_cpu_s_per_million"] = round(cpu / delivered * 1e6, 3) if delivered else None
            us_tick = cpu * 1e6 / user_ticks
            out["server_cpu_us_per_user_tick"] = round(us_tick, 3)
            # One core's worth of user-ticks at this batch interval, in users.
            out["server_projected_users_per_core"] = (
                int(1e6 / us_tick / (1000.0 / cfg["batch_ms"])) if us_tick > 0 else None
            )
        else:
            out["server_cpu_s"] = out["server_cpu_frac"] = None
            out["server_cpu_s_per_million"] = out["server_cpu_us_per_user_tick"] = None
            out["server_projected_users_per_core"] = None
        in_window = [kib for t, kib in self.rss_samples if a["mono"] <= t <= b["mono"]]
        out["server_rss_peak_mib"] = round(max(in_window) / 1024, 1) if in_window else None
        if self.relay_pid is not None:
            with contextlib.suppress(OSError):
                out["server_vmhwm_mib"] = round(status_kib(self.relay_pid, "VmHWM") / 1024, 1)
        out["relay_metrics"] = {
            k: v
            for k, v in metrics.items()
            if k.startswith(
                (
                    "presence_relay_errors",
                    "presence_relay_closes",
                    "presence_relay_frames",
                    "presence_relay_bytes",
                )
            )
        }
        return out


def check_targets(result: dict[str, Any], targets: dict[str, float]) -> list[dict[str, Any]]:
    checks = []
    for key, limit in targets.items():
        if key == "delivered_ratio":
            value, ok = result["delivered_ratio"], None
            ok = value is not None and value >= limit
            op = ">="
        else:
            name = key.removesuffix("_ms")
            value = result["latency_ms"].get(name)
            ok = value is not None and value <= limit
            op = "<="
        checks.append({"target": key, "op": op, "limit": limit, "value": value, "ok": ok})
    return checks


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


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, need)) if hard != resource.RLIM_INFINITY else max(soft, need)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < need:
        raise BenchError(f"need {need} open files, the hard limit is {hard} (ulimit -n)")


def loadavg() -> list[str] | None:
    try:
        with open("/proc/loadavg") as fh:
            return fh.read().split()[:3]
    except OSError:
        return None


def set_nice(nice: int, pids: list[int]) -> int | None:
    """Lower niceness of this process and `pids` (needs CAP_SYS_NICE); the value set or None."""
    if nice == 0:
        return 0
    try:
        for pid in [0, *pids]:
            os.setpriority(os.PRIO_PROCESS, pid, nice)
    except OSError:
        return None
    return nice


def default_paths(ns: argparse.Namespace, name: str) -> tuple[Path, Path | None]:
    if ns.json:
        jpath = Path(ns.json)
    else:
        jpath = RESULTS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    jpath.parent.mkdir(parents=True, exist_ok=True)
    if ns.no_png:
        return jpath, None
    return jpath, Path(ns.png) if ns.png else jpath.with_suffix(".png")


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.list:
        for name, sc in load_scenarios().items():
            tg = ", ".join(f"{k} {v}" for k, v in sc.get("targets", {}).items())
            print(
                f"{name:12} {sc['docs']} x {sc['users']} @ {sc['rate']} Hz, "
                f"{sc.get('batch_ms', 50)} ms batches, {sc['seconds']} s: {tg}"
                f"{'  (CI)' if sc.get('ci') else ''}"
            )
        return 0
    try:
        cfg, targets, overrides = resolve(ns)
    except BenchError as exc:
        print(f"bench.load: {exc}", file=sys.stderr)
        return 3
    name = ns.scenario or "adhoc"
    jpath, ppath = default_paths(ns, name)
    from bench import _ext  # compile before pinning: the build wants a whole core

    try:
        wsgen = _ext.load()
    except _ext.BuildError as exc:
        print(f"bench.load: {exc}", file=sys.stderr)
        return 3
    n = cfg["docs"] * cfg["users"]
    relay: RelayProcess | None = None
    cpus = None if ns.no_pin else pinning_cpus()
    report: dict[str, Any] = {
        "scenario": ns.scenario,
        "overrides": overrides,
        "config": {
            **{k: cfg[k] for k in LOAD_KEYS},
            "jitter": cfg["jitter"],
            "relay_args": cfg["relay_args"],
            "redis_url": bool(ns.redis_url),
            "url": ns.url,
        },
        "command": " ".join(
            ["python -m bench.load", *(argv if argv is not None else sys.argv[1:])]
        ),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "pinned": None, "loadavg_before": loadavg()},
        "generator": "raw asyncio protocols on uvloop + compiled bench/_wsgen",
        "version": relay_version(ns.relay_src),
    }
    try:
        raise_nofile(n + 256)
        if ns.url:
            url, relay_pid, mport = ns.url, ns.relay_pid, parse_url(ns.url)[1]
        else:
            log(
                ns.quiet,
                f"starting relay (batch {cfg['batch_ms']} ms"
                f"{f', pinned to CPU {cpus[0]}' if cpus else ''})",
            )
            logpath = jpath.with_suffix(".relay.log")
            relay = RelayProcess(
                cfg["batch_ms"],
                cpus[0] if cpus else None,
                cfg["relay_args"],
                logpath,
                ns.redis_url,
                ns.relay_src,
            )
            relay.wait_ready()
            url, relay_pid, mport = relay.url, relay.pid, relay.port
        report["machine"]["nice"] = set_nice(ns.nice, [relay.pid] if relay else [])
        if cpus:
            os.sched_setaffinity(0, {cpus[1]})
            report["machine"]["pinned"] = {
                "relay_cpu": cpus[0] if relay else None,
                "generator_cpu": cpus[1],
            }
        import uvloop

        pins = (cpus[0] if relay else None, cpus[1]) if cpus else (None, None)
        result = uvloop.run(run_async(wsgen, cfg, url, relay_pid, ns, mport, pins))
        if relay is not None and not relay.alive():
            raise BenchError(f"the relay died during the run: {relay.tail_log()}")
    except (BenchError, SetupError, RuntimeError, OSError) as exc:
        print(f"bench.load: run failed: {exc}", file=sys.stderr)
        return 3
    finally:
        if relay is not None:
            relay.stop()
    report.update(result)
    checks = check_targets(result, targets)
    report["targets"] = checks
    met = all(c["ok"] for c in checks) and not result["generator_saturated"]
    report["targets_met"] = met if checks else None
    with open(jpath, "w") as fh:
        json.dump(report, fh, indent=1)
    from bench import report as rp

    if ppath is not None:
        err = rp.draw(report, ppath, targets)
        report["image"] = str(ppath) if err is None else None
        if err:
            print(f"bench.load: no image: {err}", file=sys.stderr)
        with open(jpath, "w") as fh:
            json.dump(report, fh, indent=1)
    print(rp.table(report))
    print(f"report: {jpath}" + (f"  image: {ppath}" if report.get("image") else ""))
    if result["generator_saturated"]:
        print(
            "GENERATOR SATURATED: this run does not count ("
            + "; ".join(result["generator_saturation_reasons"])
            + ")"
        )
        return 2
    if checks and not met:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
