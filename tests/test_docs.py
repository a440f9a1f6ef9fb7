"""Every Python code block in README.md and docs/*.md runs, against a real stack where it talks to one.

Blocks are found by their ```` ```python ```` fence and named by the file and the heading above them. Each
has a runner below that gives it what a reader would have (a relay, RunPod, a working directory) and
checks what a reader would check: the files it says it saves. A new Python block without a runner
fails `test_every_python_block_has_a_runner`, so docs cannot drift from the code again.
(Shell and JS/TS blocks are checked elsewhere: client_js's tests type-check the TypeScript.)
"""

from __future__ import annotations

import ast
import asyncio
import base64
import hashlib
import io
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.podstream.stack import RUNPOD_KEY, emulator_with_worker, local_stack

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#+ (.+)$", re.MULTILINE)


@dataclass(frozen=True)
class Block:
    file: str  # relative to the repository root
    heading: str
    line: int
    code: str

    @property
    def key(self) -> tuple[str, str]:
        return self.file, self.heading


def python_blocks() -> list[Block]:
    blocks = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            headings = HEADING.findall(text[: match.start()])
            heading = headings[-1].strip() if headings else ""
            line = text.count("\n", 0, match.start()) + 2
            blocks.append(Block(str(path.relative_to(ROOT)), heading, line, match.group(1)))
    return blocks


def execute(block: Block, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the block as a module would run (top-level `await`/`async with` allowed); its globals after."""
    code = compile(block.code, f"{block.file}:{block.line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    scope: dict[str, Any] = {"__name__": "__docs__", **(namespace or {})}
    result = eval(code, scope)
    if asyncio.iscoroutine(result):
        asyncio.run(result)
    return scope


# ------------------------------------------------------------------------------------------- runners


def run_client_api(block: Block, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/cli.md: submit + watch through a real relay, run_job + pull straight from the emulator."""
    from PIL import Image

    (tmp / "cat.png").write_bytes(_png())
    Image.new("RGB", (24, 24), (20, 90, 200)).save(tmp / "dog.jpg", "JPEG")
    with local_stack(tmp / "stack") as stack:
        monkeypatch.chdir(tmp)
        monkeypatch.setenv("PODSTREAM_RELAY", stack.relay)
        monkeypatch.setenv("PODSTREAM_API_KEY", stack.key)
        monkeypatch.setenv("RUNPOD_ENDPOINT_URL", stack.runpod_url)
        monkeypatch.setenv("RUNPOD_API_KEY", RUNPOD_KEY)
        scope = execute(block)
    job, job_id = scope["job"].id, scope["job_id"]
    names = ["00000-p0.png", "00001-p1.png"]
    jobs = sorted(p.name for p in (tmp / "out").iterdir())
    assert len(jobs) == 3 and job in jobs and job_id in jobs  # relay job, pulled job, async-pulled job
    for directory in [*(tmp / "out").iterdir(), tmp / "replay"]:
        assert sorted(p.name for p in directory.iterdir()) == names, directory
    assert [f.path.name for f in scope["files"]] == names
    assert [i.ref for i in scope["images"]] == [f"input:{hashlib.sha256(p.read_bytes()).hexdigest()}" for p in
                                                (tmp / "cat.png", tmp / "dog.jpg")]  # fmt: skip
    assert scope["video_job"].id


def run_runpod_sdk(block: Block, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/cli.md: podstream.save / asave on the runpod SDK's own clients, against the emulator."""
    import runpod

    with emulator_with_worker(tmp / "stack") as emu:
        monkeypatch.setattr(runpod, "endpoint_url_base", f"{emu.base_url}/v2")
        monkeypatch.setattr(runpod, "api_key", runpod.api_key)  # the block sets it: put it back after
        monkeypatch.setenv("RUNPOD_API_KEY", RUNPOD_KEY)
        monkeypatch.setenv("RUNPOD_ENDPOINT_ID", emu.config.endpoint_id)
        monkeypatch.chdir(tmp)
        scope = execute(block)
    jobs = list((tmp / "out").iterdir())
    assert len(jobs) == 2  # the sync and the asyncio client's jobs
    for directory in jobs:
        assert sorted(p.name for p in directory.iterdir()) == ["00000-fox.png", "00001-owl.png"], directory
    outcome = scope["outcome"]
    assert (
        outcome.ok and outcome.job == scope["job"].job_id and [f.id for f in outcome.files] == ["fox", "owl"]
    )


def run_emulator_api(block: Block, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/emulator.md: the in-process emulator with a real `python -m worker` (the tiny CPU model)."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("PODSTREAM_MODEL", "tiny")
    monkeypatch.chdir(ROOT)  # `python -m worker` from a checkout
    scope = execute(block, {"tmp": tmp})
    emu = scope["emu"]
    (file,) = scope["files"]
    assert file.id == "fox" and file.mime == "image/png" and file.path.read_bytes()[:4] == b"\x89PNG"
    assert scope["emu"].stats()["routes"]["job-stream"]["statuses"].get("503") == 2  # the injected fault
    (worker,) = emu.workers
    assert not worker.alive and not emu.worker_failures  # it started, called in, and stopped with us
    assert (tmp / f"{worker.pod_id}.log").exists()


def run_bring_your_own_model(block: Block, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/worker.md: the example worker, as a worker process under the emulator, pulled with the CLI API."""
    import podstream
    from podstream.emulator import Emulator, EmulatorConfig

    script = tmp / "worker.py"  # as users name it: `import worker` would import this file, podstream.* do not
    script.write_text(block.code)
    picture = _png()
    job_input = {
        "task": "image-to-video",
        "items": [{"id": "fox", "image": "data:image/png;base64," + base64.b64encode(picture).decode()}],
        "params": {"fps": 8},
    }
    with Emulator(EmulatorConfig(endpoint_id="byo", api_key="k")).serve_in_thread() as emu:
        emu.spawn_workers(1, [sys.executable, str(script)], cwd=ROOT, log_dir=tmp)
        answer = httpx.post(
            f"{emu.endpoint_url}/run", json={"input": job_input}, headers={"Authorization": "Bearer k"}
        )
        job = answer.json()["id"]
        try:
            files = list(podstream.pull(job, runpod_url=emu.endpoint_url, key="k", out=tmp / "out"))
        except Exception:
            print("\n".join(w.log_text() for w in emu.workers))
            raise
    (file,) = files
    assert file.id == "fox" and file.mime == "video/mp4" and file.size > 0
    assert file.path.read_bytes()[4:8] == b"ftyp"  # an MP4


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 60, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def run_your_own_input(block: Block, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/worker.md: a model with its own input model, as a worker under the emulator, pulled."""
    import podstream
    from podstream.emulator import Emulator, EmulatorConfig

    script = tmp / "sketch_worker.py"
    script.write_text(block.code)
    job_input = {"prompt": "a red kite", "num_images": 3, "width": 48}
    with Emulator(EmulatorConfig(endpoint_id="own", api_key="k")).serve_in_thread() as emu:
        emu.spawn_workers(1, [sys.executable, str(script)], cwd=ROOT, log_dir=tmp)
        answer = httpx.post(
            f"{emu.endpoint_url}/run", json={"input": job_input}, headers={"Authorization": "Bearer k"}
        )
        job = answer.json()["id"]
        try:
            files = list(podstream.pull(job, runpod_url=emu.endpoint_url, key="k", out=tmp / "out"))
        except Exception:
            print("\n".join(w.log_text() for w in emu.workers))
            raise
    assert sorted(f.item for f in files) == [0, 1, 2] and {f.mime for f in files} == {"image/png"}


RUNNERS: dict[tuple[str, str], Callable[[Block, Path, pytest.MonkeyPatch], None]] = {
    ("docs/cli.md", "Python API"): run_client_api,
    ("docs/cli.md", "With the runpod SDK"): run_runpod_sdk,
    ("docs/emulator.md", "Use"): run_emulator_api,
    ("docs/worker.md", "Bring your own model"): run_bring_your_own_model,
    ("docs/worker.md", "Your own input"): run_your_own_input,
}


def test_every_python_block_has_a_runner() -> None:
    found = {block.key for block in python_blocks()}
    assert found, "no Python blocks found: is the fence pattern still right?"
    missing = sorted(found - RUNNERS.keys())
    assert not missing, f"Python blocks nothing runs (add a runner to tests/test_docs.py): {missing}"
    stale = sorted(RUNNERS.keys() - found)
    assert not stale, f"runners for blocks that are gone: {stale}"


@pytest.mark.parametrize("block", python_blocks(), ids=lambda b: f"{b.file}:{b.line}")
def test_python_block_runs(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = RUNNERS.get(block.key)
    if runner is None:
        pytest.fail(
            f"no runner for {block.file} ({block.heading!r}); see test_every_python_block_has_a_runner"
        )
    started = time.monotonic()
    runner(block, tmp_path, monkeypatch)
    print(f"{block.file}:{block.line} ran in {time.monotonic() - started:.1f}s")


#: What only this project's authors know, or how they work: their seeds and shared notes ("seed 002's
#: pattern", shared/RUNPOD.md), their issue tracker ("issue 16, item 7") and who measured what when ("no GPU
#: machine was lent to the session"). None of it means anything to a user.
JARGON = re.compile(
    r"\bseed \d{3}\b|\bseeds?/|\bshared/|\bissues? ?#?\d+|\bitem \d+\)|\b(?:this|the|a) session\b|\blent to\b",
    re.IGNORECASE,
)


def user_facing_files() -> list[Path]:
    """What a user reads: the READMEs, docs/, the examples, the deploy files, the changelog, and the report
    that writes docs/benchmarks*.md (its text is the pages' text)."""
    return [
        ROOT / "README.md",
        ROOT / "CHANGELOG.md",
        ROOT / "Dockerfile",
        ROOT / "docker-compose.yml",
        ROOT / "client_js" / "README.md",
        ROOT / "bench" / "_report.py",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "deploy").rglob("*.*")),
        *sorted(p for p in (ROOT / "examples").rglob("*") if p.suffix in (".md", ".py", ".json")),
    ]


def test_jargon_pattern_catches_what_it_is_for() -> None:
    for said in ("issue 16, item 7", "(issue 16)", "see issue #26", "after shared/seeds/000", "seed 002's",
                 "lent to the session that wrote this page", "see shared/RUNPOD.md"):  # fmt: skip
        assert JARGON.search(said), said
    for fine in ("a link issued by one replica", "no sticky sessions", "in its own session", "item 3 failed",
                 "the seed 7"):  # fmt: skip
        assert not JARGON.search(fine), fine


def test_no_internal_jargon_in_user_facing_files() -> None:
    """Words only this project's authors know mean nothing to a user (`JARGON`)."""
    jargon = JARGON
    files = user_facing_files()
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in files
        if path.exists()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if jargon.search(line)
    ]
    assert not found, found


# ------------------------------------------------------------------------------- docs/cli.md synopses


def cli_synopses() -> dict[str, str]:
    """Each `## \\`podstream NAME\\`` section of docs/cli.md -> the first fenced block in it (its synopsis)."""
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    found: dict[str, str] = {}
    sections = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    for section in sections:
        name = re.match(r"`podstream (\w+)`", section)
        block = re.search(r"^```[a-z]*\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
        if name and block:
            found[name.group(1)] = block.group(1)
    return found


def test_every_flag_of_every_command_is_in_its_cli_md_synopsis() -> None:
    """The synopsis of each command in docs/cli.md names every option its parser takes, and nothing else:
    the real argparse is the reference (`podstream COMMAND --help`)."""
    import argparse

    from podstream.cli import COMMANDS, build_parser

    synopses = cli_synopses()
    assert sorted(synopses) == sorted(COMMANDS), "a `## podstream NAME` section with a synopsis per command"
    problems = []
    for name in COMMANDS:
        parser = build_parser(name)
        [sub_action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        command = sub_action.choices[name]
        options = [a for a in command._actions if a.option_strings and a.dest != "help"]
        synopsis = synopses[name]
        for action in options:
            if not any(re.search(re.escape(flag) + r"(?![\w-])", synopsis) for flag in action.option_strings):
                problems.append(f"{name}: {'/'.join(action.option_strings)} is missing from the synopsis")
        known = {flag for action in options for flag in action.option_strings}
        for flag in re.findall(r"(?<![\w-])--?[a-z][\w-]*", synopsis):
            if flag not in known:
                problems.append(f"{name}: the synopsis names {flag}, which the command does not take")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------- README and install lines


def repository_url() -> str:
    import tomllib

    url: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    return url.rstrip("/")


def test_readme_links_work_on_pypi_too() -> None:
    """The README is the package's description on PyPI, which resolves no relative link: every link is
    absolute, and each into the repository names a file or folder this checkout has."""
    base = repository_url()
    targets = re.findall(r"\]\(([^)\s]+)\)", (ROOT / "README.md").read_text(encoding="utf-8"))
    assert targets
    for target in targets:
        assert target.startswith(("https://", "#")), (
            f"README.md links to {target!r}: relative, broken on PyPI"
        )
        if target.startswith(base + "/"):
            kind, branch, path = target.removeprefix(base + "/").split("/", 2)
            assert kind in ("blob", "tree") and branch == "main", target
            assert (ROOT / path.split("#")[0]).exists(), f"README.md links to {target}, not in the repository"


def test_every_install_line_is_the_same_command() -> None:
    """One way to install, everywhere a user reads one: `pip install podstream` or `pip install
    'podstream[extra,...]'`, with extras pyproject.toml declares (no git URLs, no other quoting)."""
    import tomllib

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    form = re.compile(r"pip install (?:podstream(?![\[\w-])|'(?:podstream|\.)\[([a-z,]+)\]')")
    found = 0
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md"]:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for match in re.finditer(r"pip install [^\s`]*(?:\s+[^\s`#]+)?", line):
                if "podstream" not in match.group(0) and "'.[" not in match.group(0):
                    continue  # another package (uv, a requirements file)
                found += 1
                where = f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
                ours = form.match(line, match.start())
                assert ours, f"not the documented install command: {where}"
                named = set((ours.group(1) or "").split(",")) - {""}
                assert named <= extras, f"unknown extra {named - extras}: {where}"
    assert found >= 5


def test_the_readme_names_what_make_test_needs_from_the_system() -> None:
    """What CI installs with apt before `make test` (.ci/run) is what the README asks a user to install."""
    ci = (ROOT / ".ci" / "run").read_text()
    [packages] = re.findall(r"apt-get install -y -qq ([\w .-]+?)(?: >|$)", ci, re.MULTILINE)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"sudo apt-get install {packages.strip()}" in readme
    for package in packages.split():
        assert f"`{package}`" in readme, package


def test_shell_blocks_use_only_files_they_make_or_the_repository_ships() -> None:
    """A command in a ```bash block of the docs reads a file (`--prompts`, `--input`, `--submit`) that the
    docs made first (`> FILE`, `cat > FILE`) or the repository ships; and nothing in them is one OS's own
    (macOS's `open`)."""
    problems = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md"]:
        text = path.read_text(encoding="utf-8")
        made: set[str] = set()
        for block in re.findall(r"^```(?:bash|sh)[ \t]*\n(.*?)^```[ \t]*$", text, re.MULTILINE | re.DOTALL):
            made |= set(re.findall(r">\s*([\w./-]+)", block))
            for flag, name in re.findall(r"--(prompts|input|submit)[ =]([\w./-]+)", block):
                if name not in made and not (ROOT / name).exists():
                    problems.append(f"{path.relative_to(ROOT)}: --{flag} {name}, a file nothing made")
            for line in block.splitlines():
                if re.match(r"\s*(open|pbcopy|brew)\s", line):
                    problems.append(f"{path.relative_to(ROOT)}: {line.strip()} (macOS only)")
    assert not problems, "\n".join(problems)
