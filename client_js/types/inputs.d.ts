/**
 * Whether `value` is a Blob (a File is one).
 * @param {unknown} value
 * @returns {value is Blob}
 */
export function isBlob(value: unknown): value is Blob;
/**
 * Hex sha256 of a Blob's bytes, or null without WebCrypto (a page on plain http, not localhost).
 * @param {Blob} blob
 * @returns {Promise<string | null>}
 */
export function blobSha256(blob: Blob): Promise<string | null>;
/**
 * Stage one file in the relay: skipped when the relay holds its bytes, else uploaded, and tried again after a
 * network error or a 5xx (up to `retries` times, `backoff` apart). Throws the relay's `RelayHttpError` for a
 * 4xx (`unsupported_media_type`, `too_large`, ...) or for the last failed try, and the signal's reason when
 * aborted.
 * @param {Blob} blob
 * @param {InputTransport} transport
 * @param {Backoff} backoff
 * @param {UploadOptions} [options]
 * @returns {Promise<InputRef>}
 */
export function uploadBlob(blob: Blob, transport: InputTransport, backoff: Backoff, options?: UploadOptions): Promise<InputRef>;
/**
 * @typedef {object} Staging  a distinct content of a batch, on its way: hashed, looked up, uploaded
 * @property {Blob} blob  the first Blob with these bytes
 * @property {string | null} sha256  null without WebCrypto
 * @property {boolean} missing  a lookup found the relay does not hold it
 * @property {(ref: InputRef) => void} resolve
 */
/**
 * The job input with each `items[].image` that is a File or Blob uploaded and replaced by its `ref`. `input`
 * itself is left as it was (returned as is when it has no Blob). The Blobs are hashed `concurrency` at a
 * time; as soon as the uploads run short of files, the hashed ones are looked up (`options.lookup`, up to
 * 1,000 in one request) and the missing ones uploaded, `concurrency` at a time, while the rest are still
 * being hashed. The same Blob twice, or two Blobs of the same bytes, are uploaded once; the first failure
 * stops the others and is thrown.
 * @param {Record<string, unknown>} input
 * @param {(blob: Blob, options: UploadOptions) => Promise<InputRef>} upload
 * @param {StageOptions} [options]
 * @returns {Promise<Record<string, unknown>>}
 */
export function stageImages(input: Record<string, unknown>, upload: (blob: Blob, options: UploadOptions) => Promise<InputRef>, options?: StageOptions): Promise<Record<string, unknown>>;
/**
 * @typedef {object} InputRef  the relay's answer for an input it holds (`PUT` or `GET /v1/inputs`)
 * @property {string} ref  `"input:<sha256>"`: put it in a job item's `image`
 * @property {string} sha256  hex
 * @property {number} bytes
 * @property {string} mime  as the relay recognised it from the bytes (`image/png`, `image/jpeg`, ...)
 * @property {string} url  an absolute, signed GET URL of the bytes (what the worker fetches)
 * @property {number} expires_at  when `url` stops working (unix seconds)
 *
 * @typedef {object} UploadProgress  one file's upload
 * @property {number} loaded  bytes sent so far (all of them once the relay holds the file)
 * @property {number} total  the file's size
 *
 * @typedef {object} UploadOptions
 * @property {(progress: UploadProgress) => void} [onProgress]
 * @property {AbortSignal} [signal]  aborts the upload and the waits between tries
 * @property {number} [retries]  tries after the first, on network errors and 5xx answers (default 5)
 * @property {string} [sha256]  the file's sha256 (hex), when known: it is not hashed again
 * @property {boolean} [missing]  the relay was just found not to hold it (a lookup of a batch): not asked again
 *   before the first try
 *
 * @typedef {object} BatchProgress  the uploads of one `submit`, all files together
 * @property {number} loaded  bytes sent so far
 * @property {number} total  bytes of all the files
 * @property {number} files  how many files (each distinct File or Blob once)
 * @property {number} done  files the relay holds now
 *
 * @typedef {object} StageOptions
 * @property {(progress: BatchProgress) => void} [onProgress]
 * @property {AbortSignal} [signal]
 * @property {number} [concurrency]  hashes and uploads at a time (default 4)
 * @property {(sha256s: string[], signal?: AbortSignal) => Promise<Map<string, InputRef> | null>} [lookup]
 *   which of these the relay holds (`InputTransport.lookup`); without it each upload asks for its own file
 *
 * @typedef {object} InputTransport  the relay's `/v1/inputs` routes, as the client reaches them
 * @property {(sha256s: string[], signal?: AbortSignal) => Promise<Map<string, InputRef> | null>} lookup
 *   the relay's answers for those of these (up to `LOOKUP_MAX`) it holds, by sha256; null when the relay has
 *   no lookup route (older than this client)
 * @property {(sha256: string, signal?: AbortSignal) => Promise<InputRef | null>} held
 *   the relay's answer for these bytes, or null when it does not hold them (one file: `GET`)
 * @property {(blob: Blob, sha256: string | null, onSent: (loaded: number) => void, signal?: AbortSignal)
 *   => Promise<InputRef>} put  upload the bytes; `onSent` is called as they go out
 */
/** The most sha256 one lookup asks about (the relay's limit). */
export const LOOKUP_MAX: 1000;
/**
 * a distinct content of a batch, on its way: hashed, looked up, uploaded
 */
export type Staging = {
    /**
     * the first Blob with these bytes
     */
    blob: Blob;
    /**
     * null without WebCrypto
     */
    sha256: string | null;
    /**
     * a lookup found the relay does not hold it
     */
    missing: boolean;
    resolve: (ref: InputRef) => void;
};
/**
 * the relay's answer for an input it holds (`PUT` or `GET /v1/inputs`)
 */
export type InputRef = {
    /**
     * `"input:<sha256>"`: put it in a job item's `image`
     */
    ref: string;
    /**
     * hex
     */
    sha256: string;
    bytes: number;
    /**
     * as the relay recognised it from the bytes (`image/png`, `image/jpeg`, ...)
     */
    mime: string;
    /**
     * an absolute, signed GET URL of the bytes (what the worker fetches)
     */
    url: string;
    /**
     * when `url` stops working (unix seconds)
     */
    expires_at: number;
};
/**
 * one file's upload
 */
export type UploadProgress = {
    /**
     * bytes sent so far (all of them once the relay holds the file)
     */
    loaded: number;
    /**
     * the file's size
     */
    total: number;
};
export type UploadOptions = {
    onProgress?: ((progress: UploadProgress) => void) | undefined;
    /**
     * aborts the upload and the waits between tries
     */
    signal?: AbortSignal | undefined;
    /**
     * tries after the first, on network errors and 5xx answers (default 5)
     */
    retries?: number | undefined;
    /**
     * the file's sha256 (hex), when known: it is not hashed again
     */
    sha256?: string | undefined;
    /**
     * the relay was just found not to hold it (a lookup of a batch): not asked again
     * before the first try
     */
    missing?: boolean | undefined;
};
/**
 * the uploads of one `submit`, all files together
 */
export type BatchProgress = {
    /**
     * bytes sent so far
     */
    loaded: number;
    /**
     * bytes of all the files
     */
    total: number;
    /**
     * how many files (each distinct File or Blob once)
     */
    files: number;
    /**
     * files the relay holds now
     */
    done: number;
};
export type StageOptions = {
    onProgress?: ((progress: BatchProgress) => void) | undefined;
    signal?: AbortSignal | undefined;
    /**
     * hashes and uploads at a time (default 4)
     */
    concurrency?: number | undefined;
    /**
     * which of these the relay holds (`InputTransport.lookup`); without it each upload asks for its own file
     */
    lookup?: ((sha256s: string[], signal?: AbortSignal) => Promise<Map<string, InputRef> | null>) | undefined;
};
/**
 * the relay's `/v1/inputs` routes, as the client reaches them
 */
export type InputTransport = {
    /**
     * the relay's answers for those of these (up to `LOOKUP_MAX`) it holds, by sha256; null when the relay has
     * no lookup route (older than this client)
     */
    lookup: (sha256s: string[], signal?: AbortSignal) => Promise<Map<string, InputRef> | null>;
    /**
     * the relay's answer for these bytes, or null when it does not hold them (one file: `GET`)
     */
    held: (sha256: string, signal?: AbortSignal) => Promise<InputRef | null>;
    /**
     * upload the bytes; `onSent` is called as they go out
     */
    put: (blob: Blob, sha256: string | null, onSent: (loaded: number) => void, signal?: AbortSignal) => Promise<InputRef>;
};
import { Backoff } from "./backoff.js";
