// PodstreamClient: one websocket to the relay carrying any number of job subscriptions; reconnects with
// exponential backoff and full jitter and resumes every job from its last applied seq; answers pings and
// watches for missing ones; refreshes the token when the relay says it expired; pauses while the browser is
// offline. Also the relay's HTTP API (submit, list, manifest, cancel, tokens) and input uploads.
import { Backoff } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { RETRYABLE_4XX, RelayHttpError, closedProblem, relayUnreachable, sentence } from "./errors.js";
import { CloseCode, FrameError, decodeFrame, encodeFrame, isTerminalClose } from "./frames.js";
import { stageImages, uploadBlob } from "./inputs.js";
import { JobSubscription, isTerminalStatus } from "./subscription.js";

export { RelayHttpError };

/**
 * @typedef {import("./frames.js").ServerFrame} ServerFrame
 * @typedef {import("./frames.js").ClientFrame} ClientFrame
 * @typedef {import("./subscription.js").Manifest} Manifest
 * @typedef {import("./backoff.js").BackoffOptions} BackoffOptions
 * @typedef {import("./inputs.js").InputRef} InputRef
 * @typedef {import("./inputs.js").InputTransport} InputTransport
 * @typedef {import("./inputs.js").UploadOptions} UploadOptions
 * @typedef {import("./inputs.js").BatchProgress} BatchProgress
 *
 * @typedef {object} NetworkWatch  where `online` / `offline` events come from
 * @property {{addEventListener(type: string, listener: () => void): void,
 *   removeEventListener(type: string, listener: () => void): void}} target
 * @property {() => boolean} isOnline
 *
 * @typedef {object} ClientOptions
 * @property {string} [url]  the relay's base HTTP URL (default: the page's origin)
 * @property {string} [wsUrl]  the websocket URL (default: `url` with ws(s): and path /v1/ws)
 * @property {(context: {jobs: string[]}) => (string | null | Promise<string | null>)} [getToken]
 *   a job-scoped token for these jobs; called before connecting and again when the relay says it expired.
 *   Without it, a client with an `apiKey` mints its own tokens (`POST /v1/jobs/{id}/tokens`) and refreshes them
 *   before they expire; the key itself never goes over the websocket.
 * @property {string} [apiKey]  sent as `Authorization: Bearer` on HTTP calls (submit, list, cancel, tokens)
 * @property {number} [tokenTtl]  seconds of life asked for the tokens the client mints (default: the relay's)
 * @property {() => (string | null | Promise<string | null>)} [getInputToken]  an input token (one that may
 *   only upload, from `mintInputToken` on your backend) for `uploadInput` without an `apiKey`; called again
 *   when the relay refuses the one in use (401)
 * @property {typeof globalThis.WebSocket | any} [WebSocket]  a WebSocket constructor (default: the global one)
 * @property {typeof globalThis.fetch} [fetch]
 * @property {BackoffOptions} [backoff]
 * @property {number} [connectTimeout]  ms to wait for `welcome` after opening the socket (default 10000)
 * @property {number} [maxServerPingDelay]  ms of silence tolerated past the relay's ping interval (default 10000)
 * @property {NetworkWatch | null} [network]  online/offline source (default: the browser window; null: none)
 *
 * @typedef {"idle" | "connecting" | "connected" | "disconnected" | "offline" | "closed"} ConnectionState
 *
 * @typedef {object} ClientEvents
 * @property {ConnectionState} state
 * @property {{server: string, ping: number}} connected
 * @property {{code: number, reason: string, reconnectIn: number | null}} disconnected
 * @property {{code: string, message: string, job?: string, fatal?: boolean}} error
 *   a problem of the connection; `fatal: true` when it ended every subscription (a refused key, say)
 * @property {{jobs: string[], expiresAt: number | null}} token  the client minted a token (itself, from `apiKey`)
 *
 * @typedef {object} SubmitOptions
 * @property {Record<string, unknown>} [policy]  the job's execution policy (docs/protocol.md)
 * @property {(progress: BatchProgress) => void} [onUploadProgress]  the uploads of the input's Files and Blobs
 * @property {number} [uploadConcurrency]  files uploaded at a time (default 4)
 * @property {AbortSignal} [signal]  aborts the uploads and the submit
 *
 * @typedef {object} SubmitResult  `POST /v1/jobs` answer
 * @property {string} id
 * @property {string} status
 * @property {{ws?: string, events?: string, manifest?: string}} [urls]
 * @property {string} [token]
 */

/** Error codes in `err` frames that mean the token does not allow the job. */
const AUTH_ERROR_CODES = new Set(["unauthorized", "forbidden", "token_expired", "expired"]);
/** `err` codes that need no action: a race between our `unsub`/`sub` and the relay ending a cursor. */
const IGNORED_ERROR_CODES = new Set(["not_subscribed", "already_subscribed"]);
const OPEN = 1;
/** A minted token is renewed when this fraction of its life is left (on the same socket: a fresh `auth` frame). */
const REFRESH_AT = 0.2;

/**
 * Whether getting a token failed for good (a refused key, an unknown job, a forbidden scope), not for now
 * (no network, a relay restarting, 5xx, 429).
 * @param {unknown} err
 */
function isTerminalTokenError(err) {
  return (
    err instanceof RelayHttpError && err.status >= 400 && err.status < 500 && !RETRYABLE_4XX.has(err.status)
  );
}

/** @returns {NetworkWatch | null} */
function defaultNetwork() {
  const g = /** @type {any} */ (globalThis);
  if (typeof g.addEventListener !== "function" || typeof g.navigator !== "object") return null;
  return { target: g, isOnline: () => g.navigator.onLine !== false };
}

/**
 * @extends {Emitter<ClientEvents>}
 */
export class PodstreamClient extends Emitter {
  /** @param {ClientOptions} [options] */
  constructor(options = {}) {
    super();
    const origin = /** @type {any} */ (globalThis).location?.origin;
    const base = options.url ?? origin;
    if (!base) throw new TypeError("PodstreamClient needs options.url outside a browser page");
    /** The relay's base HTTP URL, without a trailing slash. */
    this.url = String(base).replace(/\/+$/, "");
    const ws = new URL(`${this.url}/v1/ws`);
    ws.protocol = ws.protocol === "https:" ? "wss:" : "ws:";
    this.wsUrl = options.wsUrl ?? ws.toString();
    this.getToken = options.getToken;
    this.apiKey = options.apiKey;
    this.tokenTtl = options.tokenTtl;
    this._WebSocket = options.WebSocket ?? /** @type {any} */ (globalThis).WebSocket;
    this._fetch = options.fetch ?? globalThis.fetch?.bind(globalThis);
    this.getInputToken = options.getInputToken;
    /** The input token in use (from `getInputToken`). @type {Promise<string | null> | null} */
    this._inputToken = null;
    /** The relay answered 404/405 to `POST /v1/inputs/lookup` (older than it): files are asked for one by one. */
    this._noInputLookup = false;
    /** Browsers upload with XMLHttpRequest (fetch has no upload progress), unless given a `fetch` to use. */
    this._useXhr = options.fetch === undefined && typeof XMLHttpRequest === "function";
    this.backoff = new Backoff(options.backoff);
    this.connectTimeout = options.connectTimeout ?? 10000;
    this.maxServerPingDelay = options.maxServerPingDelay ?? 10000;
    /** @type {ConnectionState} */
    this.state = "idle";
    /** @type {Map<string, JobSubscription>} */
    this._subs = new Map();
    /** @type {any} */
    this._ws = null;
    /** Generation of the current socket; frames and closes of older sockets are ignored. */
    this._gen = 0;
    /** @type {Promise<void>} */
    this._queue = Promise.resolve();
    /** @type {string | null} */
    this._token = null;
    /** @type {Set<string>} the jobs the current token was asked for */
    this._tokenJobs = new Set();
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._retryTimer = null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._connectTimer = null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._watchdog = null;
    this._pingMs = 0;
    /** The code of the last `bye`, used for the close that follows it. @type {number | null} */
    this._byeCode = null;
    this._authRetried = false;
    /** When the token in use expires (unix ms), if known (tokens the client minted). @type {number | null} */
    this._tokenExpiresAt = null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._refreshTimer = null;
    this._network = options.network === undefined ? defaultNetwork() : options.network;
    this._onOnline = () => this._online();
    this._onOffline = () => this._offline();
    if (this._network) {
      this._network.target.addEventListener("online", this._onOnline);
      this._network.target.addEventListener("offline", this._onOffline);
    }
  }

  // ---- subscriptions -------------------------------------------------------------------------------

  /**
   * Subscribe to a job over the websocket: live, replay and late join alike. `from` is the last seq already
   * applied (0: from the start); `inline: false` delivers media URLs instead of bytes.
   * @param {string} jobId
   * @param {{from?: number, inline?: boolean}} [options]
   * @returns {JobSubscription}
   */
  subscribe(jobId, options = {}) {
    if (this.state === "closed") throw new Error("client is closed");
    this._subs.get(jobId)?.unsubscribe();
    const job = new JobSubscription(jobId, {
      ...options,
      resolveUrl: (url) => this.resolve(url),
      fetch: this._fetch,
      onClose: (sub) => this._subClosed(sub),
    });
    this._subs.set(jobId, job);
    if (this.state === "connected") {
      if (this._tokenSource() && !this._tokenJobs.has(jobId)) {
        this._reconnectNow("token does not cover a new job"); // tokens are job-scoped: get one for all jobs
      } else {
        this._sendSub(job);
      }
    } else {
      this._ensureConnected();
    }
    return job;
  }

  /**
   * Open a job for display: a finished job is rendered from its manifest alone (URL mode, no websocket, media
   * streamed by the browser with HTTP Range); an unfinished one is subscribed from the start.
   * @param {string} jobId
   * @param {{inline?: boolean}} [options]
   * @returns {Promise<JobSubscription>}
   */
  async open(jobId, options = {}) {
    const manifest = await this.getJob(jobId);
    if (!isTerminalStatus(manifest.status)) return this.subscribe(jobId, { from: 0, ...options });
    const job = new JobSubscription(jobId, {
      inline: false,
      resolveUrl: (url) => this.resolve(url),
      fetch: this._fetch,
    });
    // Applied in a later task, like frames from a socket: the caller attaches its handlers right after the await.
    setTimeout(() => job._applyManifest(manifest), 0);
    return job;
  }

  /** @param {JobSubscription} sub */
  _subClosed(sub) {
    if (this._subs.get(sub.jobId) !== sub) return;
    this._subs.delete(sub.jobId);
    // After `done` the relay ends the cursor itself; only a subscription stopped early needs an `unsub`.
    if (sub.doneRecord === null) this._send({ t: "unsub", job: sub.jobId });
  }

  /** @param {JobSubscription} job */
  _sendSub(job) {
    this._send({ t: "sub", job: job.jobId, from: job.lastSeq, inline: job.inline });
  }

  /** @param {ClientFrame} frame */
  _send(frame) {
    if (this._ws && this._ws.readyState === OPEN) this._ws.send(encodeFrame(frame));
  }

  // ---- connection ----------------------------------------------------------------------------------

  /** @param {ConnectionState} state */
  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", state);
  }

  _ensureConnected() {
    if (this.state === "closed" || this.state === "offline") return;
    if (this._ws || this._retryTimer || this.state === "connecting") return;
    if (this._subs.size === 0) return;
    void this._connect();
  }

  async _connect() {
    const gen = ++this._gen;
    this._setState("connecting");
    const jobs = [...this._subs.keys()];
    const source = this._tokenSource();
    if (source && (this._token === null || jobs.some((job) => !this._tokenJobs.has(job)))) {
      try {
        this._token = (await source.call(this, { jobs })) ?? null;
        this._tokenJobs = new Set(jobs);
      } catch (err) {
        if (gen !== this._gen) return;
        if (this._failIfTerminal(err, jobs)) return;
        this.emit("error", { code: "token", message: `getting a token failed: ${errorMessage(err)}` });
        this._scheduleReconnect(1006, "getting a token failed");
        return;
      }
      if (gen !== this._gen) return;
    }
    /** @type {any} */
    let ws;
    try {
      ws = new this._WebSocket(this.wsUrl);
    } catch (err) {
      this.emit("error", { code: "connect", message: errorMessage(err) });
      this._scheduleReconnect(1006, "cannot open websocket");
      return;
    }
    ws.binaryType = "arraybuffer";
    this._ws = ws;
    this._byeCode = null;
    // Without a token to send, a relay that needs one answers `bye 4501` after its auth timeout (10 s by
    // default): wait a little longer for that verdict than for a welcome.
    const wait = this._token ? this.connectTimeout : this.connectTimeout * 1.5;
    this._connectTimer = setTimeout(() => {
      if (gen !== this._gen) return;
      const hint = this._token ? "" : " (it may need a token: give the client an apiKey or a getToken)";
      this.emit("error", { code: "no_welcome", message: `no welcome from the relay${hint}` });
      this._abandon(CloseCode.PING_TIMEOUT, "no welcome from the relay");
    }, wait);
    ws.onopen = () => {
      if (gen === this._gen && this._token) this._send({ t: "auth", token: this._token });
    };
    ws.onmessage = (/** @type {{data: unknown}} */ event) => {
      if (gen !== this._gen) return;
      this._armWatchdog(gen);
      const data = event.data;
      this._enqueue(gen, () => this._frame(gen, data));
    };
    ws.onclose = (/** @type {{code: number, reason: string}} */ event) => {
      this._enqueue(gen, () => this._closed(gen, event.code, event.reason));
    };
    ws.onerror = () => {}; // a close event always follows
  }

  /**
   * Run `task` after every earlier frame of this client, unless its socket was abandoned meanwhile.
   * @param {number} gen
   * @param {() => void | Promise<void>} task
   */
  _enqueue(gen, task) {
    this._queue = this._queue
      .then(() => (gen === this._gen ? task() : undefined))
      .catch((err) => this.emit("error", { code: "internal", message: errorMessage(err) }));
  }

  /**
   * @param {number} gen
   * @param {unknown} data
   */
  async _frame(gen, data) {
    if (typeof data === "string") {
      this._abandon(CloseCode.MALFORMED_FRAME, "text frame from the relay", true);
      return;
    }
    /** @type {ServerFrame} */
    let frame;
    try {
      frame = decodeFrame(/** @type {ArrayBuffer} */ (data));
    } catch (err) {
      if (!(err instanceof FrameError)) throw err;
      this.emit("error", { code: "malformed_frame", message: err.message });
      this._abandon(CloseCode.MALFORMED_FRAME, "malformed frame from the relay", true);
      return;
    }
    switch (frame.t) {
      case "welcome":
        if (this._connectTimer) clearTimeout(this._connectTimer);
        this._connectTimer = null;
        this._pingMs = frame.ping * 1000;
        this.backoff.reset();
        this._setState("connected");
        this._armWatchdog(gen);
        this.emit("connected", { server: String(frame.server ?? ""), ping: frame.ping });
        for (const job of this._subs.values()) this._sendSub(job);
        this._armRefresh(gen);
        return;
      case "subscribed":
        this._subs.get(frame.job)?._subscribed(frame);
        return;
      case "ev":
      case "chunk": {
        const job = this._subs.get(frame.job);
        if (!job) return; // unsubscribed meanwhile
        const outcome = await job._frame(frame);
        if (outcome === "resync" && gen === this._gen) {
          this.emit("error", {
            code: "out_of_order",
            message: `job ${frame.job}: frame out of order, resuming`,
          });
          this._abandon(CloseCode.GOING_AWAY, "resync", true);
        }
        return;
      }
      case "ping":
        this._send({ t: "pong", n: frame.n });
        return;
      case "err": {
        const job = frame.job ? this._subs.get(frame.job) : undefined;
        const message = String(frame.message ?? frame.code);
        if (IGNORED_ERROR_CODES.has(frame.code)) return;
        if (job && frame.code === "media_unavailable") {
          job._itemUnavailable(frame.code, message); // that item fails; the job's stream goes on
          return;
        }
        if (job && this._tokenSource() && AUTH_ERROR_CODES.has(frame.code) && !this._authRetried) {
          this._authRetried = true; // once: a fresh token may allow it
          this._token = null;
          this._abandon(CloseCode.TOKEN_EXPIRED, "token refused for a job", false);
          return;
        }
        // One code per cause: the relay's `err` codes about a job are the ones its HTTP answers map to.
        let code = frame.code;
        let text = message;
        if (frame.code === "not_found" && frame.job) {
          code = "job_not_found";
          text = sentence("job_not_found", { job: frame.job });
        } else if (frame.code === "forbidden") {
          code = "not_allowed";
          text = sentence("not_allowed", { reason: message });
        }
        if (job) job._fail(code, text);
        else this.emit("error", { code, message: text });
        return;
      }
      case "bye":
        this._byeCode = frame.code;
        return;
    }
  }

  /**
   * The socket of generation `gen` closed.
   * @param {number} gen
   * @param {number} closeCode
   * @param {string} reason
   */
  _closed(gen, closeCode, reason) {
    if (gen !== this._gen) return;
    const code = this._byeCode ?? closeCode;
    this._dropSocket();
    if (this.state === "closed" || this.state === "offline") return;
    if (isTerminalClose(code)) {
      // One code for the client and each job: the cause (`token_rejected`, ...) where the close names
      // one, else `close_<code>` with the relay's reason.
      const problem = closedProblem(code, this._credential());
      const cause = problem?.[0] ?? `close_${code}`;
      const message = problem?.[1] ?? (reason || `connection closed by the relay with code ${code}`);
      this.emit("error", { code: cause, message, fatal: true });
      for (const job of [...this._subs.values()]) job._fail(cause, message);
      this._setState("disconnected");
      this.emit("disconnected", { code, reason, reconnectIn: null });
      return;
    }
    if (code === CloseCode.TOKEN_EXPIRED) this._token = null;
    else this._authRetried = this._authRetried && this.state !== "connected";
    this._scheduleReconnect(code, reason);
  }

  /**
   * @param {number} code
   * @param {string} reason
   */
  _scheduleReconnect(code, reason) {
    this._dropSocket();
    this._setState("disconnected");
    if (this._subs.size === 0) {
      this.emit("disconnected", { code, reason, reconnectIn: null });
      return;
    }
    const delay = this.backoff.next();
    this.emit("disconnected", { code, reason, reconnectIn: delay });
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this._ensureConnected();
    }, delay);
  }

  /**
   * Give up on the current socket now (its later frames and close are ignored) and reconnect.
   * @param {number} code  sent in the close frame (3000-4999)
   * @param {string} reason
   * @param {boolean} [withBackoff]  wait a backoff delay first (default true)
   */
  _abandon(code, reason, withBackoff = true) {
    const ws = this._ws;
    this._gen += 1;
    this._dropSocket();
    try {
      ws?.close(code, reason);
    } catch {
      // already closing
    }
    if (this.state === "closed" || this.state === "offline") return;
    if (withBackoff) {
      this._scheduleReconnect(code, reason);
    } else {
      this._setState("disconnected");
      this._ensureConnected();
    }
  }

  /** @param {string} reason */
  _reconnectNow(reason) {
    this._abandon(1000, reason, false);
  }

  _dropSocket() {
    if (this._connectTimer) clearTimeout(this._connectTimer);
    if (this._watchdog) clearTimeout(this._watchdog);
    if (this._refreshTimer) clearTimeout(this._refreshTimer);
    this._connectTimer = null;
    this._watchdog = null;
    this._refreshTimer = null;
    if (this._ws) {
      this._ws.onmessage = null;
      this._ws.onopen = null;
    }
    this._ws = null;
  }

  /**
   * What the connection authenticates with, as the user gave it (a token minted from the API key is the
   * key's doing).
   * @returns {import("./errors.js").Credential}
   */
  _credential() {
    if (this.apiKey) return "key";
    return this.getToken ? "token" : null;
  }

  /**
   * Where tokens come from: the caller's `getToken`, else minting with the API key, else nowhere (a relay
   * without auth, or a caller that subscribes only to jobs it has tokens for through `getToken`).
   * @returns {((context: {jobs: string[]}) => (string | null | Promise<string | null>)) | null}
   */
  _tokenSource() {
    if (this.getToken) return this.getToken;
    if (this.apiKey) return ({ jobs }) => this._mintFor(jobs);
    return null;
  }

  /**
   * Mint one token covering `jobs` with the API key, and note when it expires so it is renewed in time.
   * @param {string[]} jobs
   * @returns {Promise<string | null>}
   */
  async _mintFor(jobs) {
    if (jobs.length === 0) return null;
    const [first, ...more] = jobs;
    /** @type {Record<string, unknown>} */
    const body = more.length ? { jobs: more } : {};
    if (this.tokenTtl !== undefined) body.ttl_s = this.tokenTtl;
    /** @type {{token?: string, expires_at?: number}} */
    let answer;
    try {
      answer = await this._http(`/v1/jobs/${encodeURIComponent(first)}/tokens`, { method: "POST", body });
    } catch (err) {
      // A relay without auth (--insecure) has no tokens to give and needs none.
      if (err instanceof RelayHttpError && err.code === "no_auth") return null;
      throw err;
    }
    const expiresAt = typeof answer?.expires_at === "number" ? answer.expires_at * 1000 : null;
    this._tokenExpiresAt = expiresAt;
    this.emit("token", { jobs: [...jobs], expiresAt });
    return typeof answer?.token === "string" ? answer.token : null;
  }

  /**
   * Renew a minted token on the live socket before it expires (a fresh `auth` frame extends the connection).
   * @param {number} gen
   */
  _armRefresh(gen) {
    if (this._refreshTimer) clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    const expiresAt = this._tokenExpiresAt;
    if (this.getToken || !this.apiKey || expiresAt === null || this._token === null) return;
    const left = expiresAt - Date.now();
    const delay = Math.max(0, left * (1 - REFRESH_AT));
    this._refreshTimer = setTimeout(() => {
      this._refreshTimer = null;
      if (gen === this._gen && this.state === "connected") void this._refresh(gen);
    }, delay);
  }

  /** @param {number} gen */
  async _refresh(gen) {
    const jobs = [...this._subs.keys()];
    if (jobs.length === 0) return;
    /** @type {string | null} */
    let token;
    try {
      token = await this._mintFor(jobs);
    } catch (err) {
      if (gen !== this._gen) return;
      if (this._failIfTerminal(err, jobs)) return;
      // For now only: the relay's `bye 4003` at expiry reconnects with a token minted then.
      this.emit("error", { code: "token", message: `renewing the token failed: ${errorMessage(err)}` });
      return;
    }
    if (gen !== this._gen || token === null) return;
    this._token = token;
    this._tokenJobs = new Set(jobs);
    this._send({ t: "auth", token });
    this._armRefresh(gen);
  }

  /**
   * End every subscription when a token for `jobs` was refused for good (bad key, forbidden, unknown job).
   * @param {unknown} err
   * @param {string[]} jobs
   * @returns {boolean} whether it was terminal (and everything has been failed)
   */
  _failIfTerminal(err, jobs) {
    if (!isTerminalTokenError(err)) return false;
    const http = /** @type {RelayHttpError} */ (err);
    this._failAll(http.code, `no token for ${jobs.join(", ")}: ${http.message}`);
    return true;
  }

  /**
   * A failure no retry can fix (a refused key, a forbidden job): report it, end every subscription with it
   * (each gets a fatal `error` and its `finished` rejects), and stay disconnected.
   * @param {string} code
   * @param {string} message
   */
  _failAll(code, message) {
    if (this._retryTimer) clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const ws = this._ws;
    this._gen += 1;
    this._dropSocket();
    try {
      ws?.close(1000, "giving up");
    } catch {
      // already closing
    }
    this._token = null;
    this._tokenJobs = new Set();
    this.emit("error", { code, message, fatal: true });
    for (const job of [...this._subs.values()]) job._fail(code, message);
    this._setState("disconnected");
    this.emit("disconnected", { code: 1000, reason: message, reconnectIn: null });
  }

  /** @param {number} gen */
  _armWatchdog(gen) {
    if (this._pingMs <= 0 || this.state !== "connected") return;
    if (this._watchdog) clearTimeout(this._watchdog);
    this._watchdog = setTimeout(() => {
      if (gen === this._gen) {
        this.emit("error", {
          code: "ping_timeout",
          message: "no frame from the relay within the ping interval",
        });
        this._abandon(CloseCode.PING_TIMEOUT, "ping timeout");
      }
    }, this._pingMs + this.maxServerPingDelay);
  }

  _offline() {
    if (this.state === "closed") return;
    if (this._retryTimer) clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const ws = this._ws;
    this._gen += 1;
    this._dropSocket();
    try {
      ws?.close(1000, "offline");
    } catch {
      // already closing
    }
    this._setState("offline");
  }

  _online() {
    if (this.state !== "offline") return;
    this.backoff.reset();
    this._setState("disconnected");
    this._ensureConnected();
  }

  /** Close the connection and stop every subscription; the client cannot be used afterwards. */
  close() {
    if (this.state === "closed") return;
    for (const job of [...this._subs.values()]) job.unsubscribe();
    if (this._retryTimer) clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const ws = this._ws;
    this._gen += 1;
    this._dropSocket();
    try {
      ws?.close(1000, "client closed");
    } catch {
      // already closing
    }
    if (this._network) {
      this._network.target.removeEventListener("online", this._onOnline);
      this._network.target.removeEventListener("offline", this._onOffline);
    }
    this._setState("closed");
  }

  // ---- HTTP ----------------------------------------------------------------------------------------

  /**
   * An absolute URL for a path or URL given by the relay.
   * @param {string} url
   * @returns {string}
   */
  resolve(url) {
    return new URL(url, `${this.url}/`).toString();
  }

  /**
   * @param {string} path
   * @param {{method?: string, body?: unknown, token?: string | null, anonymous?: boolean,
   *   signal?: AbortSignal}} [init]  `anonymous`: send no credential (the path carries one)
   * @returns {Promise<any>}
   */
  async _http(path, init = {}) {
    if (!this._fetch) throw new Error("no fetch() in this environment");
    /** @type {Record<string, string>} */
    const headers = { accept: "application/json" };
    const bearer = init.anonymous ? null : (this.apiKey ?? init.token);
    if (bearer) headers.authorization = `Bearer ${bearer}`;
    if (init.body !== undefined) headers["content-type"] = "application/json";
    const method = init.method ?? "GET";
    /** @type {Response} */
    let response;
    try {
      response = await this._fetch(this.resolve(path), {
        method,
        headers,
        body: init.body === undefined ? undefined : JSON.stringify(init.body),
        signal: init.signal,
      });
    } catch (err) {
      throw unreachable(err, this.url);
    }
    const context = { credential: credentialOf(bearer, this.apiKey), job: jobOf(path) };
    return answerOf(method, path, response.status, response.statusText, await response.text(), context);
  }

  /**
   * Submit a job (`POST /v1/jobs`). `input` is the worker's job input (see docs/worker.md). An item's `image`
   * may be a File or Blob: it is uploaded first (`uploadInput`, a few at a time, each distinct content once)
   * and the job names it by its `ref`.
   * @param {Record<string, unknown>} input
   * @param {SubmitOptions} [options]
   * @returns {Promise<SubmitResult>}
   */
  async submit(input, options = {}) {
    const staged = await stageImages(input, (blob, upload) => this.uploadInput(blob, upload), {
      onProgress: options.onUploadProgress,
      concurrency: options.uploadConcurrency,
      signal: options.signal,
      lookup: (sha256s, signal) => this._inputs.lookup(sha256s, signal),
    });
    return this._http("/v1/jobs", {
      method: "POST",
      body: options.policy ? { input: staged, policy: options.policy } : { input: staged },
      signal: options.signal,
    });
  }

  // ---- inputs --------------------------------------------------------------------------------------

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
  uploadInput(blob, options = {}) {
    const { minDelay, maxDelay, random } = this.backoff;
    return uploadBlob(blob, this._inputs, new Backoff({ minDelay, maxDelay, random }), options);
  }

  /**
   * A short-lived token that may only upload inputs (`POST /v1/inputs/tokens`, with an API key that may
   * submit jobs): what a backend hands its browsers for `getInputToken`. Inputs uploaded with it belong to
   * the key that minted it, so jobs submitted with that key can use them.
   * @param {{ttl?: number}} [options]  seconds it is good for (default: the relay's)
   * @returns {Promise<{token: string, expires_at: number}>}
   */
  mintInputToken(options = {}) {
    return this._http("/v1/inputs/tokens", {
      method: "POST",
      body: options.ttl === undefined ? {} : { ttl_s: options.ttl },
    });
  }

  /** @type {InputTransport} */
  get _inputs() {
    return {
      lookup: (sha256s, signal) =>
        this._withInputToken(async (token) => {
          if (this._noInputLookup) return null;
          try {
            const answer = await this._http("/v1/inputs/lookup", {
              method: "POST",
              body: { sha256: sha256s },
              token,
              signal,
            });
            return new Map(Object.entries(answer?.held ?? {}));
          } catch (err) {
            if (!(err instanceof RelayHttpError && (err.status === 404 || err.status === 405))) throw err;
            this._noInputLookup = true; // a relay older than the route: each file is asked for (GET)
            return null;
          }
        }),
      held: (sha256, signal) =>
        this._withInputToken(async (token) => {
          try {
            return await this._http(`/v1/inputs/${sha256}`, { token, signal });
          } catch (err) {
            if (err instanceof RelayHttpError && err.status === 404) return null;
            throw err;
          }
        }),
      put: (blob, sha256, onSent, signal) =>
        this._withInputToken((token) => this._put(blob, sha256, token, onSent, signal)),
    };
  }

  /**
   * Call the relay with the credential for inputs: the API key, else a token from `getInputToken` (asked for
   * again, once, when the relay refuses it).
   * @template T
   * @param {(token: string | null) => Promise<T>} call
   * @returns {Promise<T>}
   */
  async _withInputToken(call) {
    const source = this.getInputToken;
    if (this.apiKey || !source) return call(null);
    for (let fresh = false; ; fresh = true) {
      const current = (this._inputToken ??= Promise.resolve().then(() => source()));
      /** @type {string | null} */
      let token;
      try {
        token = await current;
      } catch (err) {
        if (this._inputToken === current) this._inputToken = null;
        throw err;
      }
      try {
        return await call(token);
      } catch (err) {
        if (fresh || !(err instanceof RelayHttpError && err.status === 401)) throw err;
        if (this._inputToken === current) this._inputToken = null;
      }
    }
  }

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
  async _put(blob, sha256, token, onSent, signal) {
    const path = "/v1/inputs";
    /** @type {Record<string, string>} */
    const headers = { accept: "application/json", "content-type": blob.type || "application/octet-stream" };
    const bearer = this.apiKey ?? token;
    if (bearer) headers.authorization = `Bearer ${bearer}`;
    if (sha256) headers["x-podstream-sha256"] = sha256;
    const context = { credential: credentialOf(bearer, this.apiKey), job: null };
    if (this._useXhr) {
      const { status, statusText, text } = await xhrPut(
        this.resolve(path),
        blob,
        headers,
        onSent,
        signal,
      ).catch((err) => Promise.reject(unreachable(err, this.url)));
      return answerOf("PUT", path, status, statusText, text, context);
    }
    if (!this._fetch) throw new Error("no fetch() in this environment");
    /** @type {BodyInit} */
    let body = blob;
    if (typeof XMLHttpRequest === "undefined") {
      // Not a browser: a stream counted as it is read (browsers stream request bodies only over HTTP/2).
      body = countedBody(blob, onSent);
      headers["content-length"] = String(blob.size);
    }
    /** @type {Response} */
    let response;
    try {
      response = await this._fetch(this.resolve(path), {
        method: "PUT",
        headers,
        body,
        signal,
        ...{ duplex: "half" }, // needed for a stream body; not in TypeScript's RequestInit yet
      });
    } catch (err) {
      throw unreachable(err, this.url);
    }
    return answerOf("PUT", path, response.status, response.statusText, await response.text(), context);
  }

  /**
   * The relay's jobs (`GET /v1/jobs`), in the order the relay lists them: by job id.
   * @returns {Promise<Array<Record<string, any> & {id: string, status: string}>>}
   */
  async listJobs() {
    const body = await this._http("/v1/jobs");
    return Array.isArray(body) ? body : (body?.jobs ?? []);
  }

  /**
   * A job's manifest (`GET /v1/jobs/{id}`).
   * @param {string} jobId
   * @returns {Promise<Manifest & Record<string, any>>}
   */
  async getJob(jobId) {
    const token = this.apiKey || !this.getToken ? null : await this.getToken({ jobs: [jobId] });
    return this._http(`/v1/jobs/${encodeURIComponent(jobId)}`, { token });
  }

  /**
   * Cancel a job (`DELETE /v1/jobs/{id}`).
   * @param {string} jobId
   * @returns {Promise<unknown>}
   */
  cancel(jobId) {
    return this._http(`/v1/jobs/${encodeURIComponent(jobId)}`, { method: "DELETE" });
  }

  /**
   * Mint a subscriber token for a job (`POST /v1/jobs/{id}/tokens`, needs an API key).
   * @param {string} jobId
   * @returns {Promise<string>}
   */
  async mintToken(jobId) {
    const body = await this._http(`/v1/jobs/${encodeURIComponent(jobId)}/tokens`, {
      method: "POST",
      body: {},
    });
    return String(body.token);
  }

  /**
   * A short link code for a job (`POST /v1/jobs/{id}/links`, needs an API key that may read it): put it in a
   * page URL instead of a key or a token; `redeemLink` trades it for a read-only token of that job.
   * @param {string} jobId
   * @param {{ttl?: number, uses?: number}} [options]  seconds it is good for (default: the relay's token
   *   lifetime), and how many times it can be redeemed (default 1)
   * @returns {Promise<{code: string, job: string, expires_at: number, uses: number}>}
   */
  createLink(jobId, options = {}) {
    /** @type {Record<string, number>} */
    const body = {};
    if (options.ttl !== undefined) body.ttl_s = options.ttl;
    if (options.uses !== undefined) body.uses = options.uses;
    return this._http(`/v1/jobs/${encodeURIComponent(jobId)}/links`, { method: "POST", body });
  }

  /**
   * Trade a link code for a read-only subscriber token of its job (`POST /v1/links/{code}`, no credential).
   * A used-up, expired or unknown code fails with `RelayHttpError` code `link_not_found`.
   * @param {string} code
   * @returns {Promise<{job: string, token: string | null, expires_at: number}>}
   */
  redeemLink(code) {
    return this._http(`/v1/links/${encodeURIComponent(code)}`, { method: "POST", anonymous: true });
  }
}

/**
 * The parsed JSON of an answer, or its `RelayHttpError` when it is not a success.
 * @param {string} method
 * @param {string} path
 * @param {number} status
 * @param {string} statusText
 * @param {string} text  the body
 * @param {{credential: import("./errors.js").Credential, job?: string | null}} context  what the request
 *   carried, and the job it was about
 * @returns {any}
 */
function answerOf(method, path, status, statusText, text, context) {
  /** @type {any} */
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = text;
  }
  if (status < 200 || status > 299)
    throw RelayHttpError.from(method, path, status, statusText, body, context);
  return body;
}

/**
 * What fetch threw, as the cause a user can act on: the relay cannot be reached (an abort stays an abort).
 * @param {unknown} err
 * @param {string} url  the relay's
 * @returns {unknown}
 */
function unreachable(err, url) {
  return err instanceof TypeError ? relayUnreachable(url, err) : err;
}

/**
 * @param {string | null | undefined} bearer  the credential sent
 * @param {string | undefined} apiKey  the client's API key
 * @returns {import("./errors.js").Credential}
 */
function credentialOf(bearer, apiKey) {
  if (!bearer) return null;
  return bearer === apiKey ? "key" : "token";
}

/**
 * The job a relay path is about (`/v1/jobs/{id}` and below), for "the relay does not know the job".
 * @param {string} path
 * @returns {string | null}
 */
function jobOf(path) {
  const found = /^\/v1\/jobs\/([^/?]+)/.exec(path);
  return found ? decodeURIComponent(found[1]) : null;
}

/** Bytes per piece of an upload body streamed by fetch: the granularity of its progress. */
const UPLOAD_PIECE = 64 * 1024;

/**
 * A Blob's bytes as a stream of pieces, calling `onRead` with the count read so far as the transport pulls
 * them (about what has been sent: the stream keeps at most one piece ahead).
 * @param {Blob} blob
 * @param {(read: number) => void} onRead
 * @returns {ReadableStream<Uint8Array>}
 */
function countedBody(blob, onRead) {
  let offset = 0;
  return new ReadableStream({
    async pull(controller) {
      if (offset >= blob.size) return controller.close();
      const end = Math.min(blob.size, offset + UPLOAD_PIECE);
      controller.enqueue(new Uint8Array(await blob.slice(offset, end).arrayBuffer()));
      offset = end;
      onRead(offset);
    },
  });
}

/**
 * `PUT` a Blob with XMLHttpRequest, reporting bytes sent. A network error rejects with a `TypeError`, as
 * fetch does; an abort with the signal's reason.
 * @param {string} url
 * @param {Blob} blob
 * @param {Record<string, string>} headers
 * @param {(loaded: number) => void} onSent
 * @param {AbortSignal} [signal]
 * @returns {Promise<{status: number, statusText: string, text: string}>}
 */
function xhrPut(url, blob, headers, onSent, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const xhr = new XMLHttpRequest();
    const onAbort = () => xhr.abort();
    const settle = () => signal?.removeEventListener("abort", onAbort);
    xhr.open("PUT", url);
    for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (event) => onSent(event.loaded);
    xhr.onload = () => {
      settle();
      resolve({ status: xhr.status, statusText: xhr.statusText, text: xhr.responseText });
    };
    xhr.onerror = () => {
      settle();
      reject(new TypeError(`network error: PUT ${url}`));
    };
    xhr.onabort = () => {
      settle();
      reject(signal?.reason ?? new DOMException("upload aborted", "AbortError"));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    xhr.send(blob);
  });
}

/** @param {unknown} err */
function errorMessage(err) {
  return err instanceof Error ? err.message : String(err);
}
