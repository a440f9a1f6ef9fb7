"""`podstream cancel`: stop a job on RunPod, so its GPU time stops being paid for.

Through a relay (`DELETE /v1/jobs/{id}`, the relay's API key; the RunPod key stays on the relay), or,
with `--runpod-url`/`--endpoint`, straight to RunPod (`POST /cancel/{id}`, the RunPod API key), as
`podstream watch` and `podstream pull` reach a job.
"""

from __future__ import annotations

import argparse
import os
import urllib.parse
from typing import Any

import httpx

from podstream.cli import CommandError, UsageError
from podstream.wire import TERMINAL_STATUSES

DEFAULT_RELAY = "http://127.0.0.1:8700"

EPILOG = """\
Examples:
  podstream cancel 1a2b3c-u1 --relay https://relay.example.com      (key in PODSTREAM_API_KEY)
  podstream cancel 1a2b3c-u1 --endpoint abc123                      (key in RUNPOD_API_KEY)
Exit status: 0 when the job is cancelled or had already ended, 1 when it could not be cancelled.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("job", help="job id")
    parser.add_argument(
        "--relay",
        metavar="URL",
        default=os.environ.get("PODSTREAM_RELAY", DEFAULT_RELAY),
        help=f"cancel through this relay (env PODSTREAM_RELAY, default {DEFAULT_RELAY})",
    )
    direct = parser.add_mutually_exclusive_group()
    direct.add_argument(
        "--runpod-url", metavar="URL", help="cancel on RunPod directly: the endpoint's URL (…/v2/ENDPOINT_ID)"
    )
    direct.add_argument("--endpoint", metavar="ID", help="cancel on RunPod directly: the endpoint id")
    parser.add_argument(
        "--key",
        metavar="KEY",
        help="the relay's API key (env PODSTREAM_API_KEY), or with --runpod-url/--endpoint the RunPod "
        "API key (env RUNPOD_API_KEY)",
    )


def run(args: argparse.Namespace) -> int:
    from podstream.puller import endpoint_url
    from podstream.watcher import http_url

    job = urllib.parse.quote(args.job, safe="")
    if args.runpod_url or args.endpoint:
        try:
            base = endpoint_url(args.runpod_url, args.endpoint)
        except ValueError as exc:
            raise UsageError(f"{exc} (--runpod-url)") from None
        key = args.key or os.environ.get("RUNPOD_API_KEY")
        where, variable = "RunPod", "RUNPOD_API_KEY"
        status_call, cancel_call = ("GET", f"{base}/status/{job}"), ("POST", f"{base}/cancel/{job}")
    else:
        try:
            base = http_url(args.relay)
        except ValueError as exc:
            raise UsageError(f"{exc} (--relay)") from None
        key = args.key or os.environ.get("PODSTREAM_API_KEY")
        where, variable = "the relay", "PODSTREAM_API_KEY"
        status_call, cancel_call = ("GET", f"{base}/v1/jobs/{job}"), ("DELETE", f"{base}/v1/jobs/{job}")
    # RunPod answers a cancel of a job that already ended with its status, CANCELLED included: asking
    # first is what tells "cancelled now" from "had already ended".
    before = _call(*status_call, key, where, variable, args.job)
    if before in TERMINAL_STATUSES:
        print(f"job {args.job} had already ended ({before}): nothing to cancel")
        return 0
    status = _call(*cancel_call, key, where, variable, args.job)
    if status == "CANCELLED":
        print(f"cancelled job {args.job}")
    elif status in TERMINAL_STATUSES:
        print(f"job {args.job} ended ({status}) before it could be cancelled")
    else:
        print(f"asked {where} to cancel job {args.job} (status now {status})")
    return 0


def _call(method: str, url: str, key: str | None, where: str, variable: str, job: str) -> str:
    """The job's status from `where`'s answer; `CommandError` with one clear line otherwise."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.request(method, url, headers=headers, timeout=30.0)
    except httpx.ConnectError as exc:
        raise CommandError(f"cannot reach {where} at {url}: {exc or type(exc).__name__}") from None
    except httpx.HTTPError as exc:
        raise CommandError(f"cancelling through {where}: {type(exc).__name__} {exc}".rstrip()) from None
    if response.status_code in (401, 403):
        hint = "" if key else f" (no key given: --key or {variable})"
        raise CommandError(f"{where} rejected the API key (HTTP {response.status_code}){hint}")
    if response.status_code == 404:
        raise CommandError(f"{where} does not know job {job} (HTTP 404)")
    if response.status_code >= 400:
        raise CommandError(
            f"{where} could not cancel the job (HTTP {response.status_code}): {_text(response)}"
        )
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    status = body.get("status") if isinstance(body, dict) else None
    return status if isinstance(status, str) and status else "UNKNOWN"


def _text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):  # the relay's {"error": {"code", "message"}}
        return f"{error.get('code', 'error')}: {error.get('message', '')}"[:300]
    return str(error if error is not None else body)[:300]
