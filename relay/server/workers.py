"""`presence-relay serve --workers N`: N relay processes on one port (docs/workers.md).

A supervisor (the process the operator started) runs N workers. Each worker is a whole
relay, `python -m relay serve` with the supervisor's own arguments, and so a node of
`redis_url` with its own node id; every worker binds the WebSocket port with SO_REUSEPORT,
and the kernel spreads new connections over them. Workers share presence through Redis
exactly as separately started nodes do.

Why subprocess (`python -m relay serve ...`) rather than multiprocessing: a worker then
starts exactly like a relay an operator runs by hand (the same flag/env/TOML loading, the
same uvloop setup, the same signal handling in serve_forever), nothing has to be pickled
(the config holds secrets read from files), and no multiprocessing helper process (the
resource tracker) outlives a SIGKILL of the supervisor. The supervisor itself stays a small
synchronous loop that imports none of the relay's server code.

Linux only: the kernel's SO_REUSEPORT load balancing over listeners of one port and
PR_SET_PDEATHSIG (a worker gets SIGTERM when its supervisor dies, even of SIGKILL) are
Linux features; elsewhere `workers > 1` is a configuration error.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from relay.config import PresenceConfig
from relay.exceptions import ConfigError

if TYPE_CHECKING:  # the supervisor never imports the server itself
    from relay.server.app import Relay

log = logging.getLogger("relay.workers")

# Set by the supervisor in each worker's environment (never by an operator): which worker
# it is, and whose child it must stay.
WORKER_ENV = "RELAY_WORKER_INDEX"
SUPERVISOR_ENV = "RELAY_SUPERVISOR_PID"

# A stop waits this long for the workers' own graceful shutdown (hand sessions over, clean
# Redis: a few seconds at most) before it SIGKILLs what is left.
STOP_TIMEOUT_S = 10.0
# A worker slot that dies more than RESTART_LIMIT times within RESTART_WINDOW_S is broken
# (a bad Redis URL, the port taken by another program): the supervisor gives up instead of
# restarting it forever.
RESTART_LIMIT = 5
RESTART_WINDOW_S = 60.0
# Restarts of one slot wait BACKOFF_FIRST_S, doubling with each death in the window.
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0
# Exit status of a worker that found its configuration invalid (relay/cli.py): restarting it
# cannot help.
EXIT_CONFIG = 2
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def check_workers(config: PresenceConfig) -> None:
    """The settings `workers > 1` needs (the range itself is checked by PresenceConfig)."""
    n = config.workers
    if n == 1:
        return
    if not config.redis_url:
        raise ConfigError(
            f"workers={n}: needs redis_url (each worker is a separate node; without Redis "
            "they would not see each other's members)"
        )
    if not sys.platform.startswith("linux"):
        raise ConfigError(f"workers={n}: only supported on Linux (SO_REUSEPORT balancing)")
    base = config.metrics_port
    if base:  # worker i serves /metrics on base + i (0: each picks a free port)
        if base + n - 1 > 65535:
            raise ConfigError(
                f"metrics_port={base}: with workers={n}, worker i listens on metrics_port + i; "
                f"{base + n - 1} is past 65535"
            )
        if config.port and base <= config.port < base + n:
            raise ConfigError(
                f"metrics_port={base}: with workers={n} it takes ports {base}-{base + n - 1}, "
                f"which include port={config.port}"
            )


def worker_index(env: Mapping[str, str] = os.environ) -> int | None:
    """Which worker this process is (None: not a worker, the operator started it)."""
    raw = env.get(WORKER_ENV)
    return int(raw) if raw is not None and raw.isdigit() else None


def log_format(workers: int, index: int | None) -> str:
    """Log lines name their process: `worker=N` in a worker, `supervisor` in the parent, and
    nothing extra for a single process (`--workers 1` logs as it always did)."""
    who = ""
    if index is not None:
        who = f"worker={index} "
    elif workers > 1:
        who = "supervisor "
    return f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s"


def bind_to_supervisor(env: Mapping[str, str] = os.environ) -> bool:
    """In a worker: ask the kernel for SIGTERM (a graceful stop) when the supervisor dies,
    whatever kills it. False when the supervisor is already gone (it died before the
    request took effect, and this process was handed to another parent)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    return str(os.getppid()) == env.get(SUPERVISOR_ENV)


def announce(index: int) -> Callable[[Relay], None]:
    """serve_forever's on_ready for worker `index`: one line tying it to its node id (what
    Redis keys, connection ids and other nodes' logs name) and its metrics port."""

    def on_ready(relay: Relay) -> None:
        metrics = f", /metrics on port {relay.metrics_port}" if relay.metrics_server else ""
        log.info(
            "worker %d (pid %d) is node %s%s",
            index,
            os.getpid(),
            relay.hub.broker.node_id,
            metrics,
        )

    return on_ready


def free_port(host: str) -> int:
    """A port free on `host` now, for `port = 0`: the workers must all be told the same one
    (each binding port 0 would get a different port)."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as s:
        s.bind(addr)
        return int(s.getsockname()[1])


def describe_exit(code: int) -> str:
    """A Popen return code as words (negative: the signal that ended the process)."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit status {code}"


@dataclass
class Slot:
    """Worker `index`: its process (None while it waits for a restart) and its deaths."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    restart_at: float = 0.0
    deaths: collections.deque[float] = field(default_factory=collections.deque)


class Supervisor:
    """Start N workers, restart the ones that die, stop them all on SIGTERM/SIGINT."""

    def __init__(self, config: PresenceConfig, argv: Sequence[str]) -> None:
        self.config = config
        self.argv = list(argv)  # the supervisor's own arguments, from `serve` on
        self.port = config.port or free_port(config.host)
        self.slots = [Slot(i) for i in range(config.workers)]
        self.stop_signals = 0
        self._wake_r = self._wake_w = -1
        self._saved: dict[int, Any] = {}

    # ------------------------------------------------------------ the loop

    def run(self) -> int:
        """Supervise until a stop signal (0 when every worker stopped in time, 1 when one
        had to be killed) or until a slot keeps dying (1; 2 for a configuration error)."""
        self._install_signals()
        try:
            self._log_start()
            code = self._supervise()
            return self._stop_all(code)
        finally:
            self._restore_signals()

    def _supervise(self) -> int | None:
        """Run until a stop signal (None) or a slot gives up (its exit status)."""
        while not self.stop_signals:
            now = time.monotonic()
            for slot in self.slots:
                if slot.proc is not None and slot.proc.poll() is not None:
                    code = self._on_death(slot, now)
                    if code is not None:
                        return code
                if slot.proc is None and now >= slot.restart_at:
                    self._start(slot)
            pending = [s.restart_at - now for s in self.slots if s.proc is None]
            self._wait(min([1.0, *pending]))
        log.info("stop signal: stopping %d workers", len(self.slots))
        return None

    def _on_death(self, slot: Slot, now: float) -> int | None:
        """Schedule the restart of a dead worker; its slot's exit status when giving up."""
        assert slot.proc is not None
        pid, code = slot.proc.pid, slot.proc.returncode
        slot.proc = None
        if code == EXIT_CONFIG:
            log.error("worker %d (pid %d): invalid configuration; not restarting", slot.index, pid)
            return EXIT_CONFIG
        slot.deaths.append(now)
        while slot.deaths and slot.deaths[0] < now - RESTART_WINDOW_S:
            slot.deaths.popleft()
        if len(slot.deaths) > RESTART_LIMIT:
            log.error(
                "worker %d died %d times within %d s (last: pid %d, %s): giving up",
                slot.index,
                len(slot.deaths),
                RESTART_WINDOW_S,
                pid,
                describe_exit(code),
            )
            return 1
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (len(slot.deaths) - 1))
        slot.restart_at = now + delay
        log.warning(
            "worker %d (pid %d) %s; restarting it in %.1f s",
            slot.index,
            pid,
            describe_exit(code),
            delay,
        )
        return None

    def _stop_all(self, code: int | None) -> int:
        """SIGTERM every worker, wait up to STOP_TIMEOUT_S (a second stop signal cuts it
        short), SIGKILL the rest."""
        running = [s.proc for s in self.slots if s.proc is not None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        signals_seen = self.stop_signals
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(p.poll() is None for p in running):
            left = deadline - time.monotonic()
            if left <= 0 or self.stop_signals > signals_seen:  # asked twice: no more waiting
                break
            self._wait(min(left, 1.0))
        killed = [p for p in running if p.poll() is None]
        for proc in killed:
            log.warning("worker pid %d did not stop in time: SIGKILL", proc.pid)
            proc.kill()
            proc.wait()
        if code is None:
            code = 1 if killed else 0
            log.info("all workers stopped%s", f" ({len(killed)} killed)" if killed else "")
        return code

    def _start(self, slot: Slot) -> None:
        env = {**os.environ, WORKER_ENV: str(slot.index), SUPERVISOR_ENV: str(os.getpid())}
        # Later flags win in argparse: these pin what the supervisor decided.
        argv = [*self.argv, "--port", str(self.port)]
        if self.config.metrics_port:
            argv += ["--metrics-port", str(self.config.metrics_port + slot.index)]
        # stdout/stderr are the supervisor's: one log, each line tagged worker=N.
        slot.proc = subprocess.Popen([sys.executable, "-m", "relay", *argv], env=env)
        log.info("worker %d started (pid %d)", slot.index, slot.proc.pid)

    def _log_start(self) -> None:
        cfg = self.config
        log.info(
            "supervisor (pid %d): %d workers on %s:%d (SO_REUSEPORT)",
            os.getpid(),
            cfg.workers,
            cfg.host,
            self.port,
        )
        if cfg.metrics_port is None:
            log.warning(
                "workers=%d without metrics_port: a scrape of /metrics on the shared port "
                "reaches one worker, a different one each time; set metrics_port so each "
                "worker serves its own (metrics_port + i)",
                cfg.workers,
            )

    # ------------------------------------------------------------ signals

    def _install_signals(self) -> None:
        """Signals only set a flag; the wakeup fd interrupts the wait in `_wait` at once.
        SIGCHLD (a worker died) wakes it too."""
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w)
        for sig, handler in (
            (signal.SIGTERM, self._on_stop_signal),
            (signal.SIGINT, self._on_stop_signal),
            (signal.SIGCHLD, lambda signum, frame: None),
        ):
            self._saved[sig] = signal.signal(sig, handler)

    def _restore_signals(self) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(-1)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop_signals += 1

    def _wait(self, timeout: float) -> None:
        """Sleep up to `timeout` seconds, less when a signal arrives."""
        readable, _, _ = select.select([self._wake_r], [], [], max(0.0, timeout))
        if readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 512):
                    pass
