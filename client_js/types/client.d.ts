export { RelayHttpError };
/**
 * @extends {Emitter<ClientEvents>}
 */
export class PodstreamClient extends Emitter<ClientEvents> {
    /** @param {ClientOptions} [options] */
    constructor(options?: ClientOptions);
    /** The relay's base HTTP URL, without a trailing slash. */
    url: string;
    wsUrl: string;
    getToken: ((context: {
        jobs: string[];
    }) => (string | null | Promise<string | null>)) | undefined;
    apiKey: string | undefined;
    tokenTtl: number | undefined;
    _WebSocket: any;
    _fetch: typeof fetch;
    getInputToken: (() => (string | null | Promise<string | null>)) | undefined;
    /** The input token in use (from `getInputToken`). @type {Promise<string | null> | null} */
    _inputToken: Promise<string | null> | null;
    /** The relay answered 404/405 to `POST /v1/inputs/lookup` (older than it): files are asked for one by one. */
    _noInputLookup: boolean;
    /** Browsers upload with XMLHttpRequest (fetch has no upload progress), unless given a `fetch` to use. */
    _useXhr: boolean;
    backoff: Backoff;
    connectTimeout: number;
    maxServerPingDelay: number;
    /** @type {ConnectionState} */
    state: ConnectionState;
    /** @type {Map<string, JobSubscription>} */
    _subs: Map<string, JobSubscription>;
    /** @type {any} */
    _ws: any;
    /** Generation of the current socket; frames and closes of older sockets are ignored. */
    _gen: number;
    /** @type {Promise<void>} */
    _queue: Promise<void>;
    /** @type {string | null} */
    _token: string | null;
    /** @type {Set<string>} the jobs the current token was asked for */
    _tokenJobs: Set<string>;
    /** @type {ReturnType<typeof setTimeout> | null} */
    _retryTimer: ReturnType<typeof setTimeout> | null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    _connectTimer: ReturnType<typeof setTimeout> | null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    _watchdog: ReturnType<typeof setTimeout> | null;
    _pingMs: number;
    /** The code of the last `bye`, used for the close that follows it. @type {number | null} */
    _byeCode: number | null;
    _authRetried: boolean;
    /** When the token in use expires (unix ms), if known (tokens the client minted). @type {number | null} */
    _tokenExpiresAt: number | null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    _refreshTimer: ReturnType<typeof setTimeout> | null;
    _network: NetworkWatch | null;
    _onOnline: () => void;
    _onOffline: () => void;
    /**
     * Subscribe to a job over the websocket: live, replay and late join alike. `from` is the last seq already
     * applied (0: from the start); `inline: false` delivers media URLs instead of bytes.
     * @param {string} jobId
     * @param {{from?: number, inline?: boolean}} [options]
     * @returns {JobSubscription}
     */
    subscribe(jobId: string, options?: {
        from?: number;
        inline?: boolean;
    }): JobSubscription;
    /**
     * Open a job for display: a finished job is rendered from its manifest alone (URL mode, no websocket, media
     * streamed by the browser with HTTP Range); an unfinished one is subscribed from the start.
     * @param {string} jobId
     * @param {{inline?: boolean}} [options]
     * @returns {Promise<JobSubscription>}
     */
    open(jobId: string, options?: {
        inline?: boolean;
    }): Promise<JobSubscription>;
    /** @param {JobSubscription} sub */
    _subClosed(sub: JobSubscription): void;
    /** @param {JobSubscription} job */
    _sendSub(job: JobSubscription): void;
    /** @param {ClientFrame} frame */
    _send(frame: ClientFrame): void;
    /** @param {ConnectionState} state */
    _setState(state: ConnectionState): void;
    _ensureConnected(): void;
    _connect(): Promise<void>;
    /**
     * Run `task` after every earlier frame of this client, unless its socket was abandoned meanwhile.
     * @param {number} gen
     * @param {() => void | Promise<void>} task
     */
    _enqueue(gen: number, task: () => void | Promise<void>): void;
    /**
     * @param {number} gen
     * @param {unknown} data
     */
    _frame(gen: number, data: unknown): Promise<void>;
    /**
     * The socket of generation `gen` closed.
     * @param {number} gen
     * @param {number} closeCode
     * @param {string} reason
     */
    _closed(gen: number, closeCode: number, reason: string): void;
    /**
     * @param {number} code
     * @param {string} reason
     */
    _scheduleReconnect(code: number, reason: string): void;
    /**
     * Give up on the current socket now (its later frames and close are ignored) and reconnect.
     * @param {number} code  sent in the close frame (3000-4999)
     * @param {string} reason
     * @param {boolean} [withBackoff]  wait a backoff delay first (default true)
     */
    _abandon(code: number, reason: string, withBackoff?: boolean): void;
    /** @param {string} reason */
    _reconnectNow(reason: string): void;
    _dropSocket(): void;
    /**
     * What the connection authenticates with, as the user gave it (a token minted from the API key is the
     * key's doing).
     * @returns {import("./errors.js").Credential}
     */
    _credential(): import("./errors.js").Credential;
    /**
     * Where tokens come from: the caller's `getToken`, else minting with the API key, else nowhere (a relay
     * without auth, or a caller that subscribes only to jobs it has tokens for through `getToken`).
     * @returns {((context: {jobs: string[]}) => (string | null | Promise<string | null>)) | null}
     */
    _tokenSource(): ((context: {
        jobs: string[];
    }) => (string | null | Promise<string | null>)) | null;
    /**
     * Mint one token covering `jobs` with the API key, and note when it expires so it is renewed in time.
     * @param {string[]} jobs
     * @returns {Promise<string | null>}
     */
    _mintFor(jobs: string[]): Promise<string | null>;
    /**
     * Renew a minted token on the live socket before it expires (a fresh `auth` frame extends the connection).
     * @param {number} gen
     */
    _armRefresh(gen: number): void;
    /** @param {number} gen */
    _refresh(gen: number): Promise<void>;
    /**
     * End every subscription when a token for `jobs` was refused for good (bad key, forbidden, unknown job).
     * @param {unknown} err
     * @param {string[]} jobs
     * @returns {boolean} whether it was terminal (and everything has been failed)
     */
    _failIfTerminal(err: unknown, jobs: string[]): boolean;
    /**
     * A failure no retry can fix (a refused key, a forbidden job): report it, end every subscription with it
     * (each gets a fatal `error` and its `finished` rejects), and stay disconnected.
     * @param {string} code
     * @param {string} message
     */
    _failAll(code: string, message: string): void;
    /** @param {number} gen */
    _armWatchdog(gen: number): void;
    _offline(): void;
    _online(): void;
    /** Close the connection and stop every subscription; the client cannot be used afterwards. */
    close(): void;
    /**
     * An absolute URL for a path or URL given by the relay.
     * @param {string} url
     * @returns {string}
     */
    resolve(url: string): string;
    /**
     * @param {string} path
     * @param {{method?: string, body?: unknown, token?: string | null, anonymous?: boolean,
     *   signal?: AbortSignal}} [init]  `anonymous`: send no credential (the path carries one)
     * @returns {Promise<any>}
     */
    _http(path: string, init?: {
        method?: string;
        body?: unknown;
        token?: string | null;
        anonymous?: boolean;
        signal?: AbortSignal;
    }): Promise<any>;
    /**
     * Submit a job (`POST /v1/jobs`). `input` is the worker's job input (see docs/worker.md). An item's `image`
     * may be a File or Blob: it is uploaded first (`uploadInput`, a few at a time, each distinct content once)
     * and the job names it by its `ref`.
     * @param {Record<string, unknown>} input
     * @param {SubmitOptions} [options]
     * @returns {Promise<SubmitResult>}
     */
    submit(input: Record<string, unknown>, options?: SubmitOptions): Promise<SubmitResult>;
    /**
     * Stage a File or Blob (an image) in the relay, for job items to name by its `ref`. Skipped when the relay
     * already holds these bytes for this credential (`POST /v1/inputs/lookup`, or `GET /v1/inputs/{sha256}`
     * from a relay older than that route); else uploaded (`PUT /v1/inputs`) with byte progress, and
     * tried again after a network error or a 5xx, with backoff. A 4xx throws `RelayHttpError` at once, e.g.
     * `unsupported_media_type` (not a PNG, JPEG, WebP, GIF or BMP) or `too_large`.
     * @param {Blob} blob
     * @param {UploadOptions} [options]
     * @returns {Promise<InputRef>}
     */
    uploadInput(blob: Blob, options?: UploadOptions): Promise<InputRef>;
    /**
     * A short-lived token that may only upload inputs (`POST /v1/inputs/tokens`, with an API key that may
     * submit jobs): what a backend hands its browsers for `getInputToken`. Inputs uploaded with it belong to
     * the key that minted it, so jobs submitted with that key can use them.
     * @param {{ttl?: number}} [options]  seconds it is good for (default: the relay's)
     * @returns {Promise<{token: string, expires_at: number}>}
     */
    mintInputToken(options?: {
        ttl?: number;
    }): Promise<{
        token: string;
        expires_at: number;
    }>;
    /** @type {InputTransport} */
    get _inputs(): InputTransport;
    /**
     * Call the relay with the credential for inputs: the API key, else a token from `getInputToken` (asked for
     * again, once, when the relay refuses it).
     * @template T
     * @param {(token: string | null) => Promise<T>} call
     * @returns {Promise<T>}
     */
    _withInputToken<T>(call: (token: string | null) => Promise<T>): Promise<T>;
    /**
     * `PUT /v1/inputs`: with XMLHttpRequest in a browser (upload progress events), else with fetch (in Node, the
     * body is a stream counted as it is read).
     * @param {Blob} blob
     * @param {string | null} sha256
     * @param {string | null} token
     * @param {(loaded: number) => void} onSent
     * @param {AbortSignal} [signal]
     * @returns {Promise<InputRef>}
     */
    _put(blob: Blob, sha256: string | null, token: string | null, onSent: (loaded: number) => void, signal?: AbortSignal): Promise<InputRef>;
    /**
     * The relay's jobs (`GET /v1/jobs`), in the order the relay lists them: by job id.
     * @returns {Promise<Array<Record<string, any> & {id: string, status: string}>>}
     */
    listJobs(): Promise<Array<Record<string, any> & {
        id: string;
        status: string;
    }>>;
    /**
     * A job's manifest (`GET /v1/jobs/{id}`).
     * @param {string} jobId
     * @returns {Promise<Manifest & Record<string, any>>}
     */
    getJob(jobId: string): Promise<Manifest & Record<string, any>>;
    /**
     * Cancel a job (`DELETE /v1/jobs/{id}`).
     * @param {string} jobId
     * @returns {Promise<unknown>}
     */
    cancel(jobId: string): Promise<unknown>;
    /**
     * Mint a subscriber token for a job (`POST /v1/jobs/{id}/tokens`, needs an API key).
     * @param {string} jobId
     * @returns {Promise<string>}
     */
    mintToken(jobId: string): Promise<string>;
    /**
     * A short link code for a job (`POST /v1/jobs/{id}/links`, needs an API key that may read it): put it in a
     * page URL instead of a key or a token; `redeemLink` trades it for a read-only token of that job.
     * @param {string} jobId
     * @param {{ttl?: number, uses?: number}} [options]  seconds it is good for (default: the relay's token
     *   lifetime), and how many times it can be redeemed (default 1)
     * @returns {Promise<{code: string, job: string, expires_at: number, uses: number}>}
     */
    createLink(jobId: string, options?: {
        ttl?: number;
        uses?: number;
    }): Promise<{
        code: string;
        job: string;
        expires_at: number;
        uses: number;
    }>;
    /**
     * Trade a link code for a read-only subscriber token of its job (`POST /v1/links/{code}`, no credential).
     * A used-up, expired or unknown code fails with `RelayHttpError` code `link_not_found`.
     * @param {string} code
     * @returns {Promise<{job: string, token: string | null, expires_at: number}>}
     */
    redeemLink(code: string): Promise<{
        job: string;
        token: string | null;
        expires_at: number;
    }>;
}
export type ServerFrame = import("./frames.js").ServerFrame;
export type ClientFrame = import("./frames.js").ClientFrame;
export type Manifest = import("./subscription.js").Manifest;
export type BackoffOptions = import("./backoff.js").BackoffOptions;
export type InputRef = import("./inputs.js").InputRef;
export type InputTransport = import("./inputs.js").InputTransport;
export type UploadOptions = import("./inputs.js").UploadOptions;
export type BatchProgress = import("./inputs.js").BatchProgress;
/**
 * where `online` / `offline` events come from
 */
export type NetworkWatch = {
    target: {
        addEventListener(type: string, listener: () => void): void;
        removeEventListener(type: string, listener: () => void): void;
    };
    isOnline: () => boolean;
};
export type ClientOptions = {
    /**
     * the relay's base HTTP URL (default: the page's origin)
     */
    url?: string | undefined;
    /**
     * the websocket URL (default: `url` with ws(s): and path /v1/ws)
     */
    wsUrl?: string | undefined;
    /**
     * a job-scoped token for these jobs; called before connecting and again when the relay says it expired.
     * Without it, a client with an `apiKey` mints its own tokens (`POST /v1/jobs/{id}/tokens`) and refreshes them
     * before they expire; the key itself never goes over the websocket.
     */
    getToken?: ((context: {
        jobs: string[];
    }) => (string | null | Promise<string | null>)) | undefined;
    /**
     * sent as `Authorization: Bearer` on HTTP calls (submit, list, cancel, tokens)
     */
    apiKey?: string | undefined;
    /**
     * seconds of life asked for the tokens the client mints (default: the relay's)
     */
    tokenTtl?: number | undefined;
    /**
     * an input token (one that may
     * only upload, from `mintInputToken` on your backend) for `uploadInput` without an `apiKey`; called again
     * when the relay refuses the one in use (401)
     */
    getInputToken?: (() => (string | null | Promise<string | null>)) | undefined;
    /**
     * a WebSocket constructor (default: the global one)
     */
    WebSocket?: typeof globalThis.WebSocket | any;
    fetch?: typeof fetch | undefined;
    backoff?: import("./backoff.js").BackoffOptions | undefined;
    /**
     * ms to wait for `welcome` after opening the socket (default 10000)
     */
    connectTimeout?: number | undefined;
    /**
     * ms of silence tolerated past the relay's ping interval (default 10000)
     */
    maxServerPingDelay?: number | undefined;
    /**
     * online/offline source (default: the browser window; null: none)
     */
    network?: NetworkWatch | null | undefined;
};
export type ConnectionState = "idle" | "connecting" | "connected" | "disconnected" | "offline" | "closed";
export type ClientEvents = {
    state: ConnectionState;
    connected: {
        server: string;
        ping: number;
    };
    disconnected: {
        code: number;
        reason: string;
        reconnectIn: number | null;
    };
    /**
     * a problem of the connection; `fatal: true` when it ended every subscription (a refused key, say)
     */
    error: {
        code: string;
        message: string;
        job?: string;
        fatal?: boolean;
    };
    /**
     * the client minted a token (itself, from `apiKey`)
     */
    token: {
        jobs: string[];
        expiresAt: number | null;
    };
};
export type SubmitOptions = {
    /**
     * the job's execution policy (docs/protocol.md)
     */
    policy?: Record<string, unknown> | undefined;
    /**
     * the uploads of the input's Files and Blobs
     */
    onUploadProgress?: ((progress: BatchProgress) => void) | undefined;
    /**
     * files uploaded at a time (default 4)
     */
    uploadConcurrency?: number | undefined;
    /**
     * aborts the uploads and the submit
     */
    signal?: AbortSignal | undefined;
};
/**
 * `POST /v1/jobs` answer
 */
export type SubmitResult = {
    id: string;
    status: string;
    urls?: {
        ws?: string;
        events?: string;
        manifest?: string;
    } | undefined;
    token?: string | undefined;
};
import { RelayHttpError } from "./errors.js";
import { Emitter } from "./emitter.js";
import { Backoff } from "./backoff.js";
import { JobSubscription } from "./subscription.js";
