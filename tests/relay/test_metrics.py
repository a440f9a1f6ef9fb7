"""`GET /metrics` scraped after a real job through the real relay, websocket subscribers included."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import websockets
from prometheus_client.parser import text_string_to_metric_families

from podstream.emulator import Emulator
from relay.api.auth import generate_key, hash_key
from tests.relay.conftest import (
    API_KEY,
    Batch,
    Received,
    RelayServer,
    ScriptedWorker,
    consume,
    make_files,
    pack,
    recv,
    relay_settings,
    start_relay,
    ws_client,
)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(relay: RelayServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with relay.http() as http:
        r = await http.get(f"{relay.url}/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        return samples(r.text)


async def test_metrics_after_a_real_job(tmp_path: Path, emulator: Emulator, worker: ScriptedWorker) -> None:
    metrics_key = generate_key()
    keys = f"{hash_key(API_KEY)},prom={hash_key(metrics_key)}/metrics"
    # No gap recovery (recovery_attempts=0): the gap below stays a gap, this scripted worker answers no resend job.
    relay = await start_relay(relay_settings(tmp_path, emulator, api_keys=keys, recovery_attempts=0))
    try:
        files = make_files(3, 100_000)
        emulator.faults.stream_responses = [429, 503]  # RunPod throttles, then fails once: both retried
        async with relay.http() as http:
            job = (await http.post(f"{relay.url}/v1/jobs", json={"input": {}})).json()["id"]
            # the scrape is only for keys with the metrics scope
            assert (
                await http.get(f"{relay.url}/metrics", headers={"authorization": "Bearer x"})
            ).status_code == 401
        async with httpx.AsyncClient() as anonymous:
            assert (await anonymous.get(f"{relay.url}/metrics")).status_code == 401
            r = await anonymous.get(
                f"{relay.url}/metrics", headers={"authorization": f"Bearer {metrics_key}"}
            )
            assert r.status_code == 200
            r = await anonymous.get(
                f"{relay.url}/v1/jobs", headers={"authorization": f"Bearer {metrics_key}"}
            )
            assert r.status_code == 403
        async with ws_client(relay.ws_url, relay.token(job)) as ws:
            await ws.send(pack({"t": "sub", "job": job, "from": 0}))
            assert (await recv(ws))["t"] == "subscribed"
            live = await scrape(relay)
            assert value(live, "podstream_relay_subscribers", transport="ws") == 1
            assert value(live, "podstream_relay_ws_connections") == 1
            assert value(live, "podstream_relay_pollers") == 1
            taken = await worker.take()
            batch = Batch(taken["id"], files)
            # item 1's middle part never arrives: a gap, and item 1 incomplete
            dropped = next(e for e in batch.envelopes if e.get("item") == 1 and e.get("part") == 1)
            for envelope in batch.envelopes:
                if envelope is not dropped:
                    await worker.post(job, envelope)
            await worker.done(job)
            got = await consume(ws, job, Received())
        assert sorted(got.files) == [0, 2]
        async with relay.http() as http:  # and one media download over HTTP
            manifest = (await http.get(f"{relay.url}/v1/jobs/{job}")).json()
            assert (await http.get(manifest["items"][0]["url"])).content == files[0]
            refused = await http.post(
                f"{relay.url}/v1/jobs/x/tokens", headers={"authorization": "Bearer nope"}
            )
            assert refused.status_code == 401

        m = await scrape(relay)
        assert value(m, "podstream_relay_jobs", status="COMPLETED") == 1
        assert value(m, "podstream_relay_items_total") == 2
        assert value(m, "podstream_relay_gaps_total") == 1
        assert value(m, "podstream_relay_stream_errors_total", code="gap") == 1
        assert value(m, "podstream_relay_stream_errors_total", code="incomplete") == 1
        received = sum(len(f) for f in files) - len(dropped["data"]) * 3 // 4
        assert value(m, "podstream_relay_bytes_in_total", source="runpod") >= received - 4
        assert value(m, "podstream_relay_bytes_out_total", transport="ws") > len(files[0]) + len(files[2])
        assert value(m, "podstream_relay_bytes_out_total", transport="http") == len(files[0])
        assert value(m, "podstream_relay_runpod_request_seconds_count", call="stream") >= 1
        assert value(m, "podstream_relay_runpod_request_seconds_count", call="run") == 1
        assert value(m, "podstream_relay_runpod_throttled_total") == 1
        assert value(m, "podstream_relay_runpod_errors_total", call="stream", status="429") == 1
        assert value(m, "podstream_relay_runpod_errors_total", call="stream", status="503") == 1
        assert value(m, "podstream_relay_subscribers", transport="ws") == 0
        assert value(m, "podstream_relay_auth_denied_total", code="unauthorized") >= 1
        assert value(m, "podstream_relay_disk_usage_bytes") > 0
        assert value(m, "podstream_relay_ready") == 1
    finally:
        await relay.stop()


async def test_slow_consumer_disconnects_are_counted(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker
) -> None:
    relay = await start_relay(relay_settings(tmp_path, emulator, send_timeout_s=0.5))
    try:
        async with relay.http() as http:
            job = (await http.post(f"{relay.url}/v1/jobs", json={"input": {}})).json()["id"]
        taken = await worker.take()
        for envelope in Batch(taken["id"], make_files(4, 1_500_000), part_bytes=500_000).envelopes:
            await worker.post(job, envelope)
        await worker.done(job)
        async with websockets.connect(relay.ws_url, compression=None, max_size=2**22, max_queue=1) as stalled:
            await stalled.send(pack({"t": "auth", "token": relay.token(job)}))
            await stalled.send(pack({"t": "sub", "job": job, "from": 0}))
            for _ in range(300):  # it never reads: cut off after the send deadline
                if value(await scrape(relay), "podstream_relay_ws_disconnects_total", code="4001") == 1:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("no slow-consumer disconnect counted")
    finally:
        await relay.stop()
