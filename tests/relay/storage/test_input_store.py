"""relay.storage.input_store on local disk, directly: keeping spool files (several first inputs of a key at once),
batch stats, and the quota's reservations that never block."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from relay.api.uploads import TempFile
from relay.storage.input_store import DiskInputs, InputQuota, InputQuotaExceeded, owner_of

PNG = b"\x89PNG\r\n\x1a\n"


def spooled(inputs: DiskInputs, data: bytes) -> tuple[TempFile, str]:
    temp = inputs.spool()
    temp.write(data)
    return temp, hashlib.sha256(data).hexdigest()


def keep_at_once(inputs: DiskInputs, owner: str, temps: list[tuple[TempFile, str]]) -> list[BaseException]:
    """`keep` every spool file, each in its own thread, all released at once: the errors raised."""
    start = threading.Barrier(len(temps))
    errors: list[BaseException] = []

    def keep(temp: TempFile, sha256: str) -> None:
        start.wait()
        try:
            inputs.keep(temp, owner, sha256, "image/png")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=keep, args=pair) for pair in temps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


@pytest.mark.parametrize("fsync", [True, False])
def test_the_first_inputs_of_a_key_kept_at_once_all_land(tmp_path: Path, fsync: bool) -> None:
    """Each finds the key's directory missing and makes it; none fails because another made it first."""
    for round_ in range(5):
        inputs = DiskInputs(tmp_path / f"inputs{round_}", fsync=fsync)
        owner = owner_of(f"key {round_}")
        bodies = [PNG + os.urandom(100) for _ in range(8)]
        temps = [spooled(inputs, data) for data in bodies]
        errors = keep_at_once(inputs, owner, temps)
        assert errors == []
        for data in bodies:
            assert inputs.file(owner, hashlib.sha256(data).hexdigest()).read_bytes() == data
        assert list((inputs.root / ".spool").iterdir()) == []


def test_a_spool_file_gone_is_not_kept(tmp_path: Path) -> None:
    inputs = DiskInputs(tmp_path / "inputs")
    temp, sha256 = spooled(inputs, PNG + b"x")
    temp.discard()
    with pytest.raises(FileNotFoundError):
        inputs.keep(temp, owner_of("k"), sha256, "image/png")
    assert not inputs.file(owner_of("k"), sha256).exists()


def test_stat_many_finds_the_held_ones_and_touches_them(tmp_path: Path) -> None:
    inputs = DiskInputs(tmp_path / "inputs", fsync=False)
    owner = owner_of("k")
    temp, held = spooled(inputs, PNG + b"held")
    inputs.keep(temp, owner, held, "image/png")
    os.utime(inputs.file(owner, held), (1_000_000, 1_000_000))
    found = inputs.stat_many(owner, [held, "0" * 64], touch=True)
    assert list(found) == [held] and found[held].size == len(PNG) + 4 and found[held].mime == "image/png"
    assert inputs.file(owner, held).stat().st_mtime > 1_000_000
    assert inputs.stat_many(owner_of("other"), [held]) == {}


def test_try_reserve_never_measures(tmp_path: Path) -> None:
    measured: list[str] = []

    def measure(owner: str) -> int:
        measured.append(owner)
        return 50

    quota = InputQuota(100, measure)
    assert quota.try_reserve("a", 10) is False and measured == []  # unknown: reserve in a thread instead
    quota.reserve("a", 10)
    assert measured == ["a"] and quota.used("a") == 60
    assert quota.try_reserve("a", 40) is True and quota.used("a") == 100
    with pytest.raises(InputQuotaExceeded):
        quota.try_reserve("a", 1)
    quota.release("a", 40)
    assert quota.used("a") == 60 and measured == ["a"]
