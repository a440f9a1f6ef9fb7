"""bench.chaos, short form (the CI run of `make chaos`): kills survived, no unreported loss, no 500."""

from __future__ import annotations

from pathlib import Path

from bench import chaos


async def test_short_chaos_run(tmp_path: Path) -> None:
    tally = await chaos.run(items=16, kills=2, probes=80, flood_size=40, seed=12, work=tmp_path)
    print(tally.table())
    assert tally.kills == 2 and tally.kills_survived == 2, tally.table()
    assert tally.probes >= 80 and tally.faults >= 1, tally.table()
    assert tally.server_errors == 0 and tally.bad_close_codes == 0, tally.table()
    assert tally.files_lost == tally.losses_reported, tally.table()  # every loss is reported by the relay
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
