"""Figures a benchmark hands to the report: `--json PATH` on every benchmark writes them there.

A benchmark prints its figures for people and, with `--json`, writes the same figures (plain numbers and
lists) for `bench._report`, which turns the JSON of one `make bench` run into docs/benchmarks.md and its
charts. Every figure is from the one run: nothing is carried over from earlier runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON to PATH")


def write(path: Path | None, name: str, args: argparse.Namespace, figures: dict[str, Any]) -> None:
    if path is None:
        return
    given = {k: v for k, v in vars(args).items() if k != "json" and not k.startswith("serve")}
    record = {"bench": name, "measured": machine()["date"], "args": given, **figures}
    path.write_text(json.dumps(record, indent=1, default=str))


def machine() -> dict[str, Any]:
    """The machine the figures come from: cores and CPU model (from /proc/cpuinfo), kernel, date."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count() or 0,
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def peak_rss_mb(pid: int) -> float:
    """The kernel's record of a process's peak resident memory (VmHWM), in MiB: no sampling to miss it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def jain(values: list[float]) -> float:
    """Jain's fairness index of per-subscriber throughputs: 1.0 when all are equal, 1/n when one gets all."""
    if not values:
        return 1.0
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))
