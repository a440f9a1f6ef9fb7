"""The transfer commands as a user runs them: `podstream pull|watch|submit|demo` in a subprocess.

A user mistake (bad arguments, an unreachable relay or RunPod, a wrong key, an unknown job) must end with
one clear line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from bench._relay_stack import free_port, wait_healthy
from podstream import wire
from relay.api.auth import generate_key, hash_key
from tests.podstream.stack import RUNPOD_KEY, emulator_with_worker, local_stack

#: The API key of the real relays these tests start (auth on, as users run it).
RELAY_KEY = generate_key()


def podstream(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    for name in (
        "PODSTREAM_RELAY",
        "PODSTREAM_API_KEY",
        "PODSTREAM_TOKEN",
        "RUNPOD_API_KEY",
        "RUNPOD_ENDPOINT_URL",
    ):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "podstream", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("podstream")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


class FakeRunPod(BaseHTTPRequestHandler):
    """RunPod's client API for one job `j1`, key `good`: enough for the CLI's error paths and a happy path."""

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != "Bearer good":
            self._json(401, {"error": "Unauthorized"})
        elif self.path.startswith("/v2/ep/stream/j1"):
            env = wire.Envelopes("j1")
            envelopes = [*env.parts(0, b"hello", mime="image/png", id="a")]
            envelopes += env.manifest(
                [wire.ManifestItem(0, "a", "ok", "image/png", 5, wire.sha256_hex(b"hello"), 1)]
            )
            first = not getattr(self.server, "drained", False)
            self.server.drained = True  # type: ignore[attr-defined]
            stream = [{"output": e} for e in envelopes] if first else []
            self._json(200, {"id": "j1", "status": "COMPLETED", "stream": stream})
        else:
            self._json(404, {"error": "job not found"})

    def _json(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def runpod() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeRunPod)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v2/ep"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["pull", "j1", "--out", "x"], ["give the endpoint's URL"]),
        (["pull", "--runpod-url", "http://h/v2/e", "--out", "x"], ["give a JOB id or --submit FILE"]),
        (["pull", "j1", "--runpod-url", "ftp://h/v2/e", "--out", "x"], ["not an http(s) URL"]),
        (["pull", "j1", "--runpod-url", "http://h/v2/e", "--out", "x", "--retries", "0"], ["--retries"]),
        (["watch", "j1", "--relay", "relay:8700", "--out", "x"], ["not a relay URL", "--relay"]),
        (["watch", "j1", "--out", "x", "--from", "-1"], ["--from must be >= 0"]),
        (
            ["submit", "--prompts", "/no/such/prompts.txt", "--out", "x"],
            ["cannot read prompts from /no/such"],
        ),
        (["submit", "--images", "/no/such.png", "--out", "x"], ["cannot read image /no/such.png"]),
        (["demo", "--videos", "0", "--images", "0"], ["not both 0"]),
        (["demo", "--size", "100"], ["multiple of 8"]),
    ],
)
def test_usage_errors_are_one_line_exit_2(args: list[str], fragments: list[str]) -> None:
    one_line_error(podstream(*args), 2, *fragments)


@pytest.mark.parametrize("args", [["pull"], ["watch", "j1"], ["submit", "--out", "x"]])
def test_missing_arguments_are_argparse_errors(args: list[str]) -> None:
    result = podstream(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "required" in result.stderr


def test_unreachable_relay(tmp_path: Path) -> None:
    relay = f"http://127.0.0.1:{free_port()}"
    one_line_error(
        podstream("watch", "j1", "--relay", relay, "--out", str(tmp_path)), 1, "cannot reach the relay"
    )
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    result = podstream("submit", "--relay", relay, "--prompts", str(prompts), "--out", str(tmp_path))
    one_line_error(result, 1, "cannot reach the relay at " + relay)


def test_unreachable_runpod(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v2/ep"
    one_line_error(podstream("pull", "j1", "--runpod-url", url, "--out", str(tmp_path)), 1, "cannot reach")


def test_wrong_key_and_unknown_job(runpod: str, tmp_path: Path) -> None:
    result = podstream("pull", "j1", "--runpod-url", runpod, "--key", "bad", "--out", str(tmp_path))
    one_line_error(result, 1, "rejected the API key (HTTP 401)")
    result = podstream("pull", "j9", "--runpod-url", runpod, "--key", "good", "--out", str(tmp_path))
    one_line_error(result, 1, "not found (HTTP 404)")


def test_pull_happy_path_prints_the_outcome(runpod: str, tmp_path: Path) -> None:
    result = podstream(
        "pull", "j1", "--runpod-url", runpod, "--key", "good", "--out", str(tmp_path), "--json"
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["ok"] and outcome["status"] == "COMPLETED"
    assert [f["path"] for f in outcome["files"]] == [str(tmp_path / "00000-a.png")]
    assert (tmp_path / "00000-a.png").read_bytes() == b"hello"
    assert "saved" in result.stderr  # plain progress lines when stderr is not a terminal


def test_help_everywhere() -> None:
    for command, epilog in [
        ("pull", "Examples"),
        ("watch", "Examples"),
        ("submit", "Examples"),
        ("demo", "Ctrl-C"),
    ]:
        result = podstream(command, "--help")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"usage: podstream {command}") and epilog in result.stdout


def test_cluster_mode_without_the_cluster_extra_names_it(tmp_path: Path) -> None:
    """A relay started in cluster mode where redis is not installed (hidden here): one line, exit 1. The
    other commands' extras are checked from a bare install in tests/test_packaging.py."""
    code = "import sys; sys.modules['redis'] = None; from podstream.cli import main; sys.exit(main())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODSTREAM_")}
    done = subprocess.run(
        [sys.executable, "-c", code, "relay", "--insecure", "--redis-url", "redis://127.0.0.1:9/0",
         "--media-url", "s3://bucket/prefix", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**env, "PODSTREAM_TOKEN_SECRET": "s" * 64},
    )  # fmt: skip
    line = one_line_error(done, 1, "needs the cluster extra", "pip install 'podstream[cluster]'")
    assert line.startswith("podstream relay: ") and "'redis'" in line


def test_a_missing_module_no_extra_brings_is_not_blamed_on_one() -> None:
    from podstream.cli import missing_extra

    assert missing_extra("relay", ModuleNotFoundError("x", name="my_own_module")) is None
    line = missing_extra("demo", ModuleNotFoundError("x", name="uvicorn.config"))
    assert line == (
        "needs the worker and relay extras: pip install 'podstream[worker,relay]' (no module named 'uvicorn')"
    )


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real relay process with no RunPod behind it (it can replay, not submit)."""
    data = tmp_path_factory.mktemp("relay")
    port = free_port()
    argv = [sys.executable, "-m", "podstream", "relay", "--data-dir", str(data), "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODSTREAM_")}
    env["PODSTREAM_API_KEYS"] = hash_key(RELAY_KEY)
    with (data / "relay.log").open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_healthy(url, timeout_s=60, process=process, log=data / "relay.log"))
        yield url
    finally:
        process.terminate()
        process.wait(30)


def test_unknown_job_on_a_real_relay(relay: str, tmp_path: Path) -> None:
    result = podstream("watch", "no-such-job", "--relay", relay, "--key", RELAY_KEY, "--out", str(tmp_path))
    one_line_error(result, 1, "the relay does not know the job no-such-job")


@pytest.mark.parametrize(
    ("args", "job", "fragment"),
    [
        (["--steps", "-3"], None, "params.steps: -3 is less than the minimum of 1"),
        (
            [],
            {"task": "text-to-imag", "items": [{"id": "a", "prompt": "x"}]},
            "task: 'text-to-imag' is not one of",
        ),
        (
            [],
            {"task": "text-to-image", "items": [{"id": "a", "promt": "x"}]},
            "items[0]: Additional properties",
        ),
    ],
)
def test_submit_checks_the_input_locally_before_sending(
    relay: str, tmp_path: Path, args: list[str], job: dict[str, object] | None, fragment: str
) -> None:
    if job is None:
        (tmp_path / "p.txt").write_text("a fox\n")
        what = ["--prompts", str(tmp_path / "p.txt")]
    else:
        (tmp_path / "job.json").write_text(json.dumps(job))
        what = ["--input", str(tmp_path / "job.json")]
    result = podstream("submit", "--relay", relay, "--key", RELAY_KEY, *what, *args, "--out", str(tmp_path))
    one_line_error(result, 2, "the job input is not valid: " + fragment)
    listed = httpx.get(f"{relay}/v1/jobs", headers={"Authorization": f"Bearer {RELAY_KEY}"}).json()
    assert listed["jobs"] == []  # nothing reached the relay, so nothing could reach RunPod


def test_submit_checks_a_workers_own_schema(relay: str, tmp_path: Path) -> None:
    (tmp_path / "schema.json").write_text(json.dumps({"type": "object", "required": ["text"]}))
    (tmp_path / "job.json").write_text(json.dumps({"txt": "hi"}))
    result = podstream(
        "submit", "--relay", relay, "--key", RELAY_KEY, "--input", str(tmp_path / "job.json"),
        "--input-schema", str(tmp_path / "schema.json"), "--out", str(tmp_path),
    )  # fmt: skip
    one_line_error(result, 2, "(the input): 'text' is a required property")


def test_submit_to_a_relay_that_cannot_submit(relay: str, tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    result = podstream(
        "submit", "--relay", relay, "--key", RELAY_KEY, "--prompts", str(prompts), "--out", str(tmp_path)
    )
    one_line_error(result, 1, "refused the job")


def test_submit_then_watch_through_a_real_stack(tmp_path: Path) -> None:
    """`podstream submit --input` streams a job's files to DIR/<job>/; `podstream watch` replays it."""
    (tmp_path / "job.json").write_text(json.dumps({"input": {"sizes": [250_000, 64, 90_000]}}))
    with local_stack(tmp_path) as stack:
        out = tmp_path / "out"
        result = podstream(
            "submit", *stack.submit_args, "--input", str(tmp_path / "job.json"),
            "--out", str(out), "--json",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        outcome = json.loads(result.stdout)  # stdout is the JSON outcome only
        job = outcome["job"]
        assert outcome["ok"] and [f["item"] for f in outcome["files"]] == [0, 1, 2]
        assert f"submitted job {job}" in result.stderr
        names = sorted(p.name for p in (out / job).iterdir())
        assert names == ["00000-img0.png", "00001-img1.png", "00002-img2.png"]

        replay = podstream(
            "watch", job, "--relay", stack.relay, "--key", stack.key, "--out", str(tmp_path / "replay")
        )
        assert replay.returncode == 0, replay.stderr
        assert "COMPLETED; 3 file(s) saved" in replay.stdout
        for name in names:
            assert (tmp_path / "replay" / name).read_bytes() == (out / job / name).read_bytes()


def test_a_lost_item_is_counted_once(tmp_path: Path) -> None:
    """An item whose part RunPod lost is one failed item, in submit's and in a later watch's summary."""
    (tmp_path / "job.json").write_text(json.dumps({"input": {"sizes": [250_000, 64, 90_000]}}))
    with local_stack(tmp_path, {"PODSTREAM_RECOVERY_ATTEMPTS": "0"}) as stack:
        stack.emu.faults.drop_stream_items = {2}  # the 2nd of item 0's 3 parts
        result = podstream(
            "submit", *stack.submit_args, "--input", str(tmp_path / "job.json"),
            "--out", str(tmp_path / "out"),
        )  # fmt: skip
        line = one_line_error(result, 1, "2 file(s) saved", "1 item(s) failed")
        job = line.split()[3]
        failed = [entry for entry in result.stderr.splitlines() if entry.startswith("failed")]
        assert len(failed) == 1 and failed[0].startswith("failed item 0 (img0): "), result.stderr
        replay = podstream(
            "watch", job, "--relay", stack.relay, "--key", stack.key, "--out", str(tmp_path / "r"), "--json"
        )
        assert replay.returncode == 1
        outcome = json.loads(replay.stdout)
        assert [f["item"] for f in outcome["failures"]] == [0]
        assert [f["item"] for f in outcome["files"]] == [1, 2]
        one_line_error(replay, 1, "1 item(s) failed")


def test_pull_submit_json_prints_only_json_on_stdout(tmp_path: Path) -> None:
    (tmp_path / "job.json").write_text(json.dumps({"sizes": [1000, 2000]}))
    with emulator_with_worker(tmp_path) as emu:
        result = podstream(
            "pull", "--submit", str(tmp_path / "job.json"), "--runpod-url", emu.endpoint_url,
            "--key", RUNPOD_KEY, "--out", str(tmp_path / "out"), "--json", "--wait", "1000",
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["ok"] and [f["size"] for f in outcome["files"]] == [992, 1984]
    assert f"submitted job {outcome['job']}" in result.stderr


def podstream_env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PODSTREAM_", "RUNPOD_"))}
    return {**env, "COLUMNS": "200", **variables}


def test_cancel_through_the_relay_and_straight_to_runpod(tmp_path: Path) -> None:
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps({"sizes": [1000] * 20, "delay_s": 1}))
    with local_stack(tmp_path) as stack:
        detach = podstream(
            "submit", *stack.submit_args, "--input", str(slow), "--out", str(tmp_path),
            "--detach",
        )  # fmt: skip
        assert detach.returncode == 0, detach.stderr
        job = detach.stdout.split()[2]
        assert f"cancel it with: podstream cancel {job} --relay {stack.relay}" in detach.stdout
        result = podstream("cancel", job, "--relay", stack.relay, "--key", stack.key)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"cancelled job {job}\n"
        assert stack.emu.job(job)["status"] == "CANCELLED"  # type: ignore[index]
        again = podstream("cancel", job, "--relay", stack.relay, "--key", stack.key)
        assert again.returncode == 0 and "had already ended (CANCELLED): nothing to cancel" in again.stdout

        # straight to RunPod, the key from RUNPOD_API_KEY, as `podstream pull` takes it
        direct_job = httpx.post(
            f"{stack.runpod_url}/run", json={"input": {"sizes": [1000] * 20, "delay_s": 1}},
            headers={"Authorization": f"Bearer {RUNPOD_KEY}"},
        ).json()["id"]  # fmt: skip
        direct = subprocess.run(
            [sys.executable, "-m", "podstream", "cancel", direct_job, "--runpod-url", stack.runpod_url],
            capture_output=True, text=True, timeout=60, env=podstream_env(RUNPOD_API_KEY=RUNPOD_KEY),
        )  # fmt: skip
        assert direct.returncode == 0 and direct.stdout == f"cancelled job {direct_job}\n", direct.stderr
        assert stack.emu.job(direct_job)["status"] == "CANCELLED"  # type: ignore[index]

        one_line_error(
            podstream("cancel", "no-such-job", "--relay", stack.relay, "--key", stack.key), 1, "404"
        )
        one_line_error(
            podstream("cancel", job, "--relay", stack.relay), 1, "rejected the API key (HTTP 401)",
            "no key given: --key or PODSTREAM_API_KEY",
        )  # fmt: skip
        one_line_error(
            podstream("cancel", job, "--runpod-url", stack.runpod_url, "--key", "bad"), 1, "RunPod rejected"
        )
    one_line_error(
        podstream("cancel", job, "--relay", f"http://127.0.0.1:{free_port()}"), 1, "cannot reach the relay"
    )
    one_line_error(podstream("cancel", job, "--relay", "relay:80"), 2, "not a relay URL")


def test_ctrl_c_during_submit_names_the_key_variable_and_how_to_cancel(tmp_path: Path) -> None:
    # 6 s of items: the interrupt lands mid-job even when a loaded machine reads the first "saved" late
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps({"sizes": [1000] * 12, "delay_s": 0.5}))
    out = tmp_path / "out"
    with local_stack(tmp_path) as stack:
        argv = [sys.executable, "-m", "podstream", "submit", *stack.submit_args]
        argv += ["--input", str(slow), "--out", str(out)]
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=podstream_env(),
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert proc.stderr is not None
            seen: list[str] = []
            while not any(line.startswith("saved") for line in seen):
                line = proc.stderr.readline()
                assert line, "".join(seen)
                seen.append(line)
            proc.send_signal(signal.SIGINT)
            stdout, rest = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stderr = "".join(seen) + rest
        assert proc.returncode == 130, stderr
        assert stack.key not in stderr and stack.key not in stdout  # the key is named, never shown
        job = seen[0].split()[2].rstrip(";")
        hint = next(line for line in stderr.splitlines() if line.startswith("interrupted; resume with: "))
        command = hint.removeprefix("interrupted; resume with: ")
        assert command.startswith(f"podstream watch {job} --relay {stack.relay} --out {out / job} --from ")
        assert (
            ' --key "$PODSTREAM_API_KEY"  (with PODSTREAM_API_KEY set to the relay API key used here)'
            in command
        )
        assert (
            f'to stop it (and its GPU bill): podstream cancel {job} --relay {stack.relay} --key "$PODSTREAM_API_KEY"'
            in stderr
        )
        assert "Traceback" not in stderr

        # the hint works as printed, once the variable holds the key
        resume = command.split("  (")[0].split()[1:]
        resume = [stack.key if word == '"$PODSTREAM_API_KEY"' else word for word in resume]
        done = subprocess.run(
            [sys.executable, "-m", "podstream", *resume], capture_output=True, text=True, timeout=120,
            env=podstream_env(),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in (out / job).iterdir()) == [f"{k:05d}-img{k}.png" for k in range(12)]


def test_jobs_lists_the_newest_first(tmp_path: Path) -> None:
    with local_stack(tmp_path) as stack:
        submitted = []
        for sizes in ([10], [20], [30]):
            (tmp_path / "j.json").write_text(json.dumps({"sizes": sizes}))
            result = podstream(
                "submit", *stack.submit_args, "--input", str(tmp_path / "j.json"),
                "--out", str(tmp_path), "--detach", "--json",
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            submitted.append(json.loads(result.stdout)["id"])
        listing = podstream("jobs", "--relay", stack.relay, "--key", stack.key)
        assert listing.returncode == 0, listing.stderr
        rows = listing.stdout.strip().splitlines()[1:]
        assert [row.split()[0] for row in rows] == submitted[::-1]
        as_json = json.loads(podstream("jobs", "--relay", stack.relay, "--key", stack.key, "--json").stdout)
        assert [job["id"] for job in as_json["jobs"]] == submitted[::-1]


def test_resume_command_names_credentials_never_shows_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from podstream.commands.watch import resume_command

    out = Path("out")
    monkeypatch.delenv("PODSTREAM_API_KEY", raising=False)
    monkeypatch.delenv("PODSTREAM_TOKEN", raising=False)
    base = "podstream watch j --relay http://r --out out --from 7"
    assert resume_command("j", "http://r", out, 7, key=None, token=None) == base
    with_key = resume_command("j", "http://r", out, 7, key="psk_secret", token="tok")
    assert (
        with_key
        == base + ' --key "$PODSTREAM_API_KEY"  (with PODSTREAM_API_KEY set to the relay API key used here)'
    )
    with_token = resume_command("j", "http://r", out, 7, key=None, token="tok_secret")
    assert (
        with_token
        == base + ' --token "$PODSTREAM_TOKEN"  (with PODSTREAM_TOKEN set to the job\'s token used here)'
    )
    monkeypatch.setenv("PODSTREAM_API_KEY", "psk_secret")  # already where the command will read it
    assert (
        resume_command("j", "http://r", out, 7, key="psk_secret", token=None)
        == base + ' --key "$PODSTREAM_API_KEY"'
    )
