/**
 * `value` with every file reference `{"$file": i}` replaced by `replace(i)` and every `{"$literal": {...}}` (a
 * user's own one-key `$` object, escaped by the worker) unwrapped; as podstream.wire.substitute does.
 * @param {unknown} value
 * @param {(item: number) => unknown} replace
 * @returns {unknown}
 */
export function substituteFiles(value: unknown, replace: (item: number) => unknown): unknown;
/**
 * Whether a RunPod job status is final.
 * @param {string | null | undefined} status
 * @returns {boolean}
 */
export function isTerminalStatus(status: string | null | undefined): boolean;
/**
 * @extends {Emitter<JobEvents>}
 */
export class JobSubscription extends Emitter<JobEvents> {
    /**
     * @param {string} jobId
     * @param {{from?: number, inline?: boolean, resolveUrl?: (url: string) => string,
     *   fetch?: typeof globalThis.fetch, onClose?: (job: JobSubscription) => void}} [options]
     */
    constructor(jobId: string, options?: {
        from?: number;
        inline?: boolean;
        resolveUrl?: (url: string) => string;
        fetch?: typeof globalThis.fetch;
        onClose?: (job: JobSubscription) => void;
    });
    jobId: string;
    /** Whether item bytes come inline as `chunk` frames (true) or as media URLs (false). */
    inline: boolean;
    /** The seq of the last record applied; a reconnect resumes after it. */
    lastSeq: number;
    /** The journal's head as of the last `subscribed`. */
    head: number;
    /** The job's RunPod status, as last reported. @type {string | null} */
    status: string | null;
    /** False when the relay could not replay every record after `from` (e.g. it expired). */
    recovered: boolean;
    /**
     * How many items the job's input asks for (counted by the relay at submit), from `subscribed` or the
     * manifest; null until known, or when the relay does not know (a job attached from elsewhere).
     * @type {number | null}
     */
    expectedItems: number | null;
    /** Every file received, in arrival order. @type {PodstreamFile[]} */
    results: PodstreamFile[];
    /** The `done` record once applied. @type {DoneEvent | null} */
    doneRecord: DoneEvent | null;
    /** Why the subscription ended without `done` (terminal close, relay error, unsubscribe). @type {Error | null} */
    failure: Error | null;
    /** The `result` record, if the job sent one (a wrapped handler). @type {ResultEvent | null} */
    resultRecord: ResultEvent | null;
    /** Why the job's result cannot be had (`bad_result`, ...), if the relay said so. @type {ErrorEvent | null} */
    _resultProblem: ErrorEvent | null;
    /** From a manifest: the result with media URLs already in place (undefined: not from a manifest). */
    /** @type {unknown} */
    _manifestResult: unknown;
    /** @type {{record: ItemStart, chunks: Uint8Array[], received: number} | null} */
    _pending: {
        record: ItemStart;
        chunks: Uint8Array[];
        received: number;
    } | null;
    _resolveUrl: (url: string) => string;
    _fetch: typeof fetch | undefined;
    _onClose: ((job: JobSubscription) => void) | undefined;
    /** @type {Set<() => void>} */
    _waiters: Set<() => void>;
    /** Resolves with the `done` record; rejects if the subscription ends without one. @type {Promise<DoneEvent>} */
    finished: Promise<DoneEvent>;
    _resolveDone: (value: DoneEvent) => void;
    _rejectDone: (reason: Error) => void;
    /** Whether no more records will be applied (done, failed or unsubscribed). */
    get closed(): boolean;
    /**
     * Every file of the job in arrival order: those already received first, then each as it arrives. Ends after
     * the `done` record; throws the failure if the subscription ends without one. Each call starts from the first.
     * @returns {AsyncGenerator<PodstreamFile, void, undefined>}
     */
    files(): AsyncGenerator<PodstreamFile, void, undefined>;
    /**
     * The job's structured result (a handler wrapped with `worker.wrap`), once the job is done: the value the
     * handler returned with each file it held replaced by that file's URL (an object URL of the verified bytes
     * in inline mode, the relay's media URL otherwise; `null` for an item that failed). `null` when the job
     * has no result. Rejects if the subscription fails, or if the job's result was sent but did not arrive
     * whole (`bad_result`, `incomplete_result`, `result_too_large`: the error's `code`).
     * @returns {Promise<unknown>}
     */
    result(): Promise<unknown>;
    /** Stop receiving this job (the client sends `unsub`). */
    unsubscribe(): void;
    _wake(): void;
    /**
     * End the subscription without a `done` record.
     * @param {string} code
     * @param {string} message
     * @param {boolean} [report] emit an `error` event (default true)
     */
    _fail(code: string, message: string, report?: boolean): void;
    /**
     * Apply a `subscribed` frame.
     * @param {SubscribedFrame} frame
     */
    _subscribed(frame: SubscribedFrame): void;
    /**
     * Apply one `ev` or `chunk` frame of this job. Records at or before `lastSeq` are dropped (they were
     * applied before a reconnect); anything out of order asks the caller to reconnect and resume.
     * @param {EvFrame | ChunkFrame} frame
     * @returns {Promise<FrameOutcome>}
     */
    _frame(frame: EvFrame | ChunkFrame): Promise<FrameOutcome>;
    /**
     * @param {EvFrame} ev
     * @returns {Promise<FrameOutcome>}
     */
    _record(ev: EvFrame): Promise<FrameOutcome>;
    /**
     * @param {ChunkFrame} chunk
     * @returns {Promise<FrameOutcome>}
     */
    _chunk(chunk: ChunkFrame): Promise<FrameOutcome>;
    /**
     * The relay cannot send the bytes of the pending item (`err media_unavailable`): that item fails.
     * @param {string} code
     * @param {string} message
     */
    _itemUnavailable(code: string, message: string): void;
    /**
     * All bytes of the pending item are in: verify, make its Blob, and only then advance `lastSeq` (with the
     * delivery), so the cursor never passes an item whose file is not whole; if anything here throws, the
     * item is received again.
     * @param {{record: ItemStart, chunks: Uint8Array[], received: number}} pending
     */
    _complete(pending: {
        record: ItemStart;
        chunks: Uint8Array[];
        received: number;
    }): Promise<void>;
    /**
     * Apply an item record with its file made: advance `lastSeq` to it, then hand the file out.
     * @param {PodstreamFile} file
     */
    _deliver(file: PodstreamFile): void;
    /**
     * Render a job from its manifest alone (`GET /v1/jobs/{id}`): URL mode, no websocket. Emits the same events
     * a subscriber of a finished job would see, with `seq` values numbered from 1 in manifest order.
     * @param {Manifest} manifest
     */
    _applyManifest(manifest: Manifest): void;
}
export type EvFrame = import("./frames.js").EvFrame;
export type ChunkFrame = import("./frames.js").ChunkFrame;
export type SubscribedFrame = import("./frames.js").SubscribedFrame;
/**
 * `expectedItems`: how many items the job's input asks for, null when the relay does not know
 */
export type SubscribedEvent = {
    head: number;
    status: string;
    recovered: boolean;
    expectedItems: number | null;
};
export type StatusEvent = {
    seq: number;
    status: string;
    error?: string;
};
export type StepProgress = {
    seq: number;
    item: number;
    phase: "generate";
    step: number;
    steps: number;
};
export type ByteProgress = {
    seq: number;
    item: number;
    phase: "download";
    received: number;
    size: number;
};
export type ProgressEvent = StepProgress | ByteProgress;
export type ErrorEvent = {
    seq: number | null;
    item: number | null;
    code: string;
    message: string;
    fatal: boolean;
};
export type DoneEvent = {
    seq: number;
    status: string;
    items: number;
    errors: number;
};
export type ItemStart = {
    item: number;
    id: string;
    mime: string;
    size: number;
    sha256: string;
    url: string | null;
    seq: number;
};
/**
 * the job's result as sent, files as `{"$file": i}`
 */
export type ResultEvent = {
    seq: number;
    value: unknown;
};
export type JobEvents = {
    /**
     * the relay accepted the subscription (again after each reconnect)
     */
    subscribed: SubscribedEvent;
    /**
     * the job's RunPod status changed
     */
    status: StatusEvent;
    /**
     * generation steps of an item, or bytes of an item received
     */
    progress: ProgressEvent;
    /**
     * an item's bytes start arriving (inline mode)
     */
    itemstart: ItemStart;
    /**
     * an item is complete and verified
     */
    item: PodstreamFile;
    /**
     * a wrapped handler's result arrived (before `done`); see `result()`
     */
    result: ResultEvent;
    /**
     * an item failed, a job-level problem, or (fatal) the subscription ended
     */
    error: ErrorEvent;
    /**
     * the job is over; always the last record
     */
    done: DoneEvent;
};
/**
 * "resync": the stream broke the protocol; reconnect and resume
 */
export type FrameOutcome = "resync" | undefined;
export type ManifestError = {
    item: number | null;
    id?: string;
    code: string;
    message: string;
};
/**
 * `GET /v1/jobs/{id}`
 */
export type Manifest = {
    status: string;
    items?: {
        item: number;
        id?: string;
        mime?: string;
        size?: number;
        sha256?: string;
        url?: string | null;
        status?: string;
        code?: string;
        message?: string;
    }[] | undefined;
    errors?: number | ManifestError[] | undefined;
    head?: number | undefined;
    /**
     * the items the job's input asks for, null when unknown
     */
    expected_items?: number | null | undefined;
    /**
     * a wrapped handler's result, files already replaced by their media URLs
     */
    result?: unknown;
};
import { Emitter } from "./emitter.js";
import { PodstreamFile } from "./file.js";
