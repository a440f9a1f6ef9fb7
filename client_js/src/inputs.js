// Staging job inputs in the relay instead of sending their bytes in the job: a File or Blob is hashed with
// WebCrypto, skipped when the relay already holds those bytes (`GET /v1/inputs/{sha256}`), else uploaded
// (`PUT /v1/inputs`) with byte progress. A network error or a 5xx is retried with backoff, asking the relay
// again first whether it holds the bytes (the failed try may have landed); a 4xx is final. A job item then
// names the input by its `ref` ("input:<sha256>"). The HTTP calls are the client's (an `InputTransport`).
import { Backoff } from "./backoff.js";
import { isRetryable } from "./errors.js";
import { sha256Hex } from "./file.js";

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
 * @property {number} [concurrency]  uploads at a time (default 4)
 *
 * @typedef {object} InputTransport  the relay's `/v1/inputs` routes, as the client reaches them
 * @property {(sha256: string, signal?: AbortSignal) => Promise<InputRef | null>} held
 *   the relay's answer for these bytes, or null when it does not hold them
 * @property {(blob: Blob, sha256: string | null, onSent: (loaded: number) => void, signal?: AbortSignal)
 *   => Promise<InputRef>} put  upload the bytes; `onSent` is called as they go out
 */

/**
 * Whether `value` is a Blob (a File is one).
 * @param {unknown} value
 * @returns {value is Blob}
 */
export function isBlob(value) {
  return typeof Blob !== "undefined" && value instanceof Blob;
}

/**
 * Hex sha256 of a Blob's bytes, or null without WebCrypto (a page on plain http, not localhost).
 * @param {Blob} blob
 * @returns {Promise<string | null>}
 */
export async function blobSha256(blob) {
  if (!globalThis.crypto?.subtle) return null;
  return sha256Hex(await blob.arrayBuffer());
}

/**
 * Wait `ms`, or reject with the signal's reason when it aborts first.
 * @param {number} ms
 * @param {AbortSignal} [signal]
 * @returns {Promise<void>}
 */
function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

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
export async function uploadBlob(blob, transport, backoff, options = {}) {
  const { onProgress, signal } = options;
  const retries = options.retries ?? 5;
  const total = blob.size;
  let reported = -1;
  /** @param {number} loaded */
  const report = (loaded) => {
    if (loaded === reported) return;
    reported = loaded;
    onProgress?.({ loaded, total });
  };
  signal?.throwIfAborted();
  const sha256 = options.sha256 ?? (await blobSha256(blob));
  report(0);
  for (let attempt = 0; ; attempt += 1) {
    signal?.throwIfAborted();
    try {
      const held = sha256 === null ? null : await transport.held(sha256, signal);
      const answer = held ?? (await transport.put(blob, sha256, (n) => report(Math.min(n, total)), signal));
      report(total);
      return answer;
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      if (attempt >= retries || !isRetryable(err)) throw err;
      report(0);
      await sleep(backoff.next(), signal);
    }
  }
}

/**
 * The job input with each `items[].image` that is a File or Blob uploaded and replaced by its `ref`. `input`
 * itself is left as it was (returned as is when it has no Blob). The same Blob twice, or two Blobs of the same
 * bytes, are uploaded once; `concurrency` files go at a time; the first failure stops the others and is
 * thrown.
 * @param {Record<string, unknown>} input
 * @param {(blob: Blob, options: UploadOptions) => Promise<InputRef>} upload
 * @param {StageOptions} [options]
 * @returns {Promise<Record<string, unknown>>}
 */
export async function stageImages(input, upload, options = {}) {
  const items = input.items;
  if (!Array.isArray(items)) return input;
  /** @type {Blob[]} */
  const blobs = [...new Set(items.map((item) => item?.image).filter(isBlob))];
  if (blobs.length === 0) return input;
  const total = blobs.reduce((sum, blob) => sum + blob.size, 0);
  const loaded = new Map(blobs.map((blob) => [blob, 0]));
  let sent = 0;
  let done = 0;
  const report = () => options.onProgress?.({ loaded: sent, total, files: blobs.length, done });
  /** @param {Blob} blob @param {number} n */
  const progress = (blob, n) => {
    sent += n - (loaded.get(blob) ?? 0);
    loaded.set(blob, n);
    report();
  };

  const abort = new AbortController();
  const stop = () => abort.abort(options.signal?.reason);
  if (options.signal?.aborted) stop();
  options.signal?.addEventListener("abort", stop, { once: true });
  const signal = abort.signal;
  /** @type {Map<Blob, InputRef>} */
  const refs = new Map();
  /** @type {Map<string, Promise<InputRef>>} one upload per content */
  const byContent = new Map();
  let next = 0;
  const worker = async () => {
    while (next < blobs.length) {
      const blob = blobs[next++];
      signal.throwIfAborted();
      const sha256 = await blobSha256(blob);
      const same = sha256 === null ? undefined : byContent.get(sha256);
      /** @type {Promise<InputRef>} */
      let uploading;
      if (same) {
        uploading = same;
      } else {
        uploading = upload(blob, {
          signal,
          sha256: sha256 ?? undefined,
          onProgress: (p) => progress(blob, p.loaded),
        });
        if (sha256 !== null) byContent.set(sha256, uploading);
      }
      refs.set(blob, await uploading);
      progress(blob, blob.size);
      done += 1;
      report();
    }
  };
  try {
    report();
    const workers = Array.from(
      { length: Math.max(1, Math.min(options.concurrency ?? 4, blobs.length)) },
      worker,
    );
    await Promise.all(
      workers.map((running) =>
        running.catch((err) => {
          abort.abort(err);
          throw err;
        }),
      ),
    );
  } finally {
    options.signal?.removeEventListener("abort", stop);
  }
  return {
    ...input,
    items: items.map((item) => {
      const ref = isBlob(item?.image) ? refs.get(item.image) : undefined;
      return ref ? { ...item, image: ref.ref } : item;
    }),
  };
}
