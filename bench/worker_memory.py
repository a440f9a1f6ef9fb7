"""Worker memory is flat in the number of items: peak RSS of a job of N=500 vs N=50 items.

Each run is a fresh process driving the real handler with a controlled model (files of 1 MB by default,
incompressible), serializing each envelope as the SDK does and discarding it (a consumer that keeps up).
Baseline: the same job at N=50, measured in the same run. Target: RSS(500) within 10% of RSS(50).

    python -m bench.worker_memory                 # N = 50 and 500, 1 MB files
    python -m bench.worker_memory --mb 8 --large 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys

from bench import _results


async def _job(items: int, size: int) -> int:
    from worker.handler import make_handler
    from worker.model import SleepModel

    handler = make_handler(SleepModel(0.0, size, steps=2))
    job = {"id": "bench", "input": {"task": "text-to-video", "items": [{"prompt": "x"}] * items}}
    sent = 0
    async for envelope in handler(job):
        sent += len(json.dumps({"output": envelope}, ensure_ascii=False))
    return sent


def child(items: int, size: int) -> None:
    sent = asyncio.run(_job(items, size))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"items": items, "sent": sent, "peak_rss_mib": peak_kib / 1024}))


def measure(items: int, size: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.worker_memory", "--child", str(items), "--bytes", str(size)],
        capture_output=True, text=True, check=True, timeout=1800,
    )  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_memory")
    parser.add_argument("--small", type=int, default=50)
    parser.add_argument("--large", type=int, default=500)
    parser.add_argument("--mb", type=float, default=1.0)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    _results.add_json_option(parser)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child, args.bytes)
        return 0
    size = int(args.mb * 1_000_000)
    small, large = measure(args.small, size), measure(args.large, size)
    ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    print(f"files of {size:,} bytes")
    print(f"N={args.small}: peak RSS {small['peak_rss_mib']:.1f} MiB ({small['sent'] / 1e6:.0f} MB sent)")
    print(f"N={args.large}: peak RSS {large['peak_rss_mib']:.1f} MiB ({large['sent'] / 1e6:.0f} MB sent)")
    print(f"ratio RSS(N={args.large}) / RSS(N={args.small}) = {ratio:.3f} (target <= 1.10)")
    _results.write(args.json, "worker_memory", args, {"small": small, "large": large, "ratio": ratio})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
