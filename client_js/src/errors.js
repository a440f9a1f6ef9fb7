// The relay's HTTP errors: RelayHttpError (its JSON error body, parsed), and which of them a retry may fix.

/** 4xx statuses that a retry may fix: a timeout, too early, too many requests. Every other 4xx is final. */
export const RETRYABLE_4XX = new Set([408, 425, 429]);

/** 5xx statuses that no retry fixes: not implemented, HTTP version, out of storage (a full quota). */
const FINAL_5XX = new Set([501, 505, 507]);

/**
 * Whether a failed call may succeed if made again: a network error (`fetch` throws a `TypeError`), a 5xx
 * other than 501, 505 and 507, or 408, 425, 429.
 * @param {unknown} err
 * @returns {boolean}
 */
export function isRetryable(err) {
  if (err instanceof RelayHttpError) {
    return err.status >= 500 ? !FINAL_5XX.has(err.status) : RETRYABLE_4XX.has(err.status);
  }
  return err instanceof TypeError;
}

/**
 * An HTTP call to the relay failed. `message` is the relay's own sentence (its JSON error body is
 * `{"error": {"code", "message"}}`), `code` its machine-readable code (`unauthorized`, `not_found`, ...), `status`
 * the HTTP status. An answer that is not the relay's JSON (a proxy's HTML page, say) gives `code` `http_<status>`
 * and the status line as `message`.
 */
export class RelayHttpError extends Error {
  /**
   * @param {{status: number, code: string, message: string, method: string, path: string, body: unknown}} init
   */
  constructor({ status, code, message, method, path, body }) {
    super(message);
    this.name = "RelayHttpError";
    /** The HTTP status, e.g. 401. */
    this.status = status;
    /** The relay's error code, e.g. `"unauthorized"`. */
    this.code = code;
    /** The request, e.g. `"GET"` and `"/v1/jobs"`. */
    this.method = method;
    this.path = path;
    /** The answer's body, parsed as JSON when it was JSON. @type {unknown} */
    this.body = body;
  }

  /**
   * The error of a failed answer.
   * @param {string} method
   * @param {string} path
   * @param {number} status
   * @param {string} statusText
   * @param {unknown} body  parsed JSON, or the text when it was not JSON
   * @returns {RelayHttpError}
   */
  static from(method, path, status, statusText, body) {
    const fallback = `${status}${statusText ? ` ${statusText}` : ""}`;
    let code = `http_${status}`;
    let message = fallback;
    const b = /** @type {any} */ (body);
    const error = b && typeof b === "object" ? b.error : undefined;
    if (error && typeof error === "object") {
      if (typeof error.code === "string" && error.code) code = error.code;
      if (typeof error.message === "string" && error.message) message = error.message;
    } else if (typeof error === "string" && error) {
      code = error; // an older shape: {"error": "code", "message"?: "..."}
      message = typeof b.message === "string" && b.message ? b.message : error;
    } else if (b && typeof b === "object" && typeof b.detail === "string" && b.detail) {
      message = b.detail;
    }
    return new RelayHttpError({ status, code, message, method, path, body });
  }
}
