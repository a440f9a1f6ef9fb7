"""bench.chaos, short form (the CI run of `make chaos`): kills survived, no silent loss, no 500."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import chaos


async def test_short_chaos_run(tmp_path: Path) -> None:
    tally = await chaos.run(items=16, kills=2, probes=80, flood_size=40, seed=12, work=tmp_path)
    print(tally.table())
    assert tally.kills == 2 and tally.kills_survived == 2, tally.table()
    assert tally.probes >= 80 and tally.faults >= 1, tally.table()
    assert tally.server_errors == 0 and tally.bad_close_codes == 0, tally.table()
    assert tally.silent == [], tally.table()  # every lost file is named by an error record
    assert tally.files_lost == tally.losses_reported, tally.table()
    assert tally.ok


def test_the_table_has_every_figure() -> None:
    tally = chaos.Tally(
        kills=3, kills_survived=3, faults=7, probes=100, files=20, files_lost=1, losses_reported=1
    )
    table = tally.table()
    for row in ("kills survived  3 of 3", "faults injected", "probes tried", "files lost", "500s"):
        assert row.split("  ")[0] in table
    assert tally.ok
    assert not chaos.Tally(kills=1, kills_survived=1, files_lost=1).ok  # an unreported loss fails the run
    assert not chaos.Tally(server_errors=1).ok


def test_a_loss_is_reported_only_by_a_record_naming_its_item() -> None:
    """A job-level record (a gap, an unrecovered resend) says something was lost, not which file: a lost item
    that no record names is a silent loss, even beside such a record."""
    errors: list[dict[str, Any]] = [
        {"seq": 9, "item": None, "code": "unrecovered", "message": "seqs 4-5 were not recovered"},
        {"seq": 10, "item": 3, "code": "incomplete", "message": "item 3: 1 of 2 parts"},
        {"seq": 11, "item": 0, "code": "bad_sha256", "message": "item 0: ..."},  # named, but delivered later
    ]
    assert chaos.losses(5, {0, 2, 4}, errors) == ([3], [1])
    assert chaos.losses(3, {0, 1, 2}, errors) == ([], [])
    assert chaos.losses(2, set(), []) == ([], [0, 1])

    tally = chaos.Tally(kills=1, kills_survived=1, files=5, files_lost=2, losses_reported=1, silent=[1])
    assert not tally.ok
    assert "2 of 5 (1 reported by an error record naming the item, 1 silent: items 1)" in tally.table()
