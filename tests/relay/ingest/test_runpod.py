"""relay.ingest.runpod against scripted answers (httpx.MockTransport): retries, backoff, Retry-After, errors, and
`/stream` answers split into entries as they arrive."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from unittest.mock import patch

import httpx
import pytest

from relay.ingest import runpod
from relay.ingest.runpod import Backoff, JobNotFound, RunPodClient, RunPodError, parse_entry

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler, sleeps: list[float], retries: int = 3) -> RunPodClient:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return RunPodClient(
        "https://api.example/v2/ep/", "KEY", http, retries=retries, backoff=Backoff(0.5, 4.0), sleep=sleep,
        rng=lambda: 1.0,
    )  # fmt: skip


def scripted(*responses: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handler, seen


async def test_stream_parses_outputs_and_sends_wait_and_key() -> None:
    handler, seen = scripted(
        httpx.Response(
            200, json={"id": "j", "status": "IN_PROGRESS", "stream": [{"output": {"a": 1}}, "junk"]}
        )
    )
    batch = await client(handler, []).stream("j/../x?y", wait_ms=5000)
    assert batch.status == "IN_PROGRESS" and batch.outputs == [{"a": 1}, "junk"] and batch.raw == 1
    assert not batch.finished
    request = seen[0]
    assert request.url.raw_path.startswith(b"/v2/ep/stream/j%2F..%2Fx%3Fy?")  # an id never adds path segments
    assert request.url.params["wait"] == "5000"
    assert request.headers["authorization"] == "Bearer KEY"


async def test_end_of_stream_is_terminal_and_empty() -> None:
    handler, _ = scripted(
        httpx.Response(200, json={"status": "COMPLETED", "stream": [{"output": 1}]}),
        httpx.Response(200, json={"status": "COMPLETED", "stream": []}),
    )
    c = client(handler, [])
    assert not (await c.stream("j")).finished  # the last items can come with COMPLETED
    assert (await c.stream("j")).finished


async def test_retries_429_and_5xx_with_backoff_and_retry_after() -> None:
    handler, seen = scripted(
        httpx.Response(429, headers={"retry-after": "3"}),
        httpx.Response(503),
        httpx.ConnectError("refused"),
        httpx.Response(200, json={"id": "j", "status": "IN_QUEUE"}),
    )
    sleeps: list[float] = []
    answer = await client(handler, sleeps).status("j")
    assert answer["status"] == "IN_QUEUE" and len(seen) == 4
    assert sleeps == [
        3.0,
        1.0,
        2.0,
    ]  # Retry-After wins over a shorter backoff; then 0.5 * 2**n, full jitter = 1


async def test_a_long_retry_after_is_honoured_up_to_the_relays_cap() -> None:
    handler, _ = scripted(
        httpx.Response(503, headers={"retry-after": "3600"}),
        httpx.Response(200, json={"id": "j", "status": "IN_QUEUE"}),
    )
    sleeps: list[float] = []
    await client(handler, sleeps).status("j")
    assert sleeps == [300.0]  # a poller outlives a CLI's wait: longer than podstream.backoff's default cap


async def test_gives_up_after_the_retries() -> None:
    handler, seen = scripted(*[httpx.Response(502) for _ in range(4)])
    with pytest.raises(RunPodError) as failure:
        await client(handler, [], retries=3).status("j")
    assert failure.value.status_code == 502 and failure.value.retryable and len(seen) == 4


async def test_not_found_and_client_errors_are_not_retried() -> None:
    handler, seen = scripted(httpx.Response(404, text="request does not exist"), httpx.Response(401))
    c = client(handler, [])
    with pytest.raises(JobNotFound):
        await c.stream("j")
    with pytest.raises(RunPodError) as failure:
        await c.cancel("j")
    assert failure.value.status_code == 401 and not failure.value.retryable and len(seen) == 2


async def test_run_is_only_retried_when_runpod_did_not_act() -> None:
    handler, seen = scripted(
        httpx.Response(429), httpx.Response(200, json={"id": "new", "status": "IN_QUEUE"})
    )
    assert (await client(handler, []).run({"prompt": "x"}, policy={"ttl": 60000}))["id"] == "new"
    assert json.loads(seen[1].content) == {"input": {"prompt": "x"}, "policy": {"ttl": 60000}}
    handler, seen = scripted(httpx.Response(500), httpx.Response(200, json={"id": "dup"}))
    with pytest.raises(RunPodError):
        await client(handler, []).run({})
    assert len(seen) == 1  # a 500 may have created the job: never submit twice
    handler, seen = scripted(httpx.ReadTimeout("slow"))
    with pytest.raises(RunPodError):
        await client(handler, []).run({})
    handler, _ = scripted(httpx.Response(200, json={"status": "IN_QUEUE"}))
    with pytest.raises(RunPodError, match="without a job id"):
        await client(handler, []).run({})


async def test_bad_answers_are_errors() -> None:
    handler, _ = scripted(httpx.Response(200, text="<html>"), httpx.Response(200, json=[1]))
    c = client(handler, [])
    with pytest.raises(RunPodError, match="non-JSON"):
        await c.status("j")
    with pytest.raises(RunPodError, match="not an object"):
        await c.status("j")


def test_backoff_is_capped_full_jitter() -> None:
    b = Backoff(0.5, 4.0)
    assert [b.delay(n, lambda: 1.0) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert b.delay(3, lambda: 0.0) == 0.0


# ---------------------------------------------------------------- /stream answers taken in pieces


def chunked(body: bytes, size: int, fail_after: int | None = None) -> httpx.AsyncByteStream:
    class Body(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for at in range(0, len(body), size):
                if fail_after is not None and at >= fail_after:
                    raise httpx.ReadError("connection reset")
                yield body[at : at + size]

    return Body()


async def test_stream_hands_entries_over_in_pieces_as_they_arrive() -> None:
    outputs = [{"seq": n, "data": "x" * 100_000} for n in range(100)]
    body = json.dumps({"id": "j", "status": "IN_PROGRESS", "stream": [{"output": o} for o in outputs]})
    handler, _ = scripted(httpx.Response(200, stream=chunked(body.encode(), 65536)))
    pieces: list[tuple[str, list[object]]] = []

    async def on_entries(status: str, texts: list[bytes]) -> None:
        pieces.append((status, [parse_entry(t)[0] for t in texts]))

    with patch.object(runpod, "STREAM_PIECE_BYTES", 1_000_000):
        batch = await client(handler, []).stream("j", on_entries=on_entries)
    assert batch == runpod.StreamBatch("IN_PROGRESS", [], 0, delivered=100) and not batch.finished
    assert len(pieces) > 5 and {status for status, _ in pieces} == {"IN_PROGRESS"}
    assert [o for _, piece in pieces for o in piece] == outputs


async def test_a_stream_broken_off_keeps_what_was_handed_over_and_a_bad_one_is_retried() -> None:
    body = json.dumps({"status": "IN_PROGRESS", "stream": [{"output": n} for n in range(2000)]}).encode()
    got: list[object] = []

    async def on_entries(status: str, texts: list[bytes]) -> None:
        got.extend(parse_entry(t)[0] for t in texts)

    handler, seen = scripted(
        httpx.Response(200, stream=chunked(body, 10, fail_after=30)),  # no entry complete yet
        httpx.Response(200, stream=chunked(body, 1000, fail_after=9000)),
    )
    with patch.object(runpod, "STREAM_PIECE_BYTES", 1):
        batch = await client(handler, []).stream("j", on_entries=on_entries)
    assert len(seen) == 2  # the first request was retried
    assert batch.status == "" and batch.delivered == len(got) > 500 and got == list(range(len(got)))
    handler, _ = scripted(httpx.Response(200, text="<html>"), httpx.Response(200, json=[1]))
    c = client(handler, [])
    with pytest.raises(RunPodError, match="non-JSON"):
        await c.stream("j", on_entries=on_entries)
    with pytest.raises(RunPodError, match="not an object"):
        await c.stream("j", on_entries=on_entries)
