/** @typedef {keyof typeof PROBLEMS} ProblemCode */
/** @typedef {"key" | "token" | null} Credential  what a request carried */
/**
 * The sentence of `code` with its slots filled: `sentence("job_not_found", {job: "j1"})`.
 * @param {ProblemCode} code
 * @param {Record<string, string | number>} [fields]
 * @returns {string}
 */
export function sentence(code: ProblemCode, fields?: Record<string, string | number>): string;
/**
 * Items as runs: `item 4`, `items 0-29`, `items 0-2, 5, 7-9` (sorted, each once).
 * @param {Iterable<number>} items
 * @returns {string}
 */
export function itemRanges(items: Iterable<number>): string;
/**
 * What a job that ended before all its files were made comes to, in one sentence: `the job was cancelled:
 * 0 of 30 files arrived; never sent: items 0-29`. `expected` null: out of what arrived and what never came.
 * @param {string} status  the job's final status
 * @param {number} arrived  files that arrived
 * @param {number | null} expected  files the job asked for, when known
 * @param {Iterable<number>} never  the items the worker never sent
 * @returns {string}
 */
export function jobEnded(status: string, arrived: number, expected: number | null, never: Iterable<number>): string;
/**
 * The relay could not be reached at all (`fetch` failed: refused, DNS, TLS, offline). Retried like any
 * network error.
 * @param {string} url  the relay's URL
 * @param {unknown} cause  what fetch threw
 * @returns {PodstreamError}
 */
export function relayUnreachable(url: string, cause: unknown): PodstreamError;
/**
 * The cause of a websocket the relay closed for good because of who asked (4501, 4003, 4504), as
 * `[code, sentence]`; null for other close codes.
 * @param {number} closeCode
 * @param {Credential} credential
 * @returns {[ProblemCode, string] | null}
 */
export function closedProblem(closeCode: number, credential: Credential): [ProblemCode, string] | null;
/**
 * The cause of an HTTP refusal (401, 403, 404 for a job) as `[code, sentence]`, from the relay's own code and
 * message and what the request carried; null for other answers. A token the relay calls an unknown API key
 * (it is not shaped like a token) is still a rejected token: the sentence names what was given.
 * @param {number} status
 * @param {string} relayCode
 * @param {string} relayMessage
 * @param {{credential: Credential, job?: string | null}} context
 * @returns {[ProblemCode, string] | null}
 */
export function refusal(status: number, relayCode: string, relayMessage: string, { credential, job }: {
    credential: Credential;
    job?: string | null;
}): [ProblemCode, string] | null;
/**
 * Whether a failed call may succeed if made again: a network error (`relay_unreachable`, or the `TypeError`
 * fetch throws), a 5xx
 * other than 501, 505 and 507, or 408, 425, 429.
 * @param {unknown} err
 * @returns {boolean}
 */
export function isRetryable(err: unknown): boolean;
/**
 * A code per cause and the sentence that says it, with `{field}` slots (`sentence` fills them). A code names
 * the cause, not the channel that reported it: a refused key is `key_rejected` whether the relay answered
 * 401 or closed the websocket with 4501. Lower case, no final full stop: a sentence often ends a longer line.
 */
export const PROBLEMS: Readonly<{
    relay_unreachable: "cannot reach the relay at {url}";
    runpod_unreachable: "cannot reach RunPod at {url}";
    credential_missing: "{server} needs an API key or a token, and none was given";
    key_rejected: "{server} rejected the API key";
    token_rejected: "the relay rejected the token: it is not one this relay issued";
    token_expired: "the token has expired: get a new one";
    not_allowed: "the relay does not allow this: {reason}";
    origin_not_allowed: "the relay does not take requests from this page's origin";
    job_not_found: "the relay does not know the job {job}";
    job_cancelled: "the job was cancelled: {files} arrived";
    job_ended_early: "the job ended {status}: {files} arrived";
    items_never_sent: "never sent: {items}";
    stream_drained: string;
}>;
/**
 * An error with a code of PROBLEMS (or the relay's own, for causes the vocabulary does not name) and its
 * sentence as `message`.
 */
export class PodstreamError extends Error {
    /**
     * @param {string} code
     * @param {string} message
     * @param {{cause?: unknown}} [options]
     */
    constructor(code: string, message: string, options?: {
        cause?: unknown;
    });
    /** The cause, e.g. `"relay_unreachable"`. */
    code: string;
}
/** 4xx statuses that a retry may fix: a timeout, too early, too many requests. Every other 4xx is final. */
export const RETRYABLE_4XX: Set<number>;
/**
 * An HTTP call to the relay failed. For a cause of PROBLEMS (a refused key or token, a job the relay does
 * not know, ...) `code` is that cause (`key_rejected`, `job_not_found`) and `message` its sentence; otherwise
 * they are the relay's own (its JSON error body is `{"error": {"code", "message"}}`, e.g. `bad_input`). The
 * relay's code is always `relayCode`. An answer that is not the relay's JSON (a proxy's HTML page, say) has
 * the code `http_<status>` and the status line as `message`. `status` is the HTTP status.
 */
export class RelayHttpError extends PodstreamError {
    /**
     * The error of a failed answer.
     * @param {string} method
     * @param {string} path
     * @param {number} status
     * @param {string} statusText
     * @param {unknown} body  parsed JSON, or the text when it was not JSON
     * @param {{credential: Credential, job?: string | null}} [context]  what the request carried and the job
     *   it was about: given, a refusal gets its cause's code and sentence (`refusal`)
     * @returns {RelayHttpError}
     */
    static from(method: string, path: string, status: number, statusText: string, body: unknown, context?: {
        credential: Credential;
        job?: string | null;
    }): RelayHttpError;
    /**
     * @param {{status: number, code: string, message: string, method: string, path: string, body: unknown,
     *   relayCode?: string}} init
     */
    constructor({ status, code, message, method, path, body, relayCode }: {
        status: number;
        code: string;
        message: string;
        method: string;
        path: string;
        body: unknown;
        relayCode?: string;
    });
    /** The HTTP status, e.g. 401. */
    status: number;
    /** The relay's own error code, e.g. `"unauthorized"` (for a `code` of `key_rejected`). */
    relayCode: string;
    /** The request, e.g. `"GET"` and `"/v1/jobs"`. */
    method: string;
    path: string;
    /** The answer's body, parsed as JSON when it was JSON. @type {unknown} */
    body: unknown;
}
export type ProblemCode = keyof typeof PROBLEMS;
/**
 * what a request carried
 */
export type Credential = "key" | "token" | null;
