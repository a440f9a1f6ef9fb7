/**
 * @typedef {object} ItemRecord  the fields of an `item` journal record
 * @property {number} item   0-based index of the input
 * @property {string} id     the client id of the item ("" when none was given)
 * @property {string} mime
 * @property {number} size   bytes
 * @property {string} sha256 hex
 * @property {string | null} url  the relay's media URL for it (absolute), when known
 */
/**
 * Hex sha256 of `bytes` with WebCrypto, or null where WebCrypto is not available (a page served over plain
 * http from a host other than localhost is not a secure context, and has no `crypto.subtle`).
 * @param {BufferSource} bytes
 * @returns {Promise<string | null>}
 */
export function sha256Hex(bytes: BufferSource): Promise<string | null>;
/**
 * Check `bytes` against `record`; returns how far it was verified.
 * @param {Uint8Array} bytes
 * @param {{size: number, sha256: string, item: number}} record
 * @returns {Promise<"sha256" | "size">}
 * @throws {IntegrityError}
 */
export function verifyBytes(bytes: Uint8Array, record: {
    size: number;
    sha256: string;
    item: number;
}): Promise<"sha256" | "size">;
/**
 * Concatenate byte arrays.
 * @param {Uint8Array[]} parts
 * @param {number} total
 * @returns {Uint8Array}
 */
export function concatBytes(parts: Uint8Array[], total: number): Uint8Array;
/** Bytes that do not match their record (size or sha256). */
export class IntegrityError extends Error {
    /**
     * @param {"bad_size" | "bad_sha256"} code
     * @param {string} message
     */
    constructor(code: "bad_size" | "bad_sha256", message: string);
    code: "bad_size" | "bad_sha256";
}
export class PodstreamFile {
    /**
     * @param {ItemRecord & {seq: number}} record
     * @param {{bytes?: Uint8Array, verified?: "sha256" | "size" | "none", fetch?: typeof globalThis.fetch}} source
     */
    constructor(record: ItemRecord & {
        seq: number;
    }, source: {
        bytes?: Uint8Array;
        verified?: "sha256" | "size" | "none";
        fetch?: typeof globalThis.fetch;
    });
    /** 0-based index of the input this file answers. */
    index: number;
    /** The client id given with the input ("" when none). */
    id: string;
    mime: string;
    size: number;
    sha256: string;
    /** The seq of the `item` record in the job's journal. */
    seq: number;
    /** The relay's media URL for this file (HTTP Range capable), or null. */
    mediaUrl: string | null;
    /** How the bytes were checked: "sha256", "size" (no WebCrypto), or "none" (not fetched yet). */
    verified: "sha256" | "size" | "none";
    /** @type {Blob | null} */
    _blob: Blob | null;
    /** @type {string | null} */
    _objectUrl: string | null;
    _fetch: typeof fetch;
    /** Whether the bytes are in memory (inline mode) rather than only at `mediaUrl`. */
    get inline(): boolean;
    /**
     * The file as a Blob of its MIME type. In URL mode the first call downloads it from `mediaUrl` and verifies it.
     * @returns {Promise<Blob>}
     */
    blob(): Promise<Blob>;
    /**
     * A URL a page can put in `<video src>` / `<img src>`: an object URL of the bytes (created on first use; see
     * `release()`), or the relay's media URL in URL mode.
     * @returns {string}
     */
    get url(): string;
    /** Revoke the object URL (if one was made) so the browser can free the bytes. */
    release(): void;
}
/**
 * the fields of an `item` journal record
 */
export type ItemRecord = {
    /**
     * 0-based index of the input
     */
    item: number;
    /**
     * the client id of the item ("" when none was given)
     */
    id: string;
    mime: string;
    /**
     * bytes
     */
    size: number;
    /**
     * hex
     */
    sha256: string;
    /**
     * the relay's media URL for it (absolute), when known
     */
    url: string | null;
};
