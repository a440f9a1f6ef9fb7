"""`python -m bench`: usage, refusing unknown names, and the report it writes (real processes, real charts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import _report, _results

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_help_prints_usage_and_every_benchmark() -> None:
    done = bench("--help")
    assert done.returncode == 0
    assert done.stdout.startswith("usage: python -m bench")
    for name in ("relay_fanout", "relay_ingest", "relay_memory", "worker_overlap", "pull_ingest"):
        assert name in done.stdout
    assert "--full" in done.stdout and "--report" in done.stdout


def test_a_mistyped_name_runs_nothing_and_exits_non_zero() -> None:
    done = bench("relay_fanot")
    assert done.returncode == 2
    assert "unknown benchmark relay_fanot (choose from" in done.stderr
    assert "===" not in done.stdout  # nothing ran


def test_an_unknown_option_exits_non_zero() -> None:
    assert bench("--fulll").returncode == 2


def test_a_benchmark_given_sizes_it_cannot_parse_exits_non_zero() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.relay_memory", "--sizes", "ten"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0 and "ValueError" in done.stderr


def test_peak_rss_is_the_kernel_high_water_mark() -> None:
    # A fresh process (this one's peak depends on the tests before it) touches 64 MiB, frees it and waits.
    script = (
        "import sys\nblock = bytearray(64 * 2**20)\nblock[::4096] = b'x' * len(block[::4096])\n"
        "del block\nprint('freed', flush=True)\nsys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "freed"
        assert _results.peak_rss_mb(child.pid) >= 64  # the peak stays after the memory is freed
    finally:
        child.communicate("", timeout=30)


def test_peak_rss_of_a_process_that_is_gone_raises() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(OSError):
        _results.peak_rss_mb(child.pid)


def test_jain_index() -> None:
    assert _results.jain([5.0, 5.0, 5.0]) == pytest.approx(1.0)
    assert _results.jain([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)


def test_machine_says_cores_cpu_and_date() -> None:
    m = _results.machine()
    assert m["cores"] >= 1 and m["cpu"] and m["date"].endswith("UTC")


def figures(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    results.mkdir()
    row = {
        "subscribers": 5, "relay_mb_s": 90.0, "bare_mb_s": 100.0, "ratio": 0.9, "relay_cpu_s_per_gb": 1.0,
        "bare_cpu_s_per_gb": 0.5, "cpu_ratio": 2.0, "relay_fairness": 0.999, "bare_fairness": 0.998,
        "cache_hits": 40.0, "cache_misses": 10.0, "hit_rate": 0.8,
    }  # fmt: skip
    data: dict[str, dict[str, Any]] = {
        "relay_fanout": {"job_mb": 16, "rows": [row, {**row, "subscribers": 10, "ratio": 0.85}]},
        "relay_ingest": {
            "mb": 48, "baseline_mb_s": 100.0, "relay_mb_s": 61.0, "ratio": 0.61, "pre_encoded_mb_s": 85.0,
            "pre_encoded_ratio": 0.85, "stdlib_baseline_mb_s": 40.0,
        },
        "relay_latency": {"relay_ms": [50.0, 52.0, 61.0], "sdk_ms": [400.0, 700.0], "relay_missed": 0,
                          "sdk_missed": 0},
        "relay_memory": {"subscribers": 10, "ratio": 1.05,
                         "rows": [{"job_mb": 16, "idle_mb": 45, "peak_mb": 60}, {"job_mb": 160, "idle_mb": 45, "peak_mb": 63}]},
    }  # fmt: skip
    for name, body in data.items():
        (results / f"{name}.json").write_text(json.dumps({"bench": name, "args": {}, **body}))
    return results


def test_report_writes_the_page_and_one_png_per_chart(tmp_path: Path) -> None:
    written = _report.write(figures(tmp_path), tmp_path / "docs", full=False, failed=["worker_wire"])
    page = (tmp_path / "docs" / "benchmarks.md").read_text()
    charts = sorted(p.name for p in (tmp_path / "docs" / "bench").iterdir())
    assert charts == ["fanout.png", "ingest.png", "latency.png", "memory.png", "results.json"]
    assert len(written) == 6
    raw = json.loads((tmp_path / "docs" / "bench" / "results.json").read_text())
    assert raw["failed"] == ["worker_wire"] and raw["relay_ingest"]["ratio"] == 0.61
    for name in charts[:-1]:
        assert (tmp_path / "docs" / "bench" / name).read_bytes().startswith(b"\x89PNG")
        assert f"](bench/{name})" in page
    assert "| 10 | 0.85 |" in page  # the fan-out row as measured
    assert "| relay | 48 | 100 | 61 | 0.61 (**missed**) | 40 |" in page
    assert "| relay, answer pre-encoded | 48 | 100 | 85 | 0.85 (met) | 40 |" in page
    assert "median 52 ms" in page
    assert "**Failed in this run** (no figures): worker_wire." in page
    assert "**No GPU figures.**" in page and "issue" not in page.lower() and "session" not in page.lower()
    assert "short forms" in page


def test_report_leaves_out_what_did_not_run(tmp_path: Path) -> None:
    results = figures(tmp_path)
    (results / "relay_fanout.json").unlink()
    _report.write(results, tmp_path / "docs", full=True, failed=["relay_fanout"])
    page = (tmp_path / "docs" / "benchmarks-full.md").read_text()
    assert "## Fan-out" not in page and "make bench-full" in page and "short forms" not in page
    assert "**Failed in this run** (no figures): relay_fanout." in page
    assert "**Not run in this run** (no figures): cluster, input_upload, pull_ingest," in page
    assert not (tmp_path / "docs" / "bench-full" / "fanout.png").exists()
    assert (tmp_path / "docs" / "bench-full" / "memory.png").exists()
    assert "](bench-full/memory.png)" in page


def test_full_and_short_forms_keep_their_own_pages(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    _report.write(figures(tmp_path), docs, full=True, failed=[])
    assert not (docs / "benchmarks.md").exists() and not (docs / "bench").exists()
    _report.write(tmp_path / "results", docs, full=False, failed=[])
    short = (docs / "benchmarks.md").read_text()
    assert "[benchmarks-full.md](benchmarks-full.md)" in short  # the short page points to the full one
    assert (docs / "benchmarks-full.md").exists() and (docs / "bench-full" / "fanout.png").exists()


def test_report_gives_the_input_upload_runs_and_the_run_body(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    row = {
        "relay_s": 1.0, "bare_s": 0.5, "ratio": 0.5, "again_s": 0.1, "relay_mb_s": 52.0, "bare_mb_s": 104.0,
        "relay_cpu_s": 0.6, "bare_cpu_s": 0.3, "raw_s": 0.7, "raw_mb_s": 75.0, "raw_ratio": 0.71, "raw_cpu_s": 0.5,
    }  # fmt: skip
    args = {"images": 200, "kb": 256.0, "workers": 4, "fsync": "always", "refs": 1000, "ref_kb": 64.0}
    data = {
        "bench": "input_upload", "args": args, "mb": 52.4, "rows": [row, {**row, "ratio": 0.6}],
        "refs": 1000, "ref_kb": 64.0, "stage_refs_s": 3.2, "ref_body_bytes": 103048, "run_body_bytes": 292045,
        "inline_body_bytes": 87439048, "submit_s": 0.1,
    }  # fmt: skip
    (results / "input_upload.json").write_text(json.dumps(data))
    _report.write(results, tmp_path / "docs", full=False, failed=[])
    page = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert "## Input upload" in page and "200 images of 256 KB (52.4 MB" in page
    assert "| 1 | 52 | 104 | 0.50 | 0.71 | 0.60, 0.30, 0.50 | 0.100 (0.10) |" in page
    assert "**Relay / bare: 0.50-0.60** (min-max over 2 runs each)" in page
    assert "**292,045 bytes** (292 per image; target < 200,000: 1.46 of it)" in page
    assert "would be 87,439,048 bytes, **299x** the body by reference" in page


def test_merge_reruns_one_and_keeps_and_dates_the_others(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    _report.write(figures(tmp_path), docs, full=True, failed=["worker_wire"])
    first = json.loads((docs / "bench-full" / "results.json").read_text())["machine"]["date"]
    assert "Every figure below comes from that one run" in (docs / "benchmarks-full.md").read_text()
    rerun = tmp_path / "rerun"
    rerun.mkdir()
    wire = {"bench": "worker_wire", "measured": "2099-01-02 03:04 UTC", "args": {"items": 1000, "mb": 8},
            "verified": 1000, "largest_body": 666971, "cap": 1000000, "naive_body": 10666672014}  # fmt: skip
    (rerun / "worker_wire.json").write_text(json.dumps(wire))
    _report.write(rerun, docs, full=True, failed=[], merge=True)
    page = (docs / "benchmarks-full.md").read_text()
    assert "largest job-stream POST body 666,971 bytes = 0.667 of the 1,000,000-byte cap" in page
    assert (
        "| 10 | 0.85 |" in page and "| relay | 48 | 100 | 61 | 0.61 (**missed**) | 40 |" in page
    )  # kept as measured
    assert "Failed in this run" not in page  # worker_wire failed before, not now
    assert "worker_wire on 2099-01-02 03:04 UTC" in page
    assert f"relay_fanout, relay_ingest, relay_latency, relay_memory on {first}" in page
    raw = json.loads((docs / "bench-full" / "results.json").read_text())
    assert raw["relay_ingest"]["measured"] == first and raw["worker_wire"]["verified"] == 1000


def test_merge_names_the_machine_of_figures_kept_from_another(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    _report.write(figures(tmp_path), docs, full=False, failed=[])
    raw = docs / "bench" / "results.json"
    old = json.loads(raw.read_text())  # as an older page wrote it: one machine for the page, none per figure
    old["machine"] = {**old["machine"], "cores": 8, "cpu": "Old CPU", "kernel": "4.0"}
    for name in ("relay_fanout", "relay_ingest", "relay_latency", "relay_memory"):
        del old[name]["machine"]
    raw.write_text(json.dumps(old))
    rerun = tmp_path / "rerun"
    rerun.mkdir()
    wire = {"bench": "worker_wire", "measured": "2099-01-02 03:04 UTC", "args": {"items": 10, "mb": 8},
            "verified": 10, "largest_body": 666971, "cap": 1000000, "naive_body": 106666720}  # fmt: skip
    (rerun / "worker_wire.json").write_text(json.dumps(wire))
    _report.write(rerun, docs, full=False, failed=[], merge=True)
    page = (docs / "benchmarks.md").read_text()
    now = _results.machine()
    assert "relay_latency, relay_memory on " in page and " (8 cores, Old CPU, Linux 4.0); worker_wire" in page
    assert (
        f"worker_wire on 2099-01-02 03:04 UTC ({now['cores']} cores, {now['cpu']}, Linux {now['kernel']})"
        in page
    )
    kept = json.loads(raw.read_text())
    assert (
        kept["relay_fanout"]["machine"]["cpu"] == "Old CPU"
        and kept["worker_wire"]["machine"]["cpu"] == now["cpu"]
    )
    assert (
        _report.measured_on(kept["relay_memory"], now)["cpu"] == "Old CPU"
    )  # what its chart is labelled with


def test_merge_drops_the_old_figure_of_a_rerun_that_failed(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    _report.write(figures(tmp_path), docs, full=False, failed=[])
    empty = tmp_path / "empty"
    empty.mkdir()
    _report.write(empty, docs, full=False, failed=["relay_fanout"], merge=True)
    page = (docs / "benchmarks.md").read_text()
    assert "## Fan-out" not in page and "**Failed in this run** (no figures): relay_fanout." in page
    assert "## Ingest" in page  # the others stay


def test_one_run_is_one_run_however_long_its_benchmarks_took(tmp_path: Path) -> None:
    results = figures(tmp_path)
    for minute, path in enumerate(sorted(results.iterdir())):
        data = json.loads(path.read_text())
        path.write_text(json.dumps({**data, "measured": f"2099-01-02 03:{minute:02d} UTC"}))
    _report.write(results, tmp_path / "docs", full=False, failed=[])
    page = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert "Every figure below comes from that one run" in page and "more than one run" not in page


def test_merge_without_a_page_to_keep_from_writes_only_this_run(tmp_path: Path) -> None:
    _report.write(figures(tmp_path), tmp_path / "docs", full=False, failed=[], merge=True)
    assert "Every figure below comes from that one run" in (tmp_path / "docs" / "benchmarks.md").read_text()


def test_merge_needs_a_report() -> None:
    done = bench("--merge", "worker_wire")
    assert done.returncode == 2 and "--merge keeps the figures of a page: give --report DOCS" in done.stderr


def test_every_figure_records_when_it_was_measured(tmp_path: Path) -> None:
    import argparse

    _results.write(tmp_path / "x.json", "x", argparse.Namespace(json=None, n=1), {"ratio": 1.0})
    record = json.loads((tmp_path / "x.json").read_text())
    assert record["bench"] == "x" and record["measured"].endswith("UTC") and record["args"] == {"n": 1}


@pytest.mark.parametrize("full", [False, True], ids=["benchmarks.md", "benchmarks-full.md"])
def test_the_published_pages_are_what_the_report_writes_from_their_figures(full: bool) -> None:
    """docs/benchmarks*.md are never edited by hand: each is, word for word, the report's text on the figures
    its run kept (docs/bench*/results.json). A change to the report's text is a `--rewrite` away."""
    page = ROOT / "docs" / _report.PAGE[full]
    assert page.read_text() == _report.page_from_results(ROOT / "docs", full=full), (
        f"{page.name} is not what bench/_report.py writes from its results.json: run "
        "`python -m bench --rewrite docs` (never edit the page by hand)"
    )


def test_rewrite_writes_the_pages_again_and_runs_nothing(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    _report.write(figures(tmp_path), docs, full=False, failed=[])
    page = docs / "benchmarks.md"
    written = page.read_text()
    page.write_text("edited by hand")
    done = bench("--rewrite", str(docs))
    assert done.returncode == 0, done.stderr
    assert "===" not in done.stdout  # nothing ran
    assert page.read_text() == written
    assert bench("--rewrite", str(docs), "relay_fanout").returncode == 2
