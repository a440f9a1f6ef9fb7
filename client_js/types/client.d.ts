/**
 * An HTTP call to the relay failed. `message` is the relay's own sentence (its JSON error body is
 * `{"error": {"code", "message"}}`), `code` its machine-readable code (`unauthorized`, `not_found`, ...), `status`
 * the HTTP status. An answer that is not the relay's JSON (a proxy's HTML page, say) gives `code` `http_<status>`
 * and the status line as `message`.
 */
export class RelayHttpError extends Error {
    /**
     * The error of a failed answer.
     * @param {string} method
     * @param {string} path
     * @param {number} status
     * @param {string} statusText
     * @param {unknown} body  parsed JSON, or the text when it was not JSON
     * @returns {RelayHttpError}
     */
    static from(method: string, path: string, status: number, statusText: string, body: unknown): RelayHttpError;
    /**
     * @param {{status: number, code: string, message: string, method: string, path: string, body: unknown}} init
     */
    constructor({ status, code, message, method, path, body }: {
        status: number;
        code: string;
        message: string;
        method: string;
        path: string;
        body: unknown;
    });
    /** The HTTP status, e.g. 401. */
    status: number;
    /** The relay's error code, e.g. `"unauthorized"`. */
    code: string;
    /** The request, e.g. `"GET"` and `"/v1/jobs"`. */
    method: string;
    path: string;
    /** The answer's body, parsed as JSON when it was JSON. @type {unknown} */
    body: unknown;
}
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
     * @param {{method?: string, body?: unknown, token?: string | null, anonymous?: boolean}} [init]
     *   `anonymous`: send no credential (the path carries one)
     * @returns {Promise<any>}
     */
    _http(path: string, init?: {
        method?: string;
        body?: unknown;
        token?: string | null;
        anonymous?: boolean;
    }): Promise<any>;
    /**
     * Submit a job (`POST /v1/jobs`). `input` is the worker's job input (see docs/worker.md).
     * @param {Record<string, unknown>} input
     * @param {{policy?: Record<string, unknown>}} [options]
     * @returns {Promise<SubmitResult>}
     */
    submit(input: Record<string, unknown>, options?: {
        policy?: Record<string, unknown>;
    }): Promise<SubmitResult>;
    /**
     * The relay's jobs (`GET /v1/jobs`), newest first as the relay orders them.
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
import { Emitter } from "./emitter.js";
import { Backoff } from "./backoff.js";
import { JobSubscription } from "./subscription.js";
