"""podstream/results.py: result.json with paths in place; and what `podstream pull` does with a wrapped
handler's job, completed or FAILED, as a real process against the emulator and the real SDK worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from podstream import results, wire
from podstream.emulator import Emulator, EmulatorConfig
from podstream.progress import SavedFile
from tests.worker.wrapped import payload

ROOT = Path(__file__).resolve().parents[2]


def saved(out: Path, item: int, name: str) -> SavedFile:
    return SavedFile(item, "", "image/png", 1, "0" * 64, out / name)


def test_result_json_has_relative_paths_and_null_for_what_did_not_arrive(tmp_path: Path) -> None:
    value = {"a": [wire.file_ref(0), wire.file_ref(1)], "b": wire.escape({"$file": "x"}), "n": 3}
    path = results.write_result(tmp_path, wire.ResultReceived(5, value), [saved(tmp_path, 0, "00000-a.png")])
    assert path == tmp_path / "result.json" and not list(tmp_path.glob(".*.part"))
    assert json.loads(path.read_text()) == {"a": ["00000-a.png", None], "b": {"$file": "x"}, "n": 3}
    assert results.write_result(tmp_path / "none", None, []) is None and not (tmp_path / "none").exists()


def pull(emu: Emulator, job_input: Any, out: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    (out.parent / "job.json").write_text(json.dumps({"input": job_input}))
    done = subprocess.run(
        [sys.executable, "-m", "podstream", "pull", "--submit", str(out.parent / "job.json"),
         "--runpod-url", emu.endpoint_url, "--key", "k", "--out", str(out), "--json", "--quiet"],
        capture_output=True, text=True, timeout=180, check=False, cwd=ROOT,
    )  # fmt: skip
    (job_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return done, job_dir


@pytest.mark.parametrize("mode", ["raises", "error_dict"])
def test_a_failed_wrapped_job_keeps_the_files_streamed_before_it(mode: str, tmp_path: Path) -> None:
    with Emulator(EmulatorConfig(endpoint_id="ep", api_key="k")).serve_in_thread() as emu:
        env = {"WRAP_MODE": mode, "PYTHONPATH": str(ROOT)}
        emu.spawn_workers(
            1, [sys.executable, "-m", "tests.worker.wrapped"], env=env, cwd=ROOT, log_dir=tmp_path
        )
        done, out = pull(emu, {"files": 6, "size": 300_000, "fail_at": 3}, tmp_path / "out")
    assert done.returncode == 1
    outcome = json.loads(done.stdout)
    assert outcome["status"] == "FAILED" and outcome["result"] is None and outcome["problems"] == []
    assert ("the GPU fell over at file 3" if mode == "raises" else "out of memory at file 3") in outcome[
        "error"
    ]
    files = sorted(outcome["files"], key=lambda f: f["item"])
    assert [Path(f["path"]).read_bytes() for f in files] == [payload(k, 300_000) for k in range(3)]
    assert not (out / "result.json").exists()
