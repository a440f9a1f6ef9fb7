// PodstreamClient: one websocket to the relay carrying any number of job subscriptions; reconnects with
// exponential backoff and full jitter and resumes every job from its last applied seq; answers pings and
// watches for missing ones; refreshes the token when the relay says it expired; pauses while the browser is
// offline. Also the relay's HTTP API (submit, list, manifest, cancel, tokens).
import { Backoff } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { CloseCode, FrameError, decodeFrame, encodeFrame, isTerminalClose } from "./frames.js";
import { JobSubscription, isTerminalStatus } from "./subscription.js";

/**
 * @typedef {import("./frames.js").ServerFrame} ServerFrame
 * @typedef {import("./frames.js").ClientFrame} ClientFrame
 * @typedef {import("./subscription.js").Manifest} Manifest
 * @typedef {import("./backoff.js").BackoffOptions} BackoffOptions
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
 *   a job-scoped token for these jobs; called before connecting and again when the relay says it expired
 * @property {string} [apiKey]  sent as `Authorization: Bearer` on HTTP calls (submit, list, cancel)
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
 * @property {{code: string, message: string, job?: string}} error
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

/** An HTTP call to the relay failed. */
export class RelayHttpError extends Error {
  /**
   * @param {number} status
   * @param {string} message
   * @param {unknown} body
   */
  constructor(status, message, body) {
    super(message);
    this.name = "RelayHttpError";
    this.status = status;
    this.body = body;
  }
}

/** @returns {NetworkWatch | null} */
function defaultNetwork() {
  const g = /** @type {any} */ (globalThis);
  if (typeof g.addEventListener !== "function" || typeof g.navigator !== "object") return null;
  return { target: g, isOnline: () => g.navigator.onLine !== false };
}

/**
 * @extends {Emitter<ClientEvents & Record<string, unknown>>}
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
    this._WebSocket = options.WebSocket ?? /** @type {any} */ (globalThis).WebSocket;
    this._fetch = options.fetch ?? globalThis.fetch?.bind(globalThis);
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
      if (this.getToken && !this._tokenJobs.has(jobId)) {
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
    if (this.getToken && (this._token === null || jobs.some((job) => !this._tokenJobs.has(job)))) {
      try {
        this._token = (await this.getToken({ jobs })) ?? null;
        this._tokenJobs = new Set(jobs);
      } catch (err) {
        if (gen !== this._gen) return;
        this.emit("error", { code: "token", message: `getToken failed: ${errorMessage(err)}` });
        this._scheduleReconnect(1006, "getToken failed");
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
    this._connectTimer = setTimeout(() => {
      if (gen === this._gen) this._abandon(CloseCode.PING_TIMEOUT, "no welcome from the relay");
    }, this.connectTimeout);
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
        if (job && this.getToken && AUTH_ERROR_CODES.has(frame.code) && !this._authRetried) {
          this._authRetried = true; // once: a fresh token may allow it
          this._token = null;
          this._abandon(CloseCode.TOKEN_EXPIRED, "token refused for a job", false);
          return;
        }
        if (job) job._fail(frame.code, message);
        else this.emit("error", { code: frame.code, message });
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
      const message = reason || `connection closed by the relay with code ${code}`;
      this.emit("error", { code: String(code), message });
      for (const job of [...this._subs.values()]) job._fail(`close_${code}`, message);
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
    this._connectTimer = null;
    this._watchdog = null;
    if (this._ws) {
      this._ws.onmessage = null;
      this._ws.onopen = null;
    }
    this._ws = null;
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
   * @param {{method?: string, body?: unknown, token?: string | null}} [init]
   * @returns {Promise<any>}
   */
  async _http(path, init = {}) {
    if (!this._fetch) throw new Error("no fetch() in this environment");
    /** @type {Record<string, string>} */
    const headers = { accept: "application/json" };
    const bearer = this.apiKey ?? init.token;
    if (bearer) headers.authorization = `Bearer ${bearer}`;
    if (init.body !== undefined) headers["content-type"] = "application/json";
    const response = await this._fetch(this.resolve(path), {
      method: init.method ?? "GET",
      headers,
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
    });
    const text = await response.text();
    /** @type {any} */
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = text;
    }
    if (!response.ok) {
      const detail = body && typeof body === "object" ? (body.message ?? body.detail ?? body.error) : body;
      throw new RelayHttpError(
        response.status,
        `${init.method ?? "GET"} ${path}: ${response.status} ${detail ? String(detail) : response.statusText}`,
        body,
      );
    }
    return body;
  }

  /**
   * Submit a job (`POST /v1/jobs`). `input` is the worker's job input (see docs/worker.md).
   * @param {Record<string, unknown>} input
   * @param {{policy?: Record<string, unknown>}} [options]
   * @returns {Promise<SubmitResult>}
   */
  submit(input, options = {}) {
    return this._http("/v1/jobs", {
      method: "POST",
      body: options.policy ? { input, policy: options.policy } : { input },
    });
  }

  /**
   * The relay's jobs (`GET /v1/jobs`), newest first as the relay orders them.
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
}

/** @param {unknown} err */
function errorMessage(err) {
  return err instanceof Error ? err.message : String(err);
}
