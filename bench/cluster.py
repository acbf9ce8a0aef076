"""The load bench over several relay nodes of one Redis, end to end.

    python -m bench.cluster                          # 2 nodes, 20 docs x 10 users @ 10 Hz
    python -m bench.cluster --nodes 1                # the baseline: one node, same Redis
    python -m bench.cluster --workers 2              # one `serve --workers 2` (one port)
    python -m bench.cluster --nodes 2 --placement same

It starts a `redis-server` (unless `--redis-url`), then either N relays on ports of their own
(`--nodes N`; each document's users spread round-robin over them, or with `--placement
same` every document on one node) or one relay supervising N workers on one port
(`--workers N`; the kernel places the connections). The generator is bench.load's
(bench/run.py, bench/_wsgen.pyx); each connection's node is told by its WELCOME's
connection id (`<node id>-<n>`).

The compiled generator keeps one latency histogram per send-time table, and a sender's send
times live in one table: one sender's deliveries to its own node and to other nodes cannot
land in two histograms. So when cross-node deliveries exist the documents are split
(bench/README.md, "Several nodes"): even documents measure every delivery (`all`), odd ones
only deliveries that cross nodes (`cross_node`). The load is the same in every document.

Exit status: 0 done, 2 the generator saturated (the run does not count), 3 the run failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from bench import stats as st
from bench.load import check_load, loadavg, raise_nofile, set_nice
from bench.relay_proc import RelayProcess, cpu_split, free_port, http_get, status_kib
from bench.result import core_shares, relay_version, saturation_reasons
from bench.run import BenchError, Run, execute, log
from bench.wsclient import SetupError, SetupProtocol

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
LOAD_KEYS = ("docs", "users", "rate", "seconds", "warmup", "batch_ms")
DEFAULTS: dict[str, Any] = {
    "docs": 20,
    "users": 10,
    "rate": 10.0,
    "seconds": 10.0,
    "warmup": 3.0,
    "batch_ms": 50,
}
READY_TIMEOUT_S = 30.0
INFO_TIMEOUT_S = 2.0


# ---------------------------------------------------------------- Redis


def resp_command(args: list[bytes]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def redis_call(
    sock: socket.socket, args: list[bytes], deadline: float, limit: int = 1 << 22
) -> tuple[bytes, int]:
    """Send one command, read its reply (simple string, integer or bulk string): (value,
    reply bytes on the wire). Bounded by `deadline` (monotonic) and `limit` bytes."""
    sock.sendall(resp_command(args))
    buf = bytearray()
    while True:
        end = buf.find(b"\r\n")
        if end >= 0:
            kind, head = bytes(buf[:1]), bytes(buf[1:end])
            if kind == b"-":
                raise BenchError(f"Redis: {head.decode(errors='replace')}")
            if kind in (b"+", b":"):
                return head, end + 2
            if kind == b"$":
                n = int(head)
                if n < 0:
                    return b"", end + 2
                if len(buf) >= end + 2 + n + 2:
                    return bytes(buf[end + 2 : end + 2 + n]), end + 2 + n + 2
            else:
                raise BenchError(f"Redis: unexpected reply {bytes(buf[:40])!r}")
        left = deadline - time.monotonic()
        if left <= 0 or len(buf) > limit:
            raise BenchError("Redis: no complete reply in time")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError("Redis closed the connection")
        buf += chunk


@dataclass
class RedisSnap:
    """One `INFO all`, and what asking cost Redis (so the deltas leave the bench out)."""

    fields: dict[str, str]
    commands: dict[str, dict[str, float]]
    info_request: int
    info_reply: int
    auth_request: int = 0
    auth_reply: int = 0


class RedisInfo:
    """`INFO all` of the Redis under test over a plain socket (a new connection each time)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.supported = parts.scheme == "redis"
        self.addr = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.auth: list[bytes] | None = None
        if parts.password is not None:
            user = unquote(parts.username or "default").encode()
            self.auth = [b"AUTH", user, unquote(parts.password).encode()]

    def ping(self, timeout_s: float = 1.0) -> bool:
        deadline = time.monotonic() + timeout_s
        with socket.create_connection(self.addr, timeout=timeout_s) as sock:
            if self.auth:
                redis_call(sock, self.auth, deadline)
            return redis_call(sock, [b"PING"], deadline)[0] == b"PONG"

    def snapshot(self) -> RedisSnap:
        deadline = time.monotonic() + INFO_TIMEOUT_S
        with socket.create_connection(self.addr, timeout=INFO_TIMEOUT_S) as sock:
            auth_req = auth_reply = 0
            if self.auth:
                auth_req = len(resp_command(self.auth))
                auth_reply = redis_call(sock, self.auth, deadline)[1]
            request = [b"INFO", b"all"]
            text, reply = redis_call(sock, request, deadline)
        fields: dict[str, str] = {}
        commands: dict[str, dict[str, float]] = {}
        for line in text.decode(errors="replace").splitlines():
            if not line or line.startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            if key.startswith("cmdstat_"):
                stats: dict[str, float] = {}
                for kv in value.split(","):
                    k, _, v = kv.partition("=")
                    with contextlib.suppress(ValueError):
                        stats[k] = float(v)
                commands[key.removeprefix("cmdstat_")] = stats
            else:
                fields[key] = value
        return RedisSnap(fields, commands, len(resp_command(request)), reply, auth_req, auth_reply)


class RedisServer:
    """`redis-server` on 127.0.0.1:<free port>, no persistence, optionally pinned."""

    def __init__(self, cpu: int | None, log_path: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server is not installed (or give --redis-url)")
        self.port = free_port()
        cmd = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
        ]
        self.pinned = cpu is not None and shutil.which("taskset") is not None
        if self.pinned:
            cmd = ["taskset", "-c", str(cpu), *cmd]  # taskset execs: same PID as Redis
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        info = RedisInfo(self.url)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"redis-server exited with {self.proc.returncode}")
            with contextlib.suppress(OSError, BenchError):
                if info.ping():
                    return
            time.sleep(0.02)
        raise BenchError(f"redis-server on port {self.port} did not answer in {timeout_s} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(5)
        self._log.close()


def redis_delta(a: RedisSnap, b: RedisSnap, window: float, docs: int, sent: int) -> dict[str, Any]:
    """INFO deltas over the window, less the bench's own INFO/AUTH (see the README)."""

    def num(s: RedisSnap, key: str) -> float:
        try:
            return float(s.fields.get(key, "nan"))
        except ValueError:
            return float("nan")

    auth = 1 if b.auth_request else 0
    commands = num(b, "total_commands_processed") - num(a, "total_commands_processed") - 1 - auth
    # Input counts at read time (t1's requests are in), output at write time (t0's INFO
    # reply and t1's AUTH reply are in); a command counts once it ran (t0's INFO is in).
    net_in = (
        num(b, "total_net_input_bytes")
        - num(a, "total_net_input_bytes")
        - b.info_request
        - b.auth_request
    )
    net_out = (
        num(b, "total_net_output_bytes")
        - num(a, "total_net_output_bytes")
        - a.info_reply
        - b.auth_reply
    )
    cpu = (
        num(b, "used_cpu_user")
        + num(b, "used_cpu_sys")
        - num(a, "used_cpu_user")
        - num(a, "used_cpu_sys")
    )
    per = docs * window
    cmdstats: dict[str, dict[str, float]] = {}
    own = {"info": 1, "auth": auth}
    for name in sorted(set(a.commands) | set(b.commands)):
        ca, cb = a.commands.get(name, {}), b.commands.get(name, {})
        calls = cb.get("calls", 0.0) - ca.get("calls", 0.0) - own.get(name, 0)
        if calls <= 0:
            continue
        usec = cb.get("usec", 0.0) - ca.get("usec", 0.0)
        cmdstats[name] = {
            "calls": int(calls),
            "calls_per_doc_per_s": round(calls / per, 3),
            "usec": int(usec),
            "usec_per_call": round(usec / calls, 3),
        }
    return {
        "window_s": round(window, 3),
        "commands": int(commands),
        "commands_per_s": round(commands / window, 1),
        "commands_per_doc_per_s": round(commands / per, 3),
        "commands_per_update_sent": round(commands / sent, 4) if sent else None,
        "net_input_bytes": int(net_in),
        "net_output_bytes": int(net_out),
        "net_input_bytes_per_doc_per_s": round(net_in / per, 1),
        "net_output_bytes_per_doc_per_s": round(net_out / per, 1),
        "cpu_s": round(cpu, 3),
        "cpu_frac": round(cpu / window, 4),
        "commandstats": cmdstats,
        "used_memory_mib": round(num(b, "used_memory") / 1048576, 1),
        "connected_clients": int(num(b, "connected_clients")),
        "version": b.fields.get("redis_version"),
    }


# ---------------------------------------------------------------- processes


@dataclass
class Proc:
    """A server process measured from /proc: a relay node, a worker, the supervisor, Redis."""

    role: str
    pid: int
    node: int | None = None
    cpu: int | None = None
    rss: list[tuple[float, int]] = field(default_factory=list)


def children(pid: int) -> list[int]:
    """The child processes of `pid` (/proc/PID/task/PID/children, else a /proc scan)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        pass
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{name}/stat", "rb") as fh:
                data = fh.read()
            if int(data[data.rindex(b")") + 2 :].split()[1]) == pid:
                out.append(int(name))
    return sorted(out)


def listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP `port` (any address), from /proc/net/tcp{,6}."""
    out: set[str] = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(path) as fh:
            next(fh, None)
            for line in fh:
                f = line.split()
                if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                    out.add(f[9])
    return out


def socket_inodes(pid: int) -> set[str]:
    out: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    out.add(target[8:-1])
    return out


def pin_all_threads(pid: int, cpu: int) -> None:
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), {cpu})


def wait_readyz(port: int, timeout_s: float, times: int = 1) -> None:
    """GET /readyz until it answered 200 `times` times in a row (store and broker reached)."""
    deadline = time.monotonic() + timeout_s
    ok, last = 0, ""
    while time.monotonic() < deadline:
        try:
            status, body = http_get(f"http://127.0.0.1:{port}/readyz", 1.0)
            last = f"{status} {body[:100]!r}"
        except OSError as exc:
            status, last = 0, str(exc)
        ok = ok + 1 if status == 200 else 0
        if ok >= times:
            return
        time.sleep(0.02 if status == 200 else 0.05)
    raise BenchError(f"port {port}: /readyz not ready in {timeout_s} s ({last})")


def wait_workers(relay: RelayProcess, n: int, timeout_s: float) -> list[int]:
    """The supervisor's N workers, once every one of them listens on the shared port."""
    deadline = time.monotonic() + timeout_s
    pids: list[int] = []
    while time.monotonic() < deadline:
        if not relay.alive():
            raise BenchError(f"the supervisor exited: {relay.tail_log()}")
        pids = children(relay.pid)
        if len(pids) == n:
            listening = listening_inodes(relay.port)
            if all(socket_inodes(p) & listening for p in pids):
                return pids
        time.sleep(0.05)
    raise BenchError(f"{len(pids)}/{n} workers listening after {timeout_s} s: {relay.tail_log()}")


def plan_cpus(n_server: int) -> tuple[list[int], int] | None:
    """(a CPU for each server process, the generator's CPU): the generator gets the last CPU
    to itself, the server processes share the others round-robin (on 2 CPUs: all on one)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if len(cpus) < 2:
        return None
    rest = cpus[:-1]
    return [rest[k % len(rest)] for k in range(n_server)], cpus[-1]


# ---------------------------------------------------------------- the run


def node_of_welcome(welcome: list[Any] | None) -> str | None:
    """The node id in WELCOME's connection id `<node id>-<n>` (None if it has no such form)."""
    if not welcome or len(welcome) < 3 or not isinstance(welcome[2], str):
        return None
    node, sep, n = welcome[2].rpartition("-")
    return node if sep and node and n.isdigit() else None


class ClusterRun(Run):
    """bench.run.Run over several nodes. Even documents (and every document when no delivery
    can cross nodes) are measured as bench.load does (`all`). In an odd document one node is
    its designated node: its members' sends go to one table (`out`) that only the members on
    other nodes read, the other members' sends to another (`in`) that only the members on
    the designated node read, so both hold cross-node deliveries only (`cross_node`)."""

    def __init__(
        self,
        wsgen: Any,
        cfg: dict[str, Any],
        urls: list[str],
        planned: list[int] | None,
        cross: bool,
        procs: list[Proc],
        redis: RedisInfo | None,
        seed: int,
        quiet: bool,
        setup_timeout: float,
        cpus: tuple[int | None, int | None],
    ) -> None:
        super().__init__(wsgen, cfg, urls, None, seed, quiet, setup_timeout, cpus)
        self.planned = planned  # node of each connection when the bench places them
        self.cross = cross and cfg["docs"] >= 2
        self.procs = procs
        self.redis = redis
        self.redis_snaps: dict[str, RedisSnap] = {}
        self.node_of = [-1] * self.n
        self.node_index: dict[str, int] = {}  # node id -> node (workers: in order seen)
        self.ids_by_node: dict[int, set[str]] = {}
        self.designated: dict[int, int] = {}  # cross document -> its designated node
        if self.cross:
            nsec = self.sh.nsec
            jitter = int(self.period_ns * cfg["jitter"])
            self.sh_out = wsgen.Shared(self.n, cfg["users"], nsec)
            self.sh_in = wsgen.Shared(self.n, cfg["users"], nsec)
            self.se_out = wsgen.Sender(
                self.sh_out, self.n, self.period_ns, jitter, seed * 2654435761 + 23456
            )
            self.se_in = wsgen.Sender(
                self.sh_in, self.n, self.period_ns, jitter, seed * 2654435761 + 34567
            )
            self.shareds += [self.sh_out, self.sh_in]
            self.senders += [self.se_out, self.se_in]

    def is_cross_doc(self, doc: int) -> bool:
        return self.cross and doc % 2 == 1

    def route(self, idx: int, proto: SetupProtocol) -> tuple[Any, Any]:
        node_id = node_of_welcome(proto.welcome)
        if self.planned is not None:
            node = self.planned[idx]
            if node_id is not None:
                self.ids_by_node.setdefault(node, set()).add(node_id)
        else:
            if node_id is None:
                raise BenchError(
                    "cannot tell a connection's worker: WELCOME's connection id "
                    f"{proto.welcome[2] if proto.welcome else None!r} is not <node id>-<n>"
                )
            node = self.node_index.setdefault(node_id, len(self.node_index))
        self.node_of[idx] = node
        doc = idx // self.cfg["users"]
        if not self.is_cross_doc(doc):
            return self.sh, self.sender
        # The designated node: its first user's when the bench places, else the first to join.
        first = self.planned[doc * self.cfg["users"]] if self.planned is not None else node
        designated = self.designated.setdefault(doc, first)
        if node == designated:
            return self.sh_in, self.se_out
        return self.sh_out, self.se_in

    def _snapshot(self, name: str) -> None:
        super()._snapshot(name)
        snap = self.snap[name]
        for p in self.procs:
            with contextlib.suppress(OSError):
                user, system = cpu_split(p.pid)
                snap[f"cpu_{p.pid}"], snap[f"sys_{p.pid}"] = user + system, system
        if self.redis is not None and name in ("t0", "t1"):
            try:
                self.redis_snaps[name] = self.redis.snapshot()
            except (OSError, BenchError) as exc:
                log(self.quiet, f"Redis INFO failed at {name}: {exc}")

    def _sample_rss(self) -> None:
        now = time.monotonic()
        for p in self.procs:
            with contextlib.suppress(OSError):
                p.rss.append((now, status_kib(p.pid, "VmRSS")))

    def result(self, metrics: dict[str, float]) -> dict[str, Any]:
        return summarize_cluster(self)


def deliveries(
    sh_list: list[Any], edges: list[tuple[int, int | None]], expected: float
) -> dict[str, Any]:
    """Counts, delivered ratio and latency of the deliveries measured in these tables."""
    counts = [sum(c) for c in zip(*(sh.histogram() for sh in sh_list), strict=True)]
    delivered = sum(sh.delivered for sh in sh_list)
    coalesced = sum(sh.coalesced for sh in sh_list)
    lost = sum(sh.lost for sh in sh_list)
    denom = expected - coalesced
    return {
        "expected": round(expected, 1),
        "delivered": delivered,
        "coalesced": coalesced,
        "lost": lost,
        "missing": max(0, round(expected - delivered - coalesced - lost)),
        # An update seen again, or after a newer one of its sender (any time, not only the
        # window): e.g. a resync re-sending a member's older cursor.
        "duplicates": sum(sh.dup for sh in sh_list),
        "delivered_ratio": round(delivered / denom, 5) if denom > 0 else None,
        "latency_ms": st.summary(
            counts,
            edges,
            max(sh.max_lat_ns for sh in sh_list),
            sum(sh.lat_sum_us for sh in sh_list),
        ),
        "histogram_cumulative": st.cumulative(counts, edges),
    }


def summarize_cluster(run: ClusterRun) -> dict[str, Any]:
    """Every number of a finished ClusterRun (the report's body; bench/README.md)."""
    cfg, users = run.cfg, run.cfg["users"]
    a, b = run.snap["t0"], run.snap["t1"]
    window = (b["mono"] - a["mono"]) or cfg["seconds"]
    edges = run.w.bucket_edges_us()
    docs = cfg["docs"]
    sent = sum(se.sent_window for se in run.senders)
    cross_docs = [d for d in range(docs) if run.is_cross_doc(d)]
    all_docs = docs - len(cross_docs)

    every = deliveries([run.sh], edges, run.sender.sent_window * (users - 1))
    every["docs"] = all_docs
    every["delivered_per_s"] = round(every["delivered"] / window, 1)
    cross: dict[str, Any] | None = None
    total_delivered: float = every["delivered"]
    if cross_docs:
        # Each `out` sender is read by the members of its document off the designated node,
        # each `in` sender by those on it. The Sender counts its sends, not per connection:
        # expected = sends x mean readers, exact when every sender has as many readers.
        n_out = n_in = readers = 0
        out_readers: set[int] = set()
        in_readers: set[int] = set()
        for d in cross_docs:
            members = run.node_of[d * users : (d + 1) * users]
            c = members.count(run.designated[d])
            n_out, n_in, readers = n_out + c, n_in + users - c, readers + c * (users - c)
            if c:
                out_readers.add(users - c)
            if users - c:
                in_readers.add(c)
        exp_out = run.se_out.sent_window * readers / n_out if n_out else 0.0
        exp_in = run.se_in.sent_window * readers / n_in if n_in else 0.0
        cross = deliveries([run.sh_out, run.sh_in], edges, exp_out + exp_in)
        cross["docs"] = len(cross_docs)
        cross["expected_exact"] = len(out_readers) <= 1 and len(in_readers) <= 1
        cross["delivered_per_s"] = round(cross["delivered"] / window, 1)
        # Cursor events of senders the receiving table does not hold (by design, any time).
        cross["unmeasured_events"] = run.sh_out.stale + run.sh_in.stale
        # The cross documents' deliveries within a node are not measured: estimated at the
        # `all` documents' delivered share (updates x (U - 1) x delivered / expected).
        share = every["delivered"] / every["expected"] if every["expected"] else 1.0
        unmeasured = (run.se_out.sent_window + run.se_in.sent_window) * (users - 1) - (
            exp_out + exp_in
        )
        total_delivered += cross["delivered"] + unmeasured * share
    # Placement: the share of a document's deliveries that cross nodes (members per node).
    pairs = same_pairs = 0
    for d in range(docs):
        per_node = Counter(run.node_of[d * users : (d + 1) * users])
        pairs += users * (users - 1)
        same_pairs += sum(c * (c - 1) for c in per_node.values())

    gen_cpu_s = b["gen_cpu"] - a["gen_cpu"]
    gen_frac = gen_cpu_s / window
    late = sum(se.late_window_5ms for se in run.senders)
    late_share = late / sent if sent else 0.0
    offered = sent / window
    requested = run.n * cfg["rate"]
    core = core_shares(a, b, window)
    reasons = saturation_reasons(
        gen_frac, core.get("gen_core_busy"), late_share, offered, requested
    )
    user_ticks = run.n * window * 1000.0 / cfg["batch_ms"]

    procs = []
    relay_cpu = relay_sys = 0.0
    for p in run.procs:
        key = f"cpu_{p.pid}"
        entry: dict[str, Any] = {"role": p.role, "pid": p.pid, "node": p.node, "cpu": p.cpu}
        if key in a and key in b:
            cpu = b[key] - a[key]
            system = b[f"sys_{p.pid}"] - a[f"sys_{p.pid}"]
            entry.update(
                cpu_s=round(cpu, 3), cpu_sys_s=round(system, 3), cpu_frac=round(cpu / window, 4)
            )
            if p.role.startswith(("node", "worker")):
                relay_cpu += cpu
                relay_sys += system
        in_window = [kib for t, kib in p.rss if a["mono"] <= t <= b["mono"]]
        entry["rss_peak_mib"] = round(max(in_window) / 1024, 1) if in_window else None
        with contextlib.suppress(OSError):
            entry["vmhwm_mib"] = round(status_kib(p.pid, "VmHWM") / 1024, 1)
        procs.append(entry)

    redis = None
    if "t0" in run.redis_snaps and "t1" in run.redis_snaps:
        redis = redis_delta(run.redis_snaps["t0"], run.redis_snaps["t1"], window, docs, sent)
    redis_cpu = redis["cpu_s"] if redis else None

    timeline = []
    for s in range(run.sh.nsec):
        c_all = run.sh.second_histogram(s)
        c_cross = (
            [sum(x) for x in zip(*(sh.second_histogram(s) for sh in run.shareds[1:]), strict=True)]
            if cross_docs
            else []
        )
        stats = [se.second_stats(s) for se in run.senders]
        sent_s = sum(x[0] for x in stats)
        if not sum(c_all) and not sent_s:
            continue
        timeline.append(
            {
                "t_s": s,
                "in_window": cfg["warmup"] <= s < cfg["warmup"] + cfg["seconds"],
                "count": sum(c_all),
                "p50_ms": st.percentile_ms(c_all, edges, 0.5),
                "p99_ms": st.percentile_ms(c_all, edges, 0.99),
                "cross_count": sum(c_cross),
                "cross_p50_ms": st.percentile_ms(c_cross, edges, 0.5) if c_cross else None,
                "cross_p99_ms": st.percentile_ms(c_cross, edges, 0.99) if c_cross else None,
                "sent": sent_s,
                "sends_late_5ms": sum(x[1] for x in stats),
                "max_tick_gap_ms": round(max(x[2] for x in stats) / 1e6, 2),
            }
        )

    per_node = Counter(run.node_of)
    node_ids: dict[str, Any]
    if run.planned is not None:
        node_ids = {str(k): sorted(v) for k, v in sorted(run.ids_by_node.items())}
        flat = [i for v in run.ids_by_node.values() for i in v]
        consistent = all(len(v) == 1 for v in run.ids_by_node.values()) and len(flat) == len(
            set(flat)
        )
    else:
        node_ids = {str(i): [nid] for nid, i in run.node_index.items()}
        consistent = True

    def per_update(cpu: float, count: float) -> float | None:
        return round(cpu * 1e6 / count, 3) if count else None

    return {
        "connections": run.n - run.setup_failed,
        "connections_per_node": {str(k): v for k, v in sorted(per_node.items())},
        "node_ids": node_ids,
        "node_ids_consistent": consistent,
        "cross_share_of_deliveries": round(1 - same_pairs / pairs, 4) if pairs else None,
        "window_s": round(window, 3),
        "requested_per_s": requested,
        "offered_per_s": round(offered, 1),
        "updates_sent": sent,
        "all": every,
        "cross_node": cross,
        "delivered_total": round(total_delivered),
        "delivered_total_exact": not cross_docs,
        "delivered_total_per_s": round(total_delivered / window, 1),
        "processes": procs,
        "relay_cpu_s": round(relay_cpu, 3),
        "relay_cpu_sys_s": round(relay_sys, 3),
        "relay_cpu_frac": round(relay_cpu / window, 4),
        "relay_cpu_us_per_delivered": per_update(relay_cpu, total_delivered),
        "relay_cpu_us_per_move": per_update(relay_cpu, sent),
        "relay_cpu_us_per_user_tick": per_update(relay_cpu, user_ticks),
        "server_cpu_us_per_delivered": (
            per_update(relay_cpu + redis_cpu, total_delivered) if redis_cpu is not None else None
        ),
        "redis": redis,
        "generator_cpu_s": round(gen_cpu_s, 3),
        "generator_cpu_sys_s": round(b["gen_sys"] - a["gen_sys"], 3),
        "generator_cpu_frac": round(gen_frac, 4),
        "generator_us_per_move": per_update(gen_cpu_s, sent),
        "generator_saturated": bool(reasons),
        "generator_saturation_reasons": reasons,
        "schedule_slip": {
            "late_over_5ms": sum(se.late_5ms for se in run.senders),
            "late_over_25ms": sum(se.late_25ms for se in run.senders),
            "max_ms": round(max(se.max_late_ns for se in run.senders) / 1e6, 3),
            "window_share_over_5ms": round(late_share, 5),
        },
        "cores": core,
        "frames": {
            "out_per_s": round((b["frames_out"] - a["frames_out"]) / window, 1),
            "in_per_s": round((b["frames_in"] - a["frames_in"]) / window, 1),
        },
        "bytes": {
            "out_per_s": round((b["bytes_out"] - a["bytes_out"]) / window, 1),
            "in_per_s": round((b["bytes_in"] - a["bytes_in"]) / window, 1),
        },
        "anomalies": {
            "duplicates": sum(sh.dup for sh in run.shareds),
            "stale": run.sh.stale,
            "foreign": sum(sh.foreign for sh in run.shareds),
            "parse_errors": sum(sh.parse_errors for sh in run.shareds),
            "unexpected_frames": run.slow_other,
            "send_blocked": sum(se.blocked for se in run.senders),
            "send_errors": sum(se.errors for se in run.senders),
            "disconnected": run.disconnected,
        },
        "server_closes": run.closes,
        "server_errors": run.errors,
        "timeline": timeline,
    }


# ---------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench.cluster", description=(__doc__ or "").split("\n")[0]
    )
    topo = ap.add_mutually_exclusive_group()
    topo.add_argument("--nodes", type=int, help="separate relay processes (default 2)")
    topo.add_argument("--workers", type=int, help="one relay with --workers N (one port)")
    ap.add_argument(
        "--placement",
        choices=("spread", "same"),
        help="--nodes: spread each document's users round-robin over the nodes (default), "
        "or put all of a document on one node (documents round-robin)",
    )
    ap.add_argument("--docs", type=int, help="documents (default 20)")
    ap.add_argument("--users", type=int, help="users per document (default 10)")
    ap.add_argument("--rate", type=float, help="cursor moves per user per second (default 10)")
    ap.add_argument("--seconds", type=float, help="measured window, s (default 10)")
    ap.add_argument("--warmup", type=float, help="load before the window, s (default 3)")
    ap.add_argument("--batch-ms", type=int, help="relay batch interval (default 50)")
    ap.add_argument("--jitter", type=float, default=0.2, help="send-time jitter (default 0.2)")
    ap.add_argument("--redis-url", help="use this Redis instead of starting redis-server")
    ap.add_argument("--relay-src", type=Path, metavar="DIR", help="run the relays from DIR")
    ap.add_argument(
        "--relay-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for every `relay serve` (repeatable)",
    )
    ap.add_argument("--no-pin", action="store_true", help="pin nothing")
    ap.add_argument("--nice", type=int, default=-15, help="niceness when permitted (default -15)")
    ap.add_argument("--json", help="report path (default bench/results/cluster-...-<time>.json)")
    ap.add_argument("--seed", type=int, default=1, help="schedule / mask seed")
    ap.add_argument("--setup-timeout", type=float, default=180.0, help="connection setup, s")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return ap


def resolve(ns: argparse.Namespace) -> dict[str, Any]:
    cfg = dict(DEFAULTS)
    for k in LOAD_KEYS:
        v = getattr(ns, k)
        if v is not None:
            cfg[k] = v
    cfg["jitter"] = ns.jitter
    cfg["relay_args"] = list(ns.relay_arg)
    cfg["mode"] = "workers" if ns.workers is not None else "nodes"
    cfg["count"] = ns.workers if ns.workers is not None else (ns.nodes or 2)
    if cfg["mode"] == "workers" and ns.placement is not None:
        raise BenchError("--placement is for --nodes; with --workers the kernel places")
    cfg["placement"] = "kernel" if cfg["mode"] == "workers" else (ns.placement or "spread")
    if not 1 <= cfg["count"] <= 64:
        raise BenchError("--nodes / --workers must be in 1..64")
    check_load(cfg, ns.jitter)
    return cfg


def topology(cfg: dict[str, Any]) -> str:
    if cfg["mode"] == "workers":
        return f"workers{cfg['count']}"
    return f"nodes{cfg['count']}" + ("-same" if cfg["placement"] == "same" else "")


def fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def table(r: dict[str, Any]) -> str:
    c = r["config"]
    lines = []
    where = (
        f"{c['count']} workers of one relay (one port)"
        if c["mode"] == "workers"
        else f"{c['count']} node{'s' if c['count'] > 1 else ''}, placement {c['placement']}"
    )
    lines.append(f"{'cluster':20} {where}; Redis {'given' if c['redis_url'] else 'started'}")
    per_node = " / ".join(str(v) for v in r["connections_per_node"].values())
    lines.append(
        f"{'load':20} {c['docs']} docs x {c['users']} users @ {c['rate']} Hz, batch "
        f"{c['batch_ms']} ms, window {r['window_s']:.1f} s; connections {per_node} per node; "
        f"{r['cross_share_of_deliveries']:.0%} of deliveries cross nodes"
    )
    lines.append(
        f"{'updates':20} sent {r['offered_per_s']:.0f}/s (requested {r['requested_per_s']:.0f}); "
        f"delivered {r['delivered_total_per_s']:.0f}/s"
        + ("" if r["delivered_total_exact"] else " (partly estimated)")
    )
    for key, label in (("all", "all deliveries"), ("cross_node", "cross-node")):
        d = r[key]
        if d is None:
            lines.append(f"{label:20} not measured (no delivery crosses nodes, or < 2 docs)")
            continue
        lat = d["latency_ms"]
        lines.append(
            f"{label:20} p50 {fmt(lat['p50'])}  p99 {fmt(lat['p99'])}  max {fmt(lat['max'])} ms; "
            f"{d['delivered']} delivered in {d['docs']} docs, "
            f"ratio {fmt(d['delivered_ratio'], '.4f')}"
            f" (coalesced {d['coalesced']}, lost {d['lost']}, missing {d['missing']})"
            + ("" if d.get("expected_exact", True) else "; expected estimated")
        )
    for p in r["processes"]:
        lines.append(
            f"{p['role']:20} pid {p['pid']}: CPU {fmt(p.get('cpu_s'), '.3f')} s "
            f"({fmt((p.get('cpu_frac') or 0) * 100, '.1f')}% of a core), RSS peak "
            f"{fmt(p['rss_peak_mib'], '.1f')} MiB"
        )
    lines.append(
        f"{'relay CPU':20} {r['relay_cpu_s']:.3f} s ({r['relay_cpu_frac']:.1%} of a core); "
        f"{fmt(r['relay_cpu_us_per_delivered'])} us per delivered update, "
        f"{fmt(r['relay_cpu_us_per_move'])} us per move, "
        f"{fmt(r['relay_cpu_us_per_user_tick'])} us per user-tick (bench.load's)"
    )
    rd = r["redis"]
    if rd:
        top = sorted(rd["commandstats"].items(), key=lambda kv: -kv[1]["calls"])[:6]
        calls = ", ".join(f"{k} {v['calls_per_doc_per_s']:.2f}" for k, v in top)
        lines.append(
            f"{'redis INFO':20} {rd['commands']} commands "
            f"({rd['commands_per_doc_per_s']:.2f}/doc/s: {calls}); "
            f"in {rd['net_input_bytes_per_doc_per_s']:.0f} B/doc/s, out "
            f"{rd['net_output_bytes_per_doc_per_s']:.0f} B/doc/s; CPU {rd['cpu_s']:.3f} s"
        )
    lines.append(
        f"{'generator':20} {r['generator_cpu_frac']:.0%} of a core "
        f"({fmt(r['generator_us_per_move'])} us per move); "
        + ("SATURATED" if r["generator_saturated"] else "not saturated")
    )
    an = {k: v for k, v in r["anomalies"].items() if v}
    if an or r["server_errors"] or r["server_closes"]:
        lines.append(
            f"{'anomalies':20} {an} errors {r['server_errors']} closes {r['server_closes']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        cfg = resolve(ns)
    except BenchError as exc:
        print(f"bench.cluster: {exc}", file=sys.stderr)
        return 3
    count, mode = cfg["count"], cfg["mode"]
    if ns.json:
        jpath = Path(ns.json)
    else:
        jpath = RESULTS_DIR / f"cluster-{topology(cfg)}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    jpath.parent.mkdir(parents=True, exist_ok=True)
    from bench import _ext  # compile before pinning: the build wants a whole core

    try:
        wsgen = _ext.load()
    except _ext.BuildError as exc:
        print(f"bench.cluster: {exc}", file=sys.stderr)
        return 3
    docs, users = cfg["docs"], cfg["users"]
    n = docs * users
    plan = None if ns.no_pin else plan_cpus(count + (0 if ns.redis_url else 1))
    server_cpus: list[int | None] = list(plan[0]) if plan else [None] * (count + 1)
    gen_cpu = plan[1] if plan else None
    report: dict[str, Any] = {
        "bench": "cluster",
        "config": {
            **{k: cfg[k] for k in LOAD_KEYS},
            "jitter": cfg["jitter"],
            "mode": mode,
            "count": count,
            "placement": cfg["placement"],
            "relay_args": cfg["relay_args"],
            "redis_url": bool(ns.redis_url),
        },
        "command": " ".join(
            ["python -m bench.cluster", *(argv if argv is not None else sys.argv[1:])]
        ),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "pinned": None, "loadavg_before": loadavg()},
        "version": relay_version(ns.relay_src),
    }
    relays: list[RelayProcess] = []
    redis: RedisServer | None = None
    procs: list[Proc] = []
    try:
        raise_nofile(n + 256)
        if ns.redis_url:
            redis_url = ns.redis_url
        else:
            redis = RedisServer(server_cpus[count], jpath.with_suffix(".redis.log"))
            redis.wait_ready()
            redis_url = redis.url
            procs.append(Proc("redis", redis.pid, None, server_cpus[count]))
        log(ns.quiet, f"starting {count} {mode} (batch {cfg['batch_ms']} ms), Redis {redis_url}")
        if mode == "nodes":
            for k in range(count):
                relays.append(
                    RelayProcess(
                        cfg["batch_ms"],
                        server_cpus[k],
                        cfg["relay_args"],
                        jpath.with_suffix(f".node{k}.log"),
                        redis_url,
                        ns.relay_src,
                    )
                )
            for k, relay in enumerate(relays):
                relay.wait_ready(READY_TIMEOUT_S)
                wait_readyz(relay.port, READY_TIMEOUT_S)
                procs.insert(k, Proc(f"node{k}", relay.pid, k, server_cpus[k]))
            urls = [r.url for r in relays]
            if cfg["placement"] == "same":  # document d on node d % N
                planned = [(i // users) % count for i in range(n)]
            else:  # connection i on node i % N: a document's users alternate
                planned = [i % count for i in range(n)]
            conn_urls = [urls[planned[i]] for i in range(n)]
            cross = count > 1 and cfg["placement"] == "spread"
        else:
            sup = RelayProcess(
                cfg["batch_ms"],
                server_cpus[0],
                [*cfg["relay_args"], "--workers", str(count)],
                jpath.with_suffix(".workers.log"),
                redis_url,
                ns.relay_src,
            )
            relays.append(sup)
            sup.wait_ready(READY_TIMEOUT_S)
            pids = wait_workers(sup, count, READY_TIMEOUT_S) if count > 1 else [sup.pid]
            wait_readyz(sup.port, READY_TIMEOUT_S, times=4 * count)
            for k, pid in enumerate(pids):
                cpu = server_cpus[k]
                if cpu is not None and cpu != server_cpus[0]:
                    pin_all_threads(pid, cpu)
                procs.insert(k, Proc(f"worker{k}", pid, None, cpu))
            if count > 1:
                procs.append(Proc("supervisor", sup.pid, None, server_cpus[0]))
            conn_urls, planned, cross = [sup.url], None, count > 1
        report["machine"]["nice"] = set_nice(ns.nice, [p.pid for p in procs])
        if gen_cpu is not None:
            os.sched_setaffinity(0, {gen_cpu})
            report["machine"]["pinned"] = {
                "generator_cpu": gen_cpu,
                **{p.role + "_cpu": p.cpu for p in procs},
            }
        info = RedisInfo(redis_url)
        run = ClusterRun(
            wsgen,
            cfg,
            conn_urls,
            planned,
            cross,
            procs,
            info if info.supported else None,
            ns.seed,
            ns.quiet,
            ns.setup_timeout,
            (server_cpus[0], gen_cpu),
        )
        import uvloop

        result = uvloop.run(execute(run, None))
        for relay in relays:
            if not relay.alive():
                raise BenchError(f"a relay died during the run: {relay.tail_log()}")
        if (
            mode == "workers"
            and count > 1
            and sorted(children(relays[0].pid))
            != sorted(p.pid for p in procs if p.role.startswith("worker"))
        ):
            raise BenchError(f"a worker died during the run: {relays[0].tail_log()}")
    except (BenchError, SetupError, RuntimeError, OSError) as exc:
        print(f"bench.cluster: run failed: {exc}", file=sys.stderr)
        return 3
    finally:
        for relay in relays:
            relay.stop(15.0)
        if redis is not None:
            redis.stop()
    report.update(result)
    with open(jpath, "w") as fh:
        json.dump(report, fh, indent=1)
    print(table(report))
    print(f"report: {jpath}")
    if result["generator_saturated"]:
        print(
            "GENERATOR SATURATED: this run does not count ("
            + "; ".join(result["generator_saturation_reasons"])
            + ")"
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
