"""Rebuilding a damaged journal from what survives: its own valid records, the ingest log and the media.

`rebuild` runs when an existing job is opened (`JobStore.open`). It acts when the journal

- had damage inside it (a flipped byte, a bad length field: `RecordLog.scan` skipped the damaged span and
  kept a copy of the file in `quarantine/`), or records out of place, so a `seq` is missing;
- is empty or was deleted, while the ingest log (`wire.log`) shows the job had records;
- lost its end: job.json says the job finished, but no `done` record survives (a torn or cut journal).

Every record a poller wrote for an envelope is in the ingest log (`h`, the journal head before it, and `r`,
the records it produced: seqs `h+1 ... h+len(r)`), so a lost one is written again with its own seq. An
`item` record rebuilt that way is only kept when its file on disk still matches its size and sha256 (else it
becomes an `error` record `media_damaged`). A record the ingest log cannot give back (a `status`, an end
check) is replaced, at its seq, by an `error` record `lost_record`, so `seq` stays dense and every cursor a
subscriber holds stays valid. Then one `error` record `journal_damaged` says what happened (how many
records were rebuilt, which were lost, where the damaged file was kept), and a job that had finished ends
again with `done` (its old `done` record, when it survived, is moved after that error).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Final

from relay.storage.job import DONE, ERROR, ITEM, JOURNAL_DAMAGED, KINDS, LOST_RECORD, seq_ranges
from relay.storage.local.journal import Journal
from relay.storage.local.media import sha256_file
from relay.storage.local.records import RecordLog, pack

if TYPE_CHECKING:
    from relay.storage.local.store import DiskJobStore

log = logging.getLogger("podstream.relay.repair")

MEDIA_DAMAGED: Final = "media_damaged"


def wire_entries(wire: RecordLog) -> dict[int, tuple[str, dict[str, Any]]]:
    """seq -> (kind, fields) of every journal record the ingest log can give back."""
    out: dict[int, tuple[str, dict[str, Any]]] = {}
    for _offset, record in wire.scan():
        head, entries = record.get("h"), record.get("r")
        if not isinstance(head, int) or not isinstance(entries, list):
            continue
        for i, entry in enumerate(entries):
            if (
                isinstance(entry, list)
                and len(entry) == 2
                and entry[0] in KINDS
                and isinstance(entry[1], dict)
            ):
                out.setdefault(head + 1 + i, (entry[0], entry[1]))
    return out


def rebuild(store: DiskJobStore) -> None:
    """Repair the journal of a just-opened job if it needs it (see the module docstring)."""
    journal = store.journal
    finished_before = bool(store.meta.get("finished_at"))
    lost_end = finished_before and not store.finished
    emptied = journal.head == 0 and not journal.damaged and os.fstat(store.wire.fd).st_size > 0
    if not (journal.damaged or lost_end or emptied):
        return
    reasons: list[str] = []
    if journal.log.damage:
        spans = journal.log.damage
        where = ", ".join(str(offset) for offset, _n in spans[:5])
        reasons.append(f"{sum(n for _o, n in spans)} damaged byte(s) at offset(s) {where} were skipped")
    elif journal.damaged:
        reasons.append("records were missing or out of sequence")
    if emptied:
        reasons.append("the journal was missing or empty")
    if lost_end:
        reasons.append("its end (the done record) was lost")
    kept: dict[int, dict[str, Any]] = {}
    if journal.damaged:
        kept = _valid_records(journal)
        if journal.log.quarantined is None:
            journal.log.quarantine_copy()
    start = 0 if journal.damaged else journal.head
    wire = wire_entries(store.wire)
    if store.wire.damage:
        reasons.append(
            f"wire.log had {sum(n for _o, n in store.wire.damage)} damaged byte(s), skipped"
            + (f" (kept as {_relative(store, store.wire.quarantined)})" if store.wire.quarantined else "")
        )
    top = max(start, max(kept, default=0), max(wire, default=0))
    old_done = kept.pop(top, None) if kept.get(top, {}).get("k") == DONE else None
    if old_done is not None:
        top -= 1
    records: list[dict[str, Any]] = []
    rebuilt: list[int] = []
    lost: list[int] = []
    for seq in range(start + 1, top + 1):
        record = kept.get(seq)
        if record is None and seq in wire:
            kind, fields = wire[seq]
            record = _verified({"seq": seq, "k": kind, **fields}, store)
            rebuilt.append(seq)
        elif record is None:
            message = f"journal record {seq} was lost to damage and could not be rebuilt"
            record = {"seq": seq, "k": ERROR, "item": None, "code": LOST_RECORD, "message": message}
            lost.append(seq)
        records.append(record)
    message = (
        f"the journal of job {store.job} was damaged ({'; '.join(reasons)}): "
        f"{len(rebuilt)} record(s) rebuilt from wire.log and the media on disk, {len(lost)} lost"
        + (f" (seq {seq_ranges(lost)})" if lost else "")
    )
    if journal.log.quarantined is not None:
        message += f"; the damaged journal is kept as {_relative(store, journal.log.quarantined)}"
    log.warning("%s", message)
    if journal.damaged:
        _rewrite(store, records)
    else:
        store.record([(r["k"], {k: v for k, v in r.items() if k not in ("seq", "k")}) for r in records])
    store.record([(ERROR, {"item": None, "code": JOURNAL_DAMAGED, "message": message})])
    store.commit()
    if old_done is not None or finished_before:
        status = str((old_done or {}).get("status") or store.meta.get("status") or "UNKNOWN")
        store.record([(DONE, {"status": status, "items": len(store.items), "errors": store.errors})])
        store.commit()
    store.repaired = message


def _valid_records(journal: Journal) -> dict[int, dict[str, Any]]:
    """The journal's records by seq (its file is whole now: `scan` cut the damage out)."""
    out: dict[int, dict[str, Any]] = {}
    for _offset, record in journal.log.scan():
        seq = record.get("seq")
        if isinstance(seq, int) and seq > 0 and record.get("k") in KINDS and seq not in out:
            out[seq] = record
    return out


def _verified(record: dict[str, Any], store: DiskJobStore) -> dict[str, Any]:
    """A rebuilt `item` record if its file is still whole, else an `error` record saying it is not."""
    if record["k"] != ITEM or not record.get("_file"):
        return record
    path = store.media_path(record)
    problem = ""
    try:
        if path is None or path.stat().st_size != record.get("size"):
            problem = "missing or of the wrong size"
        else:
            if sha256_file(path) != record.get("sha256"):
                problem = "damaged (it does not match its sha256)"
    except OSError as exc:
        problem = f"unreadable ({exc.strerror})"
    if not problem:
        return record
    message = (
        f"item {record.get('item')}'s record was rebuilt after journal damage, but its file is {problem}"
    )
    return {
        "seq": record["seq"],
        "k": ERROR,
        "item": record.get("item"),
        "code": MEDIA_DAMAGED,
        "message": message,
    }


def _rewrite(store: DiskJobStore, records: list[dict[str, Any]]) -> None:
    """Replace the journal with `records` (atomically) and read it back into the store."""
    journal = store.journal
    path = journal.log.path
    temp = path.with_name(f".{path.name}.rebuild")
    with open(temp, "wb") as f:
        for record in records:
            f.write(pack(record))
        f.flush()
        if store.fsync:
            os.fsync(f.fileno())
    os.replace(temp, path)
    journal.close()
    store.journal = Journal(path, fsync=store.fsync, tail=journal.tail_max)
    store.reset_summaries()
    for record in store.journal.load():
        store._apply(record)


def _relative(store: DiskJobStore, path: os.PathLike[str] | None) -> str:
    if path is None:
        return ""
    return os.path.relpath(path, store.dir)
