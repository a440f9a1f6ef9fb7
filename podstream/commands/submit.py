"""`podstream submit`: submit a job through a relay and stream its files to a directory."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import podstream.submit as submit_mod
import podstream.uploads as uploads_mod
from podstream.cli import CommandError, UsageError
from podstream.commands.pull import load_input
from podstream.commands.watch import add_relay_arguments, check_relay, report, watch_job, with_credentials
from podstream.progress import TransferError, UploadBar

EPILOG = """\
Files are saved to DIR/<job id>/ as they arrive, verified against their sha256.
Examples:
  podstream submit --images cat.png dog.jpg --frames 14 --out results/
  podstream submit --images photos/*.jpg https://example.com/x.png --out results/ --detach
  podstream submit --prompts prompts.txt --width 512 --height 512 --out results/
  podstream submit --input job.json --out results/ --detach
Local --images files are uploaded to the relay first (one lookup per 1,000 files first: a file it already
holds is not sent again), and the job names them by reference (input:<sha256>), so a batch of any size stays
a small job.
The job input schema (task, items, params, output) is in docs/worker.md (`podstream schema` prints it).
The input is checked against it before anything is sent or uploaded: a mistake ends with the field's path
and exit status 2. A worker with its own input: --input-schema FILE, or off (a wrapped handler), here and
on the relay.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    add_relay_arguments(parser)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--images",
        metavar="FILE",
        nargs="+",
        help="images (files, uploaded to the relay first, or http(s) URLs): image-to-video",
    )
    what.add_argument(
        "--prompts", metavar="FILE", type=Path, help="a text file, one prompt per line: text-to-image"
    )
    what.add_argument("--input", metavar="FILE", type=Path, help="a whole job input as JSON")
    parser.add_argument("--out", metavar="DIR", type=Path, required=True, help="files go to DIR/<job id>/")
    parser.add_argument(
        "--input-schema",
        metavar="FILE|builtin|off",
        default=submit_mod.BUILTIN_SCHEMA,
        help="what to check the input against, as the relay's --input-schema: a JSON Schema file (a worker "
        "with its own input model), builtin (default: the built-in worker's, `podstream schema`) or off "
        "(a worker that takes any input, e.g. a handler wrapped with podstream.wrap)",
    )
    parser.add_argument(
        "--task",
        metavar="TASK",
        help=f"the task (default: image-to-video with --images, text-to-image with --prompts): "
        f"{', '.join(submit_mod.TASKS)}, or your model's own (check it with --input-schema FILE from "
        "`podstream schema --tasks TASK`)",
    )
    parser.add_argument("--prompt", help="a prompt given to every image item")
    parser.add_argument("--seed", type=int, help="seed of the first item (the next ones get seed+1, ...)")
    gen = parser.add_argument_group("generation (the job's params)")
    gen.add_argument("--frames", type=int, help="frames per video")
    gen.add_argument("--fps", type=float, help="frames per second of the videos")
    gen.add_argument("--width", type=int)
    gen.add_argument("--height", type=int)
    gen.add_argument("--steps", type=int, help="denoising steps")
    gen.add_argument("--format", choices=("mp4", "webm", "png", "webp", "jpeg"), help="output encoding")
    parser.add_argument(
        "--detach", action="store_true", help="submit, print the job id and how to watch it, and exit"
    )
    parser.add_argument(
        "--retries", metavar="N", type=int, default=12, help="failed reconnects in a row before giving up"
    )
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON on stdout")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="a line for each item that never came, not one range"
    )


def job_input(args: argparse.Namespace) -> tuple[dict[str, Any], list[uploads_mod.LocalInput]]:
    """The job input the arguments describe, and the local images it names by reference (to upload
    before submitting). `UsageError` for anything that cannot be built (an unreadable file, not an
    image, ...): nothing has been sent yet."""
    params = {
        name: getattr(args, name)
        for name in ("frames", "fps", "width", "height", "steps")
        if getattr(args, name) is not None
    }
    output = {"format": args.format} if args.format else None
    try:
        if args.input is not None:
            data = load_input(args.input)
            if params:
                data["params"] = {**(data.get("params") or {}), **params}
            if output:
                data["output"] = {**(data.get("output") or {}), **output}
            if args.task:
                data["task"] = args.task
            return data, []
        prompts = submit_mod.read_prompts(args.prompts) if args.prompts is not None else []
        if args.prompts is not None and not prompts:
            raise UsageError(f"{args.prompts} holds no prompts")
        local = {
            source: uploads_mod.read_input(source)
            for source in args.images or ()
            if submit_mod.is_local(source)
        }
        data = submit_mod.build_input(
            task=args.task,
            images=[local.get(source, source) for source in args.images or ()],
            prompts=prompts,
            prompt=args.prompt,
            seed=args.seed,
            params=params,
            output=output,
        )
        return data, list(local.values())
    except submit_mod.InputError as exc:
        raise UsageError(str(exc)) from None


def upload(args: argparse.Namespace, local: list[uploads_mod.LocalInput]) -> None:
    """Upload the job's local images to the relay (a byte bar on stderr, unless -q or --json)."""
    if not local:
        return
    if args.quiet or args.json:
        uploads_mod.upload_inputs(local, relay=args.relay, key=args.key)
        return
    with UploadBar(title=f"uploading {len(local)} image(s)") as bar:
        uploads_mod.upload_inputs(local, relay=args.relay, key=args.key, progress=bar)


def run(args: argparse.Namespace) -> int:
    check_relay(args.relay)
    if args.retries < 1:
        raise UsageError("--retries must be at least 1")
    data, local = job_input(args)
    try:
        # locally, before anything is sent: no GPU paid for a typo
        submit_mod.check_input(data, args.input_schema)
        submit_mod.check_size(data, relay=True)
        upload(args, local)
        job = submit_mod.submit(data, relay=args.relay, key=args.key)
    except submit_mod.InputError as exc:
        raise UsageError(str(exc)) from None
    except TransferError as exc:
        raise CommandError(str(exc)) from None
    out = args.out / job.id
    if args.detach:
        if args.json:  # for programs: the job's read-only token too (a browser, someone without the key)
            print(json.dumps({"id": job.id, "status": job.status, "token": job.token, "urls": job.urls}))
        else:
            # Credentials are named by their variable, never printed (a scrollback or a CI log is no place
            # for them): the key that submitted the job also watches and cancels it.
            watch = with_credentials(f"podstream watch {job.id} --relay {job.relay} --out {out}", args.key)
            cancel = with_credentials(f"podstream cancel {job.id} --relay {job.relay}", args.key)
            print(f"submitted job {job.id}\nwatch it with: {watch}\ncancel it with: {cancel}")
        return 0
    # A status line: on stderr, so that stdout holds only the outcome (JSON with --json).
    print(f"submitted job {job.id}; saving to {out}/", file=sys.stderr, flush=True)
    items = data.get("items")
    total = len(items) if isinstance(items, list) else None
    try:
        outcome = watch_job(job.id, args, out, token=job.token or args.token, total=total)
    except KeyboardInterrupt:
        # Stopping the watch does not stop the job: it runs on (and is paid for) until it ends.
        cancel = with_credentials(f"podstream cancel {job.id} --relay {job.relay}", args.key)
        print(f"the job keeps running on RunPod; to stop it (and its GPU bill): {cancel}", file=sys.stderr)
        raise
    except TransferError as exc:
        raise CommandError(str(exc)) from None
    return report(outcome, args.json)
