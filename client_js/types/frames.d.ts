/**
 * Whether a websocket close code means "do not reconnect".
 * @param {number} code
 * @returns {boolean}
 */
export function isTerminalClose(code: number): boolean;
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
export function encodeFrame(frame: ClientFrame): Uint8Array;
/**
 * Decode and validate one frame from the relay.
 * @param {ArrayBuffer | ArrayBufferView} bytes the binary message
 * @returns {ServerFrame}
 * @throws {FrameError} when the bytes are not a msgpack map of a known type with the documented fields
 */
export function decodeFrame(bytes: ArrayBuffer | ArrayBufferView): ServerFrame;
/** Close codes the relay uses. 4000-4499: reconnect (with backoff); 4500-4999: do not. */
export const CloseCode: Readonly<{
    GOING_AWAY: 4000;
    SLOW_CONSUMER: 4001;
    PING_TIMEOUT: 4002;
    TOKEN_EXPIRED: 4003;
    TOO_MANY_CONNECTIONS: 4004;
    /** A passing storage error on the relay (EMFILE, ENOSPC, EIO): reconnect and resume. */
    TRY_AGAIN: 4005;
    MALFORMED_FRAME: 4500;
    UNAUTHORIZED: 4501;
    FRAME_TOO_LARGE: 4502;
    TOO_MANY_SUBSCRIPTIONS: 4503;
    ORIGIN_NOT_ALLOWED: 4504;
}>;
/** A frame from the relay that does not follow docs/protocol.md. */
export class FrameError extends Error {
    /** @param {string} message */
    constructor(message: string);
}
export type WelcomeFrame = {
    t: "welcome";
    v: number;
    server: string;
    ping: number;
};
/**
 * `expected_items`: the items the job's input asks for
 *  (counted at submit), nil when the relay does not know (an attached job; older relays omit it)
 */
export type SubscribedFrame = {
    t: "subscribed";
    job: string;
    head: number;
    status: string;
    recovered: boolean;
    expected_items?: number | null;
};
export type EvFrame = {
    t: "ev";
    job: string;
    seq: number;
    k: RecordKind;
    [field: string]: unknown;
};
export type ChunkFrame = {
    t: "chunk";
    job: string;
    seq: number;
    item: number;
    off: number;
    data: Uint8Array;
    last: boolean;
};
export type PingFrame = {
    t: "ping";
    n: number;
};
export type ErrFrame = {
    t: "err";
    code: string;
    message: string;
    job?: string;
};
export type ByeFrame = {
    t: "bye";
    code: number;
    reason: string;
};
export type ServerFrame = WelcomeFrame | SubscribedFrame | EvFrame | ChunkFrame | PingFrame | ErrFrame | ByeFrame;
export type RecordKind = "status" | "progress" | "item" | "error" | "result" | "done";
export type AuthFrame = {
    t: "auth";
    token: string;
};
export type SubFrame = {
    t: "sub";
    job: string;
    from: number;
    inline: boolean;
};
export type UnsubFrame = {
    t: "unsub";
    job: string;
};
export type PongFrame = {
    t: "pong";
    n: number;
};
export type ClientFrame = AuthFrame | SubFrame | UnsubFrame | PongFrame;
