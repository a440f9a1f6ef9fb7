"""podstream.watch against a real websocket server on loopback that speaks docs/protocol.md section 2.

`ScriptedRelay` is a small stand-in for the relay's `WS /v1/ws` (a journal of records and files, served
from any `from` seq) with knobs to misbehave: drop the connection after N frames, close with a code,
refuse the job, require a token. The relay's own end-to-end tests run `watch` against the real relay.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

import podstream.watcher as watch_mod
from bench._relay_stack import free_port, wait_healthy
from podstream import sinks
from podstream.progress import JobIncomplete, Observer, SavedFile, StreamProblem, TransferError
from podstream.puller import RetryPolicy
from relay.api.auth import generate_key, hash_key

JOB = "job-w"
FAST = RetryPolicy(attempts=5, base=0.001, cap=0.01)
CHUNK = 1000


def journal(
    sizes: list[int], *, fail: frozenset[int] = frozenset(), status: str = "COMPLETED"
) -> tuple[list[dict[str, Any]], dict[int, bytes]]:
    records: list[dict[str, Any]] = [{"k": "status", "status": "IN_PROGRESS"}]
    files: dict[int, bytes] = {}
    for item, size in enumerate(sizes):
        records.append({"k": "progress", "item": item, "step": 1, "steps": 2})
        if item in fail:
            records.append({"k": "error", "item": item, "code": "bad_image", "message": "undecodable"})
            continue
        data = bytes((item + k) % 256 for k in range(size))
        files[item] = data
        records.append(
            {
                "k": "item", "item": item, "id": f"v{item}", "mime": "video/mp4", "size": size,
                "sha256": hashlib.sha256(data).hexdigest(), "url": f"/v1/jobs/{JOB}/media/{item}",
            }
        )  # fmt: skip
    records.append({"k": "status", "status": status})
    records.append({"k": "done", "status": status, "items": len(sizes), "errors": len(fail)})
    for seq, rec in enumerate(records, start=1):
        rec.update(seq=seq, job=JOB)
    return records, files


class ScriptedRelay:
    def __init__(self, records: list[dict[str, Any]], files: dict[int, bytes]) -> None:
        self.records = records
        self.files = files
        self.token: str | None = None
        self.drop_after: list[int] = []  # per connection: close abruptly after sending this many frames
        self.close_with: list[tuple[int, str]] = []  # per connection: close with this code after `welcome`
        self.refuse: str | None = None  # answer `sub` with an err of this code
        self.subs: list[dict[str, Any]] = []
        self.pongs: list[Any] = []
        self.connections = 0
        self.corrupt_item: int | None = None
        self.status = "IN_PROGRESS"  # what `subscribed` says
        self.refs: set[int] = set()  # items sent without chunks: the client fetches their url
        self.media_requests: list[tuple[str, str | None]] = []

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == f"/v1/jobs/{JOB}":
            done = self.records[-1]
            manifest = {"status": done["status"], "finished": True, "head": len(self.records), "items": []}
            body = json.dumps(manifest).encode()
            return Response(200, "OK", Headers([("Content-Length", str(len(body)))]), body)
        if not request.path.startswith("/media/"):
            return None  # the websocket handshake
        self.media_requests.append((request.path, request.headers.get("Authorization")))
        item = int(request.path.rsplit("/", 1)[1])
        if item not in self.files:
            return connection.respond(404, "no such item\n")
        data = self.files[item]
        return Response(200, "OK", Headers([("Content-Length", str(len(data)))]), data)

    def handler(self, ws: ServerConnection) -> None:
        index = self.connections
        self.connections += 1
        budget = self.drop_after[index] if index < len(self.drop_after) else None
        sent = 0

        def send(frame: dict[str, Any]) -> None:
            nonlocal sent
            if budget is not None and sent >= budget:
                ws.close(4001, "slow consumer")
                raise ConnectionClosed(None, None)
            ws.send(msgpack.packb(frame, use_bin_type=True))
            sent += 1

        try:
            first = recv(ws)
            if self.token is not None:
                if first != {"t": "auth", "token": self.token}:
                    ws.close(4501, "unauthorized")
                    return
                first = recv(ws)
            send({"t": "welcome", "v": 1, "server": "scripted", "ping": 15})
            if index < len(self.close_with):
                ws.close(*self.close_with[index])
                return
            send({"t": "ping", "n": 7})
            self.pongs.append(recv(ws))
            assert first["t"] == "sub"
            self.subs.append(first)
            if self.refuse:
                send(
                    {
                        "t": "err",
                        "code": self.refuse,
                        "message": f"no job {first['job']}",
                        "job": first["job"],
                    }
                )
                ws.recv(timeout=5)
                return
            head = len(self.records)
            recovered = first["from"] <= head
            send({"t": "subscribed", "job": JOB, "head": head, "status": self.status, "recovered": recovered})
            if not recovered:
                ws.recv(timeout=5)
                return
            for rec in self.records[first["from"] :]:
                send({"t": "ev", **rec})
                if rec["k"] == "item" and rec["item"] in self.refs:
                    continue
                if rec["k"] == "item":
                    data = self.files[rec["item"]]
                    if rec["item"] == self.corrupt_item:
                        data = b"x" + data[1:]
                    offsets = range(0, max(len(data), 1), CHUNK)
                    for off in offsets:
                        last = off + CHUNK >= len(data)
                        send(
                            {
                                "t": "chunk",
                                "job": JOB,
                                "seq": rec["seq"],
                                "item": rec["item"],
                                "off": off,
                                "data": data[off : off + CHUNK],
                                "last": last,
                            }
                        )
            ws.recv(timeout=5)  # the client closes after `done`
        except (ConnectionClosed, TimeoutError):
            pass


def recv(ws: ServerConnection) -> Any:
    message = ws.recv(timeout=5)
    assert isinstance(message, bytes)
    return msgpack.unpackb(message)


@contextmanager
def running(relay: ScriptedRelay) -> Iterator[str]:
    server: Server = serve(
        relay.handler, "127.0.0.1", 0, compression=None, process_request=relay.process_request
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.socket.getsockname()[:2]
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


class Recorder(Observer):
    def __init__(self) -> None:
        self.saved: list[int] = []
        self.problems: list[str] = []
        self.retries: list[str] = []
        self.statuses: list[str] = []
        self.progress: list[tuple[int, int, int]] = []
        self.received: set[int] = set()  # items some of whose bytes arrived

    def status(self, status: str) -> None:
        self.statuses.append(status)

    def item_progress(self, item: int, step: int, steps: int) -> None:
        self.progress.append((item, step, steps))

    def item_bytes(self, item: int, received: int, size: int) -> None:
        self.received.add(item)

    def item_saved(self, file: SavedFile) -> None:
        self.saved.append(file.item)

    def problem(self, problem: StreamProblem) -> None:
        self.problems.append(problem.code)

    def reconnecting(self, attempt: int, delay: float, reason: str) -> None:
        self.retries.append(reason)


def do_watch(url: str, out: Path, **kwargs: Any) -> list[SavedFile]:
    return list(watch_mod.watch(JOB, relay=url, out=out, retry=FAST, **kwargs))


def test_saves_every_file_verified_and_answers_pings(tmp_path: Path) -> None:
    records, files = journal([2500, 0, 1000, 10])
    relay = ScriptedRelay(records, files)
    recorder = Recorder()
    with running(relay) as url:
        saved = do_watch(url, tmp_path, observer=recorder)
    assert {f.item: f.path.read_bytes() for f in saved} == files
    assert [f.path.name for f in saved] == ["00000-v0.mp4", "00001-v1.mp4", "00002-v2.mp4", "00003-v3.mp4"]
    assert relay.subs == [{"t": "sub", "job": JOB, "from": 0, "inline": True}]
    assert relay.pongs == [{"t": "pong", "n": 7}]
    assert recorder.statuses == ["IN_PROGRESS", "COMPLETED"]
    assert (2, 1, 2) in recorder.progress
    assert recorder.outcome is not None and recorder.outcome.ok and recorder.outcome.expected_items == 4


def test_resumes_from_the_last_applied_seq_after_drops(tmp_path: Path) -> None:
    records, files = journal([3500, 2500, 100])
    relay = ScriptedRelay(records, files)
    # First connection dies in the middle of item 0's chunks, the second in item 1's; the third finishes.
    relay.drop_after = [6, 7]
    recorder = Recorder()
    with running(relay) as url:
        saved = do_watch(url, tmp_path, observer=recorder)
    assert sorted(f.item for f in saved) == [0, 1, 2] and len(saved) == 3
    assert {f.item: f.path.read_bytes() for f in saved} == files
    froms = [s["from"] for s in relay.subs]
    assert froms[0] == 0 and froms == sorted(froms) and len(froms) == 3
    item0 = next(r["seq"] for r in records if r["k"] == "item" and r["item"] == 0)
    assert froms[1] == item0 - 1, "item 0 was not finished, so it is received again from its start"
    assert len(recorder.retries) == 2 and "4001" in recorder.retries[0]
    assert not list(tmp_path.glob(".*.part"))


def test_resume_from_a_given_seq_skips_what_came_before(tmp_path: Path) -> None:
    records, files = journal([100, 200, 300])
    item1 = next(r["seq"] for r in records if r["k"] == "item" and r["item"] == 1)
    relay = ScriptedRelay(records, files)
    with running(relay) as url:
        saved = do_watch(url, tmp_path, from_seq=item1)
    assert [f.item for f in saved] == [2]
    assert relay.subs[0]["from"] == item1


def test_sends_the_token_first(tmp_path: Path) -> None:
    records, files = journal([10])
    relay = ScriptedRelay(records, files)
    relay.token = "tok-123"
    with running(relay) as url:
        assert len(do_watch(url, tmp_path, token="tok-123")) == 1
        with pytest.raises(TransferError, match="4501"):
            do_watch(url, tmp_path / "b", token="wrong")


def test_reconnect_codes_retry_and_terminal_codes_stop(tmp_path: Path) -> None:
    records, files = journal([10])
    relay = ScriptedRelay(records, files)
    relay.close_with = [(4000, "restarting"), (4004, "too many")]
    recorder = Recorder()
    with running(relay) as url:
        assert len(do_watch(url, tmp_path, observer=recorder)) == 1
    assert relay.connections == 3 and len(recorder.retries) == 2

    relay = ScriptedRelay(records, files)
    relay.close_with = [(4503, "too many subscriptions")]
    with running(relay) as url, pytest.raises(TransferError, match="4503 too many subscriptions"):
        do_watch(url, tmp_path / "b")
    assert relay.connections == 1


def test_err_about_the_job_is_terminal(tmp_path: Path) -> None:
    relay = ScriptedRelay(*journal([10]))
    relay.refuse = "unknown_job"
    with running(relay) as url, pytest.raises(TransferError, match="unknown_job"):
        do_watch(url, tmp_path)


def test_failed_items_and_corruption_are_reported_at_the_end(tmp_path: Path) -> None:
    records, files = journal([100, 100, 100], fail=frozenset({1}))
    relay = ScriptedRelay(records, files)
    relay.corrupt_item = 2
    got: list[int] = []
    with running(relay) as url, pytest.raises(JobIncomplete) as info:
        for f in watch_mod.watch(JOB, relay=url, out=tmp_path, retry=FAST):
            got.append(f.item)
    assert got == [0]
    outcome = info.value.outcome
    assert [f.item for f in outcome.failures] == [1]
    assert [p.code for p in outcome.problems] == ["bad_sha256"]
    assert not (tmp_path / "00002-v2.mp4").exists()


def test_gives_up_when_the_relay_keeps_dropping(tmp_path: Path) -> None:
    relay = ScriptedRelay(*journal([5000]))
    relay.drop_after = [4] * 10  # never gets past the first chunks
    with running(relay) as url, pytest.raises(TransferError, match="giving up after 5"):
        do_watch(url, tmp_path)


def test_unreachable_relay_fails_at_once(tmp_path: Path) -> None:
    relay = ScriptedRelay(*journal([1]))
    with running(relay) as url:
        pass  # the server is gone now
    with pytest.raises(TransferError, match="cannot reach the relay"):
        do_watch(url, tmp_path)


def test_awatch_is_the_same_on_asyncio(tmp_path: Path) -> None:
    records, files = journal([2500, 10])
    relay = ScriptedRelay(records, files)
    relay.drop_after = [5]

    async def main(url: str) -> list[SavedFile]:
        return [f async for f in watch_mod.awatch(JOB, relay=url, out=tmp_path, retry=FAST)]

    with running(relay) as url:
        saved = asyncio.run(main(url))
    assert {f.item: f.path.read_bytes() for f in saved} == files


def test_urls() -> None:
    assert watch_mod.ws_url("http://h:1") == "ws://h:1/v1/ws"
    assert watch_mod.ws_url("https://h/base/") == "wss://h/base/v1/ws"
    assert watch_mod.ws_url("ws://h:1/v1/ws") == "ws://h:1/v1/ws"
    assert watch_mod.http_url("wss://h/x/v1/ws") == "https://h/x"
    with pytest.raises(ValueError):
        watch_mod.ws_url("h:1")


def test_subscription_rejects_out_of_order_streams(tmp_path: Path) -> None:
    sub = watch_mod.Subscription(JOB, tmp_path)
    sub.feed({"t": "ev", "job": JOB, "seq": 1, "k": "status", "status": "IN_PROGRESS"})
    assert sub.position == 1
    assert sub.feed({"t": "ev", "job": JOB, "seq": 1, "k": "status", "status": "X"}) == ([], [])  # replayed
    with pytest.raises(watch_mod.Resync, match="skipped"):
        sub.feed({"t": "ev", "job": JOB, "seq": 3, "k": "progress", "item": 0, "step": 1, "steps": 2})
    with pytest.raises(watch_mod.Resync, match="none was expected"):
        sub.feed({"t": "chunk", "job": JOB, "seq": 2, "item": 0, "off": 0, "data": b"x", "last": True})
    sub.feed(
        {
            "t": "ev",
            "job": JOB,
            "seq": 2,
            "k": "item",
            "item": 0,
            "id": "",
            "mime": "image/png",
            "size": 4,
            "sha256": "0" * 64,
        }
    )
    with pytest.raises(watch_mod.Resync, match="offset 2"):
        sub.feed({"t": "chunk", "job": JOB, "seq": 2, "item": 0, "off": 2, "data": b"xx", "last": True})
    sub.reset()
    assert sub.position == 1 and not list(tmp_path.glob(".*.part"))
    sub.feed(
        {
            "t": "ev",
            "job": JOB,
            "seq": 2,
            "k": "item",
            "item": 0,
            "id": "",
            "mime": "image/png",
            "size": 4,
            "sha256": "0" * 64,
        }
    )
    assert sub.feed({"t": "err", "code": "already_subscribed", "message": "x", "job": JOB}) == ([], [])
    sub.feed({"t": "err", "code": "media_unavailable", "message": "the file of item 0 is gone", "job": JOB})
    assert sub.position == 2 and [p.code for p in sub.outcome.problems] == ["media_unavailable"]
    assert sub.resume_from == 1, "a later watch tries the lost item again"
    with pytest.raises(TransferError, match=f"^the relay does not know the job {JOB}$"):
        sub.feed({"t": "err", "code": "not_found", "message": "this relay does not know the job", "job": JOB})
    assert sub.feed({"t": "ev", "job": "other", "seq": 9, "k": "done"}) == ([], [])


def test_items_without_inline_bytes_are_fetched_from_their_url(tmp_path: Path) -> None:
    records, files = journal([3000, 500, 700])
    for rec in records:
        if rec["k"] == "item":
            rec["url"] = f"/media/{rec['item']}"
    records[-3]["url"] = "/media/9"  # item 2's file is gone from the relay
    relay = ScriptedRelay(records, files)
    relay.refs = {0, 2}
    relay.token = "t"
    recorder = Recorder()
    with running(relay) as url, pytest.raises(JobIncomplete) as info:
        list(watch_mod.watch(JOB, relay=url, out=tmp_path, token="t", retry=FAST, observer=recorder))
    assert {f.item: f.path.read_bytes() for f in info.value.outcome.files} == {0: files[0], 1: files[1]}
    assert [p.code for p in info.value.outcome.problems] == ["fetch_failed"]
    assert relay.media_requests == [("/media/0", "Bearer t"), ("/media/9", "Bearer t")]


# --------------------------------------------------------------- stopped while finishing a file, then resumed

#: The steps of finishing a file (`podstream.sinks.FileSink.finish`) a watch can be stopped at.
FINISH_STEPS = (
    "verify",  # every byte written, before the sha256 check
    "fsync",  # verified, before the file's fsync
    "rename",  # fsynced, before the rename to the final name
    "renamed",  # renamed, before the directory's fsync
    "synced",  # durable, before the watcher moves past the item
)


class InterruptingOs:
    """`os` as `podstream.sinks` sees it, raising `KeyboardInterrupt` (Ctrl-C) once, at `step` of finishing
    the file named `name`; every call goes to the real `os`."""

    def __init__(self, name: str, step: str, exc: type[BaseException] = KeyboardInterrupt) -> None:
        assert step in FINISH_STEPS
        self.temp = f".{name}.part"
        self.step = step
        self.exc = exc
        self.fired = False
        self._renamed = False
        self._names: dict[int, str] = {}  # open fd -> file name

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _at(self, step: str) -> None:
        if step == self.step and not self.fired:
            self.fired = True
            raise self.exc()

    def open(self, path: str | Path, flags: int, mode: int = 0o777) -> int:
        fd = os.open(path, flags, mode)
        self._names[fd] = Path(path).name
        return fd

    def close(self, fd: int) -> None:
        self._names.pop(fd, None)
        os.close(fd)

    def fstat(self, fd: int) -> os.stat_result:
        if self._names.get(fd) == self.temp:
            self._at("verify")
        return os.fstat(fd)

    def fsync(self, fd: int) -> None:
        if self._names.get(fd) == self.temp:
            self._at("fsync")
        os.fsync(fd)
        if self._renamed:
            self._renamed = False
            self._at("synced")

    def replace(self, src: str | Path, dst: str | Path) -> None:
        if Path(src).name == self.temp:
            self._at("rename")
            os.replace(src, dst)
            self._renamed = True
            self._at("renamed")
        else:
            os.replace(src, dst)


def names_on_disk(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir()}


@pytest.mark.parametrize("step", FINISH_STEPS)
def test_a_watch_stopped_while_finishing_a_file_resumes_without_skipping_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    records, files = journal([2500, 3000, 1200])
    expected = {f"{k:05d}-v{k}.mp4": data for k, data in files.items()}
    relay = ScriptedRelay(records, files)
    first, again = Recorder(), Recorder()
    stop = InterruptingOs("00001-v1.mp4", step)
    with running(relay) as url:
        monkeypatch.setattr(sinks, "os", stop)
        with pytest.raises(KeyboardInterrupt):
            do_watch(url, tmp_path, observer=first)
        monkeypatch.undo()
        assert stop.fired and first.saved == [0]
        item1 = next(r["seq"] for r in records if r["k"] == "item" and r["item"] == 1)
        assert first.last_seq < item1, "the cursor never passes a file that is not durable"
        left = names_on_disk(tmp_path)
        if step in ("verify", "fsync", "rename"):
            assert left[".00001-v1.mp4.part"] == files[1] and "00001-v1.mp4" not in left
        else:
            assert left["00001-v1.mp4"] == files[1] and ".00001-v1.mp4.part" not in left

        resumed = do_watch(url, tmp_path, observer=again, from_seq=first.last_seq)
    assert [f.item for f in resumed] == [1, 2]
    assert names_on_disk(tmp_path) == expected  # every file whole, no `.part` left behind
    assert 1 not in again.received, "the file the stopped watch had finished is kept, not received again"
    assert 2 in again.received
    assert again.outcome is not None and again.outcome.ok


@pytest.mark.parametrize("step", FINISH_STEPS)
def test_an_awatch_stopped_while_finishing_a_file_resumes_without_skipping_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    records, files = journal([2500, 3000, 1200])
    relay = ScriptedRelay(records, files)
    first, again = Recorder(), Recorder()

    async def watch(url: str, observer: Recorder, from_seq: int = 0) -> list[SavedFile]:
        files = watch_mod.awatch(
            JOB, relay=url, out=tmp_path, retry=FAST, observer=observer, from_seq=from_seq
        )
        return [f async for f in files]

    with running(relay) as url:
        monkeypatch.setattr(sinks, "os", InterruptingOs("00001-v1.mp4", step))
        with pytest.raises(KeyboardInterrupt):
            asyncio.run(watch(url, first))
        monkeypatch.undo()
        resumed = asyncio.run(watch(url, again, first.last_seq))
    assert first.saved == [0] and [f.item for f in resumed] == [1, 2]
    assert names_on_disk(tmp_path) == {f"{k:05d}-v{k}.mp4": data for k, data in files.items()}
    assert 1 not in again.received


def test_a_failure_while_finishing_a_file_is_retried_in_the_same_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk error while finishing (here at the rename) drops the connection; the watch subscribes again
    from before the item and keeps the `.part` it had verified."""
    records, files = journal([2500, 3000])
    relay = ScriptedRelay(records, files)
    recorder = Recorder()
    monkeypatch.setattr(sinks, "os", InterruptingOs("00000-v0.mp4", "rename", OSError))
    with running(relay) as url:
        saved = do_watch(url, tmp_path, observer=recorder)
    assert [f.item for f in saved] == [0, 1] and recorder.retries
    assert names_on_disk(tmp_path) == {f"{k:05d}-v{k}.mp4": data for k, data in files.items()}
    item0 = next(r["seq"] for r in records if r["k"] == "item" and r["item"] == 0)
    assert relay.subs[1]["from"] == item0 - 1


def test_a_file_that_failed_to_arrive_is_tried_again_on_resume(tmp_path: Path) -> None:
    """The watch goes on past a corrupt file (it reports it), but the cursor it gives a later watch stays
    before it: resuming from there gets it."""
    records, files = journal([300, 400, 500])
    relay = ScriptedRelay(records, files)
    relay.corrupt_item = 1
    first, again = Recorder(), Recorder()
    with running(relay) as url:
        with pytest.raises(JobIncomplete) as info:
            do_watch(url, tmp_path, observer=first)
        assert [f.item for f in info.value.outcome.files] == [0, 2]
        assert [p.code for p in info.value.outcome.problems] == ["bad_sha256"]
        item1 = next(r["seq"] for r in records if r["k"] == "item" and r["item"] == 1)
        assert first.last_seq == item1 - 1
        relay.corrupt_item = None
        resumed = do_watch(url, tmp_path, observer=again, from_seq=first.last_seq)
    assert [f.item for f in resumed] == [1, 2]
    assert names_on_disk(tmp_path) == {f"{k:05d}-v{k}.mp4": data for k, data in files.items()}
    assert 2 not in again.received, "item 2, saved before, is kept"


# ------------------------------------------------------ against the real relay (a process) and the emulator

HANDLER = """
import asyncio, hashlib, runpod
from podstream import wire

async def handler(job):
    env = wire.Envelopes(job["id"])
    entries = []
    for item, size in enumerate(job["input"]["sizes"]):
        await asyncio.sleep(job["input"]["delay"])
        data = hashlib.sha256(str(item).encode()).digest() * (size // 32)
        parts = list(env.parts(item, data, mime="video/mp4", id=f"clip{item}", part_bytes=200_000))
        for part in parts:
            yield part
        entries.append(wire.ManifestItem(item, f"clip{item}", "ok", "video/mp4", len(data), wire.sha256_hex(data), len(parts)))
    for page in env.manifest(entries):
        yield page

runpod.serverless.start({"handler": handler, "return_aggregate_stream": False})
"""


#: The API key of the real relay (auth on, as users run it).
RELAY_KEY = generate_key()


def start_relay(endpoint_url: str, data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "podstream", "relay", "--runpod-url", endpoint_url, "--data-dir", str(data_dir),
        "--port", str(port), "--fsync", "never", "--poll-wait-ms", "2000",
        "--input-schema", "off",  # the scripted handler takes {"sizes", "delay"}, not the built-in shape
    ]  # fmt: skip
    with log.open("ab") as out:
        env = {**os.environ, "PODSTREAM_RUNPOD_KEY": "k", "PODSTREAM_API_KEYS": hash_key(RELAY_KEY)}
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        asyncio.run(wait_healthy(f"http://127.0.0.1:{port}", timeout_s=60, process=process, log=log))
    except RuntimeError:
        process.kill()
        process.wait()
        raise
    return process


def test_watch_survives_a_relay_restart_mid_job(tmp_path: Path) -> None:
    from podstream.emulator import Emulator, EmulatorConfig
    from podstream.submit import submit

    script = tmp_path / "handler.py"
    script.write_text(HANDLER)
    sizes = [600_000, 300_000, 500_000, 64, 400_000]
    expected = {k: hashlib.sha256(str(k).encode()).digest() * (s // 32) for k, s in enumerate(sizes)}
    port = free_port()
    relay_log = tmp_path / "relay.log"
    with Emulator(EmulatorConfig(endpoint_id="ep", api_key="k")).serve_in_thread() as emu:
        emu.spawn_workers(1, [sys.executable, str(script)], log_dir=tmp_path)
        relay = start_relay(emu.endpoint_url, tmp_path / "data", port, relay_log)
        try:
            job = submit({"sizes": sizes, "delay": 0.4}, relay=f"http://127.0.0.1:{port}", key=RELAY_KEY)
            assert job.token is not None
            recorder = Recorder()
            saved: list[SavedFile] = []
            restarted = False
            for file in watch_mod.watch(
                job.id, relay=job.relay, out=tmp_path / "out", retry=RetryPolicy(attempts=30, base=0.2, cap=1.0),
                observer=recorder, token=job.token, key=RELAY_KEY,
            ):  # fmt: skip
                saved.append(file)
                if not restarted:
                    relay.terminate()  # says bye 4000 to every websocket, then exits
                    relay.wait(30)
                    relay = start_relay(emu.endpoint_url, tmp_path / "data", port, relay_log)
                    restarted = True
            # The job is finished: resuming from its head ends at once; a late joiner replays it all.
            assert (
                list(
                    watch_mod.watch(
                        job.id,
                        relay=job.relay,
                        out=tmp_path / "late",
                        from_seq=recorder.last_seq,
                        key=RELAY_KEY,
                    )
                )
                == []
            )
            replay = list(watch_mod.watch(job.id, relay=job.relay, out=tmp_path / "replay", key=RELAY_KEY))
            assert {f.item: f.path.read_bytes() for f in replay} == expected
        finally:
            relay.terminate()
            relay.wait(30)
    assert sorted(f.item for f in saved) == list(range(len(sizes)))
    assert {f.item: f.path.read_bytes() for f in saved} == expected
    assert recorder.retries, "the watcher had to reconnect"
    assert recorder.outcome is not None and recorder.outcome.ok


def test_resuming_at_the_head_of_a_finished_job_ends_at_once(tmp_path: Path) -> None:
    records, files = journal([10, 20])
    relay = ScriptedRelay(records, files)
    relay.status = "COMPLETED"
    recorder = Recorder()
    with running(relay) as url:
        saved = do_watch(url, tmp_path, from_seq=len(records), observer=recorder)
    assert saved == [] and recorder.outcome is not None and recorder.outcome.status == "COMPLETED"


def test_a_position_the_relay_never_had_starts_over(tmp_path: Path) -> None:
    records, files = journal([10, 20])
    relay = ScriptedRelay(records, files)
    recorder = Recorder()
    with running(relay) as url:
        saved = do_watch(url, tmp_path, from_seq=len(records) + 5, observer=recorder)
    assert [s["from"] for s in relay.subs] == [len(records) + 5, 0]
    assert sorted(f.item for f in saved) == [0, 1]
    assert recorder.problems == ["not_recovered"] and recorder.outcome is not None and recorder.outcome.ok


def test_a_rerun_job_replaces_the_earlier_files(tmp_path: Path) -> None:
    records, files = journal([10, 20])
    first_item = next(k for k, r in enumerate(records) if r["k"] == "item")
    rerun = {"k": "error", "item": None, "code": "restarted", "message": "RunPod re-ran the job"}
    records.insert(first_item + 1, rerun)
    for seq, rec in enumerate(records, start=1):
        rec.update(seq=seq, job=JOB)
    relay = ScriptedRelay(records, files)
    recorder = Recorder()
    with running(relay) as url:
        saved = do_watch(url, tmp_path, observer=recorder)
    assert [f.item for f in saved] == [0, 1]
    assert recorder.outcome is not None and recorder.outcome.ok
    assert [f.item for f in recorder.outcome.files] == [1] and recorder.problems == ["restarted"]


def test_ctrl_c_while_finishing_a_file_then_the_printed_resume_command_gets_every_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`podstream watch` against a real relay, stopped at each step of finishing a file: the command it
    prints carries on without skipping that file, and exits 0."""
    from podstream.cli import main
    from podstream.submit import submit
    from tests.podstream.stack import local_stack

    names = [f"{k:05d}-img{k}.png" for k in range(3)]
    with local_stack(tmp_path / "stack") as stack:
        job = submit({"sizes": [300_000, 200_000, 100_000]}, relay=stack.relay, key=stack.key).id
        watch = ["watch", job, "--relay", stack.relay, "--key", stack.key, "-q"]
        assert main([*watch, "--out", str(tmp_path / "whole")]) == 0
        whole = names_on_disk(tmp_path / "whole")
        assert sorted(whole) == names
        capsys.readouterr()
        for step in FINISH_STEPS:
            out = tmp_path / step
            with monkeypatch.context() as patch:
                stop = InterruptingOs(names[1], step)
                patch.setattr(sinks, "os", stop)
                assert main([*watch, "--out", str(out)]) == 130
                assert stop.fired
            stderr = capsys.readouterr().err
            hint = next(line for line in stderr.splitlines() if line.startswith("interrupted; resume with: "))
            resume = hint.removeprefix("interrupted; resume with: podstream ").split("  (")[0].split()
            resume = [stack.key if word == '"$PODSTREAM_API_KEY"' else word for word in resume]
            assert resume[:2] == ["watch", job] and "--from" in resume
            assert main([*resume, "-q"]) == 0, capsys.readouterr().err
            assert names_on_disk(out) == whole, step  # every file, whole, and no `.part` left


# ---- the step machine alone: frames, closes and HTTP answers fed by hand, no sockets

RELAY = "http://relay.test"
WS = "ws://relay.test/v1/ws"


def machine(out: Path, **kwargs: Any) -> watch_mod.WatchSteps:
    return watch_mod.WatchSteps(JOB, relay=RELAY, out=out, retry=FAST, **kwargs)


def streamed(
    records: list[dict[str, Any]], files: dict[int, bytes], refs: frozenset[int] = frozenset()
) -> list[Any]:
    """The frames a relay sends for `records` (and the chunks of their files but those in `refs`)."""
    out: list[Any] = []
    for rec in records:
        out.append({"t": "ev", **rec})
        if rec["k"] == "item" and rec["item"] not in refs:
            data = files[rec["item"]]
            for off in range(0, max(len(data), 1), CHUNK):
                last = off + CHUNK >= len(data)
                chunk = data[off : off + CHUNK]
                out.append(
                    {"t": "chunk", "job": JOB, "seq": rec["seq"], "item": rec["item"], "off": off, "data": chunk,
                     "last": last}
                )  # fmt: skip
    return out


def subscribed(head: int, status: str = "IN_PROGRESS") -> dict[str, Any]:
    return {"t": "subscribed", "job": JOB, "head": head, "status": status, "recovered": True}


def play(steps: watch_mod.WatchSteps, incoming: list[Any]) -> tuple[list[SavedFile], list[Any], object]:
    """What a driver does on an open websocket while the relay sends `incoming`: answer each `Receive`
    with the next frame and collect what is sent. Returns the files, the frames sent, and the first step
    that is neither (a `Receive` once `incoming` is spent)."""
    saved: list[SavedFile] = []
    sent: list[Any] = []
    pending = list(incoming)
    while True:
        step = steps.next()
        if isinstance(step, watch_mod.Send):
            sent.append(msgpack.unpackb(step.data))
        elif isinstance(step, watch_mod.Receive) and pending:
            frame = pending.pop(0)
            saved += steps.received(frame if isinstance(frame, str | bytes) else msgpack.packb(frame))
        else:
            return saved, sent, step


def closed(code: int, reason: str) -> ConnectionClosed:
    from websockets.exceptions import ConnectionClosedError
    from websockets.frames import Close

    return ConnectionClosedError(Close(code, reason), None)


def test_steps_subscribe_answer_pings_save_every_file_then_finish(tmp_path: Path) -> None:
    records, files = journal([2500, 0, 10])
    recorder = Recorder()
    steps = machine(tmp_path, observer=recorder)
    assert steps.next() == watch_mod.Connect(WS)
    steps.connected()
    welcome = {"t": "welcome", "v": 1, "server": "s", "ping": 15}
    ping = {"t": "ping", "n": 3}
    saved, sent, step = play(steps, [welcome, ping, subscribed(len(records)), *streamed(records, files)])
    assert sent == [{"t": "sub", "job": JOB, "from": 0, "inline": True}, {"t": "pong", "n": 3}]
    assert {f.item: f.path.read_bytes() for f in saved} == files
    assert step == watch_mod.Close()  # the `done` record: leave the websocket
    finished = steps.next()
    assert isinstance(finished, watch_mod.Finished) and finished.outcome.ok
    assert steps.next() is finished
    assert recorder.statuses == ["IN_PROGRESS", "COMPLETED"] and recorder.retries == []


def test_steps_send_the_token_first_and_get_one_with_the_key(tmp_path: Path) -> None:
    steps = machine(tmp_path, token="tok")
    steps.next()
    steps.connected()
    _, sent, _ = play(steps, [])
    assert sent == [{"t": "auth", "token": "tok"}, {"t": "sub", "job": JOB, "from": 0, "inline": True}]

    steps = machine(tmp_path, key="k")
    mint = steps.next()
    assert mint == watch_mod.Fetch(
        f"{RELAY}/v1/jobs/{JOB}/tokens", {"Authorization": "Bearer k"}, "POST", 10.0, follow_redirects=False
    )
    assert steps.fetched(200, [b'{"tok', b'en": "minted"}']) == []
    assert steps.next() == watch_mod.Connect(WS)
    steps.connected()
    assert play(steps, [])[1][0] == {"t": "auth", "token": "minted"}

    steps = machine(tmp_path, key="k")
    steps.next()
    assert steps.fetched(405, [b"Method Not Allowed"]) == []  # a relay without auth mints no tokens
    steps.next()
    steps.connected()
    assert play(steps, [])[1] == [{"t": "sub", "job": JOB, "from": 0, "inline": True}]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (httpx.ConnectError("refused"), f"cannot reach the relay at {RELAY}: refused"),
        (httpx.ReadTimeout("slow"), "asking the relay for a token: ReadTimeout slow"),
        ((401, b'{"error": {"code": "unknown_key"}}'), r"the relay rejected the API key \(HTTP 401\)"),
        ((500, b"boom"), "asking the relay for a token: HTTP 500: boom"),
    ],
)
def test_steps_a_token_that_cannot_be_had_ends_the_watch(
    tmp_path: Path, answer: httpx.HTTPError | tuple[int, bytes], message: str
) -> None:
    steps = machine(tmp_path, key="k")
    assert isinstance(steps.next(), watch_mod.Fetch)
    with pytest.raises(TransferError, match=message):
        if isinstance(answer, tuple):
            steps.fetched(answer[0], [answer[1]])
        else:
            steps.fetch_failed(answer)


def test_steps_reconnect_with_backoff_from_the_last_applied_seq(tmp_path: Path) -> None:
    records, files = journal([2500, 10])
    item0 = next(r["seq"] for r in records if r["k"] == "item")
    recorder = Recorder()
    steps = machine(tmp_path, observer=recorder)
    steps.next()
    steps.connected()
    # Item 0's record and its first chunk, then the relay drops us for being slow.
    play(steps, [subscribed(len(records)), *streamed(records, files)[: item0 + 1]])
    assert list(tmp_path.glob(".*.part"))
    steps.dropped(closed(4001, "slow consumer"))
    assert not list(tmp_path.glob(".*.part")), "a partly received item is received again from its start"
    assert recorder.retries == ["connection closed (4001 slow consumer)"]
    assert steps.next() == watch_mod.Close()
    pause = steps.next()
    assert isinstance(pause, watch_mod.Pause) and 0 <= pause.seconds <= FAST.cap
    assert steps.next() == watch_mod.Connect(WS)
    steps.connected()
    _, sent, _ = play(steps, [])
    assert sent == [{"t": "sub", "job": JOB, "from": item0 - 1, "inline": True}]


def test_steps_a_frame_out_of_order_or_not_msgpack_resubscribes(tmp_path: Path) -> None:
    recorder = Recorder()
    steps = machine(tmp_path, observer=recorder)
    steps.next()
    steps.connected()
    status = {"t": "ev", "job": JOB, "seq": 1, "k": "status", "status": "IN_PROGRESS"}
    skipped = {"t": "ev", "job": JOB, "seq": 3, "k": "status", "status": "IN_PROGRESS"}
    assert play(steps, [subscribed(5), status, skipped])[2] == watch_mod.Close()
    assert isinstance(steps.next(), watch_mod.Pause)
    assert steps.next() == watch_mod.Connect(WS)
    steps.connected()
    _, sent, step = play(steps, ["text"])
    assert sent == [{"t": "sub", "job": JOB, "from": 1, "inline": True}] and step == watch_mod.Close()
    assert isinstance(steps.next(), watch_mod.Pause)
    steps.next()
    steps.connected()
    assert play(steps, [b"\xc1"])[2] == watch_mod.Close()  # 0xc1 is never valid msgpack
    assert recorder.retries[:2] == [
        "records 2..2 were skipped",
        "the relay sent a text frame; the protocol uses binary msgpack frames",
    ]
    assert recorder.retries[2].startswith("the relay sent a frame that is not msgpack: ")


def test_steps_give_up_after_failures_in_a_row_unless_records_arrive_between(tmp_path: Path) -> None:
    steps = machine(tmp_path)
    steps.next()
    steps.connected()
    for seq in range(1, 2 * FAST.attempts):  # each drop after a new record: one failure in a row, never more
        record = {"t": "ev", "job": JOB, "seq": seq, "k": "progress", "item": 0, "step": seq, "steps": 9}
        play(steps, [subscribed(9), record])
        steps.dropped(closed(4000, "going away"))
        assert steps.next() == watch_mod.Close()
        assert isinstance(steps.next(), watch_mod.Pause)
        assert steps.next() == watch_mod.Connect(WS)
        steps.connected()
    for _ in range(FAST.attempts - 2):  # the last drop above was the first of the run
        steps.dropped(ConnectionResetError("reset"))
        steps.next(), steps.next(), steps.next()  # Close, Pause, Connect
        steps.connected()
    with pytest.raises(
        TransferError, match="giving up after 5 failed attempts in a row; last: cannot reconnect"
    ):
        steps.dropped(ConnectionResetError("reset"))


def test_steps_the_relay_closing_cleanly_is_a_reason_to_reconnect(tmp_path: Path) -> None:
    from websockets.exceptions import ConnectionClosedOK
    from websockets.frames import Close

    recorder = Recorder()
    steps = machine(tmp_path, observer=recorder)
    steps.next()
    steps.connected()
    steps.dropped(ConnectionClosedOK(Close(1000, ""), Close(1000, ""), rcvd_then_sent=True))
    assert recorder.retries == ["the relay closed the connection"]
    assert [type(steps.next()) for _ in range(3)] == [watch_mod.Close, watch_mod.Pause, watch_mod.Connect]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {},
            closed(4503, "too many subscriptions"),
            "the relay closed the connection: 4503 too many subscriptions",
        ),
        ({"token": "t"}, closed(4501, "unauthorized"), r"the relay rejected the token.*\(close code 4501\)"),
        ({"token": "t"}, closed(4003, "token expired"), "no API key was given to get one with"),
        ({}, InvalidStatus(Response(500, "Internal", Headers(), b"")), r"refused the websocket \(HTTP 500\)"),
        (
            {"token": "t"},
            InvalidStatus(Response(401, "No", Headers(), b"")),
            r"rejected the token.*\(HTTP 401\)",
        ),
        ({}, ConnectionRefusedError("refused"), f"cannot reach the relay at {RELAY}: refused"),
    ],
)
def test_steps_terminal_closes_and_refusals_end_the_watch(
    tmp_path: Path, kwargs: dict[str, str], error: Exception, message: str
) -> None:
    steps = machine(tmp_path, **kwargs)
    assert steps.next() == watch_mod.Connect(WS)
    if isinstance(error, ConnectionClosed):
        steps.connected()
    with pytest.raises(TransferError, match=message):
        steps.dropped(error)


def test_steps_a_failure_to_connect_is_retried_once_the_relay_was_reached(tmp_path: Path) -> None:
    recorder = Recorder()
    steps = machine(tmp_path, observer=recorder)
    steps.next()
    steps.connected()
    steps.dropped(closed(4000, "restarting"))
    assert [type(steps.next()) for _ in range(3)] == [watch_mod.Close, watch_mod.Pause, watch_mod.Connect]
    steps.dropped(ConnectionRefusedError("refused"))
    assert isinstance(steps.next(), watch_mod.Pause)  # no websocket was opened: nothing to close
    assert recorder.retries[-1] == "cannot reconnect: ConnectionRefusedError refused"


def test_steps_renew_an_expired_token_with_the_key_before_reconnecting(tmp_path: Path) -> None:
    recorder = Recorder()
    steps = machine(tmp_path, token="old", key="k", observer=recorder)
    steps.next()
    steps.connected()
    play(steps, [])
    steps.dropped(closed(4003, "token expired"))
    assert steps.next() == watch_mod.Close()
    mint = steps.next()
    assert isinstance(mint, watch_mod.Fetch) and mint.method == "POST" and mint.url.endswith("/tokens")
    assert recorder.retries == [], "the backoff starts once the new token is in"
    steps.fetched(200, [b'{"token": "new"}'])
    assert recorder.retries == ["connection closed (4003 token expired)"]
    assert isinstance(steps.next(), watch_mod.Pause)
    assert steps.next() == watch_mod.Connect(WS)
    steps.connected()
    assert play(steps, [])[1][0] == {"t": "auth", "token": "new"}


def test_steps_fetch_a_file_without_inline_bytes_from_its_url(tmp_path: Path) -> None:
    records, files = journal([3000, 500, 700, 20])
    urls = {0: "/media/0", 1: "https://bucket.example/1", 2: "/media/2", 3: "/media/3"}
    for rec in records:
        if rec["k"] == "item":
            rec["url"] = urls[rec["item"]]
    steps = machine(tmp_path, token="t")
    steps.next()
    steps.connected()
    incoming = [subscribed(len(records)), *streamed(records, files, refs=frozenset(urls))]
    # Item 0's record, then the next record with no chunk between: its file is fetched from its URL.
    _, _, fetch = play(steps, incoming[:5])
    assert fetch == watch_mod.Fetch(f"{RELAY}/media/0", {"Authorization": "Bearer t"})
    assert steps.next() is fetch, "the fetch comes before any other step"
    data = files[0]
    saved = steps.fetched(200, [data[:1000], data[1000:]])
    assert [(f.item, f.path.read_bytes()) for f in saved] == [(0, data)]
    # The token goes to the relay only; a failed fetch is a problem, and the watch goes on.
    _, _, fetch = play(steps, incoming[5:7])
    assert fetch == watch_mod.Fetch("https://bucket.example/1", {})
    assert steps.fetch_failed(httpx.ConnectError("down")) == []
    _, _, fetch = play(steps, incoming[7:9])
    assert fetch == watch_mod.Fetch(f"{RELAY}/media/2", {"Authorization": "Bearer t"})
    assert steps.fetched(404, [b"gone"]) == []
    _, _, fetch = play(steps, incoming[9:11])
    body = iter([files[3][:5]])

    def broken() -> Iterator[bytes]:  # the answer breaks off after some bytes
        yield from body
        raise httpx.ReadError("reset")

    with pytest.raises(httpx.ReadError):
        steps.fetched(200, broken())
    assert steps.next() is fetch, "still the fetch, until its failure is handed over"
    assert steps.fetch_failed(httpx.ReadError("reset")) == []
    saved, _, step = play(steps, incoming[11:])
    assert step == watch_mod.Close()
    finished = steps.next()
    assert isinstance(finished, watch_mod.Finished)
    assert [f.item for f in finished.outcome.files] == [0]
    assert [p.message for p in finished.outcome.problems] == [
        "item 1: cannot fetch https://bucket.example/1: ConnectError down",
        f"item 2: cannot fetch {RELAY}/media/2: HTTP 404",
        f"item 3: cannot fetch {RELAY}/media/3: ReadError reset",
    ]
    assert not list(tmp_path.glob(".*.part"))


def test_steps_read_the_manifest_when_the_job_looks_over(tmp_path: Path) -> None:
    records, _ = journal([10])
    head = len(records)
    manifest = watch_mod.Fetch(f"{RELAY}/v1/jobs/{JOB}", {}, follow_redirects=False)
    steps = machine(tmp_path, from_seq=head)
    steps.next()
    steps.connected()
    assert play(steps, [subscribed(head, "COMPLETED")])[2] == manifest
    assert steps.fetched(503, [b"busy"]) == []  # unreadable: the watch goes on
    assert steps.next() == watch_mod.Receive()
    steps.received(msgpack.packb(subscribed(head, "COMPLETED")))
    assert steps.next() == manifest
    steps.fetch_failed(httpx.ReadTimeout("slow"))
    assert steps.next() == watch_mod.Receive()
    steps.received(msgpack.packb(subscribed(head, "COMPLETED")))
    steps.next()
    answer = {"status": "COMPLETED", "finished": True, "head": head, "items": [{}], "expected_items": 1}
    steps.fetched(200, [json.dumps(answer).encode()])
    assert steps.next() == watch_mod.Close()
    finished = steps.next()
    assert isinstance(finished, watch_mod.Finished)
    assert finished.outcome.status == "COMPLETED" and finished.outcome.expected_items == 1


def test_steps_a_disk_error_while_saving_receives_the_item_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records, files = journal([10])
    item0 = next(r["seq"] for r in records if r["k"] == "item")
    recorder = Recorder()
    steps = machine(tmp_path, observer=recorder)
    steps.next()
    steps.connected()
    monkeypatch.setattr(sinks, "os", InterruptingOs("00000-v0.mp4", "rename", OSError))
    saved, _, step = play(steps, [subscribed(len(records)), *streamed(records, files)])
    assert saved == [] and step == watch_mod.Close()
    assert recorder.retries == ["cannot reconnect: OSError"]
    assert isinstance(steps.next(), watch_mod.Pause)
    steps.next()
    steps.connected()
    assert play(steps, [])[1] == [{"t": "sub", "job": JOB, "from": item0 - 1, "inline": True}]
