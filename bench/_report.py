"""docs/benchmarks.md and its charts (docs/bench/*.png), from the JSON figures of one `python -m bench` run.

Only what this run measured is written: a benchmark that failed or did not run is listed as such, and no
figure is carried over from an earlier run, unless `--merge` asks for it (`python -m bench --merge NAME...`
reruns NAME and keeps the page's other figures); the page then says which figure was measured when. Each
chart says the machine and date it was measured on.
"""

from __future__ import annotations

import json
import statistics
import uuid
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from bench import _results

COMMAND = {False: "make bench", True: "make bench-full"}
#: Each form has its own page and charts, so a full run never overwrites the short forms' page (or back).
PAGE = {False: "benchmarks.md", True: "benchmarks-full.md"}
CHARTS = {False: "bench", True: "bench-full"}


def load(results: Path) -> dict[str, dict[str, Any]]:
    figures: dict[str, dict[str, Any]] = {}
    for path in sorted(results.glob("*.json")):
        data: dict[str, Any] = json.loads(path.read_text())
        figures[data["bench"]] = data
    return figures


def label(fig: Figure, machine: dict[str, Any], form: str) -> None:
    fig.text(
        0.01, 0.01, f"{machine['cores']} cores, {machine['cpu']}; {machine['date']}; {form}",
        fontsize=7, color="#555555",
    )  # fmt: skip


def save(fig: Figure, path: Path, machine: dict[str, Any], form: str) -> Path:
    label(fig, machine, form)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def fanout_chart(data: dict[str, Any], out: Path, machine: dict[str, Any], form: str) -> Path:
    rows = data["rows"]
    k = [r["subscribers"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(k, [r["bare_mb_s"] for r in rows], "o-", label="bare websockets broadcast")
    left.plot(k, [r["relay_mb_s"] for r in rows], "s-", label="relay fan-out")
    for r in rows:
        left.annotate(
            f"{r['ratio']:.2f}x, hits {r['hit_rate']:.2f}", (r["subscribers"], r["relay_mb_s"]),
            textcoords="offset points", xytext=(4, -12), fontsize=7,
        )  # fmt: skip
    left.set(xlabel="subscribers", ylabel="MB/s delivered (all subscribers)", ylim=(0, None), xticks=k)
    left.set_title(f"Throughput, one {data['job_mb']:.0f} MB job", fontsize=10)
    left.legend(fontsize=8)
    right.plot(k, [r["bare_cpu_s_per_gb"] for r in rows], "o-", label="bare broadcast")
    right.plot(k, [r["relay_cpu_s_per_gb"] for r in rows], "s-", label="relay")
    right.set(xlabel="subscribers", ylabel="server CPU s per GB delivered", ylim=(0, None), xticks=k)
    right.set_title("Server CPU per GB", fontsize=10)
    right.legend(fontsize=8)
    return save(fig, out / "fanout.png", machine, form)


def _ingest_rows(figures: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any], float]]:
    """(path, its figures, its MB/s) for every ingest path measured."""
    rows = []
    if "relay_ingest" in figures:
        d = figures["relay_ingest"]
        rows.append(("relay", d, d["relay_mb_s"]))
        if "pre_encoded_mb_s" in d:
            rows.append(("relay, answer\npre-encoded", d, d["pre_encoded_mb_s"]))
    if "pull_ingest" in figures:
        d = figures["pull_ingest"]
        rows.append(("podstream pull", d, d["pull_mb_s"]))
        if "pre_encoded_mb_s" in d:
            rows.append(("pull, answer\npre-encoded", d, d["pre_encoded_mb_s"]))
    return rows


def ingest_chart(figures: dict[str, dict[str, Any]], out: Path, machine: dict[str, Any], form: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names, bare, ours, ratios = [], [], [], []
    for who, d, mb_s in _ingest_rows(figures):
        names.append(f"{who}\n({d['mb']:.0f} MB)")
        bare.append(d["baseline_mb_s"])
        ours.append(mb_s)
        ratios.append(mb_s / d["baseline_mb_s"])
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], bare, 0.4, label="bare loop (parse, pybase64, sha256, write, fsync)")
    bars = ax.bar([i + 0.2 for i in x], ours, 0.4, label="/stream -> verified files")
    for bar, ratio in zip(bars, ratios, strict=True):
        ax.annotate(f"{ratio:.2f} of bare", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)  # fmt: skip
    ax.set_xticks(list(x), names)
    ax.set(ylabel="MB/s", title="Ingest against the bare loop (target >= 0.8)")
    ax.set_ylim(0, max(bare + ours, default=1) * 1.4)  # room for the legend above the bars
    ax.legend(fontsize=8, loc="upper left")
    return save(fig, out / "ingest.png", machine, form)


def latency_chart(data: dict[str, Any], out: Path, machine: dict[str, Any], form: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for key, name in (("sdk_ms", "runpod SDK job.stream()"), ("relay_ms", "relay websocket")):
        values = sorted(data[key])
        if values:
            share = [(i + 1) / len(values) for i in range(len(values))]
            ax.step(values, share, where="post", label=f"{name}: median {statistics.median(values):.0f} ms")
    ax.set_xscale("log")
    ax.set(xlabel="worker yield -> subscriber receive (ms, log scale)", ylabel="share of yields",
           title=f"Latency distributions, {len(data['relay_ms'])} yields")  # fmt: skip
    ax.legend(fontsize=8)
    return save(fig, out / "latency.png", machine, form)


def memory_chart(data: dict[str, Any], out: Path, machine: dict[str, Any], form: str) -> Path:
    rows = data["rows"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    mb = [r["job_mb"] for r in rows]
    ax.plot(mb, [r["peak_mb"] for r in rows], "s-", label="relay peak RSS (VmHWM)")
    ax.plot(mb, [r["idle_mb"] for r in rows], "o--", label="relay RSS before the job")
    ax.axhline(200, color="#aa3333", linewidth=0.8, linestyle=":", label="target: 200 MiB")
    ax.set(xlabel="job size (MB)", ylabel="MiB", ylim=(0, None),
           title=f"Relay memory against job size, {data['subscribers']} live subscribers")  # fmt: skip
    ax.legend(fontsize=8)
    return save(fig, out / "memory.png", machine, form)


def _met(ok: bool) -> str:
    """How the page marks a target: met, or **missed** (never left for the reader to work out)."""
    return "met" if ok else "**missed**"


def _spread(values: list[float], fmt: str = ".2f") -> str:
    """min-max of repeated runs (one value when there was one run)."""
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}}-{hi:{fmt}}"


#: The fan-out targets: throughput relay/bare at least, server CPU per GB relay/bare at most, Jain at least.
FANOUT_TARGETS = (0.95, 1.1, 0.99)


def _fanout_table(d: dict[str, Any]) -> list[str]:
    if "ratios" not in d["rows"][0]:  # figures from before runs were repeated: one run per K
        lines = [
            "| subscribers | relay / bare throughput | server CPU per GB, relay / bare | Jain's index relay, bare | chunk cache hit rate (hits, reads) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in d["rows"]:
            lines.append(
                f"| {r['subscribers']} | {r['ratio']:.2f} | {r['cpu_ratio']:.2f} "
                f"({r['relay_cpu_s_per_gb']:.2f} s vs {r['bare_cpu_s_per_gb']:.2f} s) | "
                f"{r['relay_fairness']:.3f}, {r['bare_fairness']:.3f} | "
                f"{r['hit_rate']:.3f} ({r['cache_hits']:.0f}, {r['cache_misses']:.0f}) |"
            )
        return lines
    throughput, cpu, jain = FANOUT_TARGETS
    lines = [
        "| subscribers | GB a run | relay / bare throughput | server CPU relay / bare | server CPU s, relay; bare | Jain's index relay, bare (lowest) | client processes' CPU, relay; bare | chunk cache hit rate | targets |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in d["rows"]:
        met = [
            f"throughput {_met(min(r['ratios']) >= throughput)}",
            f"CPU {_met(max(r['cpu_ratios']) <= cpu)}",
            f"Jain {_met(r['relay_fairness'] >= jain)}",
        ]
        lines.append(
            f"| {r['subscribers']} | {r['gb_per_run']:.1f} | {_spread(r['ratios'])} | "
            f"{_spread(r['cpu_ratios'])} | {_spread(r['relay_cpu_s'], '.1f')}; "
            f"{_spread(r['bare_cpu_s'], '.1f')} | {r['relay_fairness']:.3f}, {r['bare_fairness']:.3f} | "
            f"{r['relay_client_cpu']:.2f}; {r['bare_client_cpu']:.2f} | {r['hit_rate']:.3f} | "
            f"{', '.join(met)} |"
        )
    return lines


def _provenance(figures: dict[str, dict[str, Any]]) -> str:
    """Which run each figure comes from (its `run`, the id of the report that measured it): one sentence when
    they share a run; when merged, each run's benchmarks and the time the first of them was measured."""
    runs: dict[str, list[tuple[str, str]]] = {}
    where: dict[str, str] = {}
    for name, data in sorted(figures.items()):
        measured = str(data.get("measured") or "")
        runs.setdefault(str(data.get("run", "")), []).append((measured, name))
        m = data.get("machine")
        if isinstance(m, dict):
            where[str(data.get("run", ""))] = f"{m['cores']} cores, {m['cpu']}, Linux {m['kernel']}"
    same = "every ratio is against a baseline measured in the same run, on the same machine, side by side."
    if len(runs) <= 1:
        return f"Every figure below comes from that one run; {same}"
    several = len(set(where.values())) > 1  # then each run names its machine
    dated = "; ".join(
        f"{', '.join(n for _, n in names)} on {min(m for m, _ in names) or 'an unrecorded date'}"
        + (f" ({where.get(run, 'an unrecorded machine')})" if several else "")
        for run, names in sorted(runs.items(), key=lambda r: min(m for m, _ in r[1]))
    )
    return (
        f"The figures come from more than one run (`--merge` reran some and kept the rest): {dated}. For "
        f"each benchmark, {same}"
    )


def markdown(figures: dict[str, dict[str, Any]], charts: list[Path], machine: dict[str, Any],
             full: bool, failed: list[str], not_run: list[str], full_page: bool) -> str:  # fmt: skip
    form = COMMAND[full]
    img = CHARTS[full]
    out: list[str] = [
        "# Benchmarks",
        "",
        f"Written by `{form}` (`python -m bench --report docs{' --full' if full else ''}`) on "
        f"{machine['date']}: {machine['cores']} cores, {machine['cpu']}, Linux {machine['kernel']}, "
        f"Python {machine['python']}. {_provenance(figures)} Absolute MB/s and milliseconds depend on the "
        "machine and on whatever else runs on it: read the ratios and the shapes. Where a benchmark repeats, "
        "its baseline and measured runs alternate (A B A B A B) and each ratio is of one such pair, given "
        "min-max, so a load that comes and goes slows both sides alike; on a machine shared with other "
        "work (as this one was) only those interleaved ratios are worth comparing. A target a figure "
        "misses is marked **missed**. Run it again to get your machine's figures.",
        "",
    ]
    if not full:
        out += [
            "These are the **short forms** (small sizes, the same shape as the full ones); `make bench-full` "
            "runs the sizes of the targets (fan-out 20/50/100 subscribers x 100 x 4 MB, a 2 GB job to 50 "
            "subscribers, 1000 x 8 MB through the worker, 1 GB pulled). The short forms' sizes are in "
            "`bench/__main__.py` (`SHORT`, `FULL`)."
            + (
                " The last full-size run's figures: [benchmarks-full.md](benchmarks-full.md)."
                if full_page
                else ""
            ),
            "",
        ]
    if failed:
        out += [f"**Failed in this run** (no figures): {', '.join(failed)}.", ""]
    if not_run:
        out += [f"**Not run in this run** (no figures): {', '.join(not_run)}.", ""]
    out += [
        "**No GPU figures.** They were not measured here: no GPU was available to the run that wrote this "
        "page, and these benchmarks run on the CPU, with stand-in models, so GPU busy share during a streamed batch "
        "and time to the first file for SVD-XT, SDXL and LTX are not given; no number is guessed.",
        "",
    ]
    if "relay_fanout" in figures:
        d = figures["relay_fanout"]
        out += [
            "## Fan-out",
            "",
            *(
                [
                    f"K websocket subscribers of one finished {d['job_mb']:.0f} MB job, each verifying every "
                    "item's sha256, against a bare `websockets` broadcast of the same bytes from memory (its own "
                    "process) to the same K clients. Targets: throughput >= 0.8 of the bare broadcast, server "
                    "CPU per GB <= 2x, Jain's index >= 0.99."
                ]
                if "ratios" not in d["rows"][0]
                else [
                    f"K websocket subscribers of one finished {d['job_mb']:.0f} MB job (larger than the 32 MiB "
                    "chunk cache), each verifying every item's sha256, against a bare `websockets` broadcast of "
                    "the same bytes from memory, 256 KiB frames (its own process), to the same K clients. The "
                    f"clients run in {d['client_procs']} processes; subscribers read the job again (a new "
                    "connection each time) until a run delivers the GB given, so the servers' CPU totals are "
                    f"seconds. {d['reps']} pairs of runs (relay, bare) per K, alternating; each ratio is of one "
                    "pair, min-max. Targets: throughput >= 0.95 of the bare broadcast, server CPU per GB "
                    "<= 1.1x, Jain's index >= 0.99.",
                    "",
                    "Shapes: both servers pay the same per frame for the socket write and the websocket "
                    "framing; the relay's own costs are per chunk read (one load per chunk, shared by every "
                    "subscriber reading it at about the same time) and per record and frame of each "
                    "subscriber (a journal record, a msgpack `chunk` header). On a busy machine the spread "
                    "of the CPU ratio is mostly the load's: read its lower end against the target too. "
                    "Throughput is bounded by the clients (each sha256s every byte) when their "
                    "processes' CPU share nears 1.0 per core: then the ratio says little about the servers. "
                    "With a machine of 2 cores the servers and the clients share them.",
                ]
            ),
            "",
            *_fanout_table(d),
            "",
            f"![throughput and CPU against subscribers]({img}/fanout.png)",
            "",
        ]
    if "relay_ingest" in figures or "pull_ingest" in figures:
        out += [
            "## Ingest",
            "",
            "RunPod `/stream` (the emulator, with a job's envelopes all buffered) to verified files on disk, "
            "against the bare loop on the same bytes: parse the `/stream` JSON, base64-decode each part "
            "(with pybase64, as the relay and the pull do), sha256 it, write and fsync. Target >= 0.8. The "
            "emulator runs in its own process and encodes each entry when the worker posts it (as RunPod "
            "does, on its own machines), then sends a `/stream` answer entry by entry; the *pre-encoded* rows "
            "are the relay and the pull against a plainer stand-in (`http.server`, its own process) serving "
            "the same answer read from a file. Where the runs were repeated, the bare loop and the paths "
            "alternate (A B C A B C ...), each run ingests the job several times so that it lasts seconds, "
            "MB/s are the best run's and the ratio is each round's, min-max. The last column is the bare loop "
            "with the standard library's base64 instead, for comparison with figures from before the switch "
            "(no ratio is taken against it).",
            "",
            "Shape: the ratio rises with the job's size because the bare loop parses the whole `/stream` "
            "answer as one JSON document before it decodes anything, which costs more the larger the "
            "answer, while the relay and the pull take the answer in pieces as they arrive and decode, "
            "hash and write while the rest is still coming; at small sizes their fixed costs per job (the "
            "long poll's round trips, job.json, the journal's commits, each file's fsync and rename) weigh "
            "more.",
            "",
            "| path | MB | bare loop MB/s | MB/s | ratio (target >= 0.8) | bare loop, stdlib base64, MB/s |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for who, d, mb_s in _ingest_rows(figures):
            stdlib = f"{d['stdlib_baseline_mb_s']:.0f}" if "stdlib_baseline_mb_s" in d else ""
            key = {"relay": "ratios", "podstream pull": "ratios"}.get(who, "pre_encoded_ratios")
            ratios = d.get(key) or [mb_s / d["baseline_mb_s"]]
            out.append(
                f"| {who.replace(chr(10), ' ')} | {d['mb']:.0f} | {d['baseline_mb_s']:.0f} | {mb_s:.0f} | "
                f"{_spread(ratios)} ({_met(min(ratios) >= 0.8)}) | {stdlib} |"
            )
        if "first_item_s" in figures.get("relay_ingest", {}):
            d = figures["relay_ingest"]
            out += [
                "",
                f"Backlog: a relay attaching to the buffered job published its first file "
                f"{d['first_item_s']:.2f} s after attaching and its last after {d['last_item_s']:.2f} s "
                f"(first/last {d['first_item_s'] / d['last_item_s']:.2f}; seen through the events long "
                "poll): each piece of the `/stream` answer is committed and published as it is received.",
            ]
        if "pull_ingest" in figures:
            out += [
                "",
                "`podstream pull` takes each `/stream` answer in pieces as it arrives, as the relay does "
                "(`podstream.stream_split.StreamSplitter`, the relay's splitter): receiving and splitting run "
                "in a thread while the entries before are decoded, hashed and written, and no answer is "
                "JSON-decoded whole (`tests/podstream/test_puller.py::"
                "test_first_file_is_written_before_the_answer_has_arrived`). Where the rest of its time goes "
                "(py-spy): h11's and the splitter's per-chunk work in the receiving thread "
                "(about 40 % of the pull's samples), and in the consumer writes, the part's base64 copied out "
                "of its entry, and fsync; loading the CA bundle when `pull` makes its `httpx.Client` costs "
                "about 0.17 s once per pull, inside the short form's time.",
            ]
        out += ["", f"![ingest against the bare loop]({img}/ingest.png)", ""]
    if "relay_latency" in figures:
        d = figures["relay_latency"]
        r, s = d["relay_ms"], d["sdk_ms"]
        out += [
            "## Latency",
            "",
            "Worker yield to subscriber receive, through the emulator's long poll and the relay's websocket, "
            "against the runpod SDK's own `job.stream()` loop on a second job fed at the same moments. "
            "Target: relay median <= 150 ms.",
            "",
            f"- relay: median {statistics.median(r):.0f} ms ({_met(statistics.median(r) <= 150)}), max "
            f"{max(r):.0f} ms, missed {d['relay_missed']}",
            f"- SDK poller: median {statistics.median(s):.0f} ms, max {max(s):.0f} ms, missed {d['sdk_missed']}",
            f"- ratio of medians SDK / relay: {statistics.median(s) / statistics.median(r):.1f}",
            "",
            f"![latency distributions]({img}/latency.png)",
            "",
        ]
    if "relay_memory" in figures:
        d = figures["relay_memory"]
        out += [
            "## Relay memory",
            "",
            f"Peak RSS (the kernel's `VmHWM`) of a fresh relay process per job size while the job streams live "
            f"to {d['subscribers']} subscribers. Target: flat in job size (biggest within 1.20x of the "
            "smallest) and under 200 MiB. Memory is bounded by configuration: the chunk cache alone may "
            "hold 32 MiB of encoded frames, which a job smaller than that cannot fill, so the sizes start "
            "above it.",
            "",
            "| job MB | idle MiB | peak MiB |",
            "| --- | --- | --- |",
            *(f"| {r['job_mb']:.0f} | {r['idle_mb']:.0f} | {r['peak_mb']:.0f} |" for r in d["rows"]),
            "",
            f"Biggest / smallest peak: {d['ratio']:.2f} "
            f"({_met(d['ratio'] <= 1.2 and max(r['peak_mb'] for r in d['rows']) < 200)}).",
            "",
            f"![memory against job size]({img}/memory.png)",
            "",
        ]
    if "worker_overlap" in figures:
        d = figures["worker_overlap"]
        out += [
            "## Worker overlap",
            "",
            "The real handler with a model of controlled generation time G; E (encode and send one item: "
            "base64, JSON, POST) is measured per item, from its first part to its last POST answered. "
            "Target: total <= 1.1 x the slower stage, max(N x G, sum of E); the total includes the "
            "pipeline's fill (the first item's generation and encoding, before anything can overlap). "
            "The model here (`worker.model.SleepModel`) sleeps to each step's deadline, so its generation "
            "releases the GIL as a GPU's does; encoding and the POSTs share one interpreter. The handler is "
            "the default one, its output cache included (each file is hashed and written to the cache in "
            "the encode thread before its parts are yielded). "
            + (
                "The cache is in a directory of the run's own; the HTTP connection is open before the clock "
                "starts, as the SDK's HTTP client already holds one. "
                f"The two cases alternate, {_reps(d)} runs each; each ratio is one run's (E and both bounds "
                "from that run), min-max."
                if _reps(d) > 1
                else "This run measured each case once, before the cases were repeated; its cache directory "
                "was the shared default one and its HTTP connection was opened inside the timed run."
            ),
            "",
            "| case | G s | E s (median) | total / max(N G, sum E) | total / serial (N G + sum E) | first file s |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for c in d["cases"]:
            # Runs repeated (A B A B A B): each run's ratio, min-max; one run before repeats were made.
            ratios = c.get("ratios", [c["ratio"]])
            serial = c.get("serial_ratios", [c.get("total_s", 0.0) / c.get("serial_s", 1.0)])
            first = c["first_s"] if isinstance(c["first_s"], list) else [c["first_s"]]
            out.append(
                f"| {c['case']} | {c['gen_s']:.3f} | {c['encode_median_s']:.3f} | {_spread(ratios, '.3f')} "
                f"({_met(max(ratios) <= 1.1)}) | {_spread(serial, '.3f')} | {_spread(first)} |"
            )
        out += [
            "",
            "Shape: the ratio is 1 plus the pipeline's fill over the slower stage, plus the gaps between "
            "items. Generation-dominated, generation runs back to back, and what nothing hides is the job's "
            "start and the last item's encoding and sending after the last generation, over N x G. "
            "Encode-dominated, the "
            "sending loop runs back to back from the first item's first part to the manifest (the next "
            "file is hashed and cached in the encode thread while the parts before it are POSTed), so "
            "what is left is the fill, the first item's G, hash and cache write and a progress envelope: "
            "one to two E, over N x E, which is why the ratio falls towards 1 as N grows. What spreads it "
            "from run to run is the machine's load: the loop, the encode thread and the sink server share "
            "the cores, and one late wake-up is milliseconds against an E of about 10. The serial ratio "
            "cannot go below max(N G, sum E) / (N G + sum E): 0.75 encode-dominated, where G = E / 3.",
            "",
        ]
    if "worker_wire" in figures:
        d = figures["worker_wire"]
        out += [
            "## Message size on the wire",
            "",
            f"The real runpod SDK worker loop against the emulator, {d['args']['items']} x "
            f"{d['args']['mb']:g} MB files, {d['verified']} verified: largest job-stream POST body "
            f"{d['largest_body']:,} bytes = {d['largest_body'] / d['cap']:.3f} of the 1,000,000-byte cap "
            f"(one result carrying every file would be {d['naive_body']:,} bytes)."
            + (
                f" The job took {d['seconds']:.0f} s ({d['args']['items'] * d['args']['mb'] / d['seconds']:.1f} "
                f"MB/s through the SDK's one POST at a time); the first file was out after "
                f"{d['first_file_s']:.1f} s."
                if "seconds" in d and "first_file_s" in d
                else ""
            ),
            "",
        ]
    if "worker_memory" in figures:
        d = figures["worker_memory"]
        out += [
            "## Worker memory",
            "",
            f"Peak RSS of the handler for N={d['args']['large']} vs N={d['args']['small']} items of "
            f"{d['args']['mb']:g} MB: {d['large']['peak_rss_mib']:.1f} MiB vs {d['small']['peak_rss_mib']:.1f} "
            f"MiB, ratio {d['ratio']:.3f} (target <= 1.10: {_met(d['ratio'] <= 1.10)}).",
            "",
        ]
    if "wire_assembler" in figures:
        d = figures["wire_assembler"]
        out += [
            "## Assembler",
            "",
            (
                f"`wire.Assembler` to disk against a bare base64 + sha256 + write loop, both decoding with "
                f"pybase64, {d['mb']:.0f} MB a run, runs alternating (bare, Assembler) "
                f"{len(d['ratios'])} times: ratio {_spread(d['ratios'])} (target >= 0.5: "
                f"{_met(min(d['ratios']) >= 0.5)}): the envelope's checks cost little beside decoding and "
                "hashing, so the ratio is near 1 and its spread is run-to-run noise."
                if "ratios" in d
                else f"`wire.Assembler` to disk against a bare base64 + sha256 + write loop, {d['mb']:.0f} MB: "
                f"ratio {d['ratio']:.2f}."
            ),
            "",
        ]
    if "input_upload" in figures:
        out += _input_upload_section(figures["input_upload"])
    if "relay_idle" in figures:
        out += _idle_section(figures["relay_idle"], full)
    if "cluster" in figures:
        from bench.cluster import report_section

        out += report_section(figures["cluster"])
    out += [
        f"The figures behind this page and its charts, as measured: [{img}/results.json]({img}/results.json).",
        "",
        "## Not measured here",
        "",
        "- GPU pipelines (SVD-XT, SDXL, LTX): these benchmarks run on the CPU; see above.",
    ]
    if "relay_idle" in figures and not full:
        out.append(
            "- 10,000 idle subscribers at full size: `make bench-full` measures it; "
            "the short form above gives the per-subscriber cost."
        )
    out.append("")
    del charts
    return "\n".join(out)


def _reps(d: dict[str, Any]) -> int:
    """How many runs of each case a worker_overlap result holds (1 before runs were repeated)."""
    return max(len(c.get("ratios", [0])) for c in d["cases"])


def _span(values: list[float], fmt: str = ".2f") -> str:
    return f"{min(values):{fmt}}-{max(values):{fmt}}"


def _input_upload_section(d: dict[str, Any]) -> list[str]:
    a, rows = d["args"], d["rows"]
    ratios = [r["ratio"] for r in rows]
    skipped = [r["again_s"] / r["relay_s"] for r in rows]
    run, inline, refs = d["run_body_bytes"], d["inline_body_bytes"], d["refs"]
    out = [
        "## Input upload",
        "",
        f"{a['images']} images of {a['kb']:g} KB ({d['mb']:.1f} MB; random bytes behind a PNG signature) "
        f"staged on a relay (auth on, fsync={a['fsync']}) through the real client path, "
        f"`podstream.uploads.upload_inputs` ({a['workers']} threads: check every file, hash them, ask "
        "`POST /v1/inputs/lookup` which the relay holds a batch at a time, `PUT /v1/inputs` each missing one "
        "with `X-Podstream-Sha256`, all overlapped), against the same bytes PUT by the same number "
        "of threads (one `httpx.Client`, no lookup) to a bare server in its own process (a raw ASGI app "
        "under uvicorn with h11, the relay's HTTP implementation) that reads each body and writes it to a "
        f"file{' and fsyncs it' if a['fsync'] == 'always' else ''}. Runs alternate relay, bare (after a "
        "small warm-up of each); each relay run stages fresh images. After each bare run the bare client's "
        "loop PUTs another fresh batch to the relay (no lookup, no `X-Podstream-Sha256`): the relay's side "
        "alone. Then the relay run's batch is uploaded again with `upload_inputs`, every file found held by "
        "its lookups. Target: relay / bare >= 0.8.",
        "",
        "| run | relay MB/s | bare MB/s | relay / bare | bare client to the relay / bare | server CPU s: relay, bare, relay with the bare client | again, all skipped: s (of the first) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    out += [
        f"| {i + 1} | {r['relay_mb_s']:.0f} | {r['bare_mb_s']:.0f} | {r['ratio']:.2f} | {r['raw_ratio']:.2f} | "
        f"{r['relay_cpu_s']:.2f}, {r['bare_cpu_s']:.2f}, {r['raw_cpu_s']:.2f} | "
        f"{r['again_s']:.3f} ({r['again_s'] / r['relay_s']:.2f}) |"
        for i, r in enumerate(rows)
    ]
    out += [
        "",
        f"**Relay / bare: {_span(ratios)}** (min-max over {len(rows)} runs each); the bare client's loop to "
        f"the relay: {_span([r['raw_ratio'] for r in rows])} of bare. A second upload of the same batch "
        f"takes {_span(skipped)} of the first.",
        "",
        f"The `/run` body of a job naming {refs:,} staged images by reference (`input:<sha256>` items, as "
        "`podstream submit --images` builds them), submitted through the relay, which sends RunPod (the "
        "emulator) each item as its reference plus the signature of its URL, and one URL template for the "
        "job: largest `/run` body "
        f"**{run:,} bytes** ({run / refs:.0f} per image; target < 200,000: {run / 200_000:.2f} of it). The "
        f"client's `POST /v1/jobs` body was {d['ref_body_bytes']:,} bytes. The same job with its "
        f"{d['ref_kb']:g} KB images inline as data URLs (computed, not sent: RunPod refuses a body over 10 MB) "
        f"would be {inline:,} bytes, **{inline / run:,.0f}x** the body by reference. Staging the {refs:,} "
        f"images took {d['stage_refs_s']:.1f} s.",
        "",
    ]
    return out


def _idle_section(d: dict[str, Any], full: bool) -> list[str]:
    soft, hard = d["relay_nofile"]
    out = [
        "## Many connections",
        "",
        f"Idle, authenticated websocket subscribers on one relay process (auth on: each sends a job-scoped "
        f"token in its `auth` frame, subscribes to a live job and reads its first record, then only answers "
        f"pings), added in steps. Target: 10,000 under 1 GB. Held "
        f"**{d['subscribers_held']:,} of {d['subscribers_asked']:,}**; relay RSS {d['idle_rss_mib']:.0f} MiB "
        f"with none, {d['rss_mib']:.0f} MiB with all (peak `VmHWM` {d['hwm_mib']:.0f} MiB); "
        f"**{d['per_subscriber_kib']:.1f} KiB per extra subscriber** (least-squares slope over the steps).",
        "",
        "| subscribers | relay RSS MiB | relay open fds |",
        "| --- | --- | --- |",
    ]
    out += [f"| {r['subscribers']:,} | {r['rss_mib']:.0f} | {r['fds']:,} |" for r in d["rows"]]
    out += [
        "",
        f"File descriptors: one per subscriber in the relay (and one in the bench's own process). The bench "
        f"raises its soft `RLIMIT_NOFILE` to the hard limit before starting the relay, which inherits it: "
        f"the relay ran with soft {soft:,} / hard {hard:,}. "
        + (
            "**The descriptor limit is what bound this run**: raise `ulimit -n`."
            if d["fd_limit_binds"]
            else "The descriptor limit did not bind in this run."
        )
        + " The relay accepts client connections up to `RLIMIT_NOFILE` less `FD_RESERVE` (an eighth, at "
        "least 64): with the common default soft limit of 1,024 that is 896 subscribers, so an operator "
        "expecting N subscribers needs `ulimit -n` of at least N x 8/7 + 64 (65,536 is a safe setting; "
        "docs/relay.md).",
        "",
    ]
    if not full:
        projected = d["rss_mib"] + (10_000 - d["subscribers_held"]) * d["per_subscriber_kib"] / 1024
        out += [
            f"At that slope 10,000 subscribers would take about {projected:.0f} MiB: a projection from this "
            "short run, not a measurement (`make bench-full` runs 10,000).",
            "",
        ]
    return out


def merged(raw: Path, fresh: dict[str, dict[str, Any]], failed: list[str]) -> dict[str, dict[str, Any]]:
    """The figures of the page's last results.json (`raw`) that this run did not measure, each stamped
    with its run, when and on what machine it was measured (the old page's where it says none), under this run's
    `fresh` figures. A benchmark that failed now is not kept:
    its old figure would read as this run's."""
    if not raw.exists():
        return dict(fresh)
    prior: dict[str, Any] = json.loads(raw.read_text())
    date = prior.get("machine", {}).get("date")
    machine = prior.get("machine")
    kept = {
        name: {
            **data,
            "measured": data.get("measured", date),
            "run": data.get("run", date),
            "machine": data.get("machine", machine),
        }
        for name, data in prior.items()
        if isinstance(data, dict) and "bench" in data and name not in fresh and name not in failed
    }
    return {**kept, **fresh}


def measured_on(data: dict[str, Any], machine: dict[str, Any]) -> dict[str, Any]:
    """The machine a figure was measured on, dated when it was: a kept figure's own, not this report's."""
    return {**machine, **(data.get("machine") or {}), "date": data.get("measured") or machine["date"]}


def page_from_results(docs: Path, *, full: bool) -> str:
    """The page `write` made from the figures it kept in `docs`/bench[-full]/results.json: what the
    committed page must read, word for word, with the report's current text (tests/bench/test_main.py)."""
    from bench.__main__ import benchmarks

    raw: dict[str, Any] = json.loads((docs / CHARTS[full] / "results.json").read_text())
    figures = {name: data for name, data in raw.items() if isinstance(data, dict) and "bench" in data}
    failed = list(raw.get("failed", []))
    not_run = [n for n in benchmarks() if n not in figures and n not in failed]
    full_page = (docs / PAGE[True]).exists()
    return markdown(figures, [], raw["machine"], full, failed, not_run, full_page)


def rewrite(docs: Path) -> list[Path]:
    """Both pages written again from their results.json (no benchmark runs; the charts stay): after a
    change to the report's text, `python -m bench --rewrite docs`."""
    written = []
    for full in (False, True):
        if (docs / CHARTS[full] / "results.json").exists():
            page = docs / PAGE[full]
            page.write_text(page_from_results(docs, full=full))
            written.append(page)
    return written


def write(results: Path, docs: Path, *, full: bool, failed: list[str], merge: bool = False) -> list[Path]:
    """Write `docs`/benchmarks.md and `docs`/bench/*.png (`--full`: benchmarks-full.md, bench-full/) from
    the JSON in `results`; return the paths. `merge`: keep the page's figures this run did not measure."""
    from bench.__main__ import benchmarks

    charts_dir = docs / CHARTS[full]
    machine = _results.machine()
    run = (
        f"{machine['date']} {uuid.uuid4().hex[:8]}"  # one id per report: minutes alone do not tell runs apart
    )
    figures = {name: {**data, "run": run, "machine": machine} for name, data in load(results).items()}
    if merge:
        figures = merged(charts_dir / "results.json", figures, failed)
    form = COMMAND[full]
    not_run = [n for n in benchmarks() if n not in figures and n not in failed]
    charts_dir.mkdir(parents=True, exist_ok=True)
    charts: list[Path] = []
    # each chart is labelled with the machine and date its figures were measured on (kept ones: theirs)
    if "relay_fanout" in figures:
        on = measured_on(figures["relay_fanout"], machine)
        charts.append(fanout_chart(figures["relay_fanout"], charts_dir, on, form))
    if "relay_ingest" in figures or "pull_ingest" in figures:
        on = measured_on(figures.get("relay_ingest") or figures["pull_ingest"], machine)
        charts.append(ingest_chart(figures, charts_dir, on, form))
    if "relay_latency" in figures:
        on = measured_on(figures["relay_latency"], machine)
        charts.append(latency_chart(figures["relay_latency"], charts_dir, on, form))
    if "relay_memory" in figures:
        on = measured_on(figures["relay_memory"], machine)
        charts.append(memory_chart(figures["relay_memory"], charts_dir, on, form))
    raw = charts_dir / "results.json"  # the figures behind the page and charts, as measured
    raw.write_text(json.dumps({"machine": machine, "full": full, "failed": failed, **figures}, indent=1))
    page = docs / PAGE[full]
    full_page = (docs / PAGE[True]).exists()
    page.write_text(markdown(figures, charts, machine, full, failed, not_run, full_page))
    return [page, *charts, raw]
