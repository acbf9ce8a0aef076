"""The relay under test as a subprocess (pinned to one core), and what /proc says about it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Loopback only: never through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float) -> tuple[int, bytes]:
    with _OPENER.open(url, timeout=timeout) as resp:
        return resp.status, resp.read()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process in seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        data = fh.read()
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # fields 14 and 15 of stat


def cpu_times(cpu: int) -> dict[str, float] | None:
    """One CPU's /proc/stat times in seconds (busy = everything but idle and iowait)."""
    tag = f"cpu{cpu} "
    try:
        with open("/proc/stat") as fh:
            for line in fh:
                if line.startswith(tag):
                    v = [int(x) / CLK_TCK for x in line.split()[1:]]
                    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
                    d = dict(zip(names, v, strict=False))
                    d["busy"] = sum(d[k] for k in names if k not in ("idle", "iowait"))
                    return d
    except OSError:
        return None
    return None


def status_kib(pid: int, key: str) -> int:
    """A `VmRSS` / `VmHWM` line of /proc/PID/status, in KiB (0 if absent)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def pinning_cpus() -> tuple[int, int] | None:
    """Two CPUs this process may run on (relay, generator), or None if there is one."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


class RelayProcess:
    """`python -m relay serve` on 127.0.0.1:free port, optionally pinned with taskset."""

    def __init__(
        self,
        batch_ms: int,
        cpu: int | None,
        extra_args: list[str],
        log_path: Path,
        redis_url: str | None = None,
        relay_src: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.cpu = cpu
        cmd = [
            sys.executable,
            "-m",
            "relay",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--batch-ms",
            str(batch_ms),
            "--log-level",
            "warning",
        ]
        if redis_url:
            cmd += ["--redis-url", redis_url]
        cmd += extra_args
        self.pinned = False
        if cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(cpu), *cmd]  # taskset execs: same PID as the relay
            self.pinned = True
        self.cmd = cmd
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop())
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        cwd = None
        if relay_src is not None:
            # `python -m relay` imports from its working directory first: run it there.
            cwd = str(relay_src)
            env["PYTHONPATH"] = str(relay_src)
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )
        self.pid = self.proc.pid

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the relay exited with {self.proc.returncode}: {self.tail_log()}"
                )
            try:
                status, _ = http_get(f"http://127.0.0.1:{self.port}/healthz", 1.0)
                if status == 200:
                    return
            except OSError as exc:
                last = exc
            time.sleep(0.05)
        raise RuntimeError(f"the relay did not answer /healthz in {timeout_s} s: {last}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail_log(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def fetch_metrics(port: int) -> dict[str, float]:
    """The relay's /metrics as {name{labels}: value} (for errors / closes / frame counts)."""
    out: dict[str, float] = {}
    try:
        text = http_get(f"http://127.0.0.1:{port}/metrics", 5.0)[1].decode()
    except OSError:
        return out
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out
