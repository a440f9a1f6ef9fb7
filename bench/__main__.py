"""Run benchmarks, each in its own process (so its CPU and RSS figures are its own).

    python -m bench                     # every benchmark, short forms (what `make bench` runs)
    python -m bench relay_fanout        # some of them
    python -m bench --full              # the full sizes (`make bench-full`: tens of minutes, GBs of disk)
    python -m bench --report docs       # also write docs/benchmarks.md and docs/bench/*.png from this run
    python -m bench --full --report docs --merge worker_wire   # rerun one; keep the page's other figures
    python -m bench --rewrite docs      # run nothing: both pages again from their results.json

Every figure is a ratio against a baseline measured in the same run, on the same machine.
"""

from __future__ import annotations

import argparse
import pkgutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent

#: The short forms: small enough for a busy 2-core machine, the same shape as the full ones, and large enough
#: that each measured run's CPU totals are seconds (runs repeat a job with --passes / --gb where it is small).
SHORT: dict[str, list[str]] = {
    "cluster": ["--items", "20", "--mb", "4", "--subscribers", "10", "--kills", "2"],
    "input_upload": ["--images", "400", "--kb", "256", "--refs", "1000", "--ref-kb", "64"],
    "relay_fanout": ["--subscribers", "20,50,100", "--items", "12", "--mb", "4", "--gb", "5"],
    "relay_ingest": ["--items", "12", "--mb", "4", "--passes", "8"],
    "relay_latency": ["--yields", "30", "--interval-ms", "100"],
    "relay_memory": ["--sizes", "40,80,120", "--subscribers", "10"],
    "relay_idle": ["--subscribers", "2000"],
    "pull_ingest": ["--items", "24", "--mb", "4"],
    "worker_overlap": ["--items", "20", "--mb", "2"],
    "worker_wire": ["--items", "10"],
    "worker_memory": ["--small", "20", "--large", "100"],
    "wire_assembler": ["--items", "10", "--mb", "4", "--passes", "30"],
}

#: The full forms: the sizes of the targets (docs/benchmarks-full.md).
FULL: dict[str, list[str]] = {
    "cluster": ["--items", "40", "--mb", "4", "--subscribers", "50", "--kills", "5"],
    "input_upload": ["--images", "500", "--kb", "1024", "--refs", "1000", "--ref-kb", "1024"],
    "relay_fanout": ["--subscribers", "20,50,100", "--items", "100", "--mb", "4", "--gb", "8"],
    "relay_ingest": ["--items", "100", "--mb", "4"],
    "relay_latency": ["--yields", "200", "--interval-ms", "100"],
    "relay_memory": ["--sizes", "200,1000,2000", "--subscribers", "50"],
    "relay_idle": ["--subscribers", "10000"],
    "pull_ingest": ["--items", "250", "--mb", "4"],
    "worker_overlap": ["--items", "50", "--mb", "4"],
    "worker_wire": ["--items", "1000"],
    "worker_memory": ["--mb", "8", "--large", "1000"],
    "wire_assembler": ["--items", "100", "--mb", "8", "--passes", "3"],
}


def benchmarks() -> list[str]:
    """The benchmarks: the modules with a short form (others in bench/, like `chaos`, run on their own)."""
    return sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if m.name in SHORT)


def parser(names: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="benchmarks: " + ", ".join(names),
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    p.add_argument("--full", action="store_true", help="the full sizes instead of the short forms")
    p.add_argument(
        "--report", type=Path, metavar="DOCS", help="write DOCS/benchmarks.md and DOCS/bench/*.png"
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="with --report: keep the page's figures of benchmarks not run now (the page dates each one)",
    )
    p.add_argument(
        "--rewrite",
        type=Path,
        metavar="DOCS",
        help="run nothing: write DOCS/benchmarks.md and DOCS/benchmarks-full.md again from the figures "
        "their last runs kept (DOCS/bench*/results.json), after a change to the report's text",
    )
    return p


def main(argv: list[str]) -> int:
    names = benchmarks()
    p = parser(names)
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in names]
    if unknown:
        p.error(f"unknown benchmark {', '.join(unknown)} (choose from {', '.join(names)})")
    if args.merge and args.report is None:
        p.error("--merge keeps the figures of a page: give --report DOCS with it")
    if args.rewrite is not None:
        if args.names or args.report is not None or args.merge or args.full:
            p.error("--rewrite runs nothing: give it alone")
        from bench import _report

        print(f"wrote {', '.join(str(p) for p in _report.rewrite(args.rewrite))}")
        return 0
    chosen = args.names or names
    sizes = FULL if args.full else SHORT
    failed = []
    with tempfile.TemporaryDirectory(prefix="podstream-bench-results-") as results:
        for name in chosen:
            command = [sys.executable, "-m", f"bench.{name}", *sizes.get(name, [])]
            command += ["--json", f"{results}/{name}.json"]
            print(f"\n=== {' '.join(command[1:-2])}", flush=True)
            start = time.monotonic()
            code = subprocess.call(command)
            print(f"=== bench.{name}: exit {code} in {time.monotonic() - start:.1f} s", flush=True)
            if code:
                failed.append(name)
        if args.report is not None:
            from bench import _report

            written = _report.write(
                Path(results), args.report, full=args.full, failed=failed, merge=args.merge
            )
            print(f"\nwrote {', '.join(str(p) for p in written)}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
