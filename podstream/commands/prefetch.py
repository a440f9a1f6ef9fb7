"""`podstream prefetch`: download a model once into a network volume's Hugging Face cache.

Workers never download weights: they load them offline (`local_files_only`) from the HF cache on the
RunPod network volume, which the worker images point `HF_HOME` at (`/runpod-volume/huggingface-cache`).
Run this once on a machine with internet that has the volume mounted (a RunPod pod in the same data
centre), and every worker of the endpoint starts from it.

The files land in the standard cache layout, `<to>/hub/models--<org>--<name>/snapshots/<commit>/...`, so
diffusers' and transformers' `from_pretrained(repo_id, cache_dir=<to>/hub, local_files_only=True)` find them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import socket
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podstream.cli import CommandError, UsageError
from podstream.progress import human_bytes

VOLUME = Path("/runpod-volume")
HF_HOME_ON_VOLUME = VOLUME / "huggingface-cache"

# Formats a torch worker never loads: skipped unless --all.
NEVER_LOADED = (
    "*.msgpack",
    "*.h5",
    "*.ot",
    "*.onnx",
    "*.onnx_data",
    "*.tflite",
    "*.mlmodel",
    "*.mlpackage/*",
)

# Per-family extras: these repos also carry single-file checkpoints at their root (the same weights
# again, for other tools), which the diffusers loader does not read.
FAMILY_EXCLUDES: Mapping[str, tuple[str, ...]] = {
    "svd": ("svd*.safetensors",),
    "sdxl": ("sd_xl_*.safetensors",),
    "ltx": ("ltx*.safetensors",),
}

EPILOG = """\
MODEL is a Hugging Face repo id (org/name) or one of the worker's model families (svd, sdxl, ltx),
which stands for that family's default repo.
Examples:
  podstream prefetch svd --to /runpod-volume/huggingface-cache
  podstream prefetch stabilityai/stable-diffusion-xl-base-1.0 --exclude "*.bin" --dry-run
  podstream prefetch svd --check          # is it complete in the cache? (offline, exit 0/1)
Workers then run with HF_HOME=<DIR> (the podstream images set it when the volume is at /runpod-volume)
and PODSTREAM_MODEL=<family> or PODSTREAM_MODEL_PATH=<repo id>.
"""


@dataclass(frozen=True)
class Target:
    """What to download: the repo, and which of its files."""

    repo_id: str
    family: str | None
    include: tuple[str, ...]
    exclude: tuple[str, ...]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("model", metavar="MODEL", help="repo id (org/name) or model family (svd, sdxl, ltx)")
    parser.add_argument(
        "--to",
        metavar="DIR",
        type=Path,
        help=f"the HF home to fill (files go to DIR/hub); default $HF_HOME, else {HF_HOME_ON_VOLUME} when "
        f"{VOLUME} is mounted",
    )
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    parser.add_argument(
        "--include",
        metavar="GLOB",
        action="append",
        default=[],
        help="download only matching files (repeatable)",
    )
    parser.add_argument(
        "--exclude", metavar="GLOB", action="append", default=[], help="skip matching files (repeatable)"
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="no default exclusions (flax/onnx/tf weights, root single-file checkpoints)",
    )
    parser.add_argument(
        "--token", default=None, help="HF token for gated repos (default: $HF_TOKEN or a saved login)"
    )
    parser.add_argument(
        "--max-workers", type=int, default=8, metavar="N", help="parallel file downloads (default 8)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run", action="store_true", help="list what would be downloaded, download nothing"
    )
    mode.add_argument(
        "--check", action="store_true", help="offline: exit 0 if the model is complete in the cache"
    )


def resolve_target(model: str, include: Sequence[str], exclude: Sequence[str], *, everything: bool) -> Target:
    """Map a family name to its repo and build the file filters."""
    from worker.pipelines import FAMILIES

    family: str | None = None
    repo_id = model.strip()
    if repo_id in FAMILIES:
        module = importlib.import_module(FAMILIES[repo_id])
        repo = getattr(module, "REPO", None)
        if not isinstance(repo, str):
            raise UsageError(f"the '{repo_id}' model needs no download: its weights are built in code")
        family, repo_id = repo_id, repo
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
        known = ", ".join(name for name in FAMILIES if name != "tiny")
        raise UsageError(f"MODEL must be a repo id like org/name or one of {known}, not {model!r}")
    excluded = list(exclude)
    if not everything:
        excluded += NEVER_LOADED
        excluded += FAMILY_EXCLUDES.get(family or "", ())
    return Target(repo_id, family, tuple(include), tuple(dict.fromkeys(excluded)))


def hf_home(to: Path | None, environ: Mapping[str, str]) -> Path:
    """The HF home to fill: --to, else $HF_HOME, else the network volume's."""
    if to is not None:
        return to
    if environ.get("HF_HOME"):
        return Path(environ["HF_HOME"])
    if VOLUME.is_dir():
        return HF_HOME_ON_VOLUME
    raise UsageError(f"say where to put the model with --to DIR (no $HF_HOME, no volume at {VOLUME})")


def _hub() -> Any:
    # Downloading is the point of this command: an image's HF_HUB_OFFLINE=1 (set for workers) must not
    # stop it. huggingface_hub reads the variable when it is imported, so drop it first.
    os.environ.pop("HF_HUB_OFFLINE", None)
    try:
        return importlib.import_module("huggingface_hub")
    except ModuleNotFoundError as exc:
        raise CommandError("huggingface_hub is not installed: pip install 'podstream[worker]'") from exc


def _size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def run(args: argparse.Namespace) -> int:
    target = resolve_target(args.model, args.include, args.exclude, everything=args.all)
    home = hf_home(args.to, os.environ)
    cache = home / "hub"
    if args.max_workers < 1:
        raise UsageError("--max-workers must be at least 1")
    hub = _hub()
    common: dict[str, Any] = {
        "repo_id": target.repo_id,
        "revision": args.revision,
        "cache_dir": str(cache),
        "allow_patterns": list(target.include) or None,
        "ignore_patterns": list(target.exclude) or None,
    }
    if args.check:
        try:
            path = Path(hub.snapshot_download(**common, local_files_only=True))
        except Exception as exc:
            raise CommandError(f"{target.repo_id} is not complete in {cache}: {_first_line(exc)}") from exc
        count, total = _size(path)
        print(f"{target.repo_id}: complete in {path} ({count} files, {human_bytes(total)})")
        return 0
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot create {cache}: {exc.strerror or exc}") from exc
    try:
        result = hub.snapshot_download(
            **common, token=args.token, max_workers=args.max_workers, dry_run=bool(args.dry_run)
        )
    except Exception as exc:
        unreachable = _unreachable(hub, exc)
        if unreachable is not None:
            raise CommandError(unreachable) from exc
        what = "listing" if args.dry_run else "downloading"
        raise CommandError(f"{what} {target.repo_id} failed: {_first_line(exc)}") from exc
    if args.dry_run:
        files = list(result)
        todo = [f for f in files if getattr(f, "will_download", True)]
        total = sum(int(getattr(f, "file_size", 0) or 0) for f in todo)
        for info in files:
            state = "download" if getattr(info, "will_download", True) else "cached"
            size = human_bytes(int(getattr(info, "file_size", 0) or 0))
            print(f"{state}\t{size}\t{getattr(info, 'filename', info)}")
        print(
            f"{target.repo_id}: {len(todo)} of {len(files)} files to download, {human_bytes(total)}, into {cache}"
        )
        return 0
    path = Path(result)
    count, total = _size(path)
    print(f"{target.repo_id}: {count} files, {human_bytes(total)} in {path}")
    if target.exclude:
        print(f"skipped: {' '.join(target.exclude)}")
    hint = f"PODSTREAM_MODEL={target.family}" if target.family else f"PODSTREAM_MODEL_PATH={target.repo_id}"
    print(f"workers load it offline with HF_HOME={home} and {hint}")
    return 0


def _unreachable(hub: Any, exc: BaseException) -> str | None:
    """A plain sentence when `exc` comes from a Hub that cannot be reached (offline, DNS, firewall), else None.

    huggingface_hub says so in many ways (`DryRunError: ... cannot be accessed`, `LocalEntryNotFoundError`,
    a connection error deep in the chain): when the error could be one of those, connect to the Hub's
    host to find out, rather than guess from the words."""
    names = {type(e).__name__ for e in _chain(exc)}
    connection = any(isinstance(e, ConnectionError | TimeoutError | socket.gaierror) for e in _chain(exc))
    if not (
        connection or names & {"DryRunError", "LocalEntryNotFoundError", "ConnectError", "ConnectTimeout"}
    ):
        return None
    endpoint = str(getattr(getattr(hub, "constants", None), "ENDPOINT", "") or "https://huggingface.co")
    parsed = urllib.parse.urlsplit(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=10):
            return None  # the Hub answers: the error is something else, say it as it is
    except OSError as probe:
        reason = probe.strerror or type(probe).__name__
    return (
        f"cannot reach the Hugging Face Hub at {endpoint} ({reason}): nothing was downloaded. "
        "Run this where the Hub is reachable (a pod with the volume attached), or check HF_ENDPOINT and "
        "any proxy settings"
    )


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 20:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
