/**
 * Whether a failed call may succeed if made again: a network error (`fetch` throws a `TypeError`), a 5xx
 * other than 501, 505 and 507, or 408, 425, 429.
 * @param {unknown} err
 * @returns {boolean}
 */
export function isRetryable(err: unknown): boolean;
/** 4xx statuses that a retry may fix: a timeout, too early, too many requests. Every other 4xx is final. */
export const RETRYABLE_4XX: Set<number>;
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
