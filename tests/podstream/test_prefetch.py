"""`podstream prefetch`: the real huggingface_hub download path against a small stand-in Hub on 127.0.0.1.

The stand-in answers the three calls `snapshot_download` makes (repo info, file tree, resolve HEAD/GET);
the command runs as a subprocess with `HF_ENDPOINT` pointing at it, so huggingface_hub reads its settings
fresh, exactly as on a pod.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from bench._relay_stack import free_port
from podstream.cli import UsageError
from podstream.commands import prefetch

ROOT = Path(__file__).resolve().parents[2]
REPO = "acme/tiny-video"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
FILES = {
    "model_index.json": b'{"_class_name": "StableVideoDiffusionPipeline"}',
    "unet/config.json": b'{"sample_size": 8}',
    "unet/diffusion_pytorch_model.safetensors": os.urandom(70_000),
    "vae/diffusion_pytorch_model.safetensors": os.urandom(30_000),
    "flax_model.msgpack": b"never loaded by a torch worker",
}


class FakeHub:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.answer(head=False)

            def do_HEAD(self) -> None:
                self.answer(head=True)

            def answer(self, *, head: bool) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append((self.command, path))
                body, headers, status = (
                    b'{"error": "Repository not found"}',
                    {"X-Error-Code": "RepoNotFound"},
                    404,
                )
                if path.startswith(f"/api/models/{REPO}/revision/"):
                    siblings = [{"rfilename": name} for name in FILES]
                    body, headers, status = (
                        json.dumps({"id": REPO, "sha": COMMIT, "siblings": siblings}).encode(),
                        {},
                        200,
                    )
                elif path.startswith(f"/api/models/{REPO}/tree/"):
                    tree = [
                        {
                            "type": "file",
                            "path": name,
                            "size": len(data),
                            "oid": hashlib.sha1(data).hexdigest(),
                        }
                        for name, data in FILES.items()
                    ]
                    body, headers, status = json.dumps(tree).encode(), {}, 200
                elif path.startswith(f"/{REPO}/resolve/"):
                    name = path.removeprefix(f"/{REPO}/resolve/").partition("/")[2]
                    if name in FILES:
                        etag = hashlib.sha1(FILES[name]).hexdigest()
                        body, headers, status = (
                            FILES[name],
                            {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'},
                            200,
                        )
                    else:
                        body, headers = b'{"error": "Entry not found"}', {"X-Error-Code": "EntryNotFound"}
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header(
                    "Content-Type",
                    "application/json" if path.startswith("/api/") else "application/octet-stream",
                )
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def downloads(self) -> list[str]:
        return [path for method, path in self.requests if method == "GET" and "/resolve/" in path]


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    fake = FakeHub()
    fake.thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()
        fake.thread.join(timeout=10)


def prefetch_cli(
    *args: str, endpoint: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    base.update(
        {
            "HF_ENDPOINT": endpoint,
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_XET": "1",
            # As in the worker images: prefetch must download all the same.
            "HF_HUB_OFFLINE": "1",
        }
    )
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "podstream", "prefetch", *args],
        env=base,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def snapshot(home: Path) -> Path:
    return home / "hub" / "models--acme--tiny-video" / "snapshots" / COMMIT


def test_downloads_into_the_hf_cache_layout_that_workers_read_offline(hub: FakeHub, tmp_path: Path) -> None:
    home = tmp_path / "runpod-volume" / "huggingface-cache"
    result = prefetch_cli(REPO, "--to", str(home), endpoint=hub.url)
    assert result.returncode == 0, result.stderr
    folder = snapshot(home)
    for name, data in FILES.items():
        if name.endswith(".msgpack"):
            assert not (folder / name).exists()  # flax weights are skipped by default
        else:
            assert (folder / name).read_bytes() == data
    assert (home / "hub" / "models--acme--tiny-video" / "refs" / "main").read_text() == COMMIT
    assert f"HF_HOME={home}" in result.stdout and f"PODSTREAM_MODEL_PATH={REPO}" in result.stdout
    assert "4 files" in result.stdout

    # What a worker does: find it offline, by repo id, with no request to the Hub.
    seen = len(hub.requests)
    check = prefetch_cli(REPO, "--check", endpoint=hub.url, env={"HF_HOME": str(home)})
    assert check.returncode == 0, check.stderr
    assert f"complete in {folder}" in check.stdout
    assert len(hub.requests) == seen
    # diffusers' offline loader reads the repo's file list from the cached tree, then asks
    # snapshot_download for exactly the files the pipeline needs (flax weights are not among them).
    code = (
        "import sys; from huggingface_hub import get_cached_repo_tree, snapshot_download\n"
        f"tree = sorted(f.path for f in get_cached_repo_tree({REPO!r}, cache_dir=sys.argv[1]))\n"
        f"path = snapshot_download({REPO!r}, cache_dir=sys.argv[1], local_files_only=True,"
        " allow_patterns=['*.json', 'unet/*', 'vae/*'])\n"
        "print(path); print(','.join(tree))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code, str(home / "hub")],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert loaded.returncode == 0, loaded.stderr
    path, tree = loaded.stdout.split()
    assert path == str(folder)
    assert tree.split(",") == sorted(FILES)

    # A second prefetch finds everything in place and downloads nothing again.
    before = len(hub.downloads())
    again = prefetch_cli(REPO, "--to", str(home), endpoint=hub.url)
    assert again.returncode == 0, again.stderr
    assert len(hub.downloads()) == before


def test_include_exclude_and_all(hub: FakeHub, tmp_path: Path) -> None:
    only = prefetch_cli(REPO, "--to", str(tmp_path / "a"), "--include", "unet/*", endpoint=hub.url)
    assert only.returncode == 0, only.stderr
    assert sorted(p.name for p in (snapshot(tmp_path / "a") / "unet").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    assert not (snapshot(tmp_path / "a") / "vae").exists()
    everything = prefetch_cli(REPO, "--to", str(tmp_path / "b"), "--all", endpoint=hub.url)
    assert everything.returncode == 0, everything.stderr
    assert (snapshot(tmp_path / "b") / "flax_model.msgpack").exists()


def test_dry_run_lists_without_downloading(hub: FakeHub, tmp_path: Path) -> None:
    result = prefetch_cli(REPO, "--to", str(tmp_path), "--dry-run", endpoint=hub.url)
    assert result.returncode == 0, result.stderr
    assert "unet/diffusion_pytorch_model.safetensors" in result.stdout
    assert "flax_model.msgpack" not in result.stdout
    assert "4 of 4 files to download" in result.stdout
    assert hub.downloads() == []
    assert not snapshot(tmp_path).exists()


def test_check_on_an_empty_cache_and_unknown_repo_fail_clearly(hub: FakeHub, tmp_path: Path) -> None:
    missing = prefetch_cli(REPO, "--to", str(tmp_path), "--check", endpoint=hub.url)
    assert missing.returncode == 1
    assert missing.stderr.startswith(f"podstream prefetch: {REPO} is not complete in {tmp_path / 'hub'}")
    assert hub.requests == []
    unknown = prefetch_cli("acme/nothing-here", "--to", str(tmp_path), endpoint=hub.url)
    assert unknown.returncode == 1
    assert "podstream prefetch: downloading acme/nothing-here failed" in unknown.stderr
    assert "Traceback" not in unknown.stderr


@pytest.mark.parametrize("mode", [["--dry-run"], []])
def test_an_unreachable_hub_is_said_plainly(mode: list[str], tmp_path: Path) -> None:
    """Offline (here: nothing listens at HF_ENDPOINT), dry run or not: one sentence, no DryRunError."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    result = prefetch_cli(REPO, "--to", str(tmp_path), *mode, endpoint=endpoint)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"podstream prefetch: cannot reach the Hugging Face Hub at {endpoint} (")
    assert "nothing was downloaded" in line and "DryRunError" not in line and "Error" not in line


@pytest.mark.parametrize("model", ["acme", "a/b/c", "../x", "acme/", "/etc"])
def test_bad_model_names_are_usage_errors(model: str, tmp_path: Path) -> None:
    result = prefetch_cli(model, "--to", str(tmp_path), endpoint="http://127.0.0.1:9")
    assert result.returncode == 2
    assert "MODEL must be a repo id like org/name" in result.stderr
    assert "Traceback" not in result.stderr


def test_families_stand_for_their_default_repo() -> None:
    from worker.pipelines import svd

    target = prefetch.resolve_target("svd", [], [], everything=False)
    assert (target.repo_id, target.family) == (svd.REPO, "svd")
    assert "svd*.safetensors" in target.exclude and "*.msgpack" in target.exclude
    assert prefetch.resolve_target("svd", [], [], everything=True).exclude == ()
    custom = prefetch.resolve_target("org/name", ["*.json"], ["*.bin"], everything=False)
    assert (custom.repo_id, custom.family, custom.include) == ("org/name", None, ("*.json",))
    assert custom.exclude[0] == "*.bin"
    with pytest.raises(UsageError, match="needs no download"):
        prefetch.resolve_target("tiny", [], [], everything=False)


def test_destination_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert prefetch.hf_home(tmp_path / "x", {"HF_HOME": "/elsewhere"}) == tmp_path / "x"
    assert prefetch.hf_home(None, {"HF_HOME": str(tmp_path)}) == tmp_path
    monkeypatch.setattr(prefetch, "VOLUME", tmp_path / "runpod-volume")
    with pytest.raises(UsageError, match="--to DIR"):
        prefetch.hf_home(None, {})
    (tmp_path / "runpod-volume").mkdir()
    monkeypatch.setattr(prefetch, "HF_HOME_ON_VOLUME", tmp_path / "runpod-volume" / "huggingface-cache")
    assert prefetch.hf_home(None, {}) == tmp_path / "runpod-volume" / "huggingface-cache"
