"""relay.ingest.worker_errors: a worker's error as consumers see it, one line without the SDK's traceback."""

from __future__ import annotations

import json

import pytest

from relay.ingest.worker_errors import MAX_ERROR_CHARS, one_line_error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        # a generator handler's exception, as the RunPod SDK reports it
        (
            "handler: CUDA out of memory \ntraceback: Traceback (most recent call last):\n  ...",
            "CUDA out of memory",
        ),
        # a plain handler's, as JSON (a string or already decoded)
        (
            json.dumps(
                {"error_type": "<class 'ValueError'>", "error_message": "bad seed", "error_traceback": "..."}
            ),
            "ValueError: bad seed",
        ),
        (
            {"error_type": "<class 'torch.cuda.OutOfMemoryError'>", "error_message": "OOM"},
            "OutOfMemoryError: OOM",
        ),
        ({"error_message": "no type"}, "no type"),
        ("boom\nTraceback (most recent call last):\n  File ...", "boom"),
        ("\n\n  first line  \nsecond line", "first line"),
        ("", "the job failed"),
    ],
)
def test_one_line_error(error: object, expected: str) -> None:
    assert one_line_error(error) == expected


def test_a_long_error_is_cut_to_the_limit() -> None:
    line = one_line_error("x" * (MAX_ERROR_CHARS * 2))
    assert len(line) == MAX_ERROR_CHARS
    assert line.endswith("...")
