"""Members set over HTTP: how many PUTs a second one relay answers.

The relay runs as its own process (pinned to one core when `taskset` exists). `--workers`
concurrent clients each PUT to their own member (one connection per request, as the relay
answers `Connection: close`), a cursor move every time, for `--seconds`; the bench reports
PUTs answered per second, the relay's CPU per PUT, and the answers' latency percentiles.
`--members` caps the distinct members (several workers share one: the per-member rate limit
then answers some with 429, counted apart).

    python -m bench.agents                       # 16 workers x 5 s
    python -m bench.agents --relay-src /tmp/old  # the same against another checkout
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.relay_proc import RelayProcess, cpu_split, pinning_cpus


async def put(port: int, path: str, body: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    writer.write(head + body)
    response = await reader.read()  # the relay closes after its answer
    writer.close()
    return int(response.split(b" ", 2)[1])


async def worker(
    port: int, member: str, until: float, latencies: list[float], codes: dict[int, int]
) -> None:
    path = f"/internal/presence/bench-agents/members/{member}"
    i = 0
    while time.monotonic() < until:
        i += 1
        body = json.dumps({"name": member, "cursor": [i % 100, i % 40, i], "ttl_s": 60}).encode()
        started = time.perf_counter()
        code = await put(port, path, body)
        latencies.append((time.perf_counter() - started) * 1000)
        codes[code] = codes.get(code, 0) + 1


async def run(port: int, workers: int, members: int, seconds: float) -> dict[str, object]:
    latencies: list[float] = []
    codes: dict[int, int] = {}
    until = time.monotonic() + seconds
    await asyncio.gather(
        *(worker(port, f"agent-{i % members}", until, latencies, codes) for i in range(workers))
    )
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    return {"requests": len(latencies), "codes": codes, "p50_ms": q[49], "p99_ms": q[98]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--relay-src", type=Path)
    ap.add_argument("--json", type=Path)
    ns = ap.parse_args()
    cpus = pinning_cpus()
    log = Path(tempfile.mkstemp(prefix="bench-agents-", suffix=".log")[1])
    relay = RelayProcess(
        batch_ms=50,
        cpu=cpus[0] if cpus else None,
        extra_args=["--agent-puts-per-s", "10000", "--agent-puts-burst", "10000"],
        log_path=log,
        relay_src=ns.relay_src,
    )
    try:
        relay.wait_ready()
        asyncio.run(run(relay.port, 2, 2, 0.5))  # warm up (imports, first document)
        cpu0 = sum(cpu_split(relay.pid))
        wall0 = time.monotonic()
        result = asyncio.run(run(relay.port, ns.workers, ns.members, ns.seconds))
        wall = time.monotonic() - wall0
        cpu = sum(cpu_split(relay.pid)) - cpu0
    finally:
        relay.stop()
    n = int(result["requests"])  # type: ignore[call-overload]
    report = {
        **result,
        "puts_per_s": round(n / wall, 1),
        "relay_cpu_us_per_put": round(cpu / n * 1e6, 1) if n else None,
        "relay_cpu_frac": round(cpu / wall, 3),
        "pinned": relay.pinned,
    }
    print(json.dumps(report, indent=2))
    if ns.json is not None:
        ns.json.write_text(json.dumps(report, indent=2) + "\n")
    if not relay.pinned:
        print("(relay not pinned: taskset missing)", file=sys.stderr)


if __name__ == "__main__":
    main()
