// A small in-process relay speaking docs/protocol.md section 2 over a real websocket on 127.0.0.1, with knobs
// for the failures the client must survive. Each job is a journal of records; subscribers are cursors over it.
// FakeInputs is its HTTP side for uploads (`/v1/inputs`) and submits, with failures of its own.
import { createHash } from "node:crypto";
import { createServer } from "node:http";
import { decode, encode } from "@msgpack/msgpack";
import { WebSocketServer } from "ws";

/** @typedef {{seq: number, k: string, [field: string]: unknown}} Rec */

export class FakeJob {
  /** @param {string} id */
  constructor(id) {
    this.id = id;
    /** @type {Rec[]} */
    this.records = [];
    /** @type {Map<number, Uint8Array>} item bytes by the seq of their item record */
    this.bytes = new Map();
    this.status = "IN_QUEUE";
    /** @type {Set<() => void>} */
    this.waiters = new Set();
  }

  get head() {
    return this.records.length;
  }

  /** @param {Omit<Rec, "seq">} record */
  append(record) {
    const rec = /** @type {Rec} */ ({ ...record, seq: this.records.length + 1 });
    if (rec.k === "status" || rec.k === "done") this.status = String(rec.status);
    this.records.push(rec);
    for (const wake of [...this.waiters]) wake();
    return rec;
  }

  /**
   * Append an item record and its bytes.
   * @param {number} item
   * @param {Uint8Array} data
   * @param {{mime?: string, id?: string, sha256?: string}} [options]
   */
  addItem(item, data, options = {}) {
    const seq = this.records.length + 1;
    this.bytes.set(seq, data);
    return this.append({
      k: "item",
      item,
      id: options.id ?? `item-${item}`,
      mime: options.mime ?? "application/octet-stream",
      size: data.byteLength,
      sha256: options.sha256 ?? createHash("sha256").update(data).digest("hex"),
      url: `/v1/jobs/${this.id}/media/${item}`,
    });
  }

  /** @returns {Promise<void>} */
  changed() {
    return new Promise((resolve) => {
      const wake = () => {
        this.waiters.delete(wake);
        resolve();
      };
      this.waiters.add(wake);
    });
  }
}

/**
 * Deterministic pseudo-random bytes.
 * @param {number} size
 * @param {number} seed
 */
export function bytesOf(size, seed) {
  const out = new Uint8Array(size);
  let x = seed * 2654435761 + 1;
  for (let i = 0; i < size; i += 1) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

/**
 * A finished job of `n` items of the given sizes, with progress records between them.
 * @param {string} id
 * @param {number[]} sizes
 */
export function finishedJob(id, sizes) {
  const job = new FakeJob(id);
  job.append({ k: "status", status: "IN_PROGRESS" });
  sizes.forEach((size, item) => {
    job.append({ k: "progress", item, step: 1, steps: 2 });
    job.append({ k: "progress", item, step: 2, steps: 2 });
    job.addItem(item, bytesOf(size, item + 1), { mime: "video/mp4" });
  });
  job.append({ k: "done", status: "COMPLETED", items: sizes.length, errors: 0 });
  return job;
}

/**
 * @typedef {object} FakeRelayOptions
 * @property {number} [ping]  seconds between pings announced in welcome (default 25)
 * @property {number} [chunkSize]  bytes per chunk frame (default 65536)
 * @property {(token: string) => boolean} [checkToken]  when set, the first frame must be `auth` with a token it accepts
 */

export class FakeRelay {
  /** @param {FakeRelayOptions} [options] */
  constructor(options = {}) {
    /** @type {Map<string, FakeJob>} */
    this.jobs = new Map();
    this.ping = options.ping ?? 25;
    this.chunkSize = options.chunkSize ?? 65536;
    this.checkToken = options.checkToken;
    /** Every client frame received, in order, with the connection number. @type {Array<{conn: number, frame: any}>} */
    this.received = [];
    this.connections = 0;
    /** Frames to send before acting on `fault` (counted per connection). */
    /** @type {{afterFrames: number, action: "drop" | {bye: number}, times: number} | null} */
    this.fault = null;
    /** Stop sending anything (pings included) after welcome: the client's watchdog must notice. */
    this.silent = false;
    /** Send pings at this interval in ms (0: never). */
    this.pingEveryMs = 0;
    /** @type {Set<import("ws").WebSocket>} */
    this.sockets = new Set();
    this.wss = new WebSocketServer({ host: "127.0.0.1", port: 0, path: "/v1/ws", perMessageDeflate: false });
    this.wss.on("connection", (ws) => this._connection(ws));
  }

  /** @returns {Promise<string>} the websocket URL */
  async listen() {
    await new Promise((resolve) => this.wss.once("listening", resolve));
    const address = /** @type {import("node:net").AddressInfo} */ (this.wss.address());
    return `ws://127.0.0.1:${address.port}/v1/ws`;
  }

  /** @param {FakeJob} job */
  add(job) {
    this.jobs.set(job.id, job);
    return job;
  }

  /** Close every connection abruptly (a network drop). */
  dropAll() {
    for (const ws of this.sockets) ws.terminate();
  }

  async close() {
    for (const ws of this.sockets) ws.terminate();
    await new Promise((resolve) => this.wss.close(() => resolve(undefined)));
  }

  /** @param {import("ws").WebSocket} ws */
  _connection(ws) {
    const conn = ++this.connections;
    this.sockets.add(ws);
    let authed = !this.checkToken;
    let sent = 0;
    let dead = false;
    /** @type {Map<string, {cancelled: boolean}>} */
    const subs = new Map();
    /** @type {ReturnType<typeof setInterval> | null} */
    let pinger = null;
    const send = (/** @type {unknown} */ frame) =>
      new Promise((resolve) => {
        if (dead) return resolve(false);
        if (this.silent && /** @type {any} */ (frame).t !== "welcome") return resolve(false);
        const fault = this.fault;
        if (
          fault &&
          fault.times > 0 &&
          sent >= fault.afterFrames &&
          /** @type {any} */ (frame).t !== "welcome"
        ) {
          fault.times -= 1;
          dead = true;
          if (fault.action === "drop") ws.terminate();
          else {
            ws.send(encode({ t: "bye", code: fault.action.bye, reason: "fault" }));
            ws.close(fault.action.bye, "fault");
          }
          return resolve(false);
        }
        sent += 1;
        ws.send(encode(frame), (err) => resolve(!err));
      });
    const welcome = () => {
      void send({ t: "welcome", v: 1, server: "fake", ping: this.ping });
      if (this.pingEveryMs > 0) {
        let n = 0;
        pinger = setInterval(() => void send({ t: "ping", n: ++n }), this.pingEveryMs);
      }
    };
    ws.on("close", () => {
      dead = true;
      this.sockets.delete(ws);
      if (pinger) clearInterval(pinger);
      for (const sub of subs.values()) sub.cancelled = true;
    });
    ws.on("message", (data, isBinary) => {
      if (!isBinary) return ws.close(4500, "text frame");
      /** @type {any} */
      let frame;
      try {
        frame = decode(/** @type {Buffer} */ (data));
      } catch {
        return ws.close(4500, "not msgpack");
      }
      this.received.push({ conn, frame });
      if (!authed) {
        if (frame.t !== "auth" || !this.checkToken?.(frame.token)) {
          dead = true;
          ws.send(encode({ t: "bye", code: 4501, reason: "unauthorized" }));
          return ws.close(4501, "unauthorized");
        }
        authed = true;
        return welcome();
      }
      if (frame.t === "sub") {
        const job = this.jobs.get(frame.job);
        if (!job) return void send({ t: "err", code: "not_found", message: "no such job", job: frame.job });
        const previous = subs.get(frame.job);
        if (previous) previous.cancelled = true;
        const sub = { cancelled: false };
        subs.set(frame.job, sub);
        void this._stream(job, frame.from, frame.inline !== false, sub, send);
      } else if (frame.t === "unsub") {
        const sub = subs.get(frame.job);
        if (sub) sub.cancelled = true;
        subs.delete(frame.job);
      }
    });
    if (authed) welcome();
  }

  /**
   * One cursor: records after `from`, then live ones as they are appended.
   * @param {FakeJob} job
   * @param {number} from
   * @param {boolean} inline
   * @param {{cancelled: boolean}} sub
   * @param {(frame: unknown) => Promise<unknown>} send
   */
  async _stream(job, from, inline, sub, send) {
    await send({ t: "subscribed", job: job.id, head: job.head, status: job.status, recovered: true });
    let cursor = from;
    while (!sub.cancelled) {
      if (cursor >= job.records.length) {
        if (job.records.at(-1)?.k === "done") return;
        await job.changed();
        continue;
      }
      const rec = job.records[cursor];
      cursor += 1;
      if (!(await send({ t: "ev", job: job.id, ...rec }))) return;
      const data = job.bytes.get(rec.seq);
      if (rec.k === "item" && inline && data) {
        let off = 0;
        do {
          const end = Math.min(data.byteLength, off + this.chunkSize);
          const frame = {
            t: "chunk",
            job: job.id,
            seq: rec.seq,
            item: rec.item,
            off,
            data: data.subarray(off, end),
            last: end === data.byteLength,
          };
          if (sub.cancelled || !(await send(frame))) return;
          off = end;
        } while (off < data.byteLength);
      }
    }
  }
}

/** Magic bytes of the image formats the relay accepts, as it checks them. */
const IMAGE_MAGIC = [
  ["image/png", [0x89, 0x50, 0x4e, 0x47]],
  ["image/jpeg", [0xff, 0xd8, 0xff]],
  ["image/gif", [0x47, 0x49, 0x46, 0x38]],
  ["image/bmp", [0x42, 0x4d]],
];

/**
 * @typedef {object} InputRequest  one request the fake relay's HTTP side answered
 * @property {string} method
 * @property {string} path
 * @property {number} status  0: the connection was dropped
 * @property {string | null} auth  the bearer credential
 * @property {number} bytes  body bytes received
 */

/**
 * The relay's HTTP side for inputs and submits (`/v1/inputs`, `POST /v1/jobs`), in-process on 127.0.0.1, with
 * failures to inject: `faults` are consumed by the next PUTs, in order: a status to answer without storing,
 * `"drop"` (the connection is cut mid-body), or `"store-then-503"` (stored, then 503: the retry finds it held);
 * `lookupFaults` by the next lookups (a status). `lookups: false`: a relay older than `POST
 * /v1/inputs/lookup` (405 there, as such a relay answers).
 */
export class FakeInputs {
  /** @param {{keys?: string[], lookups?: boolean}} [options]  accepted bearer credentials (none: no auth) */
  constructor(options = {}) {
    this.keys = options.keys ? new Set(options.keys) : null;
    this.lookups = options.lookups ?? true;
    /** The sha256 each lookup asked about. @type {string[][]} */
    this.lookedUp = [];
    /** @type {number[]} */
    this.lookupFaults = [];
    /** @type {Map<string, {bytes: Buffer, mime: string}>} */
    this.held = new Map();
    /** @type {InputRequest[]} */
    this.requests = [];
    /** @type {Array<number | "drop" | "store-then-503">} */
    this.faults = [];
    /** Bodies of `POST /v1/jobs`, parsed. @type {any[]} */
    this.jobs = [];
    /** Tokens minted by `POST /v1/inputs/tokens`. @type {string[]} */
    this.tokens = [];
    this.url = "";
    this.server = createServer((req, res) => void this._handle(req, res));
  }

  async listen() {
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", () => resolve(undefined)));
    const address = /** @type {import("node:net").AddressInfo} */ (this.server.address());
    this.url = `http://127.0.0.1:${address.port}`;
    return this.url;
  }

  async close() {
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(() => resolve(undefined)));
  }

  /** The requests as `"METHOD path status"` lines. */
  log() {
    return this.requests.map((r) => `${r.method} ${r.path} ${r.status}`);
  }

  /** @param {string} sha256 */
  answer(sha256) {
    const input = /** @type {{bytes: Buffer, mime: string}} */ (this.held.get(sha256));
    return {
      ref: `input:${sha256}`,
      sha256,
      bytes: input.bytes.byteLength,
      mime: input.mime,
      url: `${this.url}/v1/inputs/anonymous/${sha256}?exp=1&sig=x`,
      expires_at: Date.now() / 1000 + 3600,
    };
  }

  /**
   * @param {import("node:http").IncomingMessage} req
   * @param {import("node:http").ServerResponse} res
   */
  async _handle(req, res) {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    const auth = req.headers.authorization?.replace(/^Bearer /, "") ?? null;
    /** @type {InputRequest} */
    const record = { method: req.method ?? "", path, status: 0, auth, bytes: 0 };
    this.requests.push(record);
    /** @param {number} status @param {unknown} [body] */
    const send = (status, body) => {
      record.status = status;
      res.writeHead(status, { "content-type": "application/json" });
      res.end(body === undefined || req.method === "HEAD" ? undefined : JSON.stringify(body));
    };
    /** @param {number} status @param {string} code */
    const fail = (status, code) => send(status, { error: { code, message: `${code} (fake relay)` } });
    if (req.method === "PUT" && this.faults[0] === "drop") {
      this.faults.shift();
      req.once("data", (chunk) => {
        record.bytes += chunk.byteLength;
        req.socket.destroy();
      });
      return;
    }
    /** @type {Buffer[]} */
    const parts = [];
    for await (const chunk of req) parts.push(chunk);
    const body = Buffer.concat(parts);
    record.bytes = body.byteLength;
    if (this.keys && !(auth && (this.keys.has(auth) || this.tokens.includes(auth)))) {
      return fail(401, "unauthorized");
    }
    if (path === "/v1/inputs/lookup") {
      if (!this.lookups || req.method !== "POST") return fail(405, "method_not_allowed");
      const fault = this.lookupFaults.shift();
      if (fault !== undefined) return fail(fault, fault >= 500 ? "unavailable" : "refused");
      /** @type {string[]} */
      const asked = JSON.parse(body.toString("utf8")).sha256;
      this.lookedUp.push(asked);
      const held = Object.fromEntries(asked.filter((s) => this.held.has(s)).map((s) => [s, this.answer(s)]));
      return send(200, { held, missing: asked.filter((s) => !this.held.has(s)) });
    }
    const sha = path.match(/^\/v1\/inputs\/([0-9a-f]{64})$/)?.[1];
    if (sha && (req.method === "GET" || req.method === "HEAD")) {
      return this.held.has(sha) ? send(200, this.answer(sha)) : fail(404, "not_found");
    }
    if (path === "/v1/inputs" && req.method === "PUT") {
      const fault = this.faults.shift();
      if (typeof fault === "number") return fail(fault, fault >= 500 ? "unavailable" : "refused");
      const claimed = req.headers["x-podstream-sha256"];
      const actual = createHash("sha256").update(body).digest("hex");
      if (claimed !== undefined && !/^[0-9a-f]{64}$/.test(String(claimed))) return fail(400, "bad_sha256");
      if (claimed !== undefined && claimed !== actual) return fail(422, "sha256_mismatch");
      const mime = IMAGE_MAGIC.find(([, magic]) => magic.every((b, i) => body[i] === b))?.[0];
      if (!mime) return fail(415, "unsupported_media_type");
      const known = this.held.has(actual);
      this.held.set(actual, { bytes: body, mime: String(mime) });
      if (fault === "store-then-503") return fail(503, "unavailable");
      return send(known ? 200 : 201, this.answer(actual));
    }
    if (path === "/v1/inputs/tokens" && req.method === "POST") {
      const token = `input-token-${this.tokens.length + 1}`;
      this.tokens.push(token);
      return send(201, { token, expires_at: Date.now() / 1000 + 600 });
    }
    if (path === "/v1/jobs" && req.method === "POST") {
      this.jobs.push(JSON.parse(body.toString("utf8")));
      return send(201, { id: `job-${this.jobs.length}`, status: "IN_QUEUE" });
    }
    return fail(404, "not_found");
  }
}
