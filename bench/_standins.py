"""RunPod for the ingest benchmarks (`relay_ingest`, `pull_ingest`): each in its own process, as RunPod is.

- `emulator()`: `podstream emulator`, with a job whose envelopes are all buffered (`buffered_job`), posted
  there as a worker would. The emulator encodes each entry when it is posted (as RunPod does, on its own
  machines), so a `/stream` answer costs it a join and a socket write, not a JSON encoding inside the
  consumer's measured time.
- `pre_encoded()`: a plain `http.server` answering `/stream` with one answer read from a file, for the same
  consumer with nearly nothing else running beside it.

Both run outside the benchmark's process: a RunPod stand-in on the consumer's event loop (the relay
benchmarks' in-process emulator) would share its interpreter with the benchmark's own clients.

    python -m bench._standins PORT ANSWER_FILE JOB     # the pre-encoded stand-in (what `pre_encoded` runs)
"""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench._relay_stack import free_port

POD = "bench-pod"
#: The scripted worker pings as the SDK does (every 10 s), so the emulator keeps its job alive.
PING_EVERY_S = 10.0


@contextlib.contextmanager
def _serving(module: str, *args: str, probe: str, what: str) -> Iterator[str]:
    """`python -m module *args` (`{port}` in args: a free port) in its own process, until `GET base/probe`
    answers 200 (60 s at most); yields the endpoint URL `http://127.0.0.1:PORT/v2/bench`."""
    port = free_port()
    argv = [sys.executable, "-m", module, *(a.replace("{port}", str(port)) for a in args)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v2/bench"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/{probe}", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{what} did not start")
            time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        process.wait(30)


@contextlib.contextmanager
def emulator() -> Iterator[str]:
    """`podstream emulator` in its own process; yields the endpoint URL."""
    args = ("emulator", "--port", "{port}", "--endpoint-id", "bench")
    with _serving("podstream", *args, probe="health", what="the emulator") as base:
        yield base


def buffered_job(base: str, envelopes: list[dict[str, Any]]) -> str:
    """A COMPLETED job at the emulator with every envelope buffered on its stream, posted as a worker would."""
    with httpx.Client(timeout=60) as http:
        job: str = http.post(f"{base}/run", json={"input": {}}).json()["id"]
        while (taken := http.get(f"{base}/job-take/{POD}", params={"gpu": "CPU"})).status_code != 200:
            pass
        assert taken.json()["id"] == job
        # A ping first: the emulator fails a job whose worker's last ping is older than its grace, and this
        # pod's last ping may be from a job buffered minutes ago (a benchmark that buffers one per run).
        http.get(f"{base}/ping/{POD}", params={"job_id": job}).raise_for_status()
        pinged = time.monotonic()
        for envelope in envelopes:
            if time.monotonic() - pinged > PING_EVERY_S:  # a big job takes longer to post than the grace
                http.get(f"{base}/ping/{POD}", params={"job_id": job}).raise_for_status()
                pinged = time.monotonic()
            http.post(
                f"{base}/job-stream/{POD}/{job}",
                params={"isStream": "false"},
                json={"output": {**envelope, "job": job}},
            ).raise_for_status()
        http.post(f"{base}/job-done/{POD}/{job}", json={"output": []}).raise_for_status()
    return job


def stream_stats(base: str) -> dict[str, Any]:
    """The emulator's request stats of its `/stream` route."""
    stats: dict[str, Any] = httpx.get(base.split("/v2/")[0] + "/_emulator/stats").json()
    return dict(stats["routes"]["stream"])


@contextlib.contextmanager
def pre_encoded(body: bytes, job: str) -> Iterator[str]:
    """A stand-in for RunPod serving `body`, encoded before the clock starts, as the job's one `/stream`
    answer (then an empty COMPLETED one); yields the endpoint URL."""
    with tempfile.NamedTemporaryFile(prefix="podstream-bench-answer-") as answer:
        answer.write(body)
        answer.flush()
        args = ("{port}", answer.name, job)
        with _serving(
            "bench._standins", *args, probe=f"status/{job}", what="the pre-encoded stand-in"
        ) as base:
            yield base


class _PreEncoded(http.server.BaseHTTPRequestHandler):
    """RunPod's `/stream` and `/status` for one finished job whose answer was encoded in advance."""

    protocol_version = "HTTP/1.1"
    answer: bytes = b""
    job = ""
    served = False

    def do_GET(self) -> None:
        kind = self.path.split("?")[0].split("/")[-2:]
        if kind == ["stream", self.job]:
            cls = type(self)
            empty = {"id": self.job, "status": "COMPLETED", "stream": []}
            body = cls.answer if not cls.served else json.dumps(empty).encode()
            cls.served = True
        elif kind == ["status", self.job]:
            body = json.dumps({"id": self.job, "status": "COMPLETED", "output": []}).encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_pre_encoded(port: int, answer_file: str, job: str) -> None:
    _PreEncoded.answer = Path(answer_file).read_bytes()
    _PreEncoded.job = job
    http.server.ThreadingHTTPServer(("127.0.0.1", port), _PreEncoded).serve_forever()


if __name__ == "__main__":
    serve_pre_encoded(int(sys.argv[1]), sys.argv[2], sys.argv[3])
