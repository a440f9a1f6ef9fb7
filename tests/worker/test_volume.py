"""worker/volume.py: the venv on a network volume, driven as real processes on a temp "volume".

Wheels are built here (a wheel is a zip with a dist-info folder) and installed by the real pip from a local
folder with --no-index, so nothing reaches a network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker import volume
from worker.volume import MARKER, VenvSpec, VolumeError

ROOT = Path(__file__).resolve().parents[2]
PKG = "podstream-probe"
MODULE = "podstream_probe"


def build_wheel(directory: Path, version: str, *, name: str = PKG) -> Path:
    """A minimal pure-Python wheel whose module records its own version."""
    module = name.replace("-", "_")
    dist = f"{module}-{version}"
    files = {
        f"{module}/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = directory / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("wheels")
    build_wheel(directory, "1.0")
    build_wheel(directory, "2.0")
    build_wheel(directory, "1.0", name="podstream-extra")
    return directory


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    """A fake network volume."""
    (tmp_path / "volume").mkdir()
    return tmp_path / "volume"


def write_requirements(path: Path, *lines: str) -> Path:
    path.write_text("# locked for the test\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def env_for(
    disk: Path, wheels: Path, requirements: list[Path], optional: list[Path] | None = None
) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PODSTREAM_", "PIP_", "HF_", "TORCH_HOME"))
    }
    env.update(
        {
            "PODSTREAM_VOLUME": str(disk),
            "PODSTREAM_VENV": "volume",
            "PODSTREAM_VENV_REQUIREMENTS": os.pathsep.join(str(r) for r in requirements),
            "PODSTREAM_VENV_OPTIONAL": os.pathsep.join(str(r) for r in optional or []),
            "PODSTREAM_VENV_PIP_ARGS": f"--no-index --find-links {wheels}",
            "PIP_CONFIG_FILE": os.devnull,
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


def ensure(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.volume", "ensure"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def status_of(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, result.stderr
    status: dict[str, object] = json.loads(result.stdout)
    return status


def probe_version(python: str | object) -> str:
    out = subprocess.run(
        [str(python), "-c", f"import {MODULE}; print({MODULE}.VERSION)"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ.get("PATH", "")},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def venvs(disk: Path) -> list[Path]:
    return sorted(p for p in (disk / "venv").iterdir() if p.is_dir())


def test_fresh_start_creates_the_venv_on_the_volume_with_a_marker_written_last(
    disk: Path, wheels: Path
) -> None:
    req = write_requirements(disk.parent / "worker.lock", f"{PKG}==1.0")
    result = ensure(env_for(disk, wheels, [req]))
    status = status_of(result)
    assert status["created"] is True
    path = Path(str(status["path"]))
    assert path.parent == disk / "venv"
    assert probe_version(status["python"]) == "1.0"
    marker = json.loads((path / MARKER).read_text())
    assert marker["key"] == status["key"]
    assert marker["missing_optional"] == []
    assert "creating the venv" in result.stderr
    # The pip cache lives on the volume too, so a redo after a crash is cheap.
    assert marker["pip_cache"] == str(disk / "cache" / "pip")


def test_second_start_reuses_it_without_installing(disk: Path, wheels: Path) -> None:
    req = write_requirements(disk.parent / "worker.lock", f"{PKG}==1.0")
    env = env_for(disk, wheels, [req])
    first = status_of(ensure(env))
    marker = Path(str(first["path"])) / MARKER
    stamp = marker.stat().st_mtime_ns
    second = ensure(env)
    assert status_of(second) == {**first, "created": False}
    assert marker.stat().st_mtime_ns == stamp
    assert "creating" not in second.stderr and "installing" not in second.stderr
    assert len(venvs(disk)) == 1


def test_workers_starting_at_once_install_once_and_all_get_the_venv(disk: Path, wheels: Path) -> None:
    req = write_requirements(disk.parent / "worker.lock", f"{PKG}==1.0", "podstream-extra==1.0")
    env = env_for(disk, wheels, [req])
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "worker.volume", "ensure"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            results.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert sorted(r["created"] for r in results) == [False, False, False, True]
    assert len({r["path"] for r in results}) == 1
    assert len(venvs(disk)) == 1
    assert probe_version(results[0]["python"]) == "1.0"


def test_an_install_killed_half_way_is_detected_and_redone(disk: Path, wheels: Path) -> None:
    # Kill as soon as the venv directory appears: creating the venv and running pip take seconds,
    # the poll is every few milliseconds, so the kill lands mid-install.
    req = write_requirements(disk.parent / "worker.lock", f"{PKG}==1.0")
    env = env_for(disk, wheels, [req])
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.volume", "ensure"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(venvs_or_empty(disk)):
            assert proc.poll() is None, "the install ended before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    [half] = venvs(disk)
    assert not (half / MARKER).exists()

    result = ensure(env)
    status = status_of(result)
    assert status["created"] is True
    assert status["path"] == str(half)
    assert "unfinished install" in result.stderr
    assert probe_version(status["python"]) == "1.0"
    assert (half / MARKER).exists()


def venvs_or_empty(disk: Path) -> Iterator[Path]:
    if (disk / "venv").is_dir():
        yield from (p for p in (disk / "venv").iterdir() if p.is_dir())


def test_changed_requirements_make_a_new_venv_beside_the_old_one(disk: Path, wheels: Path) -> None:
    req = write_requirements(disk.parent / "worker.lock", f"{PKG}==1.0")
    env = env_for(disk, wheels, [req])
    old = status_of(ensure(env))
    write_requirements(req, f"{PKG}==2.0")
    new = status_of(ensure(env))
    assert new["created"] is True
    assert new["key"] != old["key"] and new["path"] != old["path"]
    assert probe_version(new["python"]) == "2.0"
    assert probe_version(old["python"]) == "1.0"  # still there for workers of the previous release
    # An included constraints file is part of the key too.
    constraints = write_requirements(disk.parent / "constraints.txt", f"{PKG}==2.0")
    write_requirements(req, "-c constraints.txt", PKG)
    pinned = status_of(ensure(env))
    assert pinned["created"] is True and probe_version(pinned["python"]) == "2.0"
    write_requirements(constraints, f"{PKG}==1.0")
    repinned = status_of(ensure(env))
    assert repinned["created"] is True and probe_version(repinned["python"]) == "1.0"
    assert len(venvs(disk)) == 4


def test_missing_required_package_is_named_and_no_marker_is_written(disk: Path, wheels: Path) -> None:
    req = write_requirements(disk.parent / "worker.lock", f"{PKG}==1.0", "no-such-package-podstream==9.9")
    result = ensure(env_for(disk, wheels, [req]))
    assert result.returncode == volume.EXIT_MISSING
    assert "required packages could not be installed" in result.stderr
    assert "no-such-package-podstream" in result.stderr
    [venv] = venvs(disk)
    assert not (venv / MARKER).exists()
    report = json.loads((venv / volume.FAILURE_REPORT).read_text())
    assert report["missing"] == ["no-such-package-podstream"]
    # Installed one by one: the good package made it despite its broken neighbour.
    assert probe_version(venv / "bin" / "python") == "1.0"


def test_missing_optional_package_degrades_gracefully(disk: Path, wheels: Path) -> None:
    req = write_requirements(disk.parent / "worker.lock", f"{PKG}==1.0")
    opt = write_requirements(disk.parent / "optional.txt", "podstream-extra==1.0", "flash-attn-not-here==1.0")
    env = env_for(disk, wheels, [req], [opt])
    first = ensure(env)
    status = status_of(first)
    assert status["missing_optional"] == ["flash-attn-not-here"]
    assert "optional packages missing" in first.stderr
    again = ensure(env)
    assert status_of(again)["created"] is False
    assert "flash-attn-not-here" in again.stderr  # reported at every start


def test_run_execs_the_command_with_the_venv_python_and_volume_caches(disk: Path, wheels: Path) -> None:
    req = write_requirements(disk.parent / "worker.lock", f"{PKG}==1.0")
    env = env_for(disk, wheels, [req])
    code = (
        "import json, os, sys, podstream_probe, worker.volume;"
        "print(json.dumps({'exe': sys.executable, 'v': podstream_probe.VERSION,"
        "'hf': os.environ['HF_HOME'], 'torch': os.environ['TORCH_HOME'], 'venv': os.environ['VIRTUAL_ENV']}))"
    )
    env.pop("PYTHONPATH")
    out = subprocess.run(
        [sys.executable, "-m", "worker.volume", "run", "--", "python", "-c", code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["v"] == "1.0"
    assert Path(seen["exe"]).parent.parent == Path(seen["venv"])
    assert Path(seen["venv"]).parent == disk / "venv"
    assert seen["hf"] == str(disk / "huggingface-cache")
    assert seen["torch"] == str(disk / "torch-cache")


def test_run_with_the_venv_off_only_points_caches_at_the_volume(disk: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PODSTREAM_", "HF_", "TORCH_HOME"))}
    env.update({"PODSTREAM_VOLUME": str(disk), "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "mine")})
    code = (
        "import os, sys; print(sys.executable); print(os.environ['HF_HOME']); print(os.environ['TORCH_HOME'])"
    )
    out = subprocess.run(
        [sys.executable, "-m", "worker.volume", "run", "--", sys.executable, "-c", code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    exe, hf, torch_home = out.stdout.split()
    assert Path(exe).resolve() == Path(sys.executable).resolve()
    assert hf == str(tmp_path / "mine")  # an operator's setting wins
    assert torch_home == str(disk / "torch-cache")
    assert not (disk / "venv").exists()


def test_no_volume_and_no_venv_dir_is_a_clear_error(tmp_path: Path, wheels: Path) -> None:
    req = write_requirements(tmp_path / "worker.lock", f"{PKG}==1.0")
    env = env_for(tmp_path / "not-mounted", wheels, [req])
    result = ensure(env)
    assert result.returncode == 1
    assert "no network volume at" in result.stderr and "PODSTREAM_VENV_DIR" in result.stderr
    assert "Traceback" not in result.stderr


def test_lock_timeout_names_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / ".x.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from worker.volume import exclusive_lock\n"
            f"with exclusive_lock(Path({str(lock)!r}), timeout_s=5, log=print):\n"
            "    print('held', flush=True); time.sleep(30)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        messages: list[str] = []
        with (
            pytest.raises(VolumeError, match=rf"pid {holder.pid}@"),
            volume.exclusive_lock(lock, timeout_s=0.3, log=messages.append, poll_s=0.05),
        ):
            pass
        assert messages and f"pid {holder.pid}@" in messages[0]
    finally:
        holder.kill()
        holder.wait()
    with volume.exclusive_lock(lock, timeout_s=5, log=print):  # released when its holder died
        pass


def test_requirement_parsing(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write_requirements(tmp_path / "sub" / "c.txt", "a==1")
    top = write_requirements(
        tmp_path / "top.txt",
        "--index-url https://example.invalid/simple  # a comment",
        "-c sub/c.txt",
        "Torch_Vision[extra] >= 1 ; python_version > '3' \\",
        "  # not a continuation target",
        "pkg.name==2",
        "-r sub/c.txt",
    )
    assert volume.requirement_closure(top) == [top.resolve(), (tmp_path / "sub" / "c.txt").resolve()]
    options, requirements = volume.requirement_lines(top)
    assert options == ["--index-url https://example.invalid/simple", "-c sub/c.txt", "-r sub/c.txt"]
    assert [volume.requirement_name(r) for r in requirements] == ["torch-vision", "pkg-name"]
    assert volume._absolute_include("-c sub/c.txt", tmp_path) == f"-c {tmp_path / 'sub' / 'c.txt'}"
    with pytest.raises(VolumeError, match="cannot read requirements file"):
        volume.requirement_closure(tmp_path / "absent.txt")


def test_prune_keeps_the_current_venv_and_list_shows_states(disk: Path, wheels: Path) -> None:
    req = write_requirements(disk.parent / "worker.lock", f"{PKG}==1.0")
    env = env_for(disk, wheels, [req])
    old = status_of(ensure(env))
    write_requirements(req, f"{PKG}==2.0")
    new = status_of(ensure(env))
    (disk / "venv" / "cp311-unfinished").mkdir()
    listing = subprocess.run(
        [sys.executable, "-m", "worker.volume", "list"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert listing.returncode == 0, listing.stderr
    assert "unfinished" in listing.stdout and listing.stdout.count("ready") == 2
    pruned = subprocess.run(
        [sys.executable, "-m", "worker.volume", "prune"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert pruned.returncode == 0, pruned.stderr
    assert venvs(disk) == [Path(str(new["path"]))]
    assert not Path(str(old["path"])).exists()


def test_key_depends_on_interpreter_and_pip_args(tmp_path: Path) -> None:
    req = write_requirements(tmp_path / "r.txt", "x==1")
    base = VenvSpec(requirements=(req,))
    assert volume.venv_key(base) == volume.venv_key(VenvSpec(requirements=(req,)))
    assert volume.venv_key(base) != volume.venv_key(VenvSpec(requirements=(req,), pip_args=("--pre",)))
    assert volume.venv_key(base) != volume.venv_key(VenvSpec(requirements=(), optional=(req,)))
    assert volume.venv_name(base, "ab" * 32).startswith(sys.implementation.cache_tag + "-abab")
