"""`make chaos`: one bounded run of kills, faults, floods and fuzz against a real relay, and one table.

    python -m bench.chaos [--items 60] [--kills 5] [--probes 600] [--flood 300] [--seed N]

A relay process (`podstream relay`, API key, fsync on) follows one job on the RunPod emulator while, at the
same time:
- **kills**: the relay is SIGKILLed at random moments and started again on the same data directory;
- **faults**: the emulator answers the relay's `/stream` polls with 429/500/503 storms and the worker's
  stream POSTs with 503s (the worker retries, as the SDK does);
- **flood**: idle TCP connections, half-sent requests and websockets that never authenticate;
- **probes**: hostile HTTP requests (non-ASCII digits, NaN, deep nesting, garbage bodies, random paths and
  methods) and garbage websocket frames.

Then every item is checked over HTTP against the bytes the worker sent. The table: kills survived, faults
injected, probes tried, files lost (each either reported, by an `error` record of the job naming that item,
or silent: a job-level record such as `gap` or `unrecovered` says that something was lost, not what, so it
reports no item; a silent loss is a broken promise), and 500s. A SIGKILL between the relay draining a `/stream`
answer and writing it loses those envelopes inside "RunPod"; a real worker's output cache answers the
relay's resend job, this scripted worker has none, so such a loss ends as a reported `unrecovered` error.

`tests/bench/test_chaos.py` runs a short form in CI and asserts: every kill survived, no silent loss, no 500.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgpack
import websockets

from bench._relay_stack import Relay
from podstream import wire
from podstream.emulator import Emulator, EmulatorConfig
from relay.api.auth import generate_key, hash_key

CLOSE_CODES = frozenset({4000, 4001, 4002, 4003, 4004, 4005, 4500, 4501, 4502, 4503, 4504, 1006, 1009, 1012})


@dataclass
class Tally:
    kills: int = 0
    kills_survived: int = 0
    faults: int = 0
    probes: int = 0
    files: int = 0
    files_lost: int = 0
    losses_reported: int = 0
    #: The items lost without an error record naming them.
    silent: list[int] = field(default_factory=list)
    server_errors: int = 0
    bad_close_codes: int = 0
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        rows = [
            ("kills survived", f"{self.kills_survived} of {self.kills}"),
            ("faults injected", str(self.faults)),
            ("probes tried", str(self.probes)),
            (
                "files lost",
                f"{self.files_lost} of {self.files} ({self.losses_reported} reported by an error record naming "
                f"the item, {len(self.silent)} silent{': items ' if self.silent else ''}"
                f"{', '.join(map(str, self.silent))})",
            ),
            ("500s", str(self.server_errors)),
            ("undocumented close codes", str(self.bad_close_codes)),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
        return "\n".join(["chaos run", "-" * (width + 30), *lines, *self.notes])

    @property
    def ok(self) -> bool:
        return (
            self.kills_survived == self.kills
            and not self.silent
            and self.files_lost == self.losses_reported
            and self.server_errors == 0
            and self.bad_close_codes == 0
        )


def chaos_relay(runpod_url: str, data_dir: Path, key: str) -> Relay:
    """The relay under test: auth on with `key`, and short timeouts and backoffs, so that it shakes off a
    kill or a storm within the run; its output goes to `relay.log` beside `data_dir`."""
    env = {
        **os.environ, "PODSTREAM_RUNPOD_KEY": "chaos", "PODSTREAM_API_KEYS": hash_key(key),
        "PODSTREAM_INPUT_SCHEMA": "off", "PODSTREAM_HEADER_TIMEOUT_S": "2", "PODSTREAM_AUTH_TIMEOUT_S": "2",
        "PODSTREAM_BACKOFF_MAX_S": "1", "PODSTREAM_RECOVERY_TIMEOUT_S": "5",
    }  # fmt: skip
    return Relay(
        runpod_url, data_dir, "--poll-wait-ms", "1000", "--log-level", "warning", env=env,
        log=data_dir.parent / "relay.log",
    )  # fmt: skip


async def play_worker(
    emu: Emulator,
    files: list[bytes],
    tally: Tally,
    rng: random.Random,
    kills: int,
    kill_requests: asyncio.Queue[asyncio.Event],
) -> str:
    """Take the job and post its envelopes (retrying 5xx, as the SDK does), with stream 503s injected.

    At `kills` points spread over the job the worker asks for a relay kill and waits until it happened (not
    for the restart: it goes on posting while the relay is down), so every kill lands mid-job however slow
    the machine is.
    """
    base = emu.endpoint_url
    async with httpx.AsyncClient(timeout=30) as http:
        for _ in range(100):
            r = await http.get(f"{base}/job-take/chaos-pod", params={"gpu": "CPU"})
            if r.status_code == 200:
                job: str = r.json()["id"]
                break
        else:
            raise RuntimeError("no job to take")
        env = wire.Envelopes(job)
        envelopes: list[dict[str, Any]] = []
        entries = []
        for i, data in enumerate(files):
            envelopes.extend(
                env.parts(i, data, mime="application/octet-stream", id=f"f{i}", part_bytes=16384)
            )
            sha = hashlib.sha256(data).hexdigest()
            parts = wire.part_count(len(data), 16384)
            entries.append(
                wire.ManifestItem(i, f"f{i}", "ok", "application/octet-stream", len(data), sha, parts)
            )
        envelopes.extend(env.manifest(entries))
        kill_at = {max(1, len(envelopes) * k // (kills + 1)) for k in range(1, kills + 1)}
        for n, envelope in enumerate(envelopes, start=1):
            if n in kill_at:
                killed = asyncio.Event()
                await kill_requests.put(killed)
                await killed.wait()
            if rng.random() < 0.05:
                emu.faults.stream_item_5xx[n] = 1  # this post is answered 503 once
                tally.faults += 1
            for _attempt in range(10):
                r = await http.post(
                    f"{base}/job-stream/chaos-pod/{job}", params={"gpu": "CPU", "isStream": "false"},
                    json={"output": envelope},
                )  # fmt: skip
                if r.status_code < 500:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(rng.uniform(0.005, 0.04))
        r = await http.post(f"{base}/job-done/chaos-pod/{job}", params={"gpu": "CPU"}, json={"output": []})
        r.raise_for_status()
        return job


def hostile_request(rng: random.Random, job: str) -> tuple[str, str, dict[str, str], bytes]:
    """(method, path, headers, body) of one hostile request."""
    items = ["%C2%B2", "%D9%A1", "-1", "99999999999", "0", "x", "%00", "..%2F..", "1.5"]
    jobs = [job, "no-such-job", "..%2Fetc", "%C2%B2", "a" * 200, "-x", "j%0A"]
    paths = [
        "/v1/jobs", "/v1/jobs/{job}", "/v1/jobs/{job}/attach", "/v1/jobs/{job}/tokens", "/v1/jobs/{job}/links",
        "/v1/jobs/{job}/events?format=json&after={item}&wait={item}", "/v1/jobs/{job}/media/{item}",
        "/v1/jobs/{job}/media/1?exp={item}&sig=x", "/v1/links/{item}", "/v1/uploads/{job}/{item}",
        "/openapi.json", "/readyz", "/metrics", "/v1/ws", "/%FF", "/v1/jobs/{job}/events",
    ]  # fmt: skip
    bodies = [
        b"", b"{}", b"null", b"[]", b"not json", b'{"ttl_s": NaN}', b'{"input": {"a": Infinity}}',
        b'{"input": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", b'{"input": {}, "retention_s": -1}',
        b'{"jobs": [1, 2]}', b'{"uses": 1e309}', os.urandom(rng.randint(1, 2000)),
    ]  # fmt: skip
    path = rng.choice(paths).format(job=rng.choice(jobs), item=rng.choice(items))
    method = rng.choice(["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"])
    headers = {"content-type": rng.choice(["application/json", "text/plain"])}
    if rng.random() < 0.3:
        headers["last-event-id"] = rng.choice(items)
    if rng.random() < 0.3:
        headers["x-podstream-sha256"] = rng.choice(["0" * 64, "zz"])
    return method, path, headers, rng.choice(bodies)


async def probe(relay: Relay, key: str, job: str, tally: Tally, rng: random.Random) -> None:
    method, path, headers, body = hostile_request(rng, job)
    if rng.random() < 0.7:
        headers["authorization"] = f"Bearer {key}"
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            r = await http.request(method, relay.url + path, headers=headers, content=body)
    except httpx.TimeoutException:
        tally.probes += 1  # a long poll or an SSE stream that stays open: answered, not an error
        return
    except httpx.TransportError:
        return  # the relay is down (being killed): not a probe
    tally.probes += 1
    if r.status_code == 500:
        tally.server_errors += 1
        tally.notes.append(f"500: {method} {path[:80]} -> {r.text[:120]}")


async def ws_probe(relay: Relay, key: str, tally: Tally, rng: random.Random) -> None:
    frames: list[bytes | str] = [
        os.urandom(rng.randint(1, 300)), "text", msgpack.packb([1, 2]),
        msgpack.packb({"t": "sub", "job": rng.choice(["x", 5, None, "a" * 500]), "from": rng.choice([-1, 2**63, "0"])}),
        msgpack.packb({"t": rng.choice(["auth", "bye", "", "ping"]), "token": rng.choice([1, "a.b.c"])}),
        os.urandom(70_000),
    ]  # fmt: skip
    headers = {"authorization": f"Bearer {key}"} if rng.random() < 0.5 else {}
    try:
        async with websockets.connect(
            relay.url.replace("http", "ws") + "/v1/ws", additional_headers=headers
        ) as ws:
            await ws.send(rng.choice(frames))
            tally.probes += 1
            with contextlib.suppress(TimeoutError):
                while True:
                    await asyncio.wait_for(ws.recv(), 0.5)
    except websockets.ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd is not None else 1006
        if code not in CLOSE_CODES:
            tally.bad_close_codes += 1
            tally.notes.append(f"close code {code}")
    except (OSError, websockets.InvalidHandshake, TimeoutError):
        return  # the relay is down


async def flood(relay: Relay, count: int) -> list[Any]:
    held: list[Any] = []
    host, port = "127.0.0.1", relay.port
    for n in range(count):
        with contextlib.suppress(OSError, TimeoutError):
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
            if n % 3 == 0:
                writer.write(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n")  # never finished
            held.append(writer)
    for _ in range(count // 10):
        with contextlib.suppress(OSError, TimeoutError, websockets.InvalidHandshake):
            held.append(await websockets.connect(relay.url.replace("http", "ws") + "/v1/ws"))
    return held


async def run(items: int, kills: int, probes: int, flood_size: int, seed: int, work: Path) -> Tally:
    rng = random.Random(seed)
    tally = Tally()
    key = generate_key()
    auth = {"authorization": f"Bearer {key}"}
    files = [rng.randbytes(rng.randint(1000, 60_000)) for _ in range(items)]
    tally.files = len(files)
    config = EmulatorConfig.for_tests(heartbeat_grace_s=600.0)
    async with Emulator(config).serve(host="127.0.0.1", port=0) as emu:
        relay = chaos_relay(emu.endpoint_url, work / "data", key)
        await relay.start()
        try:
            async with httpx.AsyncClient(timeout=30, headers=auth) as http:
                created = await http.post(f"{relay.url}/v1/jobs", json={"input": {"chaos": True}})
                created.raise_for_status()
                job = created.json()["id"]
            kill_requests: asyncio.Queue[asyncio.Event] = asyncio.Queue()
            worker = asyncio.create_task(play_worker(emu, files, tally, rng, kills, kill_requests))
            held = await flood(relay, flood_size)

            async def killer() -> None:
                # kills spread over the job: the worker asks for each one at k/(kills+1) of its envelopes
                while tally.kills < kills:
                    killed = await kill_requests.get()
                    await relay.kill()
                    tally.kills += 1
                    killed.set()
                    # a 429/5xx storm meets the restarted relay
                    storm = [rng.choice([429, 500, 503]) for _ in range(rng.randint(2, 6))]
                    emu.faults.stream_responses.extend(storm)
                    tally.faults += len(storm)
                    await relay.start()
                    tally.kills_survived += 1
                    held.extend(await flood(relay, flood_size // 4))

            kills_task = asyncio.create_task(killer())
            # a probe that meets the relay mid-restart is not answered and not counted, so the loop goes
            # on until `probes` are answered (a cap on attempts keeps a relay that stays down from hanging it)
            attempts_left = probes * 3
            while not worker.done() or (tally.probes < probes and attempts_left > 0):
                batch = min(max(probes - tally.probes, 0), 10, attempts_left)
                attempts_left -= batch
                await asyncio.gather(
                    *(probe(relay, key, job, tally, rng) for _ in range(batch)),
                    *(ws_probe(relay, key, tally, rng) for _ in range(1 if batch else 0)),
                )  # fmt: skip
                if not batch:
                    await asyncio.sleep(0.1)
            await worker
            if tally.kills < kills:  # a job too short for that many kill points: no more requests come
                kills_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await kills_task  # a restart in progress finishes before the files are checked
            await check_files(relay, auth, job, files, tally)
            for conn in held:
                with contextlib.suppress(Exception):
                    close = conn.close()
                    if asyncio.iscoroutine(close):
                        await close
        finally:
            if "kills_task" in locals() and not kills_task.done():
                kills_task.cancel()
                with contextlib.suppress(BaseException):
                    await kills_task
            if "worker" in locals() and not worker.done():
                worker.cancel()
                with contextlib.suppress(BaseException):
                    await worker
            await relay.stop()
    return tally


async def check_files(relay: Relay, auth: dict[str, str], job: str, files: list[bytes], tally: Tally) -> None:
    """Every item the worker sent, compared byte for byte; losses counted, and whether the job reports each."""
    async with httpx.AsyncClient(timeout=30, headers=auth) as http:
        manifest: dict[str, Any] = {}
        for _ in range(1200):
            manifest = (await http.get(f"{relay.url}/v1/jobs/{job}")).json()
            if manifest.get("finished"):
                break
            await asyncio.sleep(0.1)
        else:
            tally.notes.append("the job did not finish: every file counted as lost")
        stored = {entry["item"]: entry for entry in manifest.get("items", [])}
        delivered = set()
        for i, data in enumerate(files):
            entry = stored.get(i)
            if entry is not None:
                r = await http.get(entry["url"])
                if r.status_code == 200 and r.content == data:
                    delivered.add(i)
        reported, silent = losses(len(files), delivered, manifest.get("errors", []))
        tally.files_lost += len(reported) + len(silent)
        tally.losses_reported += len(reported)
        tally.silent += silent
        job_level = [e for e in manifest.get("errors", []) if e.get("item") is None]
        if job_level:
            codes = sorted({e["code"] for e in job_level})
            tally.notes.append(f"job-level error records: {', '.join(codes)}")


def losses(files: int, delivered: set[int], errors: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """The items of `range(files)` not in `delivered`, split into (reported, silent): reported when one of the
    job's `errors` records names the item. A job-level record (`item` null: `gap`, `unrecovered`, ...) names
    none, so it cannot tell which files it covers, and reports no item."""
    named = {e["item"] for e in errors if e.get("item") is not None}
    lost = [i for i in range(files) if i not in delivered]
    return [i for i in lost if i in named], [i for i in lost if i not in named]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--probes", type=int, default=600)
    parser.add_argument("--flood", type=int, default=300)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print the tally as JSON after the table")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    with tempfile.TemporaryDirectory(prefix="podstream-chaos-") as tmp:
        tally = asyncio.run(run(args.items, args.kills, args.probes, args.flood, seed, Path(tmp)))
    print(tally.table())
    print(f"seed {seed}: {'OK' if tally.ok else 'FAILED'}")
    if args.json:
        print(json.dumps({k: v for k, v in tally.__dict__.items() if k != "notes"}))
    return 0 if tally.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
