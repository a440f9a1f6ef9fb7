// What went wrong, in one vocabulary: PROBLEMS (a code per cause and its sentence, the same as the Python
// podstream.problems, which a test compares), PodstreamError (an error with such a code), the relay's HTTP
// errors as RelayHttpError (its JSON error body, parsed), and which of them a retry may fix.

/**
 * A code per cause and the sentence that says it, with `{field}` slots (`sentence` fills them). A code names
 * the cause, not the channel that reported it: a refused key is `key_rejected` whether the relay answered
 * 401 or closed the websocket with 4501. Lower case, no final full stop: a sentence often ends a longer line.
 */
export const PROBLEMS = Object.freeze({
  relay_unreachable: "cannot reach the relay at {url}",
  runpod_unreachable: "cannot reach RunPod at {url}",
  credential_missing: "{server} needs an API key or a token, and none was given",
  key_rejected: "{server} rejected the API key",
  token_rejected: "the relay rejected the token: it is not one this relay issued",
  token_expired: "the token has expired: get a new one",
  not_allowed: "the relay does not allow this: {reason}",
  origin_not_allowed: "the relay does not take requests from this page's origin",
  job_not_found: "the relay does not know the job {job}",
  job_cancelled: "the job was cancelled: {files} arrived",
  job_ended_early: "the job ended {status}: {files} arrived",
  items_never_sent: "never sent: {items}",
  stream_drained:
    "RunPod's /stream hands each item out once, and this job's were already taken by another reader " +
    "(a relay following the job, or an earlier pull): follow the job there instead, " +
    "podstream watch {job} --relay URL",
});

/** @typedef {keyof typeof PROBLEMS} ProblemCode */
/** @typedef {"key" | "token" | null} Credential  what a request carried */

/**
 * The sentence of `code` with its slots filled: `sentence("job_not_found", {job: "j1"})`.
 * @param {ProblemCode} code
 * @param {Record<string, string | number>} [fields]
 * @returns {string}
 */
export function sentence(code, fields = {}) {
  return PROBLEMS[code].replace(/\{(\w+)\}/g, (slot, name) => (name in fields ? String(fields[name]) : slot));
}

/**
 * Items as runs: `item 4`, `items 0-29`, `items 0-2, 5, 7-9` (sorted, each once).
 * @param {Iterable<number>} items
 * @returns {string}
 */
export function itemRanges(items) {
  const ordered = [...new Set(items)].sort((a, b) => a - b);
  /** @type {number[][]} */
  const runs = [];
  for (const item of ordered) {
    const last = runs[runs.length - 1];
    if (last && item === last[last.length - 1] + 1) last.push(item);
    else runs.push([item]);
  }
  const text = runs.map((run) => (run.length === 1 ? `${run[0]}` : `${run[0]}-${run[run.length - 1]}`));
  return `${ordered.length === 1 ? "item" : "items"} ${text.join(", ")}`;
}

/**
 * What a job that ended before all its files were made comes to, in one sentence: `the job was cancelled:
 * 0 of 30 files arrived; never sent: items 0-29`. `expected` null: out of what arrived and what never came.
 * @param {string} status  the job's final status
 * @param {number} arrived  files that arrived
 * @param {number | null} expected  files the job asked for, when known
 * @param {Iterable<number>} never  the items the worker never sent
 * @returns {string}
 */
export function jobEnded(status, arrived, expected, never) {
  const missing = [...new Set(never)];
  const total = expected ?? (missing.length ? arrived + missing.length : null);
  const files =
    total === null ? `${arrived} file${arrived === 1 ? "" : "s"}` : `${arrived} of ${total} files`;
  let line =
    status === "CANCELLED"
      ? sentence("job_cancelled", { files })
      : sentence("job_ended_early", { status, files });
  if (missing.length) line += `; ${sentence("items_never_sent", { items: itemRanges(missing) })}`;
  return line;
}

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
  constructor(code, message, options) {
    super(message, options);
    this.name = "PodstreamError";
    /** The cause, e.g. `"relay_unreachable"`. */
    this.code = code;
  }
}

/**
 * The relay could not be reached at all (`fetch` failed: refused, DNS, TLS, offline). Retried like any
 * network error.
 * @param {string} url  the relay's URL
 * @param {unknown} cause  what fetch threw
 * @returns {PodstreamError}
 */
export function relayUnreachable(url, cause) {
  return new PodstreamError("relay_unreachable", sentence("relay_unreachable", { url }), { cause });
}

/**
 * The cause of a websocket the relay closed for good because of who asked (4501, 4003, 4504), as
 * `[code, sentence]`; null for other close codes.
 * @param {number} closeCode
 * @param {Credential} credential
 * @returns {[ProblemCode, string] | null}
 */
export function closedProblem(closeCode, credential) {
  if (closeCode === 4501) {
    if (credential === null)
      return ["credential_missing", sentence("credential_missing", { server: "the relay" })];
    if (credential === "key") return ["key_rejected", sentence("key_rejected", { server: "the relay" })];
    return ["token_rejected", sentence("token_rejected")];
  }
  if (closeCode === 4003) return ["token_expired", sentence("token_expired")];
  if (closeCode === 4504) return ["origin_not_allowed", sentence("origin_not_allowed")];
  return null;
}

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
export function refusal(status, relayCode, relayMessage, { credential, job = null }) {
  if (status === 401) {
    if (credential === null)
      return ["credential_missing", sentence("credential_missing", { server: "the relay" })];
    if (relayCode === "token_expired") return ["token_expired", sentence("token_expired")];
    if (credential === "token" || relayCode === "invalid_token" || relayCode === "wrong_audience")
      return ["token_rejected", sentence("token_rejected")];
    return ["key_rejected", sentence("key_rejected", { server: "the relay" })];
  }
  if (status === 403) {
    if (relayCode === "origin_not_allowed") return ["origin_not_allowed", sentence("origin_not_allowed")];
    return ["not_allowed", sentence("not_allowed", { reason: relayMessage || `HTTP ${status}` })];
  }
  if (status === 404 && job !== null && (relayCode === "not_found" || relayCode === "http_404"))
    return ["job_not_found", sentence("job_not_found", { job })];
  return null;
}

/** 4xx statuses that a retry may fix: a timeout, too early, too many requests. Every other 4xx is final. */
export const RETRYABLE_4XX = new Set([408, 425, 429]);

/** 5xx statuses that no retry fixes: not implemented, HTTP version, out of storage (a full quota). */
const FINAL_5XX = new Set([501, 505, 507]);

/**
 * Whether a failed call may succeed if made again: a network error (`relay_unreachable`, or the `TypeError`
 * fetch throws), a 5xx
 * other than 501, 505 and 507, or 408, 425, 429.
 * @param {unknown} err
 * @returns {boolean}
 */
export function isRetryable(err) {
  if (err instanceof RelayHttpError) {
    return err.status >= 500 ? !FINAL_5XX.has(err.status) : RETRYABLE_4XX.has(err.status);
  }
  if (err instanceof PodstreamError) return err.code === "relay_unreachable";
  return err instanceof TypeError;
}

/**
 * An HTTP call to the relay failed. For a cause of PROBLEMS (a refused key or token, a job the relay does
 * not know, ...) `code` is that cause (`key_rejected`, `job_not_found`) and `message` its sentence; otherwise
 * they are the relay's own (its JSON error body is `{"error": {"code", "message"}}`, e.g. `bad_input`). The
 * relay's code is always `relayCode`. An answer that is not the relay's JSON (a proxy's HTML page, say) has
 * the code `http_<status>` and the status line as `message`. `status` is the HTTP status.
 */
export class RelayHttpError extends PodstreamError {
  /**
   * @param {{status: number, code: string, message: string, method: string, path: string, body: unknown,
   *   relayCode?: string}} init
   */
  constructor({ status, code, message, method, path, body, relayCode }) {
    super(code, message);
    this.name = "RelayHttpError";
    /** The HTTP status, e.g. 401. */
    this.status = status;
    /** The relay's own error code, e.g. `"unauthorized"` (for a `code` of `key_rejected`). */
    this.relayCode = relayCode ?? code;
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
   * @param {{credential: Credential, job?: string | null}} [context]  what the request carried and the job
   *   it was about: given, a refusal gets its cause's code and sentence (`refusal`)
   * @returns {RelayHttpError}
   */
  static from(method, path, status, statusText, body, context) {
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
    const cause = context ? refusal(status, code, message, context) : null;
    if (cause)
      return new RelayHttpError({
        status,
        code: cause[0],
        message: cause[1],
        method,
        path,
        body,
        relayCode: code,
      });
    return new RelayHttpError({ status, code, message, method, path, body });
  }
}
