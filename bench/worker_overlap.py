"""Overlap: generation of item k+1 runs while item k is encoded and its parts are POSTed.

A model whose generation time is controlled (G seconds per item, reported in steps) feeds the real
handler; each envelope is POSTed, as the runpod SDK does, to a local HTTP server that reads and discards
the body, and the consumer awaits each POST before pulling the next envelope (the SDK's behaviour).
Baselines measured in the same run: N*G (pure generation) and the serial time N*(G + E), E being the time
to send one item's envelopes alone. Target: total <= 1.1 * N * G, and the first file on the wire after
about one item's time.

    python -m bench.worker_overlap                       # 20 items, G = 0.25 s, 2 MB files
    python -m bench.worker_overlap --items 50 --gen 0.5 --mb 4
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from worker.handler import make_handler
from worker.model import SleepModel


class _Discard(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def sink_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Discard)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/job-stream"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def run(items: int, gen_s: float, size: int, url: str) -> tuple[float, float]:
    handler = make_handler(SleepModel(gen_s, size, steps=5))
    job = {"id": "bench", "input": {"task": "text-to-video", "items": [{"prompt": "x"}] * items}}
    first = 0.0
    async with httpx.AsyncClient(timeout=60) as client:
        started = time.monotonic()
        async for envelope in handler(job):
            body = json.dumps({"output": envelope}, ensure_ascii=False)  # what the SDK sends
            await client.post(url, content=body)
            if not first and envelope["type"] == "part" and envelope["part"] == envelope["parts"] - 1:
                first = time.monotonic() - started
        return time.monotonic() - started, first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_overlap")
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--gen", type=float, default=0.25, help="generation seconds per item (G)")
    parser.add_argument("--mb", type=float, default=2.0)
    args = parser.parse_args(argv)
    size = int(args.mb * 1_000_000)
    with sink_server() as url:
        send_one, _ = asyncio.run(run(1, 0.0, size, url))  # E: one item, no generation time
        total, first = asyncio.run(run(args.items, args.gen, size, url))
    pure = args.items * args.gen
    serial = args.items * (args.gen + send_one)
    print(
        f"{args.items} items, G = {args.gen:.3f} s, files of {size:,} bytes, E (send one item) = {send_one:.3f} s"
    )
    print(f"total {total:.2f} s; N*G = {pure:.2f} s: ratio {total / pure:.3f} (target <= 1.1)")
    print(f"serial baseline N*(G+E) = {serial:.2f} s: ratio total/serial {total / serial:.3f}")
    print(f"first file complete on the wire after {first:.2f} s = {first / args.gen:.2f} G")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
