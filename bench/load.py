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
import json
import os
import resource
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from bench.relay_proc import RelayProcess, pinning_cpus
from bench.result import check_targets, relay_version
from bench.run import BenchError, log, run_async
from bench.wsclient import SetupError, parse_url

HERE = Path(__file__).resolve().parent
TARGETS_FILE = HERE / "targets.toml"
RESULTS_DIR = HERE / "results"

LOAD_KEYS = ("docs", "users", "rate", "seconds", "warmup", "batch_ms")


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
    defaults: dict[str, Any] = {
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
    check_load(cfg, ns.jitter)
    return cfg, targets, overrides


def check_load(cfg: dict[str, Any], jitter: float) -> None:
    """The load's numbers are ones a run can use (bench.load and bench.cluster)."""
    if cfg["docs"] < 1 or cfg["users"] < 2:
        raise BenchError("need at least 1 document and 2 users per document")
    if not 0 < cfg["rate"] <= 1000:
        raise BenchError("--rate must be in (0, 1000]")
    if cfg["seconds"] <= 0 or cfg["warmup"] < 0:
        raise BenchError("--seconds must be > 0 and --warmup >= 0")
    if not 0 <= jitter < 0.5:
        raise BenchError("--jitter must be in [0, 0.5)")


# ---------------------------------------------------------------- the command


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
