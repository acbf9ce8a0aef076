"""Capacity sweep: the highest document count the relay sustains (issue 4's second number).

    python -m bench.sweep                       # 20 users x 20 Hz per document, p99 <= 75 ms
    python -m bench.sweep --pure                # the same with the pure twin
    python -m bench.sweep --relay-src ../v1     # a relay from another checkout ("before")

Each point is one `python -m bench.load` run (D documents x U users @ R Hz, its own relay
pinned to one core, the generator to the other). A point HOLDS when p99 <= --p99, the
delivered ratio >= --ratio and the generator did not saturate. The sweep climbs by --step
from --start while points hold; a point that misses is run once more (one disturbed run on a
shared machine must not end the sweep), and two misses in a row end the climb. It then tries
once halfway between the last holding point and the first failing one. The answer is the
highest holding point; the JSON keeps every run (p50/p99, relay CPU per user-tick and per
million delivered updates) so the curve can be read, not just the answer.

Exit status: 0 an answer was found, 1 no point held, 3 a run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.split("\n")[0])
    ap.add_argument("--start", type=int, default=120, help="first document count (120)")
    ap.add_argument("--step", type=int, default=20, help="documents added per step (20)")
    ap.add_argument("--max-docs", type=int, default=400, help="stop climbing here (400)")
    ap.add_argument("--users", type=int, default=20, help="users per document (20)")
    ap.add_argument("--rate", type=float, default=20.0, help="cursor moves per user per s (20)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured window per run (10)")
    ap.add_argument("--warmup", type=float, default=4.0, help="load before the window (4)")
    ap.add_argument("--p99", type=float, default=75.0, help="p99 latency bound, ms (75)")
    ap.add_argument("--ratio", type=float, default=0.99, help="delivered ratio bound (0.99)")
    ap.add_argument(
        "--pure",
        action="store_true",
        help="run the relay with its pure twin (RELAY_NO_EXTENSIONS=1)",
    )
    ap.add_argument(
        "--relay-src",
        type=Path,
        help="run the relay from this checkout (PYTHONPATH) instead of this one",
    )
    ap.add_argument("--label", help="a name for this sweep in the report")
    ap.add_argument("--json", type=Path, help="report path (default bench/results/sweep-*.json)")
    return ap


def run_point(ns: argparse.Namespace, docs: int, out_dir: Path, attempt: int) -> dict[str, Any]:
    path = out_dir / f"docs{docs}-{attempt}.json"
    cmd = [
        sys.executable,
        "-m",
        "bench.load",
        "--docs",
        str(docs),
        "--users",
        str(ns.users),
        "--rate",
        str(ns.rate),
        "--seconds",
        str(ns.seconds),
        "--warmup",
        str(ns.warmup),
        "--json",
        str(path),
        "--no-png",
        "--quiet",
    ]
    env = dict(os.environ)
    if ns.pure:
        env["RELAY_NO_EXTENSIONS"] = "1"
    if ns.relay_src:
        cmd += ["--relay-src", str(ns.relay_src.resolve())]
    started = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=HERE.parent, env=env, capture_output=True, text=True, check=False
    )
    point: dict[str, Any] = {
        "docs": docs,
        "attempt": attempt,
        "exit": proc.returncode,
        "wall_s": round(time.monotonic() - started, 1),
    }
    if proc.returncode == 3 or not path.exists():
        point["error"] = (proc.stderr or proc.stdout)[-2000:]
        return point
    rep = json.loads(path.read_text())
    lat = rep["latency_ms"]
    point.update(
        {
            "p50_ms": lat["p50"],
            "p99_ms": lat["p99"],
            "max_ms": lat["max"],
            "delivered_ratio": rep["delivered_ratio"],
            "delivered_per_s": rep["delivered_per_s"],
            "lost": rep.get("lost"),
            "server_cpu_us_per_user_tick": rep.get("server_cpu_us_per_user_tick"),
            "server_cpu_s_per_million": rep.get("server_cpu_s_per_million"),
            "relay_cpu_frac": rep.get("server_cpu_frac"),
            "generator_saturated": rep["generator_saturated"],
            "saturation_reasons": rep.get("generator_saturation_reasons", []),
            "relay_core": rep.get("version", {}).get("relay_core"),
            "relay_commit": rep.get("version", {}).get("commit"),
            "report": str(path),
        }
    )
    point["holds"] = (
        not rep["generator_saturated"]
        and lat["p99"] <= ns.p99
        and rep["delivered_ratio"] >= ns.ratio
    )
    return point


def describe(p: dict[str, Any]) -> str:
    if "error" in p:
        return f"docs {p['docs']:4d}: run failed"
    sat = " GENERATOR SATURATED" if p["generator_saturated"] else ""
    return (
        f"docs {p['docs']:4d} (try {p['attempt']}): p50 {p['p50_ms']:7.1f}  p99 "
        f"{p['p99_ms']:7.1f} ms  ratio {p['delivered_ratio']:.4f}  relay "
        f"{p['server_cpu_us_per_user_tick']} us/user-tick  "
        f"{'holds' if p['holds'] else 'MISSES'}{sat}"
    )


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    label = ns.label or ("pure" if ns.pure else "compiled") + (
        f"@{ns.relay_src.name}" if ns.relay_src else ""
    )
    out_dir = HERE / "results" / f"sweep-{label}-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []

    def holds(docs: int) -> bool | None:
        """True / False after up to two runs; None when a run failed outright."""
        for attempt in (1, 2):
            p = run_point(ns, docs, out_dir, attempt)
            runs.append(p)
            print(describe(p), flush=True)
            if "error" in p:
                print(p["error"], file=sys.stderr)
                return None
            if p["holds"]:
                return True
        return False

    best: int | None = None
    first_fail: int | None = None
    docs = ns.start
    while ns.step <= docs <= ns.max_docs:
        ok = holds(docs)
        if ok is None:
            return 3
        if ok:
            best = docs
            if first_fail is not None:
                break  # walked down from a failing start: found the edge
            docs += ns.step
        else:
            first_fail = docs
            if best is not None:
                break
            docs -= ns.step  # the start was already too high: walk down
    if best is not None and first_fail is not None and first_fail - best > 1:
        mid = (best + first_fail) // 2
        ok = holds(mid)
        if ok is None:
            return 3
        if ok:
            best = mid
    report = {
        "label": label,
        "command": " ".join(
            ["python -m bench.sweep", *(argv if argv is not None else sys.argv[1:])]
        ),
        "load": {"users": ns.users, "rate": ns.rate, "seconds": ns.seconds, "warmup": ns.warmup},
        "bounds": {"p99_ms": ns.p99, "delivered_ratio": ns.ratio},
        "highest_sustained_docs": best,
        "first_failing_docs": first_fail,
        "runs": runs,
    }
    path = ns.json or out_dir.with_suffix(".json")
    path.write_text(json.dumps(report, indent=1))
    if best is None:
        print(f"no document count held (from {ns.start}); report: {path}")
        return 1
    edge = (
        f"first failing: {first_fail}"
        if first_fail is not None
        else f"none failed up to --max-docs {ns.max_docs}: a lower bound"
    )
    print(
        f"highest sustained: {best} documents x {ns.users} users @ {ns.rate:g} Hz "
        f"(p99 <= {ns.p99:g} ms); {edge}; report: {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
