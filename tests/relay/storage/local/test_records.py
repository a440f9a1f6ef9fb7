"""relay.storage.local.records: frames that resynchronise past damage, torn tails, quarantine copies, legacy files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.storage.local.records import MAGIC, RecordLog, legacy_pack, pack


def write_log(path: Path, n: int) -> list[int]:
    """n records {"i": 0..n-1, "pad": ...}; returns the offset of each frame."""
    log = RecordLog(path, fsync=False)
    list(log.scan())
    offsets = log.append([{"i": i, "pad": "x" * (i % 7)} for i in range(n)])
    log.close()
    return offsets


def reopen(path: Path) -> tuple[RecordLog, list[int]]:
    log = RecordLog(path, fsync=False)
    return log, [r["i"] for _o, r in log.scan()]


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x41]))


def test_a_flipped_byte_mid_file_costs_one_record_and_is_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "journal.log"
    offsets = write_log(path, 20)
    flip(path, offsets[10] + 14)  # inside record 10's body
    damaged = path.read_bytes()
    log, seen = reopen(path)
    assert seen == [i for i in range(20) if i != 10]
    assert len(log.damage) == 1 and log.damage[0][0] == offsets[10] and log.truncated == 0
    assert log.quarantined is not None and log.quarantined.parent == tmp_path / "quarantine"
    assert log.quarantined.read_bytes() == damaged  # kept as it was found
    # the file was rewritten without the damaged span: appends and offsets line up again
    assert path.stat().st_size == len(damaged) - log.damage[0][1]
    [offset] = log.append([{"i": 99}])
    assert log.read_at(offset, 1) == [{"i": 99}]
    log.close()
    again, seen_again = reopen(path)
    assert seen_again == [*seen, 99] and again.damage == [] and again.quarantined is None
    again.close()


def test_a_bad_length_field_resynchronises_at_the_next_frame(tmp_path: Path) -> None:
    path = tmp_path / "wire.log"
    offsets = write_log(path, 12)
    with open(path, "r+b") as f:
        f.seek(offsets[3] + len(MAGIC))
        f.write((2**31).to_bytes(4, "big"))  # a length far past the end of the file
    log, seen = reopen(path)
    assert seen == [i for i in range(12) if i != 3] and len(log.damage) == 1
    log.close()
    with open(path, "r+b") as f:  # now a length that is merely wrong (into the next frames)
        f.seek(len(MAGIC))
        f.write((40).to_bytes(4, "big"))
    log, seen = reopen(path)
    assert seen == [i for i in range(12) if i not in (0, 3)]
    log.close()


@settings(max_examples=25, deadline=None)
@given(cut=st.integers(min_value=1, max_value=60), garbage=st.binary(max_size=40))
def test_a_torn_tail_or_garbage_is_truncated_not_quarantined(
    tmp_path_factory: pytest.TempPathFactory, cut: int, garbage: bytes
) -> None:
    path = tmp_path_factory.mktemp("torn") / "journal.log"
    offsets = write_log(path, 8)
    whole = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(whole - cut)
        f.seek(0, os.SEEK_END)
        f.write(garbage)
    log, seen = reopen(path)
    ends = [*offsets[1:], whole]
    assert seen == [i for i, end in enumerate(ends) if end <= whole - cut]  # every whole record, no more
    assert log.damage == [] and log.quarantined is None
    assert path.stat().st_size == log.size and not (path.parent / "quarantine").exists()
    log.close()


def test_garbage_after_whole_records_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "journal.log"
    write_log(path, 5)
    with open(path, "ab") as f:
        f.write(b"\x00garbage" + MAGIC + b"\x00\x00")
    log, seen = reopen(path)
    assert seen == [0, 1, 2, 3, 4] and log.truncated == 8 + len(MAGIC) + 2 and log.damage == []
    log.close()


@settings(max_examples=60, deadline=None)
@given(position=st.floats(min_value=0, max_value=0.999))
def test_one_flipped_byte_anywhere_loses_at_most_its_own_record(
    tmp_path_factory: pytest.TempPathFactory, position: float
) -> None:
    path = tmp_path_factory.mktemp("flip") / "journal.log"
    offsets = write_log(path, 30)
    size = path.stat().st_size
    at = int(position * size)
    flip(path, at)
    hit = max(i for i, o in enumerate(offsets) if o <= at)
    log, seen = reopen(path)
    assert set(range(30)) - {hit} <= set(seen) and seen == sorted(seen)
    log.close()


def test_the_first_frame_damaged_is_not_taken_for_a_legacy_file(tmp_path: Path) -> None:
    path = tmp_path / "journal.log"
    write_log(path, 4)
    flip(path, 0)  # the very first marker
    log, seen = reopen(path)
    assert seen == [1, 2, 3] and not log.legacy and len(log.damage) == 1
    log.close()


def test_legacy_files_are_read_and_converted(tmp_path: Path) -> None:
    path = tmp_path / "journal.log"
    frames = b"".join(legacy_pack({"i": i}) for i in range(6))
    path.write_bytes(frames + legacy_pack({"i": 6})[:-3])  # and a torn legacy tail
    log, seen = reopen(path)
    assert seen == [0, 1, 2, 3, 4, 5] and log.legacy and log.truncated > 0
    assert path.read_bytes() == b"".join(pack({"i": i}) for i in range(6))  # current framing now
    log.append([{"i": 6}])
    log.close()
    again, seen_again = reopen(path)
    assert seen_again == list(range(7)) and not again.legacy
    again.close()
