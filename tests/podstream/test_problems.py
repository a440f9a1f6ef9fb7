"""One vocabulary of causes and sentences (podstream/problems.py): the same in the JS client, and what the
CLI says with it, run as a user runs it against a real relay, emulator and SDK worker."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from podstream import problems
from podstream.problems import Code
from tests.podstream.stack import RUNPOD_KEY, local_stack
from tests.podstream.test_cli import one_line_error, podstream

ROOT = Path(__file__).resolve().parents[2]
RANGES = [[4], [0, 1, 2], [5, 0, 1, 2, 7, 8, 9], [3, 3, 4], list(range(30))]
ENDINGS: list[tuple[str, int, int | None, list[int]]] = [
    ("CANCELLED", 0, 30, list(range(30))),
    ("CANCELLED", 12, 12, []),
    ("TIMED_OUT", 3, None, [3, 4, 7]),
    ("FAILED", 1, None, []),
    ("CANCELLED", 0, None, [0]),
]


def test_the_js_client_has_the_same_codes_and_sentences() -> None:
    """client_js/src/errors.js holds exactly these codes, with the same templates, and fills them alike."""
    script = f"""
        const m = await import({json.dumps(str(ROOT / "client_js" / "src" / "errors.js"))});
        console.log(JSON.stringify({{
          problems: m.PROBLEMS,
          ranges: {json.dumps(RANGES)}.map((items) => m.itemRanges(items)),
          endings: {json.dumps(ENDINGS)}.map(([s, a, e, n]) => m.jobEnded(s, a, e, n)),
          filled: m.sentence("key_rejected", {{server: "the relay"}}),
        }}));
    """
    node = subprocess.run(
        ["node", "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60
    )
    assert node.returncode == 0, node.stderr
    js = json.loads(node.stdout)
    assert js["problems"] == {code.value: text for code, text in problems.SENTENCES.items()}
    assert set(problems.SENTENCES) == set(Code), "every code has its sentence"
    assert js["ranges"] == [problems.item_ranges(items) for items in RANGES]
    assert js["endings"] == [problems.job_ended(*ending) for ending in ENDINGS]
    assert js["filled"] == problems.sentence(Code.KEY_REJECTED, server="the relay")


def test_item_ranges_and_endings() -> None:
    assert [problems.item_ranges(items) for items in RANGES] == [
        "item 4", "items 0-2", "items 0-2, 5, 7-9", "items 3-4", "items 0-29",
    ]  # fmt: skip
    assert [problems.job_ended(*ending) for ending in ENDINGS] == [
        "the job was cancelled: 0 of 30 files arrived; never sent: items 0-29",
        "the job was cancelled: 12 of 12 files arrived",
        "the job ended TIMED_OUT: 3 of 6 files arrived; never sent: items 3-4, 7",
        "the job ended FAILED: 1 file arrived",
        "the job was cancelled: 0 of 1 files arrived; never sent: item 0",
    ]


@pytest.mark.parametrize(
    ("status", "body", "credential", "code"),
    [
        (401, {"error": {"code": "unauthorized", "message": "unknown API key"}}, "key", Code.KEY_REJECTED),
        (401, {"error": {"code": "unauthorized", "message": "unknown API key"}}, "token", Code.TOKEN_REJECTED),
        (401, {"error": {"code": "invalid_token", "message": "invalid token"}}, "key", Code.TOKEN_REJECTED),
        (401, {"error": {"code": "token_expired", "message": "expired"}}, "token", Code.TOKEN_EXPIRED),
        (401, {"error": {"code": "unauthorized", "message": "needs a key"}}, None, Code.CREDENTIAL_MISSING),
        (403, {"error": {"code": "forbidden", "message": "lacks jobs:read"}}, "key", Code.NOT_ALLOWED),
        (403, {"error": {"code": "origin_not_allowed", "message": "x"}}, None, Code.ORIGIN_NOT_ALLOWED),
        (404, {"error": {"code": "not_found", "message": "no such job"}}, "key", Code.JOB_NOT_FOUND),
        (400, {"error": {"code": "bad_input", "message": "x"}}, "key", None),
    ],
)  # fmt: skip
def test_a_refusal_is_named_by_what_was_refused(
    status: int, body: object, credential: problems.Credential, code: Code | None
) -> None:
    found = problems.refusal(status, json.dumps(body), credential=credential, job="j1")
    assert (found[0] if found else None) == code
    if code is Code.NOT_ALLOWED:
        assert found == (code, "the relay does not allow this: lacks jobs:read")


def test_what_the_cli_says_for_each_cause(tmp_path: Path) -> None:
    """A cancelled 30-item job, a drained stream, a wrong key, a token that is not one: a sentence each."""
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps({"input": {"items": [{"id": f"p{k}"} for k in range(30)], "delay_s": 1}}))
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"input": {"sizes": [100, 200]}}))
    with local_stack(tmp_path) as stack:
        detach = podstream(
            "submit", *stack.submit_args, "--input", str(slow), "--out", str(tmp_path), "--detach", "--json"
        )
        assert detach.returncode == 0, detach.stderr
        job = json.loads(detach.stdout)["id"]
        assert podstream("cancel", job, "--relay", stack.relay, "--key", stack.key).returncode == 0

        # watch: one sentence with the items as a range, not 30 `missing_item` lines and `missing_manifest`
        watch = ["watch", job, "--relay", stack.relay, "--key", stack.key]
        result = podstream(*watch, "--out", str(tmp_path / "w"))
        line = one_line_error(result, 1, f"podstream watch: job {job}: the job was cancelled: ")
        found = re.search(r"cancelled: (\d+) of 30 files arrived; never sent: items (\d+)-29$", line)
        assert found and found.group(1) == found.group(2), line
        arrived = int(found.group(1))
        assert "missing_item" not in result.stderr and "missing_manifest" not in result.stderr
        assert result.stderr.count("\n") == 1 + arrived, result.stderr  # a `saved` line per file, and it

        # ... the detail is there when asked for: --verbose, and the JSON outcome
        verbose = podstream(*watch, "--out", str(tmp_path / "v"), "--verbose")
        lines = [entry for entry in verbose.stderr.splitlines() if "missing_item" in entry]
        assert len(lines) == 30 - arrived and lines[0].startswith(f"failed item {arrived}: missing_item")
        as_json = podstream(*watch, "--out", str(tmp_path / "j"), "--json")
        outcome = json.loads(as_json.stdout)
        assert outcome["status"] == "CANCELLED" and outcome["expected_items"] == 30
        assert outcome["never_sent"] == list(range(arrived, 30))
        assert [f["item"] for f in outcome["failures"] if f["code"] == "missing_item"] == outcome[
            "never_sent"
        ]
        assert line.endswith(outcome["summary"])

        # pull of a job the relay already drained: who took the items, and what to do instead
        done = podstream(
            "submit", *stack.submit_args, "--input", str(small), "--out", str(tmp_path), "--json"
        )
        assert done.returncode == 0, done.stderr
        drained = json.loads(done.stdout)["job"]
        result = podstream(
            "pull", drained, "--runpod-url", stack.runpod_url, "--key", RUNPOD_KEY,
            "--out", str(tmp_path / "p"), "--wait", "1000",
        )  # fmt: skip
        line = one_line_error(
            result, 1, "RunPod's /stream hands each item out once", "already taken by another reader",
            f"podstream watch {drained} --relay URL",
        )  # fmt: skip
        assert "missing_manifest" not in result.stderr and not result.stderr.startswith("problem"), line

        # the same cause, the same sentence, whichever command met it; what was rejected is named
        for command in (["jobs"], ["cancel", job], ["watch", job, "--out", str(tmp_path / "x")]):
            result = podstream(*command, "--relay", stack.relay, "--key", "psk_wrong")
            line = one_line_error(result, 1, "the relay rejected the API key (HTTP 401)")
            assert "{" not in line, line  # no raw JSON
        result = podstream("jobs", "--relay", stack.relay)
        one_line_error(
            result,
            1,
            "the relay needs an API key or a token, and none was given (HTTP 401; give one with --key",
        )
        result = podstream(
            "watch", job, "--relay", stack.relay, "--token", "abc", "--out", str(tmp_path / "t")
        )
        line = one_line_error(result, 1, "the relay rejected the token: it is not one this relay issued")
        assert "API key" not in line, line
        result = podstream(
            "watch", "no-such-job", "--relay", stack.relay, "--key", stack.key, "--out", str(tmp_path)
        )
        one_line_error(result, 1, "the relay does not know the job no-such-job")
        listed = httpx.get(f"{stack.relay}/v1/jobs", headers={"Authorization": f"Bearer {stack.key}"})
        assert {entry["id"] for entry in listed.json()["jobs"]} == {job, drained}
