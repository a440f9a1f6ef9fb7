"""Latency: worker yield -> subscriber receive, through the emulator's long-poll and the relay's websocket.

The same scripted worker streams small envelopes to two jobs at once: one followed by the relay (a websocket
subscriber measures), one consumed directly by the runpod SDK's own `job.stream()` loop (which sleeps 1 s
between polls), the baseline. Target: relay median <= 150 ms.

    python -m bench.relay_latency                 # 30 yields, 200 ms apart
    python -m bench.relay_latency --yields 200 --interval-ms 100
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import threading
import time

import msgpack
import runpod
import websockets

from bench import _results
from bench._relay_stack import stack
from podstream import wire


def sdk_consumer(job: runpod.endpoint.runner.Job, received: dict[int, float], done: threading.Event) -> None:
    for output in job.stream():
        if isinstance(output, dict) and output.get("type") == "progress":
            received[output["step"]] = time.perf_counter()
    done.set()


async def relay_consumer(url: str, job: str, received: dict[int, float]) -> None:
    async with websockets.connect(url, compression=None) as ws:
        await ws.send(msgpack.packb({"t": "sub", "job": job, "from": 0}))
        async for raw in ws:
            frame = msgpack.unpackb(raw)  # type: ignore[arg-type]
            if frame["t"] == "ev" and frame["k"] == "progress":
                received[frame["step"]] = time.perf_counter()
            elif frame["t"] == "ev" and frame["k"] == "done":
                return


def latencies(sent: dict[int, float], received: dict[int, float]) -> list[float]:
    return sorted((received[n] - sent[n]) * 1000 for n in sent if n in received)


def summary(lat: list[float], sent: int) -> tuple[float, float, int]:
    return statistics.median(lat), lat[int(len(lat) * 0.9) - 1 if len(lat) > 1 else 0], sent - len(lat)


async def run(args: argparse.Namespace) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # importing runpod turns request logging on
    async with stack() as s:
        relay_job = await s.run_job()
        await s.attach(relay_job)
        runpod.api_key = "bench"
        runpod.endpoint_url_base = s.emu.endpoint_url.rsplit("/", 1)[0]
        sdk_job = await asyncio.to_thread(runpod.Endpoint(s.emu.config.endpoint_id).run, {"input": {"x": 1}})
        taken = {await s.take(), await s.take()}
        assert taken == {relay_job, sdk_job.job_id}
        relay_received: dict[int, float] = {}
        sdk_received: dict[int, float] = {}
        sdk_done = threading.Event()
        threading.Thread(target=sdk_consumer, args=(sdk_job, sdk_received, sdk_done), daemon=True).start()
        follower = asyncio.ensure_future(relay_consumer(s.ws_url, relay_job, relay_received))
        await asyncio.sleep(1.0)  # both consumers are polling
        envs = {relay_job: wire.Envelopes(relay_job), sdk_job.job_id: wire.Envelopes(sdk_job.job_id)}
        sent_relay: dict[int, float] = {}
        sent_sdk: dict[int, float] = {}
        for n in range(1, args.yields + 1):
            sent_relay[n] = time.perf_counter()
            await s.post(relay_job, envs[relay_job].progress(0, n, args.yields))
            sent_sdk[n] = time.perf_counter()
            await s.post(sdk_job.job_id, envs[sdk_job.job_id].progress(0, n, args.yields))
            await asyncio.sleep(args.interval_ms / 1000)
        for job, env in envs.items():
            for page in env.manifest([]):
                await s.post(job, page)
            await s.done(job)
        await asyncio.wait_for(follower, 60)
        await asyncio.to_thread(sdk_done.wait, 60)
    relay_ms, sdk_ms = latencies(sent_relay, relay_received), latencies(sent_sdk, sdk_received)
    relay_median, relay_p90, relay_lost = summary(relay_ms, len(sent_relay))
    sdk_median, sdk_p90, sdk_lost = summary(sdk_ms, len(sent_sdk))
    print(f"{args.yields} yields, {args.interval_ms} ms apart")
    print(f"runpod SDK job.stream(): median {sdk_median:.0f} ms, p90 {sdk_p90:.0f} ms, missed {sdk_lost}")
    print(
        f"relay websocket:         median {relay_median:.0f} ms, p90 {relay_p90:.0f} ms, missed {relay_lost}"
    )
    print(
        f"relay median: {relay_median:.0f} ms (target <= 150); ratio sdk/relay: {sdk_median / relay_median:.1f}x"
    )
    figures = {"relay_ms": relay_ms, "sdk_ms": sdk_ms, "relay_missed": relay_lost, "sdk_missed": sdk_lost}
    _results.write(args.json, "relay_latency", args, figures)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--yields", type=int, default=30)
    parser.add_argument("--interval-ms", type=int, default=200)
    _results.add_json_option(parser)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
