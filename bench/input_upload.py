"""Input upload: images staged on the relay (`PUT /v1/inputs`) vs a bare PUT loop, and the `/run` body of a
1,000-image job that names its images by reference.

1. Throughput. N images of M KB (random bytes behind a PNG signature: the relay checks only magic bytes)
   staged on a real relay (its own process, auth on, `fsync` as its default: always) through the real client
   path, `podstream.uploads.upload_inputs` (check every file, hash them in its threads, ask `POST
   /v1/inputs/lookup` which the relay holds, a batch at a time, `PUT` each missing one with
   `X-Podstream-Sha256`, all overlapped), against the baseline: the same bytes PUT by the same number of
   client threads (one `httpx.Client`, `content=` the file's bytes, no lookup) to a bare server in its own process (a raw ASGI
   app under uvicorn with h11, the relay's HTTP implementation) that reads the body and writes it to a file
   (fsynced when `--fsync always`). Runs alternate relay, bare, relay, bare... (`--reps` of each, after one
   small warm-up of each); each relay run stages fresh images (the relay addresses content: the same bytes
   again would be found held), the bare run after it sends those same bytes. After each bare run, the bare
   client's loop PUTs another fresh batch to the relay (no lookup, no `X-Podstream-Sha256`): the relay's own
   share of the gap, without the client path's. Then the relay run's batch is uploaded again through
   `upload_inputs`: every file found held by the lookups, nothing sent.
2. `/run` body. `--refs` more images are staged, a job naming them as `input:<sha256>` items (as
   `podstream submit --images` builds it) is submitted through the relay (`podstream.submit.submit`), and
   the largest `/run` body RunPod (the emulator) received is read from its request stats; the relay sends
   each item as its reference plus the signature of its URL, and one URL template for the job. Baseline: the body of the same job with the
   images inline as data URLs (`podstream submit` without a relay), computed, not sent: RunPod refuses a body
   over 10 MB.

    python -m bench.input_upload                                   # 400 x 256 KB, 3 reps; 1,000 refs of 64 KB
    python -m bench.input_upload --images 500 --kb 1024 --ref-kb 1024
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench import _results
from bench._relay_stack import free_port, stack, wait_healthy
from podstream import submit as submit_mod
from podstream.uploads import DEFAULT_WORKERS, UploadedInput, upload_inputs

PNG = b"\x89PNG\r\n\x1a\n"
API_KEY = "ps_bench_input_upload"
#: The relay's /run body target for 1,000 images, and RunPod's cap on a /run body.
TARGET_RUN_BYTES = 200_000
RUNPOD_CAP = 10_000_000
WARMUP_IMAGES = 4


def make_images(directory: Path, count: int, kb: float) -> list[Path]:
    """`count` distinct files of `kb` KB: a PNG signature, then random bytes."""
    directory.mkdir(parents=True)
    size = int(kb * 1024)
    paths = []
    for i in range(count):
        path = directory / f"img-{i:04d}.png"
        path.write_bytes(PNG + os.urandom(size - len(PNG)))
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------ the bare server


def serve_bare(port: int, directory: Path, fsync: bool) -> None:
    """The baseline server: `PUT /<name>` reads the body and writes it to `directory/<name>` (and fsyncs it
    with `fsync`), in a worker thread as the relay writes; anything else answers 200 (its health check)."""
    import uvicorn

    def write(path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
    Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

    async def app(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        status = 200
        if scope["method"] == "PUT":
            body = bytearray()
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            await asyncio.to_thread(write, directory / scope["path"].rsplit("/", 1)[-1], bytes(body))
            status = 201
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"{}"})

    uvicorn.run(app, host="127.0.0.1", port=port, http="h11", lifespan="off", log_level="warning")


def put_loop(url: Callable[[Path], str], paths: list[Path], workers: int, headers: dict[str, str]) -> float:
    """The bare client: PUT every file's bytes to `url(path)`, `workers` at a time, nothing else: seconds,
    counting the making of its `httpx.Client` and threads as `upload_inputs`' time counts its own."""
    start = time.perf_counter()
    with httpx.Client(timeout=60, headers=headers) as http, ThreadPoolExecutor(max_workers=workers) as pool:

        def put(path: Path) -> None:
            r = http.put(url(path), content=path.read_bytes())
            r.raise_for_status()

        list(pool.map(put, paths))
    return time.perf_counter() - start


def bare_upload(url: str, paths: list[Path], workers: int, tag: str) -> float:
    """The baseline: the bare client to the bare server."""
    return put_loop(lambda path: f"{url}/{tag}-{path.name}", paths, workers, {})


def relay_put_loop(url: str, paths: list[Path], workers: int) -> float:
    """The bare client to the relay (`PUT /v1/inputs`, no lookup, no `X-Podstream-Sha256`): what the relay's
    side costs, without the client's."""
    return put_loop(lambda _: f"{url}/v1/inputs", paths, workers, {"Authorization": f"Bearer {API_KEY}"})


def relay_upload(url: str, paths: list[Path], workers: int) -> tuple[float, list[UploadedInput]]:
    """`upload_inputs` of every file to the relay: (seconds, what it answered)."""
    start = time.perf_counter()
    uploaded = upload_inputs(paths, relay=url, key=API_KEY, workers=workers)
    return time.perf_counter() - start, uploaded


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


# ----------------------------------------------------------------------------------------------- the run


def inline_body_bytes(job_input: dict[str, Any], paths: list[Path]) -> int:
    """The `POST /run` body of `job_input` with each item's image the file as a data URL (what `podstream
    submit` sends without a relay), counted without building it: a data URL is base64 and `data:`/`;`/`,`,
    which JSON writes as they are, so its body is the body with empty images plus each data URL's length."""
    empty = {**job_input, "items": [{**item, "image": ""} for item in job_input["items"]]}
    total = len(json.dumps({"input": empty}).encode())
    for index, path in enumerate(paths):
        url = str(submit_mod.image_item(path)["image"])
        if index == 0:
            assert len(json.dumps(url)) == len(url) + 2  # nothing in it is escaped
        total += len(url)
    return total


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    batches = [make_images(tmp / f"rep{rep}", args.images, args.kb) for rep in range(args.reps)]
    raw_batches = [make_images(tmp / f"raw{rep}", args.images, args.kb) for rep in range(args.reps)]
    warmup = make_images(tmp / "warmup", WARMUP_IMAGES, args.kb)
    raw_warmup = make_images(tmp / "raw-warmup", WARMUP_IMAGES, args.kb)
    refs = make_images(tmp / "refs", args.refs, args.ref_kb)
    bare_dir = tmp / "bare"
    bare_dir.mkdir()
    port = free_port()
    bare_url = f"http://127.0.0.1:{port}"
    bare = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.input_upload", "--serve-bare", str(port), str(bare_dir), args.fsync
    )
    total = args.images * int(args.kb * 1024)
    rows: list[dict[str, float]] = []
    try:
        await wait_healthy(bare_url, timeout_s=60, process=bare)
        bare_process = psutil.Process(bare.pid)
        async with stack(fsync=args.fsync, api_key=API_KEY) as s:
            relay_process = psutil.Process(s.process.pid)
            await asyncio.to_thread(relay_upload, s.relay_url, warmup, args.workers)
            await asyncio.to_thread(bare_upload, bare_url, warmup, args.workers, "warmup")
            await asyncio.to_thread(relay_put_loop, s.relay_url, raw_warmup, args.workers)
            for rep, paths in enumerate(batches):
                before = cpu_s(relay_process)
                relay_s, uploaded = await asyncio.to_thread(relay_upload, s.relay_url, paths, args.workers)
                relay_cpu = cpu_s(relay_process) - before
                assert not any(u.skipped for u in uploaded), "a fresh image was already held"
                before = cpu_s(bare_process)
                bare_s = await asyncio.to_thread(bare_upload, bare_url, paths, args.workers, f"r{rep}")
                bare_cpu = cpu_s(bare_process) - before
                before = cpu_s(relay_process)
                raw_s = await asyncio.to_thread(relay_put_loop, s.relay_url, raw_batches[rep], args.workers)
                raw_cpu = cpu_s(relay_process) - before
                again_s, again = await asyncio.to_thread(relay_upload, s.relay_url, paths, args.workers)
                assert all(u.skipped for u in again), "a second upload of the same batch sent something"
                rows.append({
                    "relay_s": relay_s, "bare_s": bare_s, "ratio": bare_s / relay_s, "again_s": again_s,
                    "relay_mb_s": total / relay_s / 1e6, "bare_mb_s": total / bare_s / 1e6,
                    "relay_cpu_s": relay_cpu, "bare_cpu_s": bare_cpu, "raw_s": raw_s,
                    "raw_mb_s": total / raw_s / 1e6, "raw_ratio": bare_s / raw_s, "raw_cpu_s": raw_cpu,
                })  # fmt: skip
                r = rows[-1]
                print(
                    f"rep {rep + 1}: relay {r['relay_mb_s']:.0f} MB/s ({relay_s:.2f} s, server CPU {relay_cpu:.2f} s), "
                    f"bare {r['bare_mb_s']:.0f} MB/s ({bare_s:.2f} s, CPU {bare_cpu:.2f} s), "
                    f"relay/bare {r['ratio']:.2f}; bare client -> relay {r['raw_mb_s']:.0f} MB/s "
                    f"({r['raw_ratio']:.2f} of bare, CPU {raw_cpu:.2f} s); again (all skipped) {again_s:.3f} s",
                    flush=True,
                )
            stage_s, staged = await asyncio.to_thread(relay_upload, s.relay_url, refs, args.workers)
            job_input = submit_mod.build_input(images=staged)
            ref_body = len(json.dumps({"input": job_input}).encode())  # client -> relay
            s.emu.reset_stats()
            start = time.perf_counter()
            job = await asyncio.to_thread(submit_mod.submit, job_input, relay=s.relay_url, key=API_KEY)
            submit_s = time.perf_counter() - start
            run_stats = s.emu.stats()["routes"]["run"]
            assert run_stats["requests"] == 1 and run_stats["statuses"] == {"200": 1}, run_stats
            run_body = int(run_stats["max_request_bytes"])
            print(f"submitted job {job.id}", flush=True)
    finally:
        if bare.returncode is None:
            bare.terminate()
            await asyncio.wait_for(bare.wait(), 30)
    inline = inline_body_bytes(job_input, refs)
    return {
        "mb": total / 1e6, "rows": rows, "refs": args.refs, "ref_kb": args.ref_kb, "stage_refs_s": stage_s,
        "ref_body_bytes": ref_body, "run_body_bytes": run_body, "inline_body_bytes": inline,
        "submit_s": submit_s,
    }  # fmt: skip


def span(values: list[float], fmt: str = ".2f") -> str:
    return f"{min(values):{fmt}}-{max(values):{fmt}}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=400, help="images per upload run (N)")
    parser.add_argument("--kb", type=float, default=256.0, help="size of each image in KB (M)")
    parser.add_argument("--reps", type=int, default=3, help="runs of the relay and of the bare loop each")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="parallel uploads (both)")
    parser.add_argument("--refs", type=int, default=1000, help="images of the job submitted by reference")
    parser.add_argument("--ref-kb", type=float, default=64.0, help="size of each of those images in KB")
    parser.add_argument("--fsync", choices=("always", "never"), default="always")
    parser.add_argument("--serve-bare", nargs=3, metavar=("PORT", "DIR", "FSYNC"), help=argparse.SUPPRESS)
    _results.add_json_option(parser)
    args = parser.parse_args()
    if args.serve_bare:
        port, directory, fsync = args.serve_bare
        serve_bare(int(port), Path(directory), fsync == "always")
        return
    with tempfile.TemporaryDirectory(prefix="podstream-bench-inputs-") as tmp:
        figures = asyncio.run(run(args, Path(tmp)))
    rows = figures["rows"]
    ratios = [r["ratio"] for r in rows]
    print(
        f"\nupload: {args.images} images x {args.kb:g} KB = {figures['mb']:.1f} MB per run, {args.workers} "
        f"parallel, fsync={args.fsync}, {args.reps} reps (relay, bare interleaved)"
    )
    print(f"relay (upload_inputs -> PUT /v1/inputs): {span([r['relay_mb_s'] for r in rows], '.0f')} MB/s")
    print(f"bare PUT loop -> file:                   {span([r['bare_mb_s'] for r in rows], '.0f')} MB/s")
    print(f"ratio relay/bare: {span(ratios)} (median {statistics.median(ratios):.2f}; target >= 0.8)")
    print(
        f"the bare client's PUT loop to the relay (no lookup, no sha256 header): {span([r['raw_mb_s'] for r in rows], '.0f')} "
        f"MB/s, {span([r['raw_ratio'] for r in rows])} of bare"
    )
    again = [r["again_s"] for r in rows]
    first = [r["again_s"] / r["relay_s"] for r in rows]
    print(
        f"second upload of the same batch (all found held by the lookups): {span(again, '.3f')} s ({span(first)} of the first)"
    )
    run_body, inline = figures["run_body_bytes"], figures["inline_body_bytes"]
    print(
        f"\n/run body for {args.refs:,} images of {args.ref_kb:g} KB by reference: {run_body:,} bytes "
        f"({run_body / args.refs:.0f} per image; target < {TARGET_RUN_BYTES:,}: {run_body / TARGET_RUN_BYTES:.2f} of it)"
    )
    print(
        f"  the client's POST /v1/jobs body: {figures['ref_body_bytes']:,} bytes; submit took {figures['submit_s']:.2f} s"
    )
    print(
        f"  inline (data URLs), computed: {inline:,} bytes ({inline / RUNPOD_CAP:.1f}x RunPod's 10 MB cap); "
        f"inline/ref {inline / run_body:,.0f}x"
    )
    print(f"  staging those {args.refs:,} images took {figures['stage_refs_s']:.1f} s")
    _results.write(args.json, "input_upload", args, figures)


if __name__ == "__main__":
    main()
