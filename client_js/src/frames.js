// The relay's websocket frames (docs/protocol.md, section 2): one msgpack map per binary frame, type in `t`.
// Pure functions, no I/O: the client feeds bytes in and gets validated frames out.
import { decode, encode } from "@msgpack/msgpack";

/** Close codes the relay uses. 4000-4499: reconnect (with backoff); 4500-4999: do not. */
export const CloseCode = Object.freeze({
  GOING_AWAY: 4000,
  SLOW_CONSUMER: 4001,
  PING_TIMEOUT: 4002,
  TOKEN_EXPIRED: 4003,
  TOO_MANY_CONNECTIONS: 4004,
  /** A passing storage error on the relay (EMFILE, ENOSPC, EIO): reconnect and resume. */
  TRY_AGAIN: 4005,
  MALFORMED_FRAME: 4500,
  UNAUTHORIZED: 4501,
  FRAME_TOO_LARGE: 4502,
  TOO_MANY_SUBSCRIPTIONS: 4503,
  ORIGIN_NOT_ALLOWED: 4504,
});

/**
 * Whether a websocket close code means "do not reconnect".
 * @param {number} code
 * @returns {boolean}
 */
export function isTerminalClose(code) {
  return code >= 4500 && code <= 4999;
}

/** A frame from the relay that does not follow docs/protocol.md. */
export class FrameError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = "FrameError";
  }
}

/**
 * @typedef {{t: "welcome", v: number, server: string, ping: number}} WelcomeFrame
 * @typedef {{t: "subscribed", job: string, head: number, status: string, recovered: boolean,
 *   expected_items?: number | null}} SubscribedFrame  `expected_items`: the items the job's input asks for
 *   (counted at submit), nil when the relay does not know (an attached job; older relays omit it)
 * @typedef {{t: "ev", job: string, seq: number, k: RecordKind, [field: string]: unknown}} EvFrame
 * @typedef {{t: "chunk", job: string, seq: number, item: number, off: number, data: Uint8Array, last: boolean}} ChunkFrame
 * @typedef {{t: "ping", n: number}} PingFrame
 * @typedef {{t: "err", code: string, message: string, job?: string}} ErrFrame
 * @typedef {{t: "bye", code: number, reason: string}} ByeFrame
 * @typedef {WelcomeFrame | SubscribedFrame | EvFrame | ChunkFrame | PingFrame | ErrFrame | ByeFrame} ServerFrame
 * @typedef {"status" | "progress" | "item" | "error" | "result" | "done"} RecordKind
 *
 * @typedef {{t: "auth", token: string}} AuthFrame
 * @typedef {{t: "sub", job: string, from: number, inline: boolean}} SubFrame
 * @typedef {{t: "unsub", job: string}} UnsubFrame
 * @typedef {{t: "pong", n: number}} PongFrame
 * @typedef {AuthFrame | SubFrame | UnsubFrame | PongFrame} ClientFrame
 */

/**
 * Encode a client frame as the bytes of one binary websocket message.
 * @param {ClientFrame} frame
 * @returns {Uint8Array}
 */
export function encodeFrame(frame) {
  return encode(frame);
}

/**
 * @param {Record<string, unknown>} map
 * @param {string} key
 * @param {string} type
 * @returns {void}
 */
function need(map, key, type) {
  const value = map[key];
  const ok =
    type === "int"
      ? Number.isSafeInteger(value) && /** @type {number} */ (value) >= 0
      : type === "number"
        ? typeof value === "number" && Number.isFinite(value)
        : type === "bin"
          ? value instanceof Uint8Array
          : typeof value === type;
  if (!ok) {
    throw new FrameError(`${String(map.t)} frame: field ${key} must be ${type}, got ${describe(value)}`);
  }
}

/** @param {unknown} value */
function describe(value) {
  if (value === null) return "nil";
  if (value instanceof Uint8Array) return "bin";
  if (Array.isArray(value)) return "array";
  return typeof value;
}

/**
 * Decode and validate one frame from the relay.
 * @param {ArrayBuffer | ArrayBufferView} bytes the binary message
 * @returns {ServerFrame}
 * @throws {FrameError} when the bytes are not a msgpack map of a known type with the documented fields
 */
export function decodeFrame(bytes) {
  /** @type {unknown} */
  let value;
  try {
    value = decode(bytes);
  } catch (err) {
    throw new FrameError(`not msgpack: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value) || value instanceof Uint8Array) {
    throw new FrameError(`frame is not a map (${describe(value)})`);
  }
  const map = /** @type {Record<string, unknown>} */ (value);
  switch (map.t) {
    case "welcome":
      need(map, "ping", "number");
      break;
    case "subscribed":
      need(map, "job", "string");
      need(map, "head", "int");
      need(map, "recovered", "boolean");
      if (map.expected_items != null) need(map, "expected_items", "int");
      break;
    case "ev":
      need(map, "job", "string");
      need(map, "seq", "int");
      // A kind this client does not know (a newer relay) is not malformed: the subscription reports it and
      // moves its cursor past it, as the protocol asks of consumers.
      need(map, "k", "string");
      break;
    case "chunk":
      need(map, "job", "string");
      need(map, "seq", "int");
      need(map, "item", "int");
      need(map, "off", "int");
      need(map, "data", "bin");
      need(map, "last", "boolean");
      break;
    case "ping":
      need(map, "n", "number");
      break;
    case "err":
      need(map, "code", "string");
      break;
    case "bye":
      need(map, "code", "int");
      break;
    default:
      throw new FrameError(
        `unknown frame type ${describe(map.t) === "string" ? String(map.t) : describe(map.t)}`,
      );
  }
  return /** @type {ServerFrame} */ (/** @type {unknown} */ (map));
}
