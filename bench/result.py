"""The numbers of a finished load run, and the verdict on its targets."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any

from bench import stats as st
from bench.relay_proc import status_kib

HERE = Path(__file__).resolve().parent
# A generator is saturated when it uses more than this share of its core, when more than
# 1 % of its sends went out over 5 ms late, or when it offered < 97 % of the requested rate.
SATURATED_CPU = 0.90
SATURATED_LATE_SHARE = 0.01
SATURATED_OFFERED = 0.97


def core_shares(a: dict[str, float], b: dict[str, float], window: float) -> dict[str, float]:
    """Busy and softirq shares of the relay's and the generator's CPU between two snapshots.
    The generator's core also runs the softirq work of its loopback sends, sometimes in
    ksoftirqd (not charged to this process): the core's busy share is the better gauge."""
    core = {}
    for role in ("relay_core", "gen_core"):
        if role + "_busy" in a and role + "_busy" in b:
            core[role + "_busy"] = round((b[role + "_busy"] - a[role + "_busy"]) / window, 4)
            core[role + "_softirq"] = round(
                (b[role + "_softirq"] - a[role + "_softirq"]) / window, 4
            )
    return core


def saturation_reasons(
    gen_frac: float, gen_core: float | None, late_share: float, offered: float, requested: float
) -> list[str]:
    """Why the generator counts as saturated (none: it is not); the rule of bench/README.md."""
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
    return reasons


def summarize(run: Any, metrics: dict[str, float]) -> dict[str, Any]:
    """Every number of a finished `bench.run.Run` (the JSON report's body; bench/README.md
    defines them). Typed `Any`: the run's counters live in the compiled generator."""
    cfg, sh, se = run.cfg, run.sh, run.sender
    a, b = run.snap["t0"], run.snap["t1"]
    window = (b["mono"] - a["mono"]) or cfg["seconds"]
    users = cfg["users"]
    edges = run.w.bucket_edges_us()
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
    requested = run.n * cfg["rate"]
    core = core_shares(a, b, window)
    reasons = saturation_reasons(
        gen_frac, core.get("gen_core_busy"), late_share, offered, requested
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
        "connections": run.n - run.setup_failed,
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
            "unexpected_frames": run.slow_other,
            "send_blocked": se.blocked,
            "send_errors": se.errors,
            "disconnected": run.disconnected,
        },
        "server_closes": run.closes,
        "server_errors": run.errors,
        "server_pings": run.pings,
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
    user_ticks = run.n * window * 1000.0 / cfg["batch_ms"]
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
    in_window = [kib for t, kib in run.rss_samples if a["mono"] <= t <= b["mono"]]
    out["server_rss_peak_mib"] = round(max(in_window) / 1024, 1) if in_window else None
    if run.relay_pid is not None:
        with contextlib.suppress(OSError):
            out["server_vmhwm_mib"] = round(status_kib(run.relay_pid, "VmHWM") / 1024, 1)
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


def relay_version(relay_src: Path | None = None) -> dict[str, Any]:
    """The relay under test: its version, twin, commit, and whether relay/ had uncommitted
    changes (this checkout's, or `--relay-src`'s: read from its files, not imported)."""
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
