"""podstream.wire: envelopes fit the cap, and the Assembler reproduces the input or says exactly what is missing."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podstream import wire
from podstream.sinks import file_sinks


def build_job(
    files: list[bytes],
    *,
    part_bytes: int = wire.DEFAULT_PART_BYTES,
    job: str = "job-1",
    errors: tuple[int, ...] = (),
) -> list[dict[str, Any]]:
    env = wire.Envelopes(job)
    out: list[dict[str, Any]] = []
    manifest: list[wire.ManifestItem] = []
    for i, data in enumerate(files):
        if i in errors:
            out.append(env.error(i, "bad_input", f"item {i} failed", id=f"c{i}"))
            manifest.append(wire.ManifestItem(i, f"c{i}", "error"))
            continue
        out.append(env.progress(i, 1, 2))
        parts = list(env.parts(i, data, mime="video/mp4", id=f"c{i}", part_bytes=part_bytes))
        out.extend(parts)
        manifest.append(
            wire.ManifestItem(
                i, f"c{i}", "ok", "video/mp4", len(data), hashlib.sha256(data).hexdigest(), len(parts)
            )
        )
    out.extend(env.manifest(manifest))
    return out


def feed_all(asm: wire.Assembler, envelopes: list[dict[str, Any]]) -> list[wire.Event]:
    events: list[wire.Event] = []
    for e in envelopes:
        events.extend(asm.feed(e))
    return events


# ------------------------------------------------------------------------------------------- split


@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=6000))
def test_split_reassembles_and_balances(data: bytes, part_bytes: int) -> None:
    parts = list(wire.split(data, part_bytes))
    assert b"".join(bytes(p) for p in parts) == data
    assert len(parts) == wire.part_count(len(data), part_bytes)
    length = wire.part_length(len(data), len(parts))
    assert all(len(p) == length for p in parts[:-1])
    assert all(0 < len(p) <= part_bytes for p in parts) or data == b""


def test_split_rejects_zero_part_size() -> None:
    with pytest.raises(ValueError):
        list(wire.split(b"abc", 0))


# ----------------------------------------------------------------------------------------- budget


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(min_value=0, max_value=3_000_000),
    part_bytes=st.integers(min_value=1_000, max_value=2_000_000),
    id=st.text(max_size=wire.MAX_ID_CHARS),
    budget=st.integers(min_value=20_000, max_value=wire.DEFAULT_BODY_BUDGET),
)
def test_every_body_is_within_budget(size: int, part_bytes: int, id: str, budget: int) -> None:
    data = random.Random(size).randbytes(size)
    env = wire.Envelopes("j" * wire.MAX_ID_CHARS, budget=budget)
    bodies = list(env.parts(7, data, mime="video/mp4", id=id, part_bytes=part_bytes))
    bodies.append(env.error(7, "x" * 500, "é" * 10_000, id=id))
    bodies.append(env.progress(7, 1, 2))
    for body in bodies:
        assert wire.body_size(body) <= budget
        # The SDK's own encoding (UTF-8, not escaped) is never larger than what we measured.
        assert len(json.dumps({"output": body}, ensure_ascii=False).encode()) <= budget


def test_default_parts_fill_most_of_the_cap() -> None:
    data = bytes(8 * 1024 * 1024)
    bodies = list(wire.Envelopes("job").parts(0, data, mime="video/mp4"))
    assert len(bodies) == 16
    assert max(wire.body_size(b) for b in bodies) <= wire.DEFAULT_BODY_BUDGET
    assert max(wire.body_size(b) for b in bodies) > 0.6 * wire.DEFAULT_BODY_BUDGET


def test_parts_carry_a_digest_the_caller_computed_or_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"clip" * 1000
    digest = hashlib.sha256(data).hexdigest()
    assert {b["sha256"] for b in wire.Envelopes("job").parts(0, data, mime="video/mp4")} == {digest}
    monkeypatch.setattr(wire, "sha256_hex", lambda _data: pytest.fail("hashed again"))
    given = list(wire.Envelopes("job").parts(0, data, mime="video/mp4", part_bytes=1000, sha256=digest))
    assert len(given) == 4 and {b["sha256"] for b in given} == {digest}


def test_oversized_part_request_is_lowered_to_fit() -> None:
    bodies = list(wire.Envelopes("job").parts(0, bytes(3_000_000), mime="image/png", part_bytes=10_000_000))
    assert all(wire.body_size(b) <= wire.DEFAULT_BODY_BUDGET for b in bodies)


def test_large_manifest_is_paged_within_budget() -> None:
    env = wire.Envelopes("job", budget=50_000)
    items = [
        wire.ManifestItem(i, f"client-{i:06d}", "ok", "video/mp4", 123456, "a" * 64, 3) for i in range(5000)
    ]
    pages = env.manifest(items)
    assert len(pages) > 1
    assert all(wire.body_size(p) <= 50_000 for p in pages)
    assert [p["page"] for p in pages] == list(range(len(pages)))
    assert all(p["last_seq"] == pages[-1]["seq"] for p in pages)
    asm = wire.Assembler("job")
    events = feed_all(asm, list(reversed(pages)))
    received = [e for e in events if isinstance(e, wire.ManifestReceived)]
    assert len(received) == 1 and [m["item"] for m in received[0].items] == list(range(5000))


def test_budget_too_small_is_an_error() -> None:
    with pytest.raises(ValueError):
        wire.max_part_bytes(100)


def test_overlong_ids_are_refused_when_building() -> None:
    with pytest.raises(ValueError):
        wire.Envelopes("j" * 200)
    with pytest.raises(ValueError):
        list(wire.Envelopes("j").parts(0, b"x", mime="image/png", id="i" * 200))


# -------------------------------------------------------------------------------------- assembler


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=20_000), min_size=1, max_size=6),
    part_bytes=st.integers(min_value=500, max_value=8_000),
    data=st.data(),
)
def test_any_order_with_duplicates_and_drops(sizes: list[int], part_bytes: int, data: st.DataObject) -> None:
    rng = random.Random(sum(sizes))
    files = [rng.randbytes(n) for n in sizes]
    envelopes = build_job(files, part_bytes=part_bytes)
    dropped = set(data.draw(st.sets(st.sampled_from([e["seq"] for e in envelopes]), max_size=4)))
    delivered = [e for e in envelopes if e["seq"] not in dropped]
    dupes = data.draw(st.lists(st.sampled_from(delivered), max_size=5)) if delivered else []
    stream = data.draw(st.permutations(delivered + dupes))

    asm = wire.Assembler("job-1")
    events = feed_all(asm, stream)
    problems = asm.finish()

    assert asm.duplicates == len(dupes)
    assert not [e for e in events if isinstance(e, wire.Problem) and not isinstance(e, wire.Duplicate)]
    completed = {e.item: e.result for e in events if isinstance(e, wire.ItemComplete)}
    for item, blob in completed.items():
        assert blob == files[item]
    manifest_seqs = {e["seq"] for e in envelopes if e["type"] == "manifest"}
    if not dropped:
        assert completed.keys() == set(range(len(files)))
        assert problems == []
        assert asm.done
    else:
        gaps = [p for p in problems if isinstance(p, wire.Gap)]
        if dropped & manifest_seqs:
            assert any(isinstance(p, wire.MissingManifest) for p in problems)
            # Without the manifest's last_seq, only gaps below the highest seen can be known.
            top = max((e["seq"] for e in delivered), default=0)
            assert set(gaps[0].missing if gaps else ()) == {s for s in dropped if s < top}
        else:
            assert gaps and set(gaps[0].missing) == dropped
            # Each lost part leaves its item incomplete (or never started) and the manifest names it as missing.
            lost_items = {e["item"] for e in envelopes if e["seq"] in dropped and e["type"] == "part"}
            assert {p.item for p in problems if isinstance(p, wire.Incomplete)} <= lost_items
            assert {p.item for p in problems if isinstance(p, wire.ManifestMismatch)} == lost_items


@pytest.mark.parametrize("size", [0, 1, 700_000, 50 * 1024 * 1024])
def test_round_trip_sizes_through_disk(tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    envelopes = build_job([data])
    random.Random(1).shuffle(envelopes)
    asm = wire.Assembler("job-1", sink=file_sinks(tmp_path))
    events = feed_all(asm, envelopes)
    assert asm.finish() == []
    (done,) = [e for e in events if isinstance(e, wire.ItemComplete)]
    assert isinstance(done.result, Path)
    assert done.result.read_bytes() == data
    assert done.result.name == "00000-c0.mp4"
    assert [p.name for p in tmp_path.iterdir()] == ["00000-c0.mp4"]  # no temp file left behind


def test_item_errors_and_manifest_agree() -> None:
    envelopes = build_job([b"a" * 10, b"b" * 10, b"c" * 10], errors=(1,))
    asm = wire.Assembler()
    events = feed_all(asm, envelopes)
    failed = [e for e in events if isinstance(e, wire.ItemFailed)]
    assert [(f.item, f.code) for f in failed] == [(1, "bad_input")]
    assert sorted(asm.completed) == [0, 2]
    assert asm.finish() == []


def test_missing_error_is_a_manifest_mismatch() -> None:
    envelopes = build_job([b"a", b"b"], errors=(1,))
    asm = wire.Assembler()
    feed_all(asm, [e for e in envelopes if e["type"] != "error"])
    codes = {p.code for p in asm.finish()}
    assert "manifest_mismatch" in codes and "gap" in codes


def test_new_run_resets_state() -> None:
    first = build_job([b"one"])
    second = build_job([b"two"])
    asm = wire.Assembler()
    feed_all(asm, first[:1])
    events = feed_all(asm, second)
    assert isinstance(events[0], wire.Restarted)
    assert asm.completed[0].result == b"two"
    assert asm.finish() == []


def test_without_a_job_the_first_envelopes_job_is_the_only_one_taken() -> None:
    asm = wire.Assembler()
    feed_all(asm, build_job([b"one"], job="job-a"))
    (problem,) = asm.feed(build_job([b"two"], job="job-b")[0])
    assert asm.job == "job-a" and isinstance(problem, wire.Malformed) and problem.code == "wrong_job"
    assert asm.finish() == [] and asm.completed[0].result == b"one"


def test_ref_items_count_for_the_manifest() -> None:
    env = wire.Envelopes("j")
    sha = hashlib.sha256(b"x").hexdigest()
    ref = env.ref(0, url="https://example.test/x.mp4", mime="video/mp4", size=1, sha256=sha, id="a")
    manifest = env.manifest(
        [wire.ManifestItem(0, "a", "ref", "video/mp4", 1, sha, 0, "https://example.test/x.mp4")]
    )
    asm = wire.Assembler("j")
    events = feed_all(asm, [ref, *manifest])
    assert isinstance(events[0], wire.ItemRef) and events[0].url.endswith("x.mp4")
    assert asm.finish() == []


# ------------------------------------------------------------------------------------- bad input


def _part(**over: Any) -> dict[str, Any]:
    data = b"hello world"
    (env,) = wire.Envelopes("j", run="r").parts(0, data, mime="image/png", id="a")
    env.update(over)
    return env


BAD: list[tuple[object, str]] = [
    ([1, 2], "malformed"),
    ("text", "malformed"),
    (_part(v=2), "unsupported_version"),
    (_part(type="video"), "unknown_type"),
    ({k: v for k, v in _part().items() if k != "sha256"}, "missing_field"),
    (_part(extra=1), "extra_field"),
    (_part(item="0"), "bad_field"),
    (_part(item=True), "bad_field"),
    (_part(seq=0), "bad_seq"),
    (_part(item=-1), "bad_field"),
    (_part(item=10**12), "bad_field"),
    (_part(part=5), "bad_field"),
    (_part(parts=0), "bad_field"),
    (_part(parts=10**9), "bad_field"),
    (_part(size=10**15), "bad_field"),
    (_part(size=5, parts=1), "bad_part_size"),
    (_part(size=10**9, parts=1), "bad_field"),
    (_part(size=11, parts=11), "bad_part_size"),
    (_part(size=11, parts=12), "bad_field"),
    (_part(sha256="XYZ"), "bad_field"),
    (_part(data="!!!not base64!!!"), "bad_base64"),
    (_part(data=base64.b64encode(b"hello world, and more").decode()), "bad_part_size"),
    (_part(data="A" * 10_000), "bad_part_size"),
    (_part(job="other"), "wrong_job"),
    (_part(id="x" * 1000), "bad_field"),
    (_part(sha256="0" * 64), "bad_sha256"),
    (_part(data=memoryview(b"!!!not base64!!!")), "bad_base64"),
    (_part(data=memoryview(b"A" * 10_000)), "bad_part_size"),
    (_part(data=b"aGVsbG8gd29ybGQ="), "bad_field"),  # bytes: only a memoryview is taken for the text
]


@pytest.mark.parametrize(("envelope", "code"), BAD)
def test_bad_envelopes_give_specific_problems(envelope: object, code: str) -> None:
    asm = wire.Assembler("j")
    events = asm.feed(envelope)
    assert len(events) == 1
    (problem,) = events
    assert isinstance(problem, wire.Problem), problem
    assert problem.code == code, problem
    assert problem.message
    assert not asm.completed


def test_a_part_s_base64_may_come_as_a_memoryview_of_its_ascii_bytes() -> None:
    """What `stream_split.entry_output` hands over (no copy out of the JSON text): the same item as from
    strings, and a mistyped `data` is still named a string in the problem."""
    data = bytes(range(256)) * 40
    envs = list(wire.Envelopes("j", run="r").parts(0, data, mime="image/png", part_bytes=1000))
    viewed = [{**e, "data": memoryview(e["data"].encode("ascii"))} for e in envs]
    asm = wire.Assembler("j")
    (done,) = [e for e in feed_all(asm, viewed) if isinstance(e, wire.ItemComplete)]
    assert done.result == data and asm.bytes_received == len(data)
    (problem,) = wire.Assembler("j").feed(_part(data=12))
    assert isinstance(problem, wire.Malformed) and "must be a string" in problem.message


def test_parts_disagreeing_is_inconsistent_and_recoverable() -> None:
    data = bytes(range(256)) * 10
    envs = list(wire.Envelopes("j", run="r").parts(0, data, mime="image/png", part_bytes=1000))
    asm = wire.Assembler("j")
    assert asm.feed(envs[0]) == []
    tampered = dict(envs[1], mime="image/jpeg")
    (problem,) = asm.feed(tampered)
    assert isinstance(problem, wire.Inconsistent) and problem.item == 0
    # The genuine envelope still completes the item: a bad envelope harms nothing else.
    events = feed_all(asm, envs[1:])
    assert isinstance(events[-1], wire.ItemComplete) and events[-1].result == data


def test_corrupt_part_can_be_replaced_by_a_resent_one() -> None:
    envs = list(wire.Envelopes("j", run="r").parts(0, b"abcdefgh" * 100, mime="image/png", part_bytes=300))
    bad = dict(envs[1], data=base64.b64encode(b"z" * len(base64.b64decode(envs[1]["data"]))).decode())
    asm = wire.Assembler("j")
    asm.feed(envs[0])
    asm.feed(bad)
    events = asm.feed(envs[2])
    (problem,) = events
    assert isinstance(problem, wire.Corrupt) and problem.code == "bad_sha256"
    assert 0 not in asm.completed
    # Which part was bad can't be known: every seq of the item is open again, and a resend rebuilds it.
    assert asm.missing(upto=3) == [1, 2, 3]
    events = feed_all(asm, envs)
    assert isinstance(events[-1], wire.ItemComplete) and events[-1].result == b"abcdefgh" * 100
    assert asm.missing(upto=3) == []


def test_bad_manifest_entries() -> None:
    env = wire.Envelopes("j", run="r")
    (page,) = env.manifest([])
    asm = wire.Assembler("j")
    for items, code in [
        ([{"item": "x", "status": "ok"}], "bad_manifest"),
        ([{"item": 0, "status": "ok"}], "bad_manifest"),
    ]:
        (problem,) = asm.feed(dict(page, items=items))
        assert problem.code == code  # type: ignore[attr-defined]
    (problem,) = asm.feed(dict(page, page=3, pages=2))
    assert isinstance(problem, wire.Malformed)


def test_unlisted_item_is_reported() -> None:
    env = wire.Envelopes("j")
    envs = [*env.parts(0, b"x", mime="image/png"), *env.manifest([])]
    asm = wire.Assembler("j")
    feed_all(asm, envs)
    assert [p.code for p in asm.finish()] == ["unlisted_item"]


def test_gap_message_is_compact() -> None:
    asm = wire.Assembler("j")
    env = wire.Envelopes("j", run="r")
    envs = [env.progress(0, i, 1000) for i in range(100)]
    feed_all(asm, [e for e in envs if e["seq"] % 3 == 0])
    (gap,) = [p for p in asm.finish() if isinstance(p, wire.Gap)]
    assert len(gap.message) < 400
    assert gap.missing[:3] == (1, 2, 4)


# ------------------------------------------------------------------------------------------- results

RESULT_VALUE: Any = {
    "images": [wire.file_ref(0), wire.file_ref(1)],
    "count": 2,
    "note": 'quotes " and \\ backslashes, é',
    "own": wire.escape({"$file": "not a reference"}),
}


def result_job(value: Any, *, budget: int = wire.DEFAULT_BODY_BUDGET) -> list[dict[str, Any]]:
    env = wire.Envelopes("job-1", budget=budget)
    out = list(env.parts(0, b"a", mime="image/png")) + list(env.parts(1, b"bb", mime="image/png"))
    out += env.result(value)
    entries = [
        wire.ManifestItem(i, "", "ok", "image/png", len(d), wire.sha256_hex(d), 1)
        for i, d in enumerate([b"a", b"bb"])
    ]
    return out + env.manifest(entries)


def test_a_result_round_trips_and_files_are_substituted() -> None:
    assembler = wire.Assembler("job-1")
    events = [e for env in result_job(RESULT_VALUE) for e in assembler.feed(env)]
    results = [e for e in events if isinstance(e, wire.ResultReceived)]
    assert len(results) == 1 and assembler.finish() == []
    assert wire.file_refs(results[0].value) == [0, 1]
    back = wire.substitute(results[0].value, lambda i: f"file-{i}.png")
    assert back == {
        "images": ["file-0.png", "file-1.png"],
        "count": 2,
        "note": 'quotes " and \\ backslashes, é',
        "own": {"$file": "not a reference"},  # the user's own `$file` key is not taken for a file
    }


def test_a_large_result_is_paged_within_budget_in_any_order() -> None:
    value = {"text": ['"' * 5000 + "\\" * 5000] * 40}  # escaping doubles it inside the envelope
    envelopes = result_job(value, budget=100_000)
    pages = [e for e in envelopes if e["type"] == "result"]
    assert len(pages) > 4 and all(wire.body_size(e) <= 100_000 for e in envelopes)
    assembler = wire.Assembler("job-1")
    random.Random(3).shuffle(envelopes)
    got = [e for env in envelopes for e in assembler.feed(env) if isinstance(e, wire.ResultReceived)]
    assert got[0].value == value and assembler.finish() == []


def test_a_lost_result_page_is_a_gap_and_an_incomplete_result() -> None:
    envelopes = result_job({"text": "x" * 300_000}, budget=100_000)
    lost = next(e for e in envelopes if e["type"] == "result" and e["page"] == 2)
    assembler = wire.Assembler("job-1")
    for env in envelopes:
        if env is not lost:
            assembler.feed(env)
    codes = [p.code for p in assembler.finish()]
    assert codes == ["gap", "incomplete_result"] and assembler.result is None
    problem = assembler.finish()[1]
    assert isinstance(problem, wire.IncompleteResult) and problem.missing_pages == (2,)


def codes(events: list[wire.Event]) -> list[str]:
    return [e.code if isinstance(e, wire.Problem) else type(e).__name__ for e in events]


def test_bad_result_pages_are_reported() -> None:
    env = wire.Envelopes("job-1")
    page = env.result({"a": 1})[0]
    assembler = wire.Assembler("job-1")
    tampered = dict(page, data=page["data"].replace("1", "2"))
    assert codes(assembler.feed(tampered)) == ["bad_result"]
    assert not assembler.seen(page["seq"])  # the genuine page can still arrive
    assert isinstance(assembler.feed(page)[0], wire.ResultReceived)
    assert codes(assembler.feed(dict(page, seq=page["seq"] + 1))) == ["duplicate"]
    two = wire.Envelopes("job-2", budget=2000).result({"t": "y" * 3000})
    fresh = wire.Assembler("job-2")
    fresh.feed(two[0])
    assert codes(fresh.feed(dict(two[1], sha256="0" * 64))) == ["bad_result"]  # pages disagree
    damaged = wire.Assembler("job-2")
    for piece in two[:-1]:
        damaged.feed(piece)
    assert codes(damaged.feed(dict(two[-1], data="z" * len(two[-1]["data"])))) == ["bad_result"]
    assert damaged.result is None and damaged.missing(two[-1]["seq"]) == [p["seq"] for p in two]
    resent = [e for piece in two for e in damaged.feed(piece)]  # a resend of every page rebuilds it
    assert isinstance(resent[-1], wire.ResultReceived) and damaged.result is not None
    not_json = wire.Envelopes("job-3")._next(
        "result", page=0, pages=1, size=1, sha256=wire.sha256_hex(b"{"), data="{"
    )
    assert codes(wire.Assembler("job-3").feed(not_json)) == ["bad_result"]
    out_of_range = dict(page, page=1, pages=1)
    assert codes(wire.Assembler("job-1").feed(out_of_range)) == ["bad_field"]


def test_an_unserialisable_or_huge_result_is_refused_when_building() -> None:
    env = wire.Envelopes("job-1")
    with pytest.raises(ValueError):
        env.result({"x": float("nan")})
    with pytest.raises(wire.EnvelopeTooLarge):
        env.result("x" * (wire.MAX_RESULT_BYTES + 1))


def test_manifest_entries_carry_the_seed() -> None:
    entry = wire.ManifestItem(0, "", "ok", "image/png", 1, "0" * 64, 1, seed=1234)
    assert entry.to_dict()["seed"] == 1234
    assert "seed" not in wire.ManifestItem(0, "", "error").to_dict()


def test_the_js_client_knows_the_same_terminal_statuses() -> None:
    """One list of RunPod's final statuses: the JS client (client_js/src/subscription.js) agrees with it."""
    import re
    from pathlib import Path

    source = (Path(__file__).resolve().parents[2] / "client_js" / "src" / "subscription.js").read_text()
    found = re.search(r"const TERMINAL_STATUSES = new Set\(\[([^\]]*)\]\)", source)
    assert found is not None, "client_js/src/subscription.js no longer declares TERMINAL_STATUSES"
    assert frozenset(re.findall(r'"([A-Z_]+)"', found.group(1))) == wire.TERMINAL_STATUSES
