"""relay.api.bucket_media's reading of Range (the media route reads Range with it on both backends)."""

from __future__ import annotations

import pytest

from relay.api.bucket_media import Unsatisfiable, byte_range, ranges


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None), ("bytes=0-9", 100, [(0, 9)]), ("bytes=90-", 100, [(90, 99)]),
        ("bytes=-5", 100, [(95, 99)]), ("bytes=-500", 100, [(0, 99)]), ("bytes=50-500", 100, [(50, 99)]),
        ("bytes = 0-9", 100, [(0, 9)]), ("BYTES=0-9", 100, [(0, 9)]),
        ("bytes=0-1, 4-5", 100, [(0, 1), (4, 5)]), ("bytes=0-1,400-500", 100, [(0, 1)]),
        # ignored: the whole file
        ("bytes=5-1", 100, None), ("bytes=0-1,5-4", 100, None), ("items=0-1", 100, None), ("bytes=", 100, None),
        ("bytes=-", 100, None), ("bytes=a-b", 100, None), ("bytes=0-9;x", 100, None), ("0-9", 100, None),
        ("bytes=\u0661-\u0662", 100, None), (f"bytes=0-{'9' * 20}", 100, None), ("bytes=-5", 0, None),
    ],
)  # fmt: skip
def test_ranges(header: str | None, size: int, expected: list[tuple[int, int]] | None) -> None:
    assert ranges(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=-0", 100), ("bytes=200-,300-400", 100),
     ("bytes=0-0", 0), ("bytes=-0", 0), (f"bytes={'9' * 19}-", 100)],
)  # fmt: skip
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable) as info:
        ranges(header, size)
    assert info.value.size == size


def test_byte_range_is_one_range_or_none() -> None:
    assert byte_range("bytes=0-9", 100) == (0, 9)
    assert byte_range("bytes=0-1,4-5", 100) is None  # several: the bucket route sends the whole object
    assert byte_range("bytes=0-1,400-", 100) == (0, 1)  # the one that exists
    assert byte_range("bytes=100-", 100) is None  # unsatisfiable: `ranges` raises
