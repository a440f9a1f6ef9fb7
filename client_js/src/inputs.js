// Staging job inputs in the relay instead of sending their bytes in the job: a File or Blob is hashed with
// WebCrypto, skipped when the relay already holds those bytes (`POST /v1/inputs/lookup`, one request for up to
// 1,000 files: a miss is no 404), else uploaded (`PUT /v1/inputs`) with byte progress. A network error or a
// 5xx is retried with backoff, asking the relay again first whether it holds the bytes (the failed try may
// have landed); a 4xx is final. A relay older than the lookup route (404/405 there) is asked per file
// (`GET /v1/inputs/{sha256}`). A job item then names the input by its `ref` ("input:<sha256>"). The HTTP
// calls are the client's (an `InputTransport`).
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
export const LOOKUP_MAX = 1000;

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
 * The relay's answer for one file's bytes if it holds them, else null: a lookup of one, or its `GET` from a
 * relay without lookups.
 * @param {InputTransport} transport
 * @param {string} sha256
 * @param {AbortSignal} [signal]
 * @returns {Promise<InputRef | null>}
 */
async function heldOne(transport, sha256, signal) {
  const found = await transport.lookup([sha256], signal);
  if (found === null) return transport.held(sha256, signal);
  return found.get(sha256) ?? null;
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
      const ask = sha256 !== null && (attempt > 0 || !options.missing);
      const held = ask ? await heldOne(transport, /** @type {string} */ (sha256), signal) : null;
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
  const concurrency = Math.max(1, options.concurrency ?? 4);
  const lookup = options.lookup;
  /** @type {Map<Blob, InputRef>} */
  const refs = new Map();
  try {
    report();
    await new Promise((resolve, reject) => {
      /** @type {Map<string, Promise<InputRef>>} one upload per content */
      const byContent = new Map();
      /** @type {Staging[]} hashed, not looked up yet */
      const ready = [];
      /** @type {Staging[]} to upload */
      const queued = [];
      let nextHash = 0;
      let hashing = 0;
      let uploading = 0;
      let lookingUp = false;
      let failed = false;
      /** @param {unknown} err */
      const fail = (err) => {
        if (failed) return;
        failed = true;
        abort.abort(err);
        reject(err);
      };
      /** @param {Blob} blob @param {InputRef} ref */
      const finish = (blob, ref) => {
        if (failed) return;
        refs.set(blob, ref);
        progress(blob, blob.size);
        done += 1;
        report();
        if (done === blobs.length) resolve(undefined);
      };
      /** @param {Blob} blob @param {string | null} sha256 @returns {Staging} */
      const staging = (blob, sha256) => {
        /** @type {(ref: InputRef) => void} */
        let settle = () => {};
        const uploaded = new Promise((resolveRef) => (settle = resolveRef));
        if (sha256 !== null) byContent.set(sha256, uploaded);
        return {
          blob,
          sha256,
          missing: false,
          resolve: (ref) => {
            settle(ref);
            finish(blob, ref);
          },
        };
      };
      /** @param {Blob} blob */
      const hashed = (blob) => (/** @type {string | null} */ sha256) => {
        hashing -= 1;
        const same = sha256 === null ? undefined : byContent.get(sha256);
        if (same) void same.then((ref) => finish(blob, ref));
        else if (sha256 === null)
          queued.push(staging(blob, null)); // no WebCrypto: no lookup either
        else ready.push(staging(blob, sha256));
        pump();
      };
      const pump = () => {
        if (failed) return;
        if (signal.aborted) return fail(signal.reason);
        while (hashing < concurrency && nextHash < blobs.length) {
          const blob = blobs[nextHash++];
          hashing += 1;
          blobSha256(blob).then(hashed(blob), fail);
        }
        const allHashed = hashing === 0 && nextHash === blobs.length;
        const short = uploading + queued.length < concurrency;
        if (!lookingUp && ready.length > 0 && (allHashed || short || ready.length >= LOOKUP_MAX)) {
          const batch = ready.splice(0, LOOKUP_MAX);
          if (!lookup) {
            queued.push(...batch); // each upload asks for its own file
          } else {
            lookingUp = true;
            lookup(
              batch.map((entry) => /** @type {string} */ (entry.sha256)),
              signal,
            ).then(
              (found) => {
                lookingUp = false;
                for (const entry of batch) {
                  const ref = found?.get(/** @type {string} */ (entry.sha256));
                  if (ref) entry.resolve(ref);
                  else queued.push({ ...entry, missing: found !== null });
                }
                pump();
              },
              (err) => {
                if (signal.aborted || !isRetryable(err)) return fail(err);
                lookingUp = false; // unanswered: each upload asks for its own file, with its retries
                queued.push(...batch);
                pump();
              },
            );
          }
        }
        while (uploading < concurrency && queued.length > 0) {
          const entry = /** @type {Staging} */ (queued.shift());
          uploading += 1;
          upload(entry.blob, {
            signal,
            sha256: entry.sha256 ?? undefined,
            missing: entry.missing,
            onProgress: (p) => progress(entry.blob, p.loaded),
          }).then((ref) => {
            uploading -= 1;
            entry.resolve(ref);
            pump();
          }, fail);
        }
      };
      pump();
    });
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
