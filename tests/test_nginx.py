"""deploy/nginx.conf as shipped, run by a real nginx (Debian's, `apt-get install nginx`) on loopback in front of
two relay replicas in cluster mode (redis-server and moto's S3): what a client does through the load balancer
works as it does against one relay.

The shipped files change only where they must for a test: `listen` and the replicas' ports point at free
loopback ports, and the temp directories (Debian's are under /var/lib/nginx) are put under the test's own
directory so that nginx runs without root. Everything about websockets, buffering, Host and body limits is
the shipped configuration's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from bench._relay_stack import free_port
from podstream import wire
from podstream.emulator import Emulator, EmulatorConfig
from podstream.frames import CloseCode
from relay.api.auth import generate_key, hash_key
from tests.relay.conftest import (
    API_KEY,
    Received,
    RelayServer,
    ScriptedWorker,
    cluster_backend,
    consume,
    make_files,
    pack,
    recv,
    relay_settings,
    sha,
    ws_client,
)
from tests.relay.storage.cluster.test_replica import start_replica

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
#: The ports of the replicas in deploy/podstream-upstreams.conf, as shipped.
SHIPPED_REPLICA_PORTS = ("8701", "8702")
#: Above the 8 MiB a worker uploads directly instead of streaming (and above nginx's default 1 MiB body limit).
UPLOAD_BYTES = 9 * 1024 * 1024
INSTALL = "install it: `sudo apt-get install nginx` (Debian/Ubuntu; .ci/run does), or put nginx 1.9+ on PATH"


def nginx_binary() -> str:
    """The nginx to run; a machine without one fails the test (it is part of what `make test` needs)."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        pytest.fail(f"nginx is not installed: {INSTALL}")
    return found


def temp_paths(nginx: str, directory: Path) -> str:
    """`*_temp_path` directives for every temp directory this nginx creates at start (one per HTTP module
    compiled in), under `directory`."""
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=True).stderr
    names = ["client_body", "proxy"] + [
        module for module in ("fastcgi", "uwsgi", "scgi") if f"--without-http_{module}_module" not in built
    ]
    return "".join(f"    {name}_temp_path {directory / 'temp' / name};\n" for name in names)


def shipped_config(nginx: str, directory: Path, port: int, replica_ports: list[int]) -> Path:
    """deploy/nginx.conf and deploy/podstream-upstreams.conf in `directory`, on loopback ports."""
    conf = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    assert conf.count("listen 8710;") == 1, "deploy/nginx.conf listens on 8710 once"
    conf = conf.replace("listen 8710;", f"listen 127.0.0.1:{port};")
    conf = conf.replace("http {\n", "http {\n" + temp_paths(nginx, directory), 1)
    upstreams = (DEPLOY / "podstream-upstreams.conf").read_text(encoding="utf-8")
    assert tuple(re.findall(r"^server 127\.0\.0\.1:(\d+) ", upstreams, re.MULTILINE)) == SHIPPED_REPLICA_PORTS
    for shipped, actual in zip(SHIPPED_REPLICA_PORTS, replica_ports, strict=True):
        upstreams = upstreams.replace(f"127.0.0.1:{shipped} ", f"127.0.0.1:{actual} ")
    (directory / "temp").mkdir(parents=True)
    (directory / "podstream-upstreams.conf").write_text(upstreams, encoding="utf-8")
    path = directory / "nginx.conf"
    path.write_text(conf, encoding="utf-8")
    return path


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def running_nginx(directory: Path, replica_ports: list[int]) -> Iterator[Nginx]:
    """nginx in the foreground with the shipped configuration, its prefix, pid and logs in `directory`;
    stopped (and its workers with it) on exit."""
    nginx = nginx_binary()
    directory.mkdir(parents=True)
    port = free_port()
    conf = shipped_config(nginx, directory, port, replica_ports)
    # Under root, nginx would hand its workers to `nobody`, who cannot enter the test's private tmp_path.
    main = f"daemon off; pid {directory / 'nginx.pid'};" + (" user root;" if os.geteuid() == 0 else "")
    log = directory / "nginx.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [nginx, "-p", str(directory), "-c", str(conf), "-e", "stderr", "-g", main],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    front = Nginx(process, port, log)
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                raise AssertionError(f"nginx exited at start ({process.returncode}):\n{front.logs()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"nginx did not listen within 10 s:\n{front.logs()}")
            time.sleep(0.02)
        yield front
    finally:
        process.send_signal(signal.SIGTERM)  # fast shutdown: the master stops its workers
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.asynccontextmanager
async def two_replicas(tmp_path: Path, emu: Emulator, api_keys: str) -> AsyncIterator[list[RelayServer]]:
    """Two replicas on one redis-server and one bucket (moto); stopped on exit."""
    started: list[RelayServer] = []
    with cluster_backend(tmp_path) as cluster:
        try:
            for name in ("relay-1", "relay-2"):
                settings = relay_settings(tmp_path / name, emu, api_keys=api_keys)
                started.append(await start_replica(settings, dataclasses.replace(cluster, replica_id=name)))
            yield started
        finally:
            for replica in reversed(started):
                with contextlib.suppress(Exception):
                    await replica.stop()


async def sse_records(http: httpx.AsyncClient, url: str, out: asyncio.Queue[dict[str, Any]]) -> None:
    """Each SSE record of `url` into `out` as it arrives, until `done`."""
    async with http.stream("GET", url, headers={"authorization": f"Bearer {API_KEY}"}) as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                record = json.loads(line.removeprefix("data: "))
                await out.put(record)
                if record["k"] == "done":
                    return


async def test_the_shipped_nginx_conf_in_front_of_two_replicas(tmp_path: Path) -> None:
    """Through nginx: a browser's websocket on a non-default port (Host keeps its port, so the Origin check
    passes; another Origin is still refused), SSE records as they happen, a 9 MiB worker upload (no 413 from
    nginx), and Range (206, 416) on the media URLs the replicas hand out, which name nginx."""
    upload_key = generate_key()
    keys = f"{hash_key(API_KEY)},uploader={hash_key(upload_key)}/upload"
    config = EmulatorConfig.for_tests(heartbeat_grace_s=60.0)
    async with (
        Emulator(config).serve(host="127.0.0.1", port=0) as emu,
        two_replicas(tmp_path, emu, keys) as replicas,
    ):
        worker = ScriptedWorker(emu)
        try:
            with running_nginx(tmp_path / "nginx", [r.port for r in replicas]) as front:
                try:
                    await through(front, worker, upload_key)
                except BaseException:
                    print(f"nginx log:\n{front.logs()}")
                    raise
        finally:
            await worker.close()


async def through(front: Nginx, worker: ScriptedWorker, upload_key: str) -> None:
    async with httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {API_KEY}"}) as http:
        submitted = await http.post(f"{front.url}/v1/jobs", json={"input": {}})
        assert submitted.status_code == 201, submitted.text
        job, token = submitted.json()["id"], submitted.json()["token"]
        ws_url = f"ws://127.0.0.1:{front.port}/v1/ws"
        assert submitted.json()["urls"]["ws"] == ws_url, "the replica sees the Host nginx was asked for"
        await worker.take()

        # A page served by the relay (its Origin is the relay's, port included) may open a websocket...
        async with ws_client(ws_url, token, origin=front.url) as ws:
            await ws.send(pack({"t": "sub", "job": job, "from": 0}))
            assert (await recv(ws))["t"] == "subscribed"
            # ...and a page on another origin may not (the check is on: the first one passing means something).
            async with websockets.connect(ws_url, origin="http://127.0.0.1:1") as refused:  # type: ignore[arg-type]
                bye = await recv(refused)
                assert bye["t"] == "bye" and bye["code"] == CloseCode.ORIGIN_NOT_ALLOWED, bye

            records: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            sse = asyncio.ensure_future(sse_records(http, f"{front.url}/v1/jobs/{job}/events", records))
            try:
                # Live: a record reaches the SSE client while the job (and its stream) goes on.
                envs = wire.Envelopes(job)
                await worker.post(job, envs.progress(0, 1, 2))
                while (record := await asyncio.wait_for(records.get(), 10))["k"] != "progress":
                    assert record["k"] == "status", record
                assert record["step"] == 1 and not sse.done()

                big = make_files(1, UPLOAD_BYTES)[0]
                uploaded = await http.put(
                    f"{front.url}/v1/uploads/{job}/0", content=big,
                    headers={"authorization": f"Bearer {upload_key}", "x-podstream-sha256": sha(big),
                             "content-type": "video/mp4"},
                )  # fmt: skip
                assert uploaded.status_code == 201, uploaded.text[:300]
                url = uploaded.json()["url"]
                small = make_files(1, 200_000)[0]
                await worker.post(job, envs.ref(0, url=url, mime="video/mp4", size=len(big), sha256=sha(big)))
                for envelope in envs.parts(1, small, mime="image/png", part_bytes=64 * 1024):
                    await worker.post(job, envelope)
                parts = wire.part_count(len(small), 64 * 1024)
                entries = [
                    wire.ManifestItem(0, "", "ref", "video/mp4", len(big), sha(big), 0, url),
                    wire.ManifestItem(1, "", "ok", "image/png", len(small), sha(small), parts),
                ]
                for envelope in envs.manifest(entries):
                    await worker.post(job, envelope)
                await worker.done(job)

                got = await consume(ws, job, Received(), seconds=30)
                assert bytes(got.files[0]) == big and bytes(got.files[1]) == small
                await asyncio.wait_for(sse, 30)
            finally:
                sse.cancel()
                with contextlib.suppress(BaseException):
                    await sse
            streamed = [records.get_nowait() for _ in range(records.qsize())]
            assert [r["k"] for r in streamed if r["k"] != "status"] == ["item", "item", "done"]

        manifest = (await http.get(f"{front.url}/v1/jobs/{job}")).json()
        media = manifest["items"][1]["url"]
        assert media.startswith(f"{front.url}/v1/jobs/{job}/media/1?"), media
        part = await http.get(media, headers={"range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == small[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{len(small)}"
        past = await http.get(media, headers={"range": f"bytes={len(small)}-"})
        assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(small)}"
        whole = await http.get(manifest["items"][0]["url"])
        assert whole.status_code == 200 and whole.content == big
