"""The readable side of a run: a table on stdout and a PNG (histogram + p50/p99 timeline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _f(v: Any, fmt: str = "{:.1f}", none: str = "-") -> str:
    return none if v is None else fmt.format(v)


def table(r: dict[str, Any]) -> str:
    cfg = r["config"]
    lat = r["latency_ms"]
    rows = [
        (
            "scenario",
            f"{r['scenario'] or 'ad hoc'}: {cfg['docs']} docs x {cfg['users']} users "
            f"@ {cfg['rate']} Hz, batch {cfg['batch_ms']} ms, window {r['window_s']} s",
        ),
        ("connections", str(r["connections"])),
        (
            "offered / requested",
            f"{r['offered_per_s']:.0f} / {r['requested_per_s']:.0f} cursor updates/s",
        ),
        (
            "delivered",
            f"{r['delivered_per_s']:.0f} updates/s to members "
            f"(ratio {_f(r['delivered_ratio'], '{:.4f}')}; coalesced "
            f"{_f(r['coalesced_share'], '{:.2%}')}, lost {r['lost']}, "
            f"missing {r['missing']})",
        ),
        (
            "latency ms",
            f"p50 {_f(lat['p50'], '{:.2f}')}  p90 {_f(lat['p90'], '{:.2f}')}  "
            f"p99 {_f(lat['p99'], '{:.2f}')}  p99.9 {_f(lat['p999'], '{:.2f}')}  "
            f"max {_f(lat['max'], '{:.2f}')}",
        ),
        (
            "frames out / in",
            f"{r['frames']['out_per_s']:.0f}/s / {r['frames']['in_per_s']:.0f}/s"
            f" ({r['events_per_batch']} events per batch)",
        ),
        (
            "bytes out / in",
            f"{r['bytes']['out_per_s'] / 1e6:.2f} / {r['bytes']['in_per_s'] / 1e6:.2f} MB/s",
        ),
        (
            "relay CPU",
            f"{_f(r['server_cpu_frac'], '{:.0%}')} of a core; "
            f"{_f(r['server_cpu_s_per_million'], '{:.2f}')} CPU-s per million "
            f"delivered; {_f(r['server_cpu_us_per_user_tick'], '{:.2f}')} us per "
            f"user-tick (~{_f(r['server_projected_users_per_core'], '{}')} users/core)",
        ),
        ("relay RSS peak", f"{_f(r['server_rss_peak_mib'])} MiB"),
        (
            "generator",
            f"{r['generator_cpu_frac']:.0%} of a core "
            f"({r['generator_us_per_user_tick']:.2f} us per user-tick); "
            f"{'SATURATED' if r['generator_saturated'] else 'not saturated'}; "
            f"sends >5 ms late {r['schedule_slip']['window_share_over_5ms']:.2%}",
        ),
    ]
    if r.get("cores"):
        c = r["cores"]
        rows.append(
            (
                "cores busy",
                f"relay core {_f(c.get('relay_core_busy'), '{:.0%}')} "
                f"(softirq {_f(c.get('relay_core_softirq'), '{:.0%}')}), "
                f"generator core {_f(c.get('gen_core_busy'), '{:.0%}')} "
                f"(softirq {_f(c.get('gen_core_softirq'), '{:.0%}')})",
            )
        )
    bad = {k: v for k, v in r["anomalies"].items() if v}
    if bad or r["server_closes"] or r["server_errors"]:
        rows.append(("anomalies", f"{bad} closes {r['server_closes']} errors {r['server_errors']}"))
    for c in r.get("targets", []):
        rows.append(
            (
                f"target {c['target']}",
                f"{c['op']} {c['limit']:g}: {_f(c['value'], '{:.4g}')} "
                f"{'ok' if c['ok'] else 'MISSED'}",
            )
        )
    if r.get("targets"):
        verdict = "MET" if r["targets_met"] else "NOT MET"
        if r["generator_saturated"]:
            verdict += " (generator saturated: the run does not count)"
        rows.append(("targets", verdict))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def draw(r: dict[str, Any], path: Path, targets: dict[str, float]) -> str | None:
    """Draw the latency histogram and the per-second p50/p99 timeline; None or an error."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    cfg = r["config"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    buckets = r["histogram"]["buckets"]
    lat = r["latency_ms"]
    if buckets and lat.get("max") is not None:
        # Re-bin the fine buckets into ~120 equal bins up to a little past p99.9 (linear x);
        # what lies beyond goes into the last bin, labelled.
        top = (
            max([lat["p999"] or 0, *(v for k, v in targets.items() if k.endswith("_ms"))]) * 1.15
            or 1.0
        )
        width = max(top / 120, 0.02)
        nbins = int(top / width) + 1
        bins = [0] * nbins
        total = 0
        for lo, hi, c in buckets:
            mid = lo if hi is None else (lo + hi) / 2
            bins[min(nbins - 1, int(mid / width))] += c
            total += c
        ax1.bar(
            [i * width for i in range(nbins)],
            [c / total for c in bins],
            width=width,
            align="edge",
            color="#4c72b0",
        )
        ax1.set_yscale("log")
        for key, color in (("p50", "green"), ("p99", "orange"), ("p999", "red")):
            if lat.get(key) is not None:
                ax1.axvline(lat[key], color=color, ls="--", lw=1, label=f"{key} {lat[key]:.1f} ms")
        for key, limit in targets.items():
            if key.endswith("_ms"):
                ax1.axvline(limit, color="black", ls=":", lw=1, label=f"target {key} {limit:g}")
        ax1.legend(fontsize=8)
        ax1.set_xlim(0, nbins * width)
    ax1.set_xlabel("end-to-end latency, ms (last bin: everything beyond)")
    ax1.set_ylabel("share of updates (log)")
    ax1.set_title("cursor update latency (measured window)")
    tl = r["timeline"]
    if tl:
        ts = [p["t_s"] for p in tl]
        ax2.plot(ts, [p["p50_ms"] for p in tl], marker="o", ms=3, label="p50")
        ax2.plot(ts, [p["p99_ms"] for p in tl], marker="o", ms=3, label="p99")
        ax2.axvspan(
            cfg["warmup"],
            cfg["warmup"] + cfg["seconds"],
            color="#dddddd",
            alpha=0.5,
            label="measured window",
        )
        for key, limit in targets.items():
            if key in ("p50_ms", "p99_ms"):
                ax2.axhline(limit, color="black", ls=":", lw=1, label=f"target {key} {limit:g}")
        ax2.set_yscale("log")
        ax2.legend(fontsize=8)
    ax2.set_xlabel("second of the run (by send time)")
    ax2.set_ylabel("latency, ms (log)")
    ax2.set_title("per-second p50 / p99")
    name = r["scenario"] or "ad hoc"
    sat = "  GENERATOR SATURATED" if r["generator_saturated"] else ""
    fig.suptitle(
        f"{name}: {cfg['docs']} x {cfg['users']} @ {cfg['rate']} Hz, batch {cfg['batch_ms']} ms"
        f" - delivered {r['delivered_per_s']:.0f}/s, ratio {r['delivered_ratio']}{sat}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None
