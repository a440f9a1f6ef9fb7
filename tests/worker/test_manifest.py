"""worker.manifest: each item's entry comes from the envelope that delivered or failed it, in item order."""

from __future__ import annotations

import hashlib
from typing import Any

from podstream import wire
from worker.manifest import Manifest


def test_entries_come_from_the_envelopes_that_delivered_each_item() -> None:
    envs = wire.Envelopes("job-1", run="run-1")
    manifest = Manifest(envs)
    data = bytes(range(256)) * 10
    parts = list(envs.parts(2, data, mime="image/png", id="two", part_bytes=1000))
    for envelope in parts:
        manifest.record(envelope, seed=7)
    manifest.record(envs.error(1, "bad_image", "no", id="one"))
    sha = hashlib.sha256(b"uploaded").hexdigest()
    manifest.record(envs.ref(0, url="https://b/0", mime="video/mp4", size=8, sha256=sha, id="zero"), seed=3)
    manifest.record(envs.progress(0, 1, 2))  # not an item's delivery: no entry

    assert manifest.items == [
        wire.ManifestItem(0, "zero", "ref", "video/mp4", 8, sha, 0, "https://b/0", 3),
        wire.ManifestItem(1, "one", "error"),
        wire.ManifestItem(
            2, "two", "ok", "image/png", len(data), hashlib.sha256(data).hexdigest(), 3, seed=7
        ),
    ]


def test_the_pages_are_the_last_envelopes_and_an_assembler_agrees() -> None:
    envs = wire.Envelopes("job-1")
    manifest = Manifest(envs)
    streamed: list[dict[str, Any]] = []
    for item, data in [(1, b"b" * 5000), (0, b"a" * 10)]:  # finished out of order
        for envelope in envs.parts(item, data, mime="text/plain", part_bytes=2048):
            manifest.record(envelope)
            streamed.append(envelope)
    failed = envs.error(2, "encode_failed", "broken")
    manifest.record(failed)
    streamed.append(failed)

    [page] = manifest.envelopes()
    assert page["type"] == wire.MANIFEST and page["seq"] == len(streamed) + 1 == page["last_seq"]
    assert [m["item"] for m in page["items"]] == [0, 1, 2] and page["errors"] == 1
    assembler = wire.Assembler("job-1")
    for envelope in [*streamed, page]:
        assembler.feed(envelope)
    assert assembler.done and assembler.finish() == []


def test_nothing_recorded_is_an_empty_manifest() -> None:
    [page] = Manifest(wire.Envelopes("job-1")).envelopes()
    assert page["items"] == [] and page["errors"] == 0 and page["seq"] == 1
