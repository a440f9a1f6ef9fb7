"""What the CLI prints, as a user sees it: a detached submit's lines (no credential in them), a task of the
model's own, output into a pipe (never wrapped), and Ctrl-C (exit status 130)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.podstream.stack import local_stack

#: What a subscriber token (a JWT) looks like: three base64url parts.
JWT = re.compile(r"[\w-]{10,}\.[\w-]{10,}\.[\w-]{10,}")


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PODSTREAM_", "RUNPOD_"))}
    return subprocess.run(
        [sys.executable, "-m", "podstream", *args], capture_output=True, text=True, timeout=timeout,
        env={**clean, **(env or {})}, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_detach_prints_commands_that_work_and_no_credential(tmp_path: Path) -> None:
    (tmp_path / "job.json").write_text(json.dumps({"sizes": [3000, 5000]}))
    with local_stack(tmp_path / "stack") as stack:
        env = {"PODSTREAM_API_KEY": stack.key}
        out = tmp_path / "out"
        detached = run(
            "submit", "--relay", stack.relay, "--input-schema", str(stack.schema),
            "--input", str(tmp_path / "job.json"), "--out", str(out), "--detach", env=env,
        )  # fmt: skip
        assert detached.returncode == 0, detached.stderr
        printed = detached.stdout + detached.stderr
        assert stack.key not in printed and not JWT.search(printed), printed  # no key, no token
        lines = detached.stdout.splitlines()
        job = lines[0].removeprefix("submitted job ")
        watch = f'podstream watch {job} --relay {stack.relay} --out {out / job} --key "$PODSTREAM_API_KEY"'
        assert lines == [
            f"submitted job {job}",
            f"watch it with: {watch}",
            f'cancel it with: podstream cancel {job} --relay {stack.relay} --key "$PODSTREAM_API_KEY"',
        ]
        # the line works as printed, in a shell where the variable holds the key
        shell = subprocess.run(
            ["bash", "-c", watch.replace("podstream ", f"{sys.executable} -m podstream ", 1)],
            capture_output=True, text=True, timeout=120, env={**os.environ, **env},
        )  # fmt: skip
        assert shell.returncode == 0, shell.stderr
        assert len(list((out / job).iterdir())) == 2

        # a key given on the command line, not in the variable: the line says what to set it to
        other = run(
            "submit", "--relay", stack.relay, "--key", stack.key, "--input-schema", str(stack.schema),
            "--input", str(tmp_path / "job.json"), "--out", str(out), "--detach",
        )  # fmt: skip
        assert other.returncode == 0 and stack.key not in other.stdout
        assert "(with PODSTREAM_API_KEY set to the relay API key used here)" in other.stdout
        # programs get the job's read-only token with --json
        as_json = run(
            "submit", "--relay", stack.relay, "--input-schema", str(stack.schema),
            "--input", str(tmp_path / "job.json"), "--out", str(out), "--detach", "--json", env=env,
        )  # fmt: skip
        assert as_json.returncode == 0, as_json.stderr
        assert JWT.fullmatch(json.loads(as_json.stdout)["token"])


def test_submit_takes_a_task_of_the_models_own(tmp_path: Path) -> None:
    """docs/worker.md: a model's own task names are tasks; checked against that model's schema."""
    (tmp_path / "p.txt").write_text("a red kite\na blue kite\n")
    schema = tmp_path / "upscale.json"
    assert run("schema", "--tasks", "upscale", "--out", str(schema)).returncode == 0
    with local_stack(tmp_path / "stack") as stack:
        base = ["submit", "--relay", stack.relay, "--key", stack.key, "--task", "upscale"]
        base += ["--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "out")]
        builtin = run(*base)
        done = run(*base, "--input-schema", str(schema), "--json")
        jobs = stack.emu.stats()["routes"].get("run", {}).get("requests", 0)
    [line] = builtin.stderr.splitlines()
    assert builtin.returncode == 2 and "task: 'upscale' is not one of" in line
    assert "podstream schema --tasks upscale > upscale.json, then --input-schema upscale.json" in line
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["ok"] and len(outcome["files"]) == 2
    assert jobs == 1  # only the job checked against the model's schema reached RunPod


def test_output_into_a_pipe_is_never_wrapped() -> None:
    """The CLI's rich console: at 80 columns in a pipe rich would break a long path or URL in pieces."""
    code = (
        "from podstream.progress import cli_console\n"
        "c = cli_console()\n"
        "c.print('saved ' + '/very/long/path' * 20 + '/00000-a.png  1.2 KB image/png')\n"
        "c.print('http://127.0.0.1:8700/#job=' + 'j' * 60 + '&code=' + 'c' * 22, highlight=False)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    lines = done.stderr.splitlines()
    assert len(lines) == 2, done.stderr
    assert lines[0].endswith("image/png") and len(lines[0]) > 300
    assert lines[1].endswith("c" * 22)


@pytest.fixture
def silent_server() -> Iterator[tuple[int, threading.Event]]:
    """A TCP server that accepts connections and never answers: whatever talks to it waits. Its port, and
    an event set once something connected."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    connected = threading.Event()

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return
            connected.set()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], connected
    finally:
        server.close()
        for conn in held:
            conn.close()


@pytest.mark.parametrize("credential", ["--token", "--key"])
def test_ctrl_c_exits_130(
    silent_server: tuple[int, threading.Event], credential: str, tmp_path: Path
) -> None:
    """docs/cli.md: 130 when stopped with Ctrl-C, here while `watch` waits on a relay that never answers."""
    port, connected = silent_server
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PODSTREAM_", "RUNPOD_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "podstream", "watch", "job-1", "--relay", f"http://127.0.0.1:{port}",
         "--out", str(tmp_path), credential, "secret"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert connected.wait(60), "watch never reached the relay"
        time.sleep(0.2)  # now it waits on the relay's answer
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert stderr.splitlines()[-1] == "podstream watch: interrupted"
    assert "resume with: podstream watch job-1" in stderr and "secret" not in stderr + stdout
