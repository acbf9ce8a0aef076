"""Percentiles and histogram summaries from the generator's fixed-bucket latency histogram.

The compiled side counts latencies in NB buckets (20 us wide up to 10 ms, 0.2 ms to 100 ms,
2 ms to 1 s, 20 ms to 10 s, then one overflow bucket). A percentile is reported as the upper
edge of the bucket that holds it (so it is never optimistic by more than one bucket width:
<= 2 % above 1 ms); `max` is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

# Cumulative "<= edge" buckets reported in the JSON: the seed's 5/10/25/50/100 ms plus finer.
# Every edge is a bucket boundary of the compiled histogram, so the counts are exact.
REPORT_EDGES_MS = (
    0.1,
    0.2,
    0.5,
    1,
    2,
    3,
    4,
    5,
    6,
    8,
    10,
    12,
    15,
    20,
    25,
    30,
    40,
    50,
    60,
    75,
    100,
    150,
    200,
    300,
    500,
    1000,
    2000,
    5000,
)


def percentile_ms(
    counts: Sequence[int], edges_us: Sequence[tuple[int, int | None]], q: float
) -> float | None:
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    running = 0
    for c, (lo, hi) in zip(counts, edges_us, strict=True):
        running += c
        if running >= rank and c:
            return (hi if hi is not None else lo) / 1000.0
    return edges_us[-1][0] / 1000.0


def summary(
    counts: Sequence[int],
    edges_us: Sequence[tuple[int, int | None]],
    max_ns: int,
    sum_us: int,
) -> dict[str, float | None]:
    total = sum(counts)
    out: dict[str, float | None] = {
        f"p{name}": percentile_ms(counts, edges_us, q)
        for name, q in (("50", 0.5), ("90", 0.9), ("99", 0.99), ("999", 0.999))
    }
    out["max"] = round(max_ns / 1e6, 3) if total else None
    if total:  # a bucket's upper edge can exceed the exact maximum: never report past it
        for k in ("p50", "p90", "p99", "p999"):
            out[k] = min(out[k], out["max"])  # type: ignore[type-var]
    out["mean"] = round(sum_us / total / 1000.0, 3) if total else None
    return out


def cumulative(
    counts: Sequence[int], edges_us: Sequence[tuple[int, int | None]]
) -> list[dict[str, float | int | str]]:
    """[{le_ms, count, fraction}] for REPORT_EDGES_MS and +Inf (Prometheus-style, cumulative)."""
    total = sum(counts)
    out: list[dict[str, float | int | str]] = []
    running = 0
    i = 0
    for edge in REPORT_EDGES_MS:
        edge_us = round(edge * 1000)
        while i < len(counts):
            upper = edges_us[i][1]
            if upper is None or upper > edge_us:
                break
            running += counts[i]
            i += 1
        out.append(
            {
                "le_ms": edge,
                "count": running,
                "fraction": round(running / total, 6) if total else 0.0,
            }
        )
    out.append({"le_ms": "+Inf", "count": total, "fraction": 1.0 if total else 0.0})
    return out


def fine_buckets(
    counts: Sequence[int], edges_us: Sequence[tuple[int, int | None]]
) -> list[list[float | int | None]]:
    """Every non-empty compiled bucket as [lo_ms, hi_ms, count] (for plots and re-analysis)."""
    return [
        [lo / 1000.0, None if hi is None else hi / 1000.0, c]
        for c, (lo, hi) in zip(counts, edges_us, strict=True)
        if c
    ]
