// A finished item of a job: bytes in hand (inline mode) or a relay media URL (URL mode), verified.

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
export async function sha256Hex(bytes) {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) return null;
  const digest = new Uint8Array(await subtle.digest("SHA-256", bytes));
  let hex = "";
  for (const byte of digest) hex += byte.toString(16).padStart(2, "0");
  return hex;
}

/** Bytes that do not match their record (size or sha256). */
export class IntegrityError extends Error {
  /**
   * @param {"bad_size" | "bad_sha256"} code
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.name = "IntegrityError";
    this.code = code;
  }
}

/**
 * Check `bytes` against `record`; returns how far it was verified.
 * @param {Uint8Array} bytes
 * @param {{size: number, sha256: string, item: number}} record
 * @returns {Promise<"sha256" | "size">}
 * @throws {IntegrityError}
 */
export async function verifyBytes(bytes, record) {
  if (bytes.byteLength !== record.size) {
    throw new IntegrityError(
      "bad_size",
      `item ${record.item}: got ${bytes.byteLength} bytes, expected ${record.size}`,
    );
  }
  const hex = await sha256Hex(/** @type {Uint8Array<ArrayBuffer>} */ (bytes));
  if (hex === null) return "size";
  if (hex !== record.sha256.toLowerCase()) {
    throw new IntegrityError("bad_sha256", `item ${record.item}: sha256 ${hex}, expected ${record.sha256}`);
  }
  return "sha256";
}

/**
 * Concatenate byte arrays.
 * @param {Uint8Array[]} parts
 * @param {number} total
 * @returns {Uint8Array}
 */
export function concatBytes(parts, total) {
  if (parts.length === 1 && parts[0].byteLength === total) return parts[0];
  const out = new Uint8Array(total);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.byteLength;
  }
  return out;
}

export class PodstreamFile {
  /**
   * @param {ItemRecord & {seq: number}} record
   * @param {{bytes?: Uint8Array, verified?: "sha256" | "size" | "none", fetch?: typeof globalThis.fetch}} source
   */
  constructor(record, source) {
    /** 0-based index of the input this file answers. */
    this.index = record.item;
    /** The client id given with the input ("" when none). */
    this.id = record.id;
    this.mime = record.mime;
    this.size = record.size;
    this.sha256 = record.sha256;
    /** The seq of the `item` record in the job's journal. */
    this.seq = record.seq;
    /** The relay's media URL for this file (HTTP Range capable), or null. */
    this.mediaUrl = record.url;
    /** How the bytes were checked: "sha256", "size" (no WebCrypto), or "none" (not fetched yet). */
    this.verified = source.verified ?? "none";
    /** @type {Blob | null} */
    this._blob = source.bytes
      ? new Blob([/** @type {Uint8Array<ArrayBuffer>} */ (source.bytes)], { type: record.mime })
      : null;
    /** @type {string | null} */
    this._objectUrl = null;
    this._fetch = source.fetch ?? globalThis.fetch?.bind(globalThis);
  }

  /** Whether the bytes are in memory (inline mode) rather than only at `mediaUrl`. */
  get inline() {
    return this._blob !== null;
  }

  /**
   * The file as a Blob of its MIME type. In URL mode the first call downloads it from `mediaUrl` and verifies it.
   * @returns {Promise<Blob>}
   */
  async blob() {
    if (this._blob) return this._blob;
    if (!this.mediaUrl) throw new Error(`item ${this.index}: no bytes and no media URL`);
    if (!this._fetch) throw new Error("no fetch() in this environment");
    const response = await this._fetch(this.mediaUrl);
    if (!response.ok) throw new Error(`item ${this.index}: GET ${this.mediaUrl} -> ${response.status}`);
    const bytes = new Uint8Array(await response.arrayBuffer());
    this.verified = await verifyBytes(bytes, { size: this.size, sha256: this.sha256, item: this.index });
    this._blob = new Blob([bytes], { type: this.mime });
    return this._blob;
  }

  /**
   * A URL a page can put in `<video src>` / `<img src>`: an object URL of the bytes (created on first use; see
   * `release()`), or the relay's media URL in URL mode.
   * @returns {string}
   */
  get url() {
    if (this._blob && typeof URL.createObjectURL === "function") {
      this._objectUrl ??= URL.createObjectURL(this._blob);
      return this._objectUrl;
    }
    if (this.mediaUrl) return this.mediaUrl;
    throw new Error(`item ${this.index}: no object URLs in this environment and no media URL`);
  }

  /** Revoke the object URL (if one was made) so the browser can free the bytes. */
  release() {
    if (this._objectUrl) URL.revokeObjectURL(this._objectUrl);
    this._objectUrl = null;
  }
}
