"""The worker's heavy things on a RunPod network volume: caches, and optionally the venv.

A RunPod network volume is mounted at `/runpod-volume` in every worker of an endpoint (one data centre) and
outlives them; container disk is small. This module, run as the container's entry point, does two things
before it hands over to the worker command (`python -m worker.volume run -- python -m worker`):

1. Points the model caches at the volume when it is mounted (`HF_HOME=<volume>/huggingface-cache`, so the
   hub cache is `<volume>/huggingface-cache/hub`, RunPod's own convention and the one `worker.pipelines`
   falls back to; `TORCH_HOME=<volume>/torch-cache`), unless they are set already. Weights put there once
   by `podstream prefetch` load offline in every worker.
2. With `PODSTREAM_VENV=volume` (the `worker-slim` image), creates or reuses a Python venv on the volume
   holding the heavy packages (torch, diffusers, ...), and runs the worker command with that venv's Python.
   The image stays small; the first worker to start on a volume pays for the install once.

The venv's directory name is a hash of everything that decides its contents: the locked requirements files
(with the files they include through `-r`/`-c`), the installer options and the interpreter (version, ABI,
platform, path). Changed requirements -> a new venv beside the old one; the old one stays for workers still
running the previous release (`python -m worker.volume prune` removes the ones no longer wanted).

Concurrency and crashes: the install runs under an exclusive POSIX lock (`fcntl.lockf`, which network file
systems implement, released by the kernel when its holder dies) on `<venv-dir>/.<name>.lock`, so of several
workers starting at once on one volume exactly one installs and the others wait, then reuse. The marker file
`<venv>/podstream-venv.json` is written last (atomically: temp file, fsync, rename); a venv directory without
it is a half-finished install (a worker killed mid-way) and is removed and redone. A reuse reads only the
marker, without the lock.

Graceful degradation: when a requirements file fails to install as a whole, its requirements are installed
one by one, so one broken package does not block the others; what is still missing afterwards is named. A
missing *optional* requirement (`PODSTREAM_VENV_OPTIONAL`, e.g. flash-attn) is reported and the worker starts
without it; a missing *required* one ends the start with exit status 3 and a message naming each missing
package, before the worker could crash on an import later. No marker is written then, so the next start
tries again (quickly: the pip cache lives on the volume too).

Errors: `VolumeError` (a clear one-line reason) for everything a user or operator can act on.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

DEFAULT_VOLUME = Path("/runpod-volume")
HF_HOME_NAME = "huggingface-cache"
MARKER = "podstream-venv.json"
FAILURE_REPORT = "podstream-venv-failed.json"
# Bumped when the layout of a venv or the way it is built changes: it is part of every venv's key.
LAYOUT_VERSION = 1
DEFAULT_LOCK_TIMEOUT_S = 3600.0
EXIT_MISSING = 3

Log = Callable[[str], None]


class VolumeError(Exception):
    """The environment on the volume cannot be made ready; the message says why and what to do."""


class MissingPackages(VolumeError):
    """Required packages could not be installed (exit status 3); `missing` names them."""

    def __init__(self, message: str, missing: Sequence[str]) -> None:
        super().__init__(message)
        self.missing = tuple(missing)


def _stderr(message: str) -> None:
    print(f"podstream volume: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- caches


def cache_environment(volume: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The cache variables to add so models load from the volume: empty when it is not mounted.

    Variables already set in `environ` are left alone (an operator's choice wins).
    """
    if not volume.is_dir():
        return {}
    wanted = {
        "HF_HOME": volume / HF_HOME_NAME,
        "TORCH_HOME": volume / "torch-cache",
    }
    return {name: str(path) for name, path in wanted.items() if not environ.get(name)}


# --------------------------------------------------------------------------------------- requirements


@dataclasses.dataclass(frozen=True)
class VenvSpec:
    """What a venv on the volume is made of.

    `requirements` are installed in order, one installer run per file (so a file can carry its own
    `--index-url`, as the torch file does); `optional` ones after them, each allowed to fail.
    `python` is the base interpreter the venv is made from (the image's). `pip_args` are added to every
    install (e.g. `--no-index --find-links DIR`).
    """

    requirements: tuple[Path, ...]
    optional: tuple[Path, ...] = ()
    python: Path = Path(sys.executable)
    pip_args: tuple[str, ...] = ()
    cache_dir: Path | None = None


_INCLUDE_OPTIONS = {"-r": "-r", "--requirement": "-r", "-c": "-c", "--constraint": "-c"}


def _include(line: str) -> tuple[str, str] | None:
    """(`-r` or `-c`, target) when the line includes another file, else None."""
    for option, kind in _INCLUDE_OPTIONS.items():
        if line.startswith((option + " ", option + "=")):
            return kind, line[len(option) + 1 :].strip()
        if len(option) == 2 and line.startswith(option) and len(line) > 2 and not line.startswith("--"):
            return kind, line[2:].strip()
    return None


def _logical_lines(text: str) -> Iterator[str]:
    """Lines of a requirements file with comments removed and `\\` continuations joined."""
    pending = ""
    for raw in text.splitlines():
        line = "" if raw.lstrip().startswith("#") else raw.split(" #", 1)[0].strip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            yield line
    if pending.strip():
        yield pending.strip()


def requirement_closure(path: Path) -> list[Path]:
    """`path` and every file it includes through `-r`/`-c` (relative to the including file), in order."""
    seen: list[Path] = []

    def visit(file: Path) -> None:
        file = file.resolve()
        if file in seen:
            return
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise VolumeError(f"cannot read requirements file {file}: {exc.strerror or exc}") from exc
        seen.append(file)
        for line in _logical_lines(text):
            included = _include(line)
            if included is not None and "://" not in included[1]:
                visit(file.parent / included[1])

    visit(path)
    return seen


def requirement_lines(path: Path) -> tuple[list[str], list[str]]:
    """Split a requirements file into (option and include lines, requirement lines)."""
    options: list[str] = []
    requirements: list[str] = []
    for line in _logical_lines(path.read_text(encoding="utf-8")):
        (options if line.startswith("-") else requirements).append(line)
    return options, requirements


def requirement_name(line: str) -> str:
    """The distribution name of a requirement line (`torch==2.13.0 ; ...` -> `torch`), normalized."""
    name = line
    for stop in ("[", "<", ">", "=", "!", "~", ";", "@", " "):
        name = name.split(stop, 1)[0]
    return name.strip().lower().replace("_", "-").replace(".", "-")


def interpreter_identity(python: Path) -> dict[str, str]:
    """What of the base interpreter a venv depends on: version, ABI tag, platform, real path."""
    if Path(python).resolve() == Path(sys.executable).resolve():
        return {
            "version": f"{sys.version_info.major}.{sys.version_info.minor}",
            "cache_tag": str(sys.implementation.cache_tag),
            "platform": sysconfig.get_platform(),
            "machine": platform.machine(),
            "executable": str(Path(sys.executable).resolve()),
        }
    probe = (
        "import json,platform,sys,sysconfig;from pathlib import Path;"
        "print(json.dumps({'version': f'{sys.version_info.major}.{sys.version_info.minor}',"
        "'cache_tag': str(sys.implementation.cache_tag),'platform': sysconfig.get_platform(),"
        "'machine': platform.machine(),'executable': str(Path(sys.executable).resolve())}))"
    )
    try:
        out = subprocess.run(
            [str(python), "-c", probe], check=True, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise VolumeError(f"cannot run the base interpreter {python}: {exc}") from exc
    identity: dict[str, str] = json.loads(out.stdout)
    return identity


def venv_key(spec: VenvSpec) -> str:
    """A hex digest of everything that decides what the venv holds."""
    digest = hashlib.sha256()
    digest.update(f"podstream-venv-layout:{LAYOUT_VERSION}\n".encode())
    digest.update(json.dumps(interpreter_identity(spec.python), sort_keys=True).encode() + b"\n")
    digest.update(json.dumps(list(spec.pip_args)).encode() + b"\n")
    for group, files in (("required", spec.requirements), ("optional", spec.optional)):
        for top in files:
            digest.update(f"{group}:{top.name}\n".encode())
            for file in requirement_closure(top):
                data = file.read_bytes()
                digest.update(f"{file.name}:{len(data)}\n".encode())
                digest.update(data)
    return digest.hexdigest()


def venv_name(spec: VenvSpec, key: str) -> str:
    identity = interpreter_identity(spec.python)
    return f"{identity['cache_tag']}-{key[:16]}"


# ----------------------------------------------------------------------------------------------- lock


@contextlib.contextmanager
def exclusive_lock(path: Path, *, timeout_s: float, log: Log, poll_s: float = 0.2) -> Iterator[None]:
    """Hold an exclusive POSIX lock on `path` (created if needed); say who holds it while waiting.

    The holder writes `pid@host since <time>` into the file, so a waiting worker can name it. POSIX locks
    are released by the kernel when the holder dies, so a killed installer never wedges the volume.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        start = time.monotonic()
        next_report = start
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise VolumeError(f"cannot lock {path}: {exc.strerror}") from exc
            now = time.monotonic()
            holder = _read_holder(path)
            if now - start >= timeout_s:
                raise VolumeError(
                    f"gave up after {timeout_s:.0f} s waiting for {holder} to finish installing the venv "
                    f"(lock {path}); raise PODSTREAM_VENV_LOCK_TIMEOUT if installs take longer"
                )
            if now >= next_report:
                log(f"another worker ({holder}) is installing the venv; waiting for it")
                next_report = now + 30.0
            time.sleep(poll_s)
        stamp = f"pid {os.getpid()}@{socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, stamp.encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "an unknown process"


# ----------------------------------------------------------------------------------------------- venv


@dataclasses.dataclass(frozen=True)
class VenvStatus:
    """The outcome of `ensure_venv`: where the venv is and what it lacks."""

    path: Path
    key: str
    created: bool
    missing_optional: tuple[str, ...] = ()

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "key": self.key,
            "created": self.created,
            "python": str(self.python),
            "missing_optional": list(self.missing_optional),
        }


def _read_marker(venv: Path, key: str) -> dict[str, Any] | None:
    try:
        marker: Any = json.loads((venv / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("key") != key or not (venv / "bin" / "python").exists():
        return None
    return marker


def _write_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(payload, out, indent=2, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def ensure_venv(
    venv_dir: Path,
    spec: VenvSpec,
    *,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    log: Log = _stderr,
) -> VenvStatus:
    """Create the venv `spec` describes under `venv_dir`, or reuse it; see the module docstring.

    Raises `VolumeError` when it cannot be made, including when required packages are missing after the
    install (the message names them).
    """
    if not spec.requirements:
        raise VolumeError("no requirements file given for the venv (PODSTREAM_VENV_REQUIREMENTS)")
    key = venv_key(spec)
    venv = venv_dir / venv_name(spec, key)
    marker = _read_marker(venv, key)
    if marker is not None:
        return _reused(venv, key, marker, log)
    try:
        venv_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VolumeError(f"cannot create the venv directory {venv_dir}: {exc.strerror or exc}") from exc
    with exclusive_lock(venv_dir / f".{venv.name}.lock", timeout_s=lock_timeout_s, log=log):
        marker = _read_marker(venv, key)
        if marker is not None:  # another worker finished it while this one waited
            return _reused(venv, key, marker, log)
        if venv.exists():
            log(f"{venv} is an unfinished install (no {MARKER}): removing it and installing again")
            shutil.rmtree(venv)
        started = time.monotonic()
        log(f"creating the venv {venv} (first start on this volume for these requirements)")
        missing_required, missing_optional, notes = _build(venv, spec, log)
        if missing_required:
            _write_atomic(
                venv / FAILURE_REPORT,
                {"key": key, "missing": missing_required, "missing_optional": missing_optional, "log": notes},
            )
            raise MissingPackages(
                f"required packages could not be installed into {venv}: {', '.join(missing_required)} "
                f"(details: {venv / FAILURE_REPORT}); the next start tries again",
                missing_required,
            )
        _write_atomic(
            venv / MARKER,
            {
                "key": key,
                "layout": LAYOUT_VERSION,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "created_by": f"pid {os.getpid()}@{socket.gethostname()}",
                "install_seconds": round(time.monotonic() - started, 1),
                "interpreter": interpreter_identity(spec.python),
                "requirements": [str(p) for p in spec.requirements],
                "optional": [str(p) for p in spec.optional],
                "pip_cache": str(spec.cache_dir) if spec.cache_dir else None,
                "missing_optional": missing_optional,
            },
        )
        log(f"venv ready in {time.monotonic() - started:.0f} s: {venv}")
        if missing_optional:
            log(f"optional packages missing (the worker runs without them): {', '.join(missing_optional)}")
        return VenvStatus(venv, key, created=True, missing_optional=tuple(missing_optional))


def _reused(venv: Path, key: str, marker: Mapping[str, Any], log: Log) -> VenvStatus:
    missing = tuple(str(name) for name in marker.get("missing_optional", []))
    if missing:
        log(f"optional packages missing in {venv} (the worker runs without them): {', '.join(missing)}")
    return VenvStatus(venv, key, created=False, missing_optional=missing)


def _build(venv: Path, spec: VenvSpec, log: Log) -> tuple[list[str], list[str], list[str]]:
    """Make the venv and install into it; returns (missing required, missing optional, failure notes)."""
    try:
        subprocess.run(
            [str(spec.python), "-m", "venv", "--without-pip", str(venv)],
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as exc:
        raise VolumeError(f"cannot create a venv at {venv}: {_tail(exc.stderr)}") from exc
    except OSError as exc:
        raise VolumeError(f"cannot run {spec.python} to create the venv: {exc}") from exc
    notes: list[str] = []
    missing_required: list[str] = []
    missing_optional: list[str] = []
    for files, missing in ((spec.requirements, missing_required), (spec.optional, missing_optional)):
        for file in files:
            missing.extend(_install_file(venv, spec, file, notes, log))
    return missing_required, missing_optional, notes


def _pip(venv: Path, spec: VenvSpec, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    command = [
        str(spec.python),
        "-m",
        "pip",
        "--python",
        str(venv / "bin" / "python"),
        "install",
        "--disable-pip-version-check",
        "--no-input",
        *(["--cache-dir", str(spec.cache_dir)] if spec.cache_dir else ["--no-cache-dir"]),
        *spec.pip_args,
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def _install_file(venv: Path, spec: VenvSpec, file: Path, notes: list[str], log: Log) -> list[str]:
    """Install one requirements file; on failure, one requirement at a time. Returns what is missing."""
    log(f"installing {file.name}")
    result = _pip(venv, spec, ["-r", str(file)])
    if result.returncode == 0:
        return []
    notes.append(f"{file.name}: {_tail(result.stderr or result.stdout)}")
    options, requirements = requirement_lines(file)
    log(
        f"installing {file.name} as a whole failed; installing its {len(requirements)} requirements one by one"
    )
    missing: list[str] = []
    with tempfile.TemporaryDirectory(prefix="podstream-req-") as tmp:
        for requirement in requirements:
            single = Path(tmp) / "one.txt"
            # Include lines stay relative to the original file's folder.
            lines = [_absolute_include(option, file.parent) for option in options] + [requirement]
            single.write_text("\n".join(lines) + "\n", encoding="utf-8")
            one = _pip(venv, spec, ["-r", str(single)])
            if one.returncode != 0:
                name = requirement_name(requirement)
                missing.append(name)
                notes.append(f"{requirement}: {_tail(one.stderr or one.stdout)}")
                log(f"could not install {requirement}: {_tail(one.stderr or one.stdout, 1)}")
    return missing


def _absolute_include(option: str, base: Path) -> str:
    included = _include(option)
    if included is None or "://" in included[1]:
        return option
    kind, target = included
    return f"{kind} {base / target}"


def _tail(text: str | None, lines: int = 5) -> str:
    kept = [line for line in (text or "").strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "(no output)"


def list_venvs(venv_dir: Path) -> list[tuple[Path, dict[str, Any] | None]]:
    """Every venv under `venv_dir` with its marker (None for an unfinished one)."""
    found: list[tuple[Path, dict[str, Any] | None]] = []
    if not venv_dir.is_dir():
        return found
    for child in sorted(venv_dir.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            try:
                marker: Any = json.loads((child / MARKER).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                marker = None
            found.append((child, marker if isinstance(marker, dict) else None))
    return found


def prune(venv_dir: Path, keep: str, *, log: Log = _stderr) -> list[Path]:
    """Remove every venv under `venv_dir` but the one whose key is `keep`; skips venvs being installed."""
    removed: list[Path] = []
    for path, marker in list_venvs(venv_dir):
        if marker is not None and marker.get("key") == keep:
            continue
        try:
            with exclusive_lock(venv_dir / f".{path.name}.lock", timeout_s=0, log=lambda _: None):
                shutil.rmtree(path)
        except VolumeError:
            log(f"skipping {path}: an install holds its lock")
            continue
        (venv_dir / f".{path.name}.lock").unlink(missing_ok=True)
        removed.append(path)
        log(f"removed {path}")
    return removed


# ------------------------------------------------------------------------------------------ settings


@dataclasses.dataclass(frozen=True)
class VolumeSettings:
    """Settings from the environment (`PODSTREAM_*`), overridable on the command line."""

    volume: Path
    venv_mode: str  # "off" | "volume"
    venv_dir: Path | None  # None: <volume>/venv
    requirements: tuple[Path, ...]
    optional: tuple[Path, ...]
    pip_args: tuple[str, ...]
    pip_cache: Path | None
    lock_timeout_s: float

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> VolumeSettings:
        mode = environ.get("PODSTREAM_VENV", "off").strip().lower() or "off"
        if mode not in ("off", "volume"):
            raise VolumeError(f"PODSTREAM_VENV must be 'off' or 'volume', not {mode!r}")
        volume = Path(environ.get("PODSTREAM_VOLUME") or DEFAULT_VOLUME)
        venv_dir = environ.get("PODSTREAM_VENV_DIR")
        cache = environ.get("PODSTREAM_PIP_CACHE")
        try:
            timeout = float(environ.get("PODSTREAM_VENV_LOCK_TIMEOUT") or DEFAULT_LOCK_TIMEOUT_S)
        except ValueError as exc:
            raise VolumeError("PODSTREAM_VENV_LOCK_TIMEOUT must be a number of seconds") from exc
        return cls(
            volume=volume,
            venv_mode=mode,
            venv_dir=Path(venv_dir) if venv_dir else None,
            requirements=_paths(environ.get("PODSTREAM_VENV_REQUIREMENTS", "")),
            optional=_paths(environ.get("PODSTREAM_VENV_OPTIONAL", "")),
            pip_args=tuple(shlex.split(environ.get("PODSTREAM_VENV_PIP_ARGS", ""))),
            pip_cache=Path(cache) if cache else None,
            lock_timeout_s=timeout,
        )

    def resolved_venv_dir(self) -> Path:
        """Where venvs live; refuses to put several GB on container disk without being told to."""
        if self.venv_dir is not None:
            return self.venv_dir
        if not self.volume.is_dir():
            raise VolumeError(
                f"no network volume at {self.volume}: attach one to the endpoint (it holds the venv), "
                "set PODSTREAM_VENV_DIR to install elsewhere, or use the full `worker` image"
            )
        return self.volume / "venv"

    def resolved_pip_cache(self) -> Path | None:
        if self.pip_cache is not None:
            return self.pip_cache
        return self.volume / "cache" / "pip" if self.volume.is_dir() else None

    def spec(self) -> VenvSpec:
        return VenvSpec(
            requirements=self.requirements,
            optional=self.optional,
            pip_args=self.pip_args,
            cache_dir=self.resolved_pip_cache(),
        )


def _paths(value: str) -> tuple[Path, ...]:
    return tuple(Path(part) for part in value.split(os.pathsep) if part.strip())


# --------------------------------------------------------------------------------------------- run


def _app_root() -> Path:
    """The folder holding the `worker` package (and `podstream`, `relay`): importable by the venv."""
    return Path(__file__).resolve().parent.parent


def prepare(
    settings: VolumeSettings, environ: Mapping[str, str], *, log: Log = _stderr
) -> tuple[dict[str, str], VenvStatus | None]:
    """The environment for the worker command and the venv (None when the venv mode is off)."""
    env = dict(environ)
    caches = cache_environment(settings.volume, environ)
    if caches:
        log("model caches on the volume: " + ", ".join(f"{k}={v}" for k, v in sorted(caches.items())))
    env.update(caches)
    if settings.venv_mode == "off":
        return env, None
    status = ensure_venv(
        settings.resolved_venv_dir(), settings.spec(), lock_timeout_s=settings.lock_timeout_s, log=log
    )
    env["VIRTUAL_ENV"] = str(status.path)
    env["PATH"] = os.pathsep.join([str(status.path / "bin"), env.get("PATH", os.defpath)])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(_app_root()), env.get("PYTHONPATH", "")] if p)
    env.pop("PYTHONHOME", None)
    if status.missing_optional:
        env["PODSTREAM_VENV_MISSING_OPTIONAL"] = ",".join(status.missing_optional)
    return env, status


def command_for(argv: Sequence[str], status: VenvStatus | None) -> list[str]:
    """The command to exec: a leading `python`/`python3` becomes the venv's interpreter."""
    command = list(argv)
    if status is not None and command and command[0] in ("python", "python3", sys.executable):
        command[0] = str(status.python)
    return command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m worker.volume",
        description="Prepare the network volume (model caches, optional venv) and run the worker command.",
    )
    parser.add_argument(
        "--volume", type=Path, help="network volume mount (env PODSTREAM_VOLUME; /runpod-volume)"
    )
    parser.add_argument(
        "--venv", choices=("off", "volume"), help="env PODSTREAM_VENV: 'volume' = venv on the volume"
    )
    parser.add_argument(
        "--venv-dir", type=Path, help="where venvs live (env PODSTREAM_VENV_DIR; <volume>/venv)"
    )
    parser.add_argument(
        "--requirements",
        type=Path,
        action="append",
        help="locked requirements file, repeatable, installed in order (env PODSTREAM_VENV_REQUIREMENTS)",
    )
    parser.add_argument(
        "--optional",
        type=Path,
        action="append",
        help="requirements allowed to fail (env PODSTREAM_VENV_OPTIONAL)",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="prepare, then exec the command after `--` (default: python -m worker)")
    run.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("ensure", help="prepare the venv and print its status as JSON")
    sub.add_parser("list", help="list the venvs on the volume")
    sub.add_parser("prune", help="remove every venv but the current one (run when no older release is live)")
    return parser


def _settings(args: argparse.Namespace, environ: Mapping[str, str]) -> VolumeSettings:
    settings = VolumeSettings.from_env(environ)
    changes: dict[str, Any] = {}
    if args.volume is not None:
        changes["volume"] = args.volume
    if args.venv is not None:
        changes["venv_mode"] = args.venv
    if args.venv_dir is not None:
        changes["venv_dir"] = args.venv_dir
    if args.requirements:
        changes["requirements"] = tuple(args.requirements)
    if args.optional:
        changes["optional"] = tuple(args.optional)
    return dataclasses.replace(settings, **changes)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    try:
        settings = _settings(args, environ)
        if args.action == "run":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            command = command or ["python", "-m", "worker"]
            env, status = prepare(settings, environ)
            final = command_for(command, status)
            try:
                os.execvpe(final[0], final, env)
            except OSError as exc:
                raise VolumeError(f"cannot run {shlex.join(final)}: {exc.strerror or exc}") from exc
        if args.action == "ensure":
            settings = dataclasses.replace(settings, venv_mode="volume")
            _, status = prepare(settings, environ)
            assert status is not None
            print(json.dumps(status.to_json()))
            return 0
        venv_dir = settings.resolved_venv_dir()
        if args.action == "list":
            for path, marker in list_venvs(venv_dir):
                state = "ready" if marker else "unfinished"
                missing = ", ".join(marker.get("missing_optional", [])) if marker else ""
                print(
                    f"{path}\t{state}\t{marker.get('created_at', '') if marker else ''}\t{missing}".rstrip()
                )
            return 0
        keep = venv_key(settings.spec())
        prune(venv_dir, keep)
        return 0
    except MissingPackages as exc:
        _stderr(f"error: {exc}")
        return EXIT_MISSING
    except VolumeError as exc:
        _stderr(f"error: {exc}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
