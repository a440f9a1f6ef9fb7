// One job as seen by a subscriber: applies journal records in seq order exactly once, assembles inline item
// bytes from `chunk` frames, verifies them, and hands out files and events. Sans-I/O: PodstreamClient feeds it
// frames (or a manifest) and reads `lastSeq` to resume.
import { Emitter } from "./emitter.js";
import { IntegrityError, PodstreamFile, concatBytes, verifyBytes } from "./file.js";

/**
 * @typedef {import("./frames.js").EvFrame} EvFrame
 * @typedef {import("./frames.js").ChunkFrame} ChunkFrame
 * @typedef {import("./frames.js").SubscribedFrame} SubscribedFrame
 *
 * @typedef {{head: number, status: string, recovered: boolean, expectedItems: number | null}} SubscribedEvent
 *   `expectedItems`: how many items the job's input asks for, null when the relay does not know
 * @typedef {{seq: number, status: string, error?: string}} StatusEvent
 * @typedef {{seq: number, item: number, phase: "generate", step: number, steps: number}} StepProgress
 * @typedef {{seq: number, item: number, phase: "download", received: number, size: number}} ByteProgress
 * @typedef {StepProgress | ByteProgress} ProgressEvent
 * @typedef {{seq: number | null, item: number | null, code: string, message: string, fatal: boolean}} ErrorEvent
 * @typedef {{seq: number, status: string, items: number, errors: number}} DoneEvent
 * @typedef {{item: number, id: string, mime: string, size: number, sha256: string, url: string | null,
 *   seq: number}} ItemStart
 * @typedef {{seq: number, value: unknown}} ResultEvent  the job's result as sent, files as `{"$file": i}`
 *
 * @typedef {object} JobEvents
 * @property {SubscribedEvent} subscribed  the relay accepted the subscription (again after each reconnect)
 * @property {StatusEvent} status          the job's RunPod status changed
 * @property {ProgressEvent} progress      generation steps of an item, or bytes of an item received
 * @property {ItemStart} itemstart         an item's bytes start arriving (inline mode)
 * @property {PodstreamFile} item          an item is complete and verified
 * @property {ResultEvent} result          a wrapped handler's result arrived (before `done`); see `result()`
 * @property {ErrorEvent} error            an item failed, a job-level problem, or (fatal) the subscription ended
 * @property {DoneEvent} done              the job is over; always the last record
 */

/** @typedef {"resync" | undefined} FrameOutcome  "resync": the stream broke the protocol; reconnect and resume */

/** @typedef {{item: number | null, id?: string, code: string, message: string}} ManifestError */

/**
 * @typedef {object} Manifest  `GET /v1/jobs/{id}`
 * @property {string} status
 * @property {Array<{item: number, id?: string, mime?: string, size?: number, sha256?: string, url?: string | null,
 *   status?: string, code?: string, message?: string}>} [items]
 * @property {number | ManifestError[]} [errors]
 * @property {number} [head]
 * @property {number | null} [expected_items]  the items the job's input asks for, null when unknown
 * @property {unknown} [result]  a wrapped handler's result, files already replaced by their media URLs
 */

/** Job-level error codes that mean the job's result was sent but cannot be had. */
const RESULT_PROBLEMS = new Set(["bad_result", "incomplete_result", "result_too_large"]);
const FILE_KEY = "$file";
const LITERAL_KEY = "$literal";

/**
 * `value` with every file reference `{"$file": i}` replaced by `replace(i)` and every `{"$literal": {...}}` (a
 * user's own one-key `$` object, escaped by the worker) unwrapped; as podstream.wire.substitute does.
 * @param {unknown} value
 * @param {(item: number) => unknown} replace
 * @returns {unknown}
 */
export function substituteFiles(value, replace) {
  if (Array.isArray(value)) return value.map((v) => substituteFiles(v, replace));
  if (value === null || typeof value !== "object") return value;
  const entries = Object.entries(value);
  if (entries.length === 1) {
    const [key, inner] = entries[0];
    if (key === FILE_KEY && Number.isSafeInteger(inner) && /** @type {number} */ (inner) >= 0) {
      return replace(/** @type {number} */ (inner));
    }
    if (key === LITERAL_KEY && inner !== null && typeof inner === "object" && !Array.isArray(inner)) {
      return Object.fromEntries(Object.entries(inner).map(([k, v]) => [k, substituteFiles(v, replace)]));
    }
  }
  return Object.fromEntries(entries.map(([k, v]) => [k, substituteFiles(v, replace)]));
}

/**
 * @param {unknown} value
 * @returns {number | null} a non-negative integer, else null
 */
function countOrNull(value) {
  return Number.isSafeInteger(value) && /** @type {number} */ (value) >= 0
    ? /** @type {number} */ (value)
    : null;
}

const TERMINAL_STATUSES = new Set(["COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"]);

/**
 * Whether a RunPod job status is final.
 * @param {string | null | undefined} status
 * @returns {boolean}
 */
export function isTerminalStatus(status) {
  return status != null && TERMINAL_STATUSES.has(status);
}

/**
 * @extends {Emitter<JobEvents>}
 */
export class JobSubscription extends Emitter {
  /**
   * @param {string} jobId
   * @param {{from?: number, inline?: boolean, resolveUrl?: (url: string) => string,
   *   fetch?: typeof globalThis.fetch, onClose?: (job: JobSubscription) => void}} [options]
   */
  constructor(jobId, options = {}) {
    super();
    this.jobId = jobId;
    /** Whether item bytes come inline as `chunk` frames (true) or as media URLs (false). */
    this.inline = options.inline ?? true;
    /** The seq of the last record applied; a reconnect resumes after it. */
    this.lastSeq = options.from ?? 0;
    if (!Number.isSafeInteger(this.lastSeq) || this.lastSeq < 0) {
      throw new RangeError(`from must be a non-negative integer, got ${String(options.from)}`);
    }
    /** The journal's head as of the last `subscribed`. */
    this.head = 0;
    /** The job's RunPod status, as last reported. @type {string | null} */
    this.status = null;
    /** False when the relay could not replay every record after `from` (e.g. it expired). */
    this.recovered = true;
    /**
     * How many items the job's input asks for (counted by the relay at submit), from `subscribed` or the
     * manifest; null until known, or when the relay does not know (a job attached from elsewhere).
     * @type {number | null}
     */
    this.expectedItems = null;
    /** Every file received, in arrival order. @type {PodstreamFile[]} */
    this.results = [];
    /** The `done` record once applied. @type {DoneEvent | null} */
    this.doneRecord = null;
    /** Why the subscription ended without `done` (terminal close, relay error, unsubscribe). @type {Error | null} */
    this.failure = null;
    /** The `result` record, if the job sent one (a wrapped handler). @type {ResultEvent | null} */
    this.resultRecord = null;
    /** Why the job's result cannot be had (`bad_result`, ...), if the relay said so. @type {ErrorEvent | null} */
    this._resultProblem = null;
    /** From a manifest: the result with media URLs already in place (undefined: not from a manifest). */
    /** @type {unknown} */
    this._manifestResult = undefined;
    /** @type {{record: ItemStart, chunks: Uint8Array[], received: number} | null} */
    this._pending = null;
    this._resolveUrl = options.resolveUrl ?? ((url) => url);
    this._fetch = options.fetch;
    this._onClose = options.onClose;
    /** @type {Set<() => void>} */
    this._waiters = new Set();
    /** @type {(value: DoneEvent) => void} */
    let resolveDone = () => {};
    /** @type {(reason: Error) => void} */
    let rejectDone = () => {};
    /** Resolves with the `done` record; rejects if the subscription ends without one. @type {Promise<DoneEvent>} */
    this.finished = new Promise((resolve, reject) => {
      resolveDone = resolve;
      rejectDone = reject;
    });
    this.finished.catch(() => {}); // a rejection nobody awaits is not an unhandled one
    this._resolveDone = resolveDone;
    this._rejectDone = rejectDone;
  }

  /** Whether no more records will be applied (done, failed or unsubscribed). */
  get closed() {
    return this.doneRecord !== null || this.failure !== null;
  }

  /**
   * Every file of the job in arrival order: those already received first, then each as it arrives. Ends after
   * the `done` record; throws the failure if the subscription ends without one. Each call starts from the first.
   * @returns {AsyncGenerator<PodstreamFile, void, undefined>}
   */
  async *files() {
    let index = 0;
    for (;;) {
      while (index < this.results.length) {
        yield this.results[index];
        index += 1;
      }
      if (this.failure) throw this.failure;
      if (this.doneRecord) return;
      await new Promise((resolve) => {
        const wake = () => {
          this._waiters.delete(wake);
          resolve(undefined);
        };
        this._waiters.add(wake);
      });
    }
  }

  /**
   * The job's structured result (a handler wrapped with `worker.wrap`), once the job is done: the value the
   * handler returned with each file it held replaced by that file's URL (an object URL of the verified bytes
   * in inline mode, the relay's media URL otherwise; `null` for an item that failed). `null` when the job
   * has no result. Rejects if the subscription fails, or if the job's result was sent but did not arrive
   * whole (`bad_result`, `incomplete_result`, `result_too_large`: the error's `code`).
   * @returns {Promise<unknown>}
   */
  async result() {
    await this.finished;
    if (this._manifestResult !== undefined) return this._manifestResult;
    const record = this.resultRecord;
    if (record === null) {
      const problem = this._resultProblem;
      if (problem === null) return null;
      throw Object.assign(new Error(`job ${this.jobId}: no result: ${problem.message}`), {
        code: problem.code,
      });
    }
    /** @type {Map<number, PodstreamFile>} */
    const files = new Map(this.results.map((file) => [file.index, file]));
    return substituteFiles(record.value, (item) => files.get(item)?.url ?? null);
  }

  /** Stop receiving this job (the client sends `unsub`). */
  unsubscribe() {
    if (!this.closed) this._fail("unsubscribed", "unsubscribed", false);
  }

  _wake() {
    for (const wake of [...this._waiters]) wake();
  }

  /**
   * End the subscription without a `done` record.
   * @param {string} code
   * @param {string} message
   * @param {boolean} [report] emit an `error` event (default true)
   */
  _fail(code, message, report = true) {
    if (this.closed) return;
    const error = Object.assign(new Error(`job ${this.jobId}: ${message}`), { code });
    this.failure = error;
    this._pending = null;
    if (report) this.emit("error", { seq: null, item: null, code, message, fatal: true });
    this._rejectDone(error);
    this._wake();
    this._onClose?.(this);
  }

  /**
   * Apply a `subscribed` frame.
   * @param {SubscribedFrame} frame
   */
  _subscribed(frame) {
    this.head = frame.head;
    if (frame.status) this.status = frame.status;
    this.recovered = frame.recovered;
    this.expectedItems = countOrNull(frame.expected_items) ?? this.expectedItems;
    this.emit("subscribed", {
      head: frame.head,
      status: frame.status,
      recovered: frame.recovered,
      expectedItems: this.expectedItems,
    });
  }

  /**
   * Apply one `ev` or `chunk` frame of this job. Records at or before `lastSeq` are dropped (they were
   * applied before a reconnect); anything out of order asks the caller to reconnect and resume.
   * @param {EvFrame | ChunkFrame} frame
   * @returns {Promise<FrameOutcome>}
   */
  async _frame(frame) {
    if (this.closed || frame.seq <= this.lastSeq) return undefined;
    if (frame.t === "chunk") return this._chunk(frame);
    const pending = this._pending;
    if (pending) {
      if (frame.seq === pending.record.seq && frame.k === "item") {
        this._pending = null; // the same item again (a resumed stream restarts it): start over
      } else if (pending.record.size === 0) {
        await this._complete(pending); // an empty file may come without any chunk
      } else if (pending.received === 0 && frame.seq === pending.record.seq + 1) {
        // No bytes follow an item the relay does not hold (uploaded out of band: a `ref`): URL only.
        this._pending = null;
        this._deliver(new PodstreamFile(pending.record, { fetch: this._fetch }));
      } else {
        return "resync";
      }
    }
    if (frame.seq !== this.lastSeq + 1) return "resync";
    return this._record(frame);
  }

  /**
   * @param {EvFrame} ev
   * @returns {Promise<FrameOutcome>}
   */
  async _record(ev) {
    const r = /** @type {Record<string, unknown>} */ (ev);
    switch (ev.k) {
      case "status":
        this.status = String(r.status);
        this.lastSeq = ev.seq;
        this.emit("status", {
          seq: ev.seq,
          status: this.status,
          ...(typeof r.error === "string" ? { error: r.error } : {}),
        });
        return undefined;
      case "progress":
        this.lastSeq = ev.seq;
        this.emit("progress", {
          seq: ev.seq,
          item: Number(r.item),
          phase: "generate",
          step: Number(r.step),
          steps: Number(r.steps),
        });
        return undefined;
      case "item": {
        const url = typeof r.url === "string" && r.url ? this._resolveUrl(r.url) : null;
        /** @type {ItemStart} */
        const record = {
          seq: ev.seq,
          item: Number(r.item),
          id: typeof r.id === "string" ? r.id : "",
          mime: typeof r.mime === "string" ? r.mime : "application/octet-stream",
          size: Number(r.size),
          sha256: typeof r.sha256 === "string" ? r.sha256 : "",
          url,
        };
        if (!this.inline) {
          this._deliver(new PodstreamFile(record, { fetch: this._fetch }));
          return undefined;
        }
        this._pending = { record, chunks: [], received: 0 };
        this.emit("itemstart", record);
        this.emit("progress", {
          seq: ev.seq,
          item: record.item,
          phase: "download",
          received: 0,
          size: record.size,
        });
        return undefined;
      }
      case "error": {
        this.lastSeq = ev.seq;
        /** @type {ErrorEvent} */
        const error = {
          seq: ev.seq,
          item: typeof r.item === "number" ? r.item : null,
          code: String(r.code ?? "error"),
          message: String(r.message ?? ""),
          fatal: false,
        };
        if (error.item === null && RESULT_PROBLEMS.has(error.code)) this._resultProblem = error;
        if (error.item === null && error.code === "restarted") this.resultRecord = null; // a new run's result follows
        this.emit("error", error);
        return undefined;
      }
      case "result":
        this.lastSeq = ev.seq;
        this.resultRecord = { seq: ev.seq, value: r.value ?? null };
        this.emit("result", this.resultRecord);
        return undefined;
      case "done": {
        this.lastSeq = ev.seq;
        if (typeof r.status === "string") this.status = r.status;
        /** @type {DoneEvent} */
        const done = {
          seq: ev.seq,
          status: this.status ?? "",
          items: Number(r.items ?? this.results.length),
          errors: Number(r.errors ?? 0),
        };
        this.doneRecord = done;
        this.emit("done", done);
        this._resolveDone(done);
        this._wake();
        this._onClose?.(this);
        return undefined;
      }
      default:
        // A record kind from a newer relay: report it, keep the cursor moving, lose nothing after it.
        this.lastSeq = ev.seq;
        this.emit("error", {
          seq: ev.seq,
          item: null,
          code: "unknown_kind",
          message: `record ${ev.seq} has a kind this client does not know (${String(ev.k)}): skipped`,
          fatal: false,
        });
        return undefined;
    }
  }

  /**
   * @param {ChunkFrame} chunk
   * @returns {Promise<FrameOutcome>}
   */
  async _chunk(chunk) {
    const pending = this._pending;
    if (!pending || chunk.seq !== pending.record.seq || chunk.item !== pending.record.item) return "resync";
    let data = chunk.data;
    if (chunk.off < pending.received) {
      // Overlaps bytes we hold: keep only what is new.
      const skip = pending.received - chunk.off;
      if (skip >= data.byteLength && !chunk.last) return undefined;
      data = data.subarray(Math.min(skip, data.byteLength));
    } else if (chunk.off > pending.received) {
      return "resync";
    }
    if (pending.received + data.byteLength > pending.record.size) return "resync";
    if (data.byteLength > 0) {
      // Copy: the frame's buffer may be reused or be a view on a larger one.
      pending.chunks.push(data.slice());
      pending.received += data.byteLength;
      this.emit("progress", {
        seq: pending.record.seq,
        item: pending.record.item,
        phase: "download",
        received: pending.received,
        size: pending.record.size,
      });
    }
    if (chunk.last) await this._complete(pending);
    return undefined;
  }

  /**
   * The relay cannot send the bytes of the pending item (`err media_unavailable`): that item fails.
   * @param {string} code
   * @param {string} message
   */
  _itemUnavailable(code, message) {
    const pending = this._pending;
    if (!pending) return;
    this._pending = null;
    this.lastSeq = pending.record.seq;
    this.emit("error", { seq: pending.record.seq, item: pending.record.item, code, message, fatal: false });
  }

  /**
   * All bytes of the pending item are in: verify, make its Blob, and only then advance `lastSeq` (with the
   * delivery), so the cursor never passes an item whose file is not whole; if anything here throws, the
   * item is received again.
   * @param {{record: ItemStart, chunks: Uint8Array[], received: number}} pending
   */
  async _complete(pending) {
    this._pending = null;
    const { record } = pending;
    const bytes = concatBytes(pending.chunks, pending.received);
    /** @type {"sha256" | "size"} */
    let verified;
    try {
      verified = await verifyBytes(bytes, record);
    } catch (err) {
      if (!(err instanceof IntegrityError)) throw err;
      this.lastSeq = record.seq;
      this.emit("error", {
        seq: record.seq,
        item: record.item,
        code: err.code,
        message: err.message,
        fatal: false,
      });
      return;
    }
    this._deliver(new PodstreamFile(record, { bytes, verified, fetch: this._fetch }));
  }

  /**
   * Apply an item record with its file made: advance `lastSeq` to it, then hand the file out.
   * @param {PodstreamFile} file
   */
  _deliver(file) {
    this.lastSeq = file.seq;
    this.results.push(file);
    this.emit("item", file);
    this._wake();
  }

  /**
   * Render a job from its manifest alone (`GET /v1/jobs/{id}`): URL mode, no websocket. Emits the same events
   * a subscriber of a finished job would see, with `seq` values numbered from 1 in manifest order.
   * @param {Manifest} manifest
   */
  _applyManifest(manifest) {
    let seq = this.lastSeq;
    const status = String(manifest.status);
    this.status = status;
    this.head = typeof manifest.head === "number" ? manifest.head : 0;
    this.expectedItems = countOrNull(manifest.expected_items);
    this.emit("status", { seq: ++seq, status });
    let errors = 0;
    const items = manifest.items ?? [];
    for (const entry of items) {
      if (entry.status === "error" || entry.code) {
        errors += 1;
        this.emit("error", {
          seq: ++seq,
          item: entry.item,
          code: String(entry.code ?? "error"),
          message: String(entry.message ?? ""),
          fatal: false,
        });
        continue;
      }
      const file = new PodstreamFile(
        {
          seq: ++seq,
          item: entry.item,
          id: entry.id ?? "",
          mime: entry.mime ?? "application/octet-stream",
          size: Number(entry.size ?? 0),
          sha256: entry.sha256 ?? "",
          url: entry.url ? this._resolveUrl(entry.url) : null,
        },
        { fetch: this._fetch },
      );
      this._deliver(file);
    }
    if (Array.isArray(manifest.errors)) {
      for (const problem of manifest.errors) {
        errors += 1;
        this.emit("error", {
          seq: ++seq,
          item: problem.item ?? null,
          code: String(problem.code),
          message: String(problem.message ?? ""),
          fatal: false,
        });
      }
    } else if (typeof manifest.errors === "number") {
      errors = Math.max(errors, manifest.errors);
    }
    this._manifestResult = manifest.result ?? null;
    this.lastSeq = seq;
    if (isTerminalStatus(status)) {
      /** @type {DoneEvent} */
      const done = { seq: ++seq, status, items: items.length, errors };
      this.lastSeq = seq;
      this.doneRecord = done;
      this.emit("done", done);
      this._resolveDone(done);
      this._wake();
      this._onClose?.(this);
    }
  }
}
