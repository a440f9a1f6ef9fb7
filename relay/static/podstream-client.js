// @podstream/client, built by client_js/scripts/build.mjs: do not edit.
// src/backoff.js
var Backoff = class {
  /** @param {BackoffOptions} [options] */
  constructor(options = {}) {
    this.minDelay = options.minDelay ?? 500;
    this.maxDelay = options.maxDelay ?? 2e4;
    if (!(this.minDelay > 0) || !(this.maxDelay >= this.minDelay)) {
      throw new RangeError(`backoff needs 0 < minDelay <= maxDelay, got ${this.minDelay}, ${this.maxDelay}`);
    }
    this.random = options.random ?? Math.random;
    this.attempt = 0;
  }
  /**
   * The cap of the current attempt's delay, before jitter.
   * @returns {number}
   */
  ceiling() {
    return Math.min(this.maxDelay, this.minDelay * 2 ** this.attempt);
  }
  /**
   * The delay before the next retry, in milliseconds; advances the attempt counter.
   * @returns {number}
   */
  next() {
    const delay = Math.floor(this.random() * this.ceiling());
    this.attempt += 1;
    return delay;
  }
  /** Back to the first attempt (after a connection that worked). */
  reset() {
    this.attempt = 0;
  }
};

// src/emitter.js
var PodstreamEvent = class extends Event {
  /**
   * @param {string} type
   * @param {unknown} detail
   */
  constructor(type, detail) {
    super(type);
    this.detail = detail;
  }
};
var Emitter = class extends EventTarget {
  constructor() {
    super();
    this._listeners = /* @__PURE__ */ new Map();
  }
  /**
   * Call `handler` with the payload of every `event`; returns a function that removes it. Adding the same
   * handler twice for one event adds it once, as `addEventListener` does.
   * @template {keyof Events & string} K
   * @param {K} event
   * @param {(payload: Events[K]) => void} handler
   * @returns {() => void}
   */
  on(event, handler) {
    let byHandler = this._listeners.get(event);
    if (!byHandler) {
      byHandler = /* @__PURE__ */ new Map();
      this._listeners.set(event, byHandler);
    }
    if (!byHandler.has(handler)) {
      const listener = (e) => handler(
        /** @type {Events[K]} */
        /** @type {PodstreamEvent} */
        e.detail
      );
      byHandler.set(handler, listener);
      this.addEventListener(event, listener);
    }
    return () => this.off(event, handler);
  }
  /**
   * @template {keyof Events & string} K
   * @param {K} event
   * @param {(payload: Events[K]) => void} handler
   * @returns {void}
   */
  off(event, handler) {
    const listener = this._listeners.get(event)?.get(handler);
    if (!listener) return;
    this._listeners.get(event)?.delete(handler);
    this.removeEventListener(event, listener);
  }
  /**
   * Dispatch `event` with `payload` to its listeners, synchronously, in the order they were added. A listener
   * that throws does not stop the others or the caller: the platform reports the error as uncaught.
   * @template {keyof Events & string} K
   * @param {K} event
   * @param {Events[K]} payload
   * @returns {void}
   */
  emit(event, payload) {
    this.dispatchEvent(new PodstreamEvent(event, payload));
  }
};

// src/errors.js
var PROBLEMS = Object.freeze({
  relay_unreachable: "cannot reach the relay at {url}",
  runpod_unreachable: "cannot reach RunPod at {url}",
  credential_missing: "{server} needs an API key or a token, and none was given",
  key_rejected: "{server} rejected the API key",
  token_rejected: "the relay rejected the token: it is not one this relay issued",
  token_expired: "the token has expired: get a new one",
  not_allowed: "the relay does not allow this: {reason}",
  origin_not_allowed: "the relay does not take requests from this page's origin",
  job_not_found: "the relay does not know the job {job}",
  job_cancelled: "the job was cancelled: {files} arrived",
  job_ended_early: "the job ended {status}: {files} arrived",
  items_never_sent: "never sent: {items}",
  stream_drained: "RunPod's /stream hands each item out once, and this job's were already taken by another reader (a relay following the job, or an earlier pull): follow the job there instead, podstream watch {job} --relay URL"
});
function sentence(code, fields = {}) {
  return PROBLEMS[code].replace(/\{(\w+)\}/g, (slot, name) => name in fields ? String(fields[name]) : slot);
}
function itemRanges(items) {
  const ordered = [...new Set(items)].sort((a, b) => a - b);
  const runs = [];
  for (const item of ordered) {
    const last = runs[runs.length - 1];
    if (last && item === last[last.length - 1] + 1) last.push(item);
    else runs.push([item]);
  }
  const text = runs.map((run) => run.length === 1 ? `${run[0]}` : `${run[0]}-${run[run.length - 1]}`);
  return `${ordered.length === 1 ? "item" : "items"} ${text.join(", ")}`;
}
function jobEnded(status, arrived, expected, never) {
  const missing = [...new Set(never)];
  const total = expected ?? (missing.length ? arrived + missing.length : null);
  const files = total === null ? `${arrived} file${arrived === 1 ? "" : "s"}` : `${arrived} of ${total} files`;
  let line = status === "CANCELLED" ? sentence("job_cancelled", { files }) : sentence("job_ended_early", { status, files });
  if (missing.length) line += `; ${sentence("items_never_sent", { items: itemRanges(missing) })}`;
  return line;
}
var PodstreamError = class extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{cause?: unknown}} [options]
   */
  constructor(code, message, options) {
    super(message, options);
    this.name = "PodstreamError";
    this.code = code;
  }
};
function relayUnreachable(url, cause) {
  return new PodstreamError("relay_unreachable", sentence("relay_unreachable", { url }), { cause });
}
function closedProblem(closeCode, credential) {
  if (closeCode === 4501) {
    if (credential === null)
      return ["credential_missing", sentence("credential_missing", { server: "the relay" })];
    if (credential === "key") return ["key_rejected", sentence("key_rejected", { server: "the relay" })];
    return ["token_rejected", sentence("token_rejected")];
  }
  if (closeCode === 4003) return ["token_expired", sentence("token_expired")];
  if (closeCode === 4504) return ["origin_not_allowed", sentence("origin_not_allowed")];
  return null;
}
function refusal(status, relayCode, relayMessage, { credential, job = null }) {
  if (status === 401) {
    if (credential === null)
      return ["credential_missing", sentence("credential_missing", { server: "the relay" })];
    if (relayCode === "token_expired") return ["token_expired", sentence("token_expired")];
    if (credential === "token" || relayCode === "invalid_token" || relayCode === "wrong_audience")
      return ["token_rejected", sentence("token_rejected")];
    return ["key_rejected", sentence("key_rejected", { server: "the relay" })];
  }
  if (status === 403) {
    if (relayCode === "origin_not_allowed") return ["origin_not_allowed", sentence("origin_not_allowed")];
    return ["not_allowed", sentence("not_allowed", { reason: relayMessage || `HTTP ${status}` })];
  }
  if (status === 404 && job !== null && (relayCode === "not_found" || relayCode === "http_404"))
    return ["job_not_found", sentence("job_not_found", { job })];
  return null;
}
var RETRYABLE_4XX = /* @__PURE__ */ new Set([408, 425, 429]);
var FINAL_5XX = /* @__PURE__ */ new Set([501, 505, 507]);
function isRetryable(err) {
  if (err instanceof RelayHttpError) {
    return err.status >= 500 ? !FINAL_5XX.has(err.status) : RETRYABLE_4XX.has(err.status);
  }
  if (err instanceof PodstreamError) return err.code === "relay_unreachable";
  return err instanceof TypeError;
}
var RelayHttpError = class _RelayHttpError extends PodstreamError {
  /**
   * @param {{status: number, code: string, message: string, method: string, path: string, body: unknown,
   *   relayCode?: string}} init
   */
  constructor({ status, code, message, method, path, body, relayCode }) {
    super(code, message);
    this.name = "RelayHttpError";
    this.status = status;
    this.relayCode = relayCode ?? code;
    this.method = method;
    this.path = path;
    this.body = body;
  }
  /**
   * The error of a failed answer.
   * @param {string} method
   * @param {string} path
   * @param {number} status
   * @param {string} statusText
   * @param {unknown} body  parsed JSON, or the text when it was not JSON
   * @param {{credential: Credential, job?: string | null}} [context]  what the request carried and the job
   *   it was about: given, a refusal gets its cause's code and sentence (`refusal`)
   * @returns {RelayHttpError}
   */
  static from(method, path, status, statusText, body, context) {
    const fallback = `${status}${statusText ? ` ${statusText}` : ""}`;
    let code = `http_${status}`;
    let message = fallback;
    const b = (
      /** @type {any} */
      body
    );
    const error = b && typeof b === "object" ? b.error : void 0;
    if (error && typeof error === "object") {
      if (typeof error.code === "string" && error.code) code = error.code;
      if (typeof error.message === "string" && error.message) message = error.message;
    } else if (typeof error === "string" && error) {
      code = error;
      message = typeof b.message === "string" && b.message ? b.message : error;
    } else if (b && typeof b === "object" && typeof b.detail === "string" && b.detail) {
      message = b.detail;
    }
    const cause = context ? refusal(status, code, message, context) : null;
    if (cause)
      return new _RelayHttpError({
        status,
        code: cause[0],
        message: cause[1],
        method,
        path,
        body,
        relayCode: code
      });
    return new _RelayHttpError({ status, code, message, method, path, body });
  }
};

// node_modules/@msgpack/msgpack/dist.esm/utils/utf8.mjs
function utf8Count(str) {
  const strLength = str.length;
  let byteLength = 0;
  let pos = 0;
  while (pos < strLength) {
    let value = str.charCodeAt(pos++);
    if ((value & 4294967168) === 0) {
      byteLength++;
      continue;
    } else if ((value & 4294965248) === 0) {
      byteLength += 2;
    } else {
      if (value >= 55296 && value <= 56319) {
        if (pos < strLength) {
          const extra = str.charCodeAt(pos);
          if ((extra & 64512) === 56320) {
            ++pos;
            value = ((value & 1023) << 10) + (extra & 1023) + 65536;
          }
        }
      }
      if ((value & 4294901760) === 0) {
        byteLength += 3;
      } else {
        byteLength += 4;
      }
    }
  }
  return byteLength;
}
function utf8EncodeJs(str, output, outputOffset) {
  const strLength = str.length;
  let offset = outputOffset;
  let pos = 0;
  while (pos < strLength) {
    let value = str.charCodeAt(pos++);
    if ((value & 4294967168) === 0) {
      output[offset++] = value;
      continue;
    } else if ((value & 4294965248) === 0) {
      output[offset++] = value >> 6 & 31 | 192;
    } else {
      if (value >= 55296 && value <= 56319) {
        if (pos < strLength) {
          const extra = str.charCodeAt(pos);
          if ((extra & 64512) === 56320) {
            ++pos;
            value = ((value & 1023) << 10) + (extra & 1023) + 65536;
          }
        }
      }
      if ((value & 4294901760) === 0) {
        output[offset++] = value >> 12 & 15 | 224;
        output[offset++] = value >> 6 & 63 | 128;
      } else {
        output[offset++] = value >> 18 & 7 | 240;
        output[offset++] = value >> 12 & 63 | 128;
        output[offset++] = value >> 6 & 63 | 128;
      }
    }
    output[offset++] = value & 63 | 128;
  }
}
var sharedTextEncoder = new TextEncoder();
var TEXT_ENCODER_THRESHOLD = 50;
function utf8EncodeTE(str, output, outputOffset) {
  sharedTextEncoder.encodeInto(str, output.subarray(outputOffset));
}
function utf8Encode(str, output, outputOffset) {
  if (str.length > TEXT_ENCODER_THRESHOLD) {
    utf8EncodeTE(str, output, outputOffset);
  } else {
    utf8EncodeJs(str, output, outputOffset);
  }
}
var CHUNK_SIZE = 4096;
function utf8DecodeJs(bytes, inputOffset, byteLength) {
  let offset = inputOffset;
  const end = offset + byteLength;
  const units = [];
  let result = "";
  while (offset < end) {
    const byte1 = bytes[offset++];
    if ((byte1 & 128) === 0) {
      units.push(byte1);
    } else if ((byte1 & 224) === 192) {
      const byte2 = bytes[offset++] & 63;
      units.push((byte1 & 31) << 6 | byte2);
    } else if ((byte1 & 240) === 224) {
      const byte2 = bytes[offset++] & 63;
      const byte3 = bytes[offset++] & 63;
      units.push((byte1 & 31) << 12 | byte2 << 6 | byte3);
    } else if ((byte1 & 248) === 240) {
      const byte2 = bytes[offset++] & 63;
      const byte3 = bytes[offset++] & 63;
      const byte4 = bytes[offset++] & 63;
      let unit = (byte1 & 7) << 18 | byte2 << 12 | byte3 << 6 | byte4;
      if (unit > 65535) {
        unit -= 65536;
        units.push(unit >>> 10 & 1023 | 55296);
        unit = 56320 | unit & 1023;
      }
      units.push(unit);
    } else {
      units.push(byte1);
    }
    if (units.length >= CHUNK_SIZE) {
      result += String.fromCharCode(...units);
      units.length = 0;
    }
  }
  if (units.length > 0) {
    result += String.fromCharCode(...units);
  }
  return result;
}
var sharedTextDecoder = new TextDecoder();
var TEXT_DECODER_THRESHOLD = 200;
function utf8DecodeTD(bytes, inputOffset, byteLength) {
  const stringBytes = bytes.subarray(inputOffset, inputOffset + byteLength);
  return sharedTextDecoder.decode(stringBytes);
}
function utf8Decode(bytes, inputOffset, byteLength) {
  if (byteLength > TEXT_DECODER_THRESHOLD) {
    return utf8DecodeTD(bytes, inputOffset, byteLength);
  } else {
    return utf8DecodeJs(bytes, inputOffset, byteLength);
  }
}

// node_modules/@msgpack/msgpack/dist.esm/ExtData.mjs
var ExtData = class {
  type;
  data;
  constructor(type, data) {
    this.type = type;
    this.data = data;
  }
};

// node_modules/@msgpack/msgpack/dist.esm/DecodeError.mjs
var DecodeError = class _DecodeError extends Error {
  constructor(message) {
    super(message);
    const proto = Object.create(_DecodeError.prototype);
    Object.setPrototypeOf(this, proto);
    Object.defineProperty(this, "name", {
      configurable: true,
      enumerable: false,
      value: _DecodeError.name
    });
  }
};

// node_modules/@msgpack/msgpack/dist.esm/utils/int.mjs
var UINT32_MAX = 4294967295;
function setUint64(view, offset, value) {
  const high = value / 4294967296;
  const low = value;
  view.setUint32(offset, high);
  view.setUint32(offset + 4, low);
}
function setInt64(view, offset, value) {
  const high = Math.floor(value / 4294967296);
  const low = value;
  view.setUint32(offset, high);
  view.setUint32(offset + 4, low);
}
function getInt64(view, offset) {
  const high = view.getInt32(offset);
  const low = view.getUint32(offset + 4);
  return high * 4294967296 + low;
}
function getUint64(view, offset) {
  const high = view.getUint32(offset);
  const low = view.getUint32(offset + 4);
  return high * 4294967296 + low;
}

// node_modules/@msgpack/msgpack/dist.esm/timestamp.mjs
var EXT_TIMESTAMP = -1;
var TIMESTAMP32_MAX_SEC = 4294967296 - 1;
var TIMESTAMP64_MAX_SEC = 17179869184 - 1;
function encodeTimeSpecToTimestamp({ sec, nsec }) {
  if (sec >= 0 && nsec >= 0 && sec <= TIMESTAMP64_MAX_SEC) {
    if (nsec === 0 && sec <= TIMESTAMP32_MAX_SEC) {
      const rv = new Uint8Array(4);
      const view = new DataView(rv.buffer);
      view.setUint32(0, sec);
      return rv;
    } else {
      const secHigh = sec / 4294967296;
      const secLow = sec & 4294967295;
      const rv = new Uint8Array(8);
      const view = new DataView(rv.buffer);
      view.setUint32(0, nsec << 2 | secHigh & 3);
      view.setUint32(4, secLow);
      return rv;
    }
  } else {
    const rv = new Uint8Array(12);
    const view = new DataView(rv.buffer);
    view.setUint32(0, nsec);
    setInt64(view, 4, sec);
    return rv;
  }
}
function encodeDateToTimeSpec(date) {
  const msec = date.getTime();
  const sec = Math.floor(msec / 1e3);
  const nsec = (msec - sec * 1e3) * 1e6;
  const nsecInSec = Math.floor(nsec / 1e9);
  return {
    sec: sec + nsecInSec,
    nsec: nsec - nsecInSec * 1e9
  };
}
function encodeTimestampExtension(object) {
  if (object instanceof Date) {
    const timeSpec = encodeDateToTimeSpec(object);
    return encodeTimeSpecToTimestamp(timeSpec);
  } else {
    return null;
  }
}
function decodeTimestampToTimeSpec(data) {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  switch (data.byteLength) {
    case 4: {
      const sec = view.getUint32(0);
      const nsec = 0;
      return { sec, nsec };
    }
    case 8: {
      const nsec30AndSecHigh2 = view.getUint32(0);
      const secLow32 = view.getUint32(4);
      const sec = (nsec30AndSecHigh2 & 3) * 4294967296 + secLow32;
      const nsec = nsec30AndSecHigh2 >>> 2;
      return { sec, nsec };
    }
    case 12: {
      const sec = getInt64(view, 4);
      const nsec = view.getUint32(0);
      return { sec, nsec };
    }
    default:
      throw new DecodeError(`Unrecognized data size for timestamp (expected 4, 8, or 12): ${data.length}`);
  }
}
function decodeTimestampExtension(data) {
  const timeSpec = decodeTimestampToTimeSpec(data);
  return new Date(timeSpec.sec * 1e3 + timeSpec.nsec / 1e6);
}
var timestampExtension = {
  type: EXT_TIMESTAMP,
  encode: encodeTimestampExtension,
  decode: decodeTimestampExtension
};

// node_modules/@msgpack/msgpack/dist.esm/ExtensionCodec.mjs
var ExtensionCodec = class _ExtensionCodec {
  static defaultCodec = new _ExtensionCodec();
  // ensures ExtensionCodecType<X> matches ExtensionCodec<X>
  // this will make type errors a lot more clear
  // eslint-disable-next-line @typescript-eslint/naming-convention
  __brand;
  // built-in extensions
  builtInEncoders = [];
  builtInDecoders = [];
  // custom extensions
  encoders = [];
  decoders = [];
  constructor() {
    this.register(timestampExtension);
  }
  register({ type, encode: encode2, decode: decode2 }) {
    if (type >= 0) {
      this.encoders[type] = encode2;
      this.decoders[type] = decode2;
    } else {
      const index = -1 - type;
      this.builtInEncoders[index] = encode2;
      this.builtInDecoders[index] = decode2;
    }
  }
  tryToEncode(object, context) {
    for (let i = 0; i < this.builtInEncoders.length; i++) {
      const encodeExt = this.builtInEncoders[i];
      if (encodeExt != null) {
        const data = encodeExt(object, context);
        if (data != null) {
          const type = -1 - i;
          return new ExtData(type, data);
        }
      }
    }
    for (let i = 0; i < this.encoders.length; i++) {
      const encodeExt = this.encoders[i];
      if (encodeExt != null) {
        const data = encodeExt(object, context);
        if (data != null) {
          const type = i;
          return new ExtData(type, data);
        }
      }
    }
    if (object instanceof ExtData) {
      return object;
    }
    return null;
  }
  decode(data, type, context) {
    const decodeExt = type < 0 ? this.builtInDecoders[-1 - type] : this.decoders[type];
    if (decodeExt) {
      return decodeExt(data, type, context);
    } else {
      return new ExtData(type, data);
    }
  }
};

// node_modules/@msgpack/msgpack/dist.esm/utils/typedArrays.mjs
function isArrayBufferLike(buffer) {
  return buffer instanceof ArrayBuffer || typeof SharedArrayBuffer !== "undefined" && buffer instanceof SharedArrayBuffer;
}
function ensureUint8Array(buffer) {
  if (buffer instanceof Uint8Array) {
    return buffer;
  } else if (ArrayBuffer.isView(buffer)) {
    return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  } else if (isArrayBufferLike(buffer)) {
    return new Uint8Array(buffer);
  } else {
    return Uint8Array.from(buffer);
  }
}

// node_modules/@msgpack/msgpack/dist.esm/Encoder.mjs
var DEFAULT_MAX_DEPTH = 100;
var DEFAULT_INITIAL_BUFFER_SIZE = 2048;
var Encoder = class _Encoder {
  extensionCodec;
  context;
  useBigInt64;
  maxDepth;
  initialBufferSize;
  sortKeys;
  forceFloat32;
  ignoreUndefined;
  forceIntegerToFloat;
  pos;
  view;
  bytes;
  entered = false;
  constructor(options) {
    this.extensionCodec = options?.extensionCodec ?? ExtensionCodec.defaultCodec;
    this.context = options?.context;
    this.useBigInt64 = options?.useBigInt64 ?? false;
    this.maxDepth = options?.maxDepth ?? DEFAULT_MAX_DEPTH;
    this.initialBufferSize = options?.initialBufferSize ?? DEFAULT_INITIAL_BUFFER_SIZE;
    this.sortKeys = options?.sortKeys ?? false;
    this.forceFloat32 = options?.forceFloat32 ?? false;
    this.ignoreUndefined = options?.ignoreUndefined ?? false;
    this.forceIntegerToFloat = options?.forceIntegerToFloat ?? false;
    this.pos = 0;
    this.view = new DataView(new ArrayBuffer(this.initialBufferSize));
    this.bytes = new Uint8Array(this.view.buffer);
  }
  clone() {
    return new _Encoder({
      extensionCodec: this.extensionCodec,
      context: this.context,
      useBigInt64: this.useBigInt64,
      maxDepth: this.maxDepth,
      initialBufferSize: this.initialBufferSize,
      sortKeys: this.sortKeys,
      forceFloat32: this.forceFloat32,
      ignoreUndefined: this.ignoreUndefined,
      forceIntegerToFloat: this.forceIntegerToFloat
    });
  }
  reinitializeState() {
    this.pos = 0;
  }
  /**
   * This is almost equivalent to {@link Encoder#encode}, but it returns an reference of the encoder's internal buffer and thus much faster than {@link Encoder#encode}.
   *
   * @returns Encodes the object and returns a shared reference the encoder's internal buffer.
   */
  encodeSharedRef(object) {
    if (this.entered) {
      const instance = this.clone();
      return instance.encodeSharedRef(object);
    }
    try {
      this.entered = true;
      this.reinitializeState();
      this.doEncode(object, 1);
      return this.bytes.subarray(0, this.pos);
    } finally {
      this.entered = false;
    }
  }
  /**
   * @returns Encodes the object and returns a copy of the encoder's internal buffer.
   */
  encode(object) {
    if (this.entered) {
      const instance = this.clone();
      return instance.encode(object);
    }
    try {
      this.entered = true;
      this.reinitializeState();
      this.doEncode(object, 1);
      return this.bytes.slice(0, this.pos);
    } finally {
      this.entered = false;
    }
  }
  doEncode(object, depth) {
    if (depth > this.maxDepth) {
      throw new Error(`Too deep objects in depth ${depth}`);
    }
    if (object == null) {
      this.encodeNil();
    } else if (typeof object === "boolean") {
      this.encodeBoolean(object);
    } else if (typeof object === "number") {
      if (!this.forceIntegerToFloat) {
        this.encodeNumber(object);
      } else {
        this.encodeNumberAsFloat(object);
      }
    } else if (typeof object === "string") {
      this.encodeString(object);
    } else if (this.useBigInt64 && typeof object === "bigint") {
      this.encodeBigInt64(object);
    } else {
      this.encodeObject(object, depth);
    }
  }
  ensureBufferSizeToWrite(sizeToWrite) {
    const requiredSize = this.pos + sizeToWrite;
    if (this.view.byteLength < requiredSize) {
      this.resizeBuffer(requiredSize * 2);
    }
  }
  resizeBuffer(newSize) {
    const newBuffer = new ArrayBuffer(newSize);
    const newBytes = new Uint8Array(newBuffer);
    const newView = new DataView(newBuffer);
    newBytes.set(this.bytes);
    this.view = newView;
    this.bytes = newBytes;
  }
  encodeNil() {
    this.writeU8(192);
  }
  encodeBoolean(object) {
    if (object === false) {
      this.writeU8(194);
    } else {
      this.writeU8(195);
    }
  }
  encodeNumber(object) {
    if (!this.forceIntegerToFloat && Number.isSafeInteger(object)) {
      if (object >= 0) {
        if (object < 128) {
          this.writeU8(object);
        } else if (object < 256) {
          this.writeU8(204);
          this.writeU8(object);
        } else if (object < 65536) {
          this.writeU8(205);
          this.writeU16(object);
        } else if (object < 4294967296) {
          this.writeU8(206);
          this.writeU32(object);
        } else if (!this.useBigInt64) {
          this.writeU8(207);
          this.writeU64(object);
        } else {
          this.encodeNumberAsFloat(object);
        }
      } else {
        if (object >= -32) {
          this.writeU8(224 | object + 32);
        } else if (object >= -128) {
          this.writeU8(208);
          this.writeI8(object);
        } else if (object >= -32768) {
          this.writeU8(209);
          this.writeI16(object);
        } else if (object >= -2147483648) {
          this.writeU8(210);
          this.writeI32(object);
        } else if (!this.useBigInt64) {
          this.writeU8(211);
          this.writeI64(object);
        } else {
          this.encodeNumberAsFloat(object);
        }
      }
    } else {
      this.encodeNumberAsFloat(object);
    }
  }
  encodeNumberAsFloat(object) {
    if (this.forceFloat32) {
      this.writeU8(202);
      this.writeF32(object);
    } else {
      this.writeU8(203);
      this.writeF64(object);
    }
  }
  encodeBigInt64(object) {
    if (object >= BigInt(0)) {
      this.writeU8(207);
      this.writeBigUint64(object);
    } else {
      this.writeU8(211);
      this.writeBigInt64(object);
    }
  }
  writeStringHeader(byteLength) {
    if (byteLength < 32) {
      this.writeU8(160 + byteLength);
    } else if (byteLength < 256) {
      this.writeU8(217);
      this.writeU8(byteLength);
    } else if (byteLength < 65536) {
      this.writeU8(218);
      this.writeU16(byteLength);
    } else if (byteLength < 4294967296) {
      this.writeU8(219);
      this.writeU32(byteLength);
    } else {
      throw new Error(`Too long string: ${byteLength} bytes in UTF-8`);
    }
  }
  encodeString(object) {
    const maxHeaderSize = 1 + 4;
    const byteLength = utf8Count(object);
    this.ensureBufferSizeToWrite(maxHeaderSize + byteLength);
    this.writeStringHeader(byteLength);
    utf8Encode(object, this.bytes, this.pos);
    this.pos += byteLength;
  }
  encodeObject(object, depth) {
    const ext = this.extensionCodec.tryToEncode(object, this.context);
    if (ext != null) {
      this.encodeExtension(ext);
    } else if (Array.isArray(object)) {
      this.encodeArray(object, depth);
    } else if (ArrayBuffer.isView(object)) {
      this.encodeBinary(object);
    } else if (typeof object === "object") {
      this.encodeMap(object, depth);
    } else {
      throw new Error(`Unrecognized object: ${Object.prototype.toString.apply(object)}`);
    }
  }
  encodeBinary(object) {
    const size = object.byteLength;
    if (size < 256) {
      this.writeU8(196);
      this.writeU8(size);
    } else if (size < 65536) {
      this.writeU8(197);
      this.writeU16(size);
    } else if (size < 4294967296) {
      this.writeU8(198);
      this.writeU32(size);
    } else {
      throw new Error(`Too large binary: ${size}`);
    }
    const bytes = ensureUint8Array(object);
    this.writeU8a(bytes);
  }
  encodeArray(object, depth) {
    const size = object.length;
    if (size < 16) {
      this.writeU8(144 + size);
    } else if (size < 65536) {
      this.writeU8(220);
      this.writeU16(size);
    } else if (size < 4294967296) {
      this.writeU8(221);
      this.writeU32(size);
    } else {
      throw new Error(`Too large array: ${size}`);
    }
    for (const item of object) {
      this.doEncode(item, depth + 1);
    }
  }
  countWithoutUndefined(object, keys) {
    let count = 0;
    for (const key of keys) {
      if (object[key] !== void 0) {
        count++;
      }
    }
    return count;
  }
  encodeMap(object, depth) {
    const keys = Object.keys(object);
    if (this.sortKeys) {
      keys.sort();
    }
    const size = this.ignoreUndefined ? this.countWithoutUndefined(object, keys) : keys.length;
    if (size < 16) {
      this.writeU8(128 + size);
    } else if (size < 65536) {
      this.writeU8(222);
      this.writeU16(size);
    } else if (size < 4294967296) {
      this.writeU8(223);
      this.writeU32(size);
    } else {
      throw new Error(`Too large map object: ${size}`);
    }
    for (const key of keys) {
      const value = object[key];
      if (!(this.ignoreUndefined && value === void 0)) {
        this.encodeString(key);
        this.doEncode(value, depth + 1);
      }
    }
  }
  encodeExtension(ext) {
    if (typeof ext.data === "function") {
      const data = ext.data(this.pos + 6);
      const size2 = data.length;
      if (size2 >= 4294967296) {
        throw new Error(`Too large extension object: ${size2}`);
      }
      this.writeU8(201);
      this.writeU32(size2);
      this.writeI8(ext.type);
      this.writeU8a(data);
      return;
    }
    const size = ext.data.length;
    if (size === 1) {
      this.writeU8(212);
    } else if (size === 2) {
      this.writeU8(213);
    } else if (size === 4) {
      this.writeU8(214);
    } else if (size === 8) {
      this.writeU8(215);
    } else if (size === 16) {
      this.writeU8(216);
    } else if (size < 256) {
      this.writeU8(199);
      this.writeU8(size);
    } else if (size < 65536) {
      this.writeU8(200);
      this.writeU16(size);
    } else if (size < 4294967296) {
      this.writeU8(201);
      this.writeU32(size);
    } else {
      throw new Error(`Too large extension object: ${size}`);
    }
    this.writeI8(ext.type);
    this.writeU8a(ext.data);
  }
  writeU8(value) {
    this.ensureBufferSizeToWrite(1);
    this.view.setUint8(this.pos, value);
    this.pos++;
  }
  writeU8a(values) {
    const size = values.length;
    this.ensureBufferSizeToWrite(size);
    this.bytes.set(values, this.pos);
    this.pos += size;
  }
  writeI8(value) {
    this.ensureBufferSizeToWrite(1);
    this.view.setInt8(this.pos, value);
    this.pos++;
  }
  writeU16(value) {
    this.ensureBufferSizeToWrite(2);
    this.view.setUint16(this.pos, value);
    this.pos += 2;
  }
  writeI16(value) {
    this.ensureBufferSizeToWrite(2);
    this.view.setInt16(this.pos, value);
    this.pos += 2;
  }
  writeU32(value) {
    this.ensureBufferSizeToWrite(4);
    this.view.setUint32(this.pos, value);
    this.pos += 4;
  }
  writeI32(value) {
    this.ensureBufferSizeToWrite(4);
    this.view.setInt32(this.pos, value);
    this.pos += 4;
  }
  writeF32(value) {
    this.ensureBufferSizeToWrite(4);
    this.view.setFloat32(this.pos, value);
    this.pos += 4;
  }
  writeF64(value) {
    this.ensureBufferSizeToWrite(8);
    this.view.setFloat64(this.pos, value);
    this.pos += 8;
  }
  writeU64(value) {
    this.ensureBufferSizeToWrite(8);
    setUint64(this.view, this.pos, value);
    this.pos += 8;
  }
  writeI64(value) {
    this.ensureBufferSizeToWrite(8);
    setInt64(this.view, this.pos, value);
    this.pos += 8;
  }
  writeBigUint64(value) {
    this.ensureBufferSizeToWrite(8);
    this.view.setBigUint64(this.pos, value);
    this.pos += 8;
  }
  writeBigInt64(value) {
    this.ensureBufferSizeToWrite(8);
    this.view.setBigInt64(this.pos, value);
    this.pos += 8;
  }
};

// node_modules/@msgpack/msgpack/dist.esm/encode.mjs
function encode(value, options) {
  const encoder = new Encoder(options);
  return encoder.encodeSharedRef(value);
}

// node_modules/@msgpack/msgpack/dist.esm/utils/prettyByte.mjs
function prettyByte(byte) {
  return `${byte < 0 ? "-" : ""}0x${Math.abs(byte).toString(16).padStart(2, "0")}`;
}

// node_modules/@msgpack/msgpack/dist.esm/CachedKeyDecoder.mjs
var DEFAULT_MAX_KEY_LENGTH = 16;
var DEFAULT_MAX_LENGTH_PER_KEY = 16;
var CachedKeyDecoder = class {
  hit = 0;
  miss = 0;
  caches;
  maxKeyLength;
  maxLengthPerKey;
  constructor(maxKeyLength = DEFAULT_MAX_KEY_LENGTH, maxLengthPerKey = DEFAULT_MAX_LENGTH_PER_KEY) {
    this.maxKeyLength = maxKeyLength;
    this.maxLengthPerKey = maxLengthPerKey;
    this.caches = [];
    for (let i = 0; i < this.maxKeyLength; i++) {
      this.caches.push([]);
    }
  }
  canBeCached(byteLength) {
    return byteLength > 0 && byteLength <= this.maxKeyLength;
  }
  find(bytes, inputOffset, byteLength) {
    const records = this.caches[byteLength - 1];
    FIND_CHUNK: for (const record of records) {
      const recordBytes = record.bytes;
      for (let j = 0; j < byteLength; j++) {
        if (recordBytes[j] !== bytes[inputOffset + j]) {
          continue FIND_CHUNK;
        }
      }
      return record.str;
    }
    return null;
  }
  store(bytes, value) {
    const records = this.caches[bytes.length - 1];
    const record = { bytes, str: value };
    if (records.length >= this.maxLengthPerKey) {
      records[Math.random() * records.length | 0] = record;
    } else {
      records.push(record);
    }
  }
  decode(bytes, inputOffset, byteLength) {
    const cachedValue = this.find(bytes, inputOffset, byteLength);
    if (cachedValue != null) {
      this.hit++;
      return cachedValue;
    }
    this.miss++;
    const str = utf8DecodeJs(bytes, inputOffset, byteLength);
    const slicedCopyOfBytes = Uint8Array.prototype.slice.call(bytes, inputOffset, inputOffset + byteLength);
    this.store(slicedCopyOfBytes, str);
    return str;
  }
};

// node_modules/@msgpack/msgpack/dist.esm/Decoder.mjs
var STATE_ARRAY = "array";
var STATE_MAP_KEY = "map_key";
var STATE_MAP_VALUE = "map_value";
var mapKeyConverter = (key) => {
  if (typeof key === "string" || typeof key === "number") {
    return key;
  }
  throw new DecodeError("The type of key must be string or number but " + typeof key);
};
var StackPool = class {
  stack = [];
  stackHeadPosition = -1;
  get length() {
    return this.stackHeadPosition + 1;
  }
  top() {
    return this.stack[this.stackHeadPosition];
  }
  pushArrayState(size) {
    const state = this.getUninitializedStateFromPool();
    state.type = STATE_ARRAY;
    state.position = 0;
    state.size = size;
    state.array = new Array(size);
  }
  pushMapState(size) {
    const state = this.getUninitializedStateFromPool();
    state.type = STATE_MAP_KEY;
    state.readCount = 0;
    state.size = size;
    state.map = {};
  }
  getUninitializedStateFromPool() {
    this.stackHeadPosition++;
    if (this.stackHeadPosition === this.stack.length) {
      const partialState = {
        type: void 0,
        size: 0,
        array: void 0,
        position: 0,
        readCount: 0,
        map: void 0,
        key: null
      };
      this.stack.push(partialState);
    }
    return this.stack[this.stackHeadPosition];
  }
  release(state) {
    const topStackState = this.stack[this.stackHeadPosition];
    if (topStackState !== state) {
      throw new Error("Invalid stack state. Released state is not on top of the stack.");
    }
    if (state.type === STATE_ARRAY) {
      const partialState = state;
      partialState.size = 0;
      partialState.array = void 0;
      partialState.position = 0;
      partialState.type = void 0;
    }
    if (state.type === STATE_MAP_KEY || state.type === STATE_MAP_VALUE) {
      const partialState = state;
      partialState.size = 0;
      partialState.map = void 0;
      partialState.readCount = 0;
      partialState.type = void 0;
    }
    this.stackHeadPosition--;
  }
  reset() {
    this.stack.length = 0;
    this.stackHeadPosition = -1;
  }
};
var HEAD_BYTE_REQUIRED = -1;
var EMPTY_VIEW = new DataView(new ArrayBuffer(0));
var EMPTY_BYTES = new Uint8Array(EMPTY_VIEW.buffer);
try {
  EMPTY_VIEW.getInt8(0);
} catch (e) {
  if (!(e instanceof RangeError)) {
    throw new Error("This module is not supported in the current JavaScript engine because DataView does not throw RangeError on out-of-bounds access");
  }
}
var MORE_DATA = new RangeError("Insufficient data");
var sharedCachedKeyDecoder = new CachedKeyDecoder();
var Decoder = class _Decoder {
  extensionCodec;
  context;
  useBigInt64;
  rawStrings;
  maxStrLength;
  maxBinLength;
  maxArrayLength;
  maxMapLength;
  maxExtLength;
  keyDecoder;
  mapKeyConverter;
  totalPos = 0;
  pos = 0;
  view = EMPTY_VIEW;
  bytes = EMPTY_BYTES;
  headByte = HEAD_BYTE_REQUIRED;
  stack = new StackPool();
  entered = false;
  constructor(options) {
    this.extensionCodec = options?.extensionCodec ?? ExtensionCodec.defaultCodec;
    this.context = options?.context;
    this.useBigInt64 = options?.useBigInt64 ?? false;
    this.rawStrings = options?.rawStrings ?? false;
    this.maxStrLength = options?.maxStrLength ?? UINT32_MAX;
    this.maxBinLength = options?.maxBinLength ?? UINT32_MAX;
    this.maxArrayLength = options?.maxArrayLength ?? UINT32_MAX;
    this.maxMapLength = options?.maxMapLength ?? UINT32_MAX;
    this.maxExtLength = options?.maxExtLength ?? UINT32_MAX;
    this.keyDecoder = options?.keyDecoder !== void 0 ? options.keyDecoder : sharedCachedKeyDecoder;
    this.mapKeyConverter = options?.mapKeyConverter ?? mapKeyConverter;
  }
  clone() {
    return new _Decoder({
      extensionCodec: this.extensionCodec,
      context: this.context,
      useBigInt64: this.useBigInt64,
      rawStrings: this.rawStrings,
      maxStrLength: this.maxStrLength,
      maxBinLength: this.maxBinLength,
      maxArrayLength: this.maxArrayLength,
      maxMapLength: this.maxMapLength,
      maxExtLength: this.maxExtLength,
      keyDecoder: this.keyDecoder
    });
  }
  reinitializeState() {
    this.totalPos = 0;
    this.headByte = HEAD_BYTE_REQUIRED;
    this.stack.reset();
  }
  setBuffer(buffer) {
    const bytes = ensureUint8Array(buffer);
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = 0;
  }
  appendBuffer(buffer) {
    if (this.headByte === HEAD_BYTE_REQUIRED && !this.hasRemaining(1)) {
      this.setBuffer(buffer);
    } else {
      const remainingData = this.bytes.subarray(this.pos);
      const newData = ensureUint8Array(buffer);
      const newBuffer = new Uint8Array(remainingData.length + newData.length);
      newBuffer.set(remainingData);
      newBuffer.set(newData, remainingData.length);
      this.setBuffer(newBuffer);
    }
  }
  hasRemaining(size) {
    return this.view.byteLength - this.pos >= size;
  }
  createExtraByteError(posToShow) {
    const { view, pos } = this;
    return new RangeError(`Extra ${view.byteLength - pos} of ${view.byteLength} byte(s) found at buffer[${posToShow}]`);
  }
  /**
   * @throws {@link DecodeError}
   * @throws {@link RangeError}
   */
  decode(buffer) {
    if (this.entered) {
      const instance = this.clone();
      return instance.decode(buffer);
    }
    try {
      this.entered = true;
      this.reinitializeState();
      this.setBuffer(buffer);
      const object = this.doDecodeSync();
      if (this.hasRemaining(1)) {
        throw this.createExtraByteError(this.pos);
      }
      return object;
    } finally {
      this.entered = false;
    }
  }
  *decodeMulti(buffer) {
    if (this.entered) {
      const instance = this.clone();
      yield* instance.decodeMulti(buffer);
      return;
    }
    try {
      this.entered = true;
      this.reinitializeState();
      this.setBuffer(buffer);
      while (this.hasRemaining(1)) {
        yield this.doDecodeSync();
      }
    } finally {
      this.entered = false;
    }
  }
  async decodeAsync(stream) {
    if (this.entered) {
      const instance = this.clone();
      return instance.decodeAsync(stream);
    }
    try {
      this.entered = true;
      let decoded = false;
      let object;
      for await (const buffer of stream) {
        if (decoded) {
          this.entered = false;
          throw this.createExtraByteError(this.totalPos);
        }
        this.appendBuffer(buffer);
        try {
          object = this.doDecodeSync();
          decoded = true;
        } catch (e) {
          if (!(e instanceof RangeError)) {
            throw e;
          }
        }
        this.totalPos += this.pos;
      }
      if (decoded) {
        if (this.hasRemaining(1)) {
          throw this.createExtraByteError(this.totalPos);
        }
        return object;
      }
      const { headByte, pos, totalPos } = this;
      throw new RangeError(`Insufficient data in parsing ${prettyByte(headByte)} at ${totalPos} (${pos} in the current buffer)`);
    } finally {
      this.entered = false;
    }
  }
  decodeArrayStream(stream) {
    return this.decodeMultiAsync(stream, true);
  }
  decodeStream(stream) {
    return this.decodeMultiAsync(stream, false);
  }
  async *decodeMultiAsync(stream, isArray) {
    if (this.entered) {
      const instance = this.clone();
      yield* instance.decodeMultiAsync(stream, isArray);
      return;
    }
    try {
      this.entered = true;
      let isArrayHeaderRequired = isArray;
      let arrayItemsLeft = -1;
      for await (const buffer of stream) {
        if (isArray && arrayItemsLeft === 0) {
          throw this.createExtraByteError(this.totalPos);
        }
        this.appendBuffer(buffer);
        if (isArrayHeaderRequired) {
          arrayItemsLeft = this.readArraySize();
          isArrayHeaderRequired = false;
          this.complete();
        }
        try {
          while (true) {
            yield this.doDecodeSync();
            if (--arrayItemsLeft === 0) {
              break;
            }
          }
        } catch (e) {
          if (!(e instanceof RangeError)) {
            throw e;
          }
        }
        this.totalPos += this.pos;
      }
    } finally {
      this.entered = false;
    }
  }
  doDecodeSync() {
    DECODE: while (true) {
      const headByte = this.readHeadByte();
      let object;
      if (headByte >= 224) {
        object = headByte - 256;
      } else if (headByte < 192) {
        if (headByte < 128) {
          object = headByte;
        } else if (headByte < 144) {
          const size = headByte - 128;
          if (size !== 0) {
            this.pushMapState(size);
            this.complete();
            continue DECODE;
          } else {
            object = {};
          }
        } else if (headByte < 160) {
          const size = headByte - 144;
          if (size !== 0) {
            this.pushArrayState(size);
            this.complete();
            continue DECODE;
          } else {
            object = [];
          }
        } else {
          const byteLength = headByte - 160;
          object = this.decodeString(byteLength, 0);
        }
      } else if (headByte === 192) {
        object = null;
      } else if (headByte === 194) {
        object = false;
      } else if (headByte === 195) {
        object = true;
      } else if (headByte === 202) {
        object = this.readF32();
      } else if (headByte === 203) {
        object = this.readF64();
      } else if (headByte === 204) {
        object = this.readU8();
      } else if (headByte === 205) {
        object = this.readU16();
      } else if (headByte === 206) {
        object = this.readU32();
      } else if (headByte === 207) {
        if (this.useBigInt64) {
          object = this.readU64AsBigInt();
        } else {
          object = this.readU64();
        }
      } else if (headByte === 208) {
        object = this.readI8();
      } else if (headByte === 209) {
        object = this.readI16();
      } else if (headByte === 210) {
        object = this.readI32();
      } else if (headByte === 211) {
        if (this.useBigInt64) {
          object = this.readI64AsBigInt();
        } else {
          object = this.readI64();
        }
      } else if (headByte === 217) {
        const byteLength = this.lookU8();
        object = this.decodeString(byteLength, 1);
      } else if (headByte === 218) {
        const byteLength = this.lookU16();
        object = this.decodeString(byteLength, 2);
      } else if (headByte === 219) {
        const byteLength = this.lookU32();
        object = this.decodeString(byteLength, 4);
      } else if (headByte === 220) {
        const size = this.readU16();
        if (size !== 0) {
          this.pushArrayState(size);
          this.complete();
          continue DECODE;
        } else {
          object = [];
        }
      } else if (headByte === 221) {
        const size = this.readU32();
        if (size !== 0) {
          this.pushArrayState(size);
          this.complete();
          continue DECODE;
        } else {
          object = [];
        }
      } else if (headByte === 222) {
        const size = this.readU16();
        if (size !== 0) {
          this.pushMapState(size);
          this.complete();
          continue DECODE;
        } else {
          object = {};
        }
      } else if (headByte === 223) {
        const size = this.readU32();
        if (size !== 0) {
          this.pushMapState(size);
          this.complete();
          continue DECODE;
        } else {
          object = {};
        }
      } else if (headByte === 196) {
        const size = this.lookU8();
        object = this.decodeBinary(size, 1);
      } else if (headByte === 197) {
        const size = this.lookU16();
        object = this.decodeBinary(size, 2);
      } else if (headByte === 198) {
        const size = this.lookU32();
        object = this.decodeBinary(size, 4);
      } else if (headByte === 212) {
        object = this.decodeExtension(1, 0);
      } else if (headByte === 213) {
        object = this.decodeExtension(2, 0);
      } else if (headByte === 214) {
        object = this.decodeExtension(4, 0);
      } else if (headByte === 215) {
        object = this.decodeExtension(8, 0);
      } else if (headByte === 216) {
        object = this.decodeExtension(16, 0);
      } else if (headByte === 199) {
        const size = this.lookU8();
        object = this.decodeExtension(size, 1);
      } else if (headByte === 200) {
        const size = this.lookU16();
        object = this.decodeExtension(size, 2);
      } else if (headByte === 201) {
        const size = this.lookU32();
        object = this.decodeExtension(size, 4);
      } else {
        throw new DecodeError(`Unrecognized type byte: ${prettyByte(headByte)}`);
      }
      this.complete();
      const stack = this.stack;
      while (stack.length > 0) {
        const state = stack.top();
        if (state.type === STATE_ARRAY) {
          state.array[state.position] = object;
          state.position++;
          if (state.position === state.size) {
            object = state.array;
            stack.release(state);
          } else {
            continue DECODE;
          }
        } else if (state.type === STATE_MAP_KEY) {
          if (object === "__proto__") {
            throw new DecodeError("The key __proto__ is not allowed");
          }
          state.key = this.mapKeyConverter(object);
          state.type = STATE_MAP_VALUE;
          continue DECODE;
        } else {
          state.map[state.key] = object;
          state.readCount++;
          if (state.readCount === state.size) {
            object = state.map;
            stack.release(state);
          } else {
            state.key = null;
            state.type = STATE_MAP_KEY;
            continue DECODE;
          }
        }
      }
      return object;
    }
  }
  readHeadByte() {
    if (this.headByte === HEAD_BYTE_REQUIRED) {
      this.headByte = this.readU8();
    }
    return this.headByte;
  }
  complete() {
    this.headByte = HEAD_BYTE_REQUIRED;
  }
  readArraySize() {
    const headByte = this.readHeadByte();
    switch (headByte) {
      case 220:
        return this.readU16();
      case 221:
        return this.readU32();
      default: {
        if (headByte < 160) {
          return headByte - 144;
        } else {
          throw new DecodeError(`Unrecognized array type byte: ${prettyByte(headByte)}`);
        }
      }
    }
  }
  pushMapState(size) {
    if (size > this.maxMapLength) {
      throw new DecodeError(`Max length exceeded: map length (${size}) > maxMapLengthLength (${this.maxMapLength})`);
    }
    this.stack.pushMapState(size);
  }
  pushArrayState(size) {
    if (size > this.maxArrayLength) {
      throw new DecodeError(`Max length exceeded: array length (${size}) > maxArrayLength (${this.maxArrayLength})`);
    }
    this.stack.pushArrayState(size);
  }
  decodeString(byteLength, headerOffset) {
    if (!this.rawStrings || this.stateIsMapKey()) {
      return this.decodeUtf8String(byteLength, headerOffset);
    }
    return this.decodeBinary(byteLength, headerOffset);
  }
  /**
   * @throws {@link RangeError}
   */
  decodeUtf8String(byteLength, headerOffset) {
    if (byteLength > this.maxStrLength) {
      throw new DecodeError(`Max length exceeded: UTF-8 byte length (${byteLength}) > maxStrLength (${this.maxStrLength})`);
    }
    if (this.bytes.byteLength < this.pos + headerOffset + byteLength) {
      throw MORE_DATA;
    }
    const offset = this.pos + headerOffset;
    let object;
    if (this.stateIsMapKey() && this.keyDecoder?.canBeCached(byteLength)) {
      object = this.keyDecoder.decode(this.bytes, offset, byteLength);
    } else {
      object = utf8Decode(this.bytes, offset, byteLength);
    }
    this.pos += headerOffset + byteLength;
    return object;
  }
  stateIsMapKey() {
    if (this.stack.length > 0) {
      const state = this.stack.top();
      return state.type === STATE_MAP_KEY;
    }
    return false;
  }
  /**
   * @throws {@link RangeError}
   */
  decodeBinary(byteLength, headOffset) {
    if (byteLength > this.maxBinLength) {
      throw new DecodeError(`Max length exceeded: bin length (${byteLength}) > maxBinLength (${this.maxBinLength})`);
    }
    if (!this.hasRemaining(byteLength + headOffset)) {
      throw MORE_DATA;
    }
    const offset = this.pos + headOffset;
    const object = this.bytes.subarray(offset, offset + byteLength);
    this.pos += headOffset + byteLength;
    return object;
  }
  decodeExtension(size, headOffset) {
    if (size > this.maxExtLength) {
      throw new DecodeError(`Max length exceeded: ext length (${size}) > maxExtLength (${this.maxExtLength})`);
    }
    const extType = this.view.getInt8(this.pos + headOffset);
    const data = this.decodeBinary(
      size,
      headOffset + 1
      /* extType */
    );
    return this.extensionCodec.decode(data, extType, this.context);
  }
  lookU8() {
    return this.view.getUint8(this.pos);
  }
  lookU16() {
    return this.view.getUint16(this.pos);
  }
  lookU32() {
    return this.view.getUint32(this.pos);
  }
  readU8() {
    const value = this.view.getUint8(this.pos);
    this.pos++;
    return value;
  }
  readI8() {
    const value = this.view.getInt8(this.pos);
    this.pos++;
    return value;
  }
  readU16() {
    const value = this.view.getUint16(this.pos);
    this.pos += 2;
    return value;
  }
  readI16() {
    const value = this.view.getInt16(this.pos);
    this.pos += 2;
    return value;
  }
  readU32() {
    const value = this.view.getUint32(this.pos);
    this.pos += 4;
    return value;
  }
  readI32() {
    const value = this.view.getInt32(this.pos);
    this.pos += 4;
    return value;
  }
  readU64() {
    const value = getUint64(this.view, this.pos);
    this.pos += 8;
    return value;
  }
  readI64() {
    const value = getInt64(this.view, this.pos);
    this.pos += 8;
    return value;
  }
  readU64AsBigInt() {
    const value = this.view.getBigUint64(this.pos);
    this.pos += 8;
    return value;
  }
  readI64AsBigInt() {
    const value = this.view.getBigInt64(this.pos);
    this.pos += 8;
    return value;
  }
  readF32() {
    const value = this.view.getFloat32(this.pos);
    this.pos += 4;
    return value;
  }
  readF64() {
    const value = this.view.getFloat64(this.pos);
    this.pos += 8;
    return value;
  }
};

// node_modules/@msgpack/msgpack/dist.esm/decode.mjs
function decode(buffer, options) {
  const decoder = new Decoder(options);
  return decoder.decode(buffer);
}

// src/frames.js
var CloseCode = Object.freeze({
  GOING_AWAY: 4e3,
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
  ORIGIN_NOT_ALLOWED: 4504
});
function isTerminalClose(code) {
  return code >= 4500 && code <= 4999;
}
var FrameError = class extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = "FrameError";
  }
};
function encodeFrame(frame) {
  return encode(frame);
}
function need(map, key, type) {
  const value = map[key];
  const ok = type === "int" ? Number.isSafeInteger(value) && /** @type {number} */
  value >= 0 : type === "number" ? typeof value === "number" && Number.isFinite(value) : type === "bin" ? value instanceof Uint8Array : typeof value === type;
  if (!ok) {
    throw new FrameError(`${String(map.t)} frame: field ${key} must be ${type}, got ${describe(value)}`);
  }
}
function describe(value) {
  if (value === null) return "nil";
  if (value instanceof Uint8Array) return "bin";
  if (Array.isArray(value)) return "array";
  return typeof value;
}
function decodeFrame(bytes) {
  let value;
  try {
    value = decode(bytes);
  } catch (err) {
    throw new FrameError(`not msgpack: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value) || value instanceof Uint8Array) {
    throw new FrameError(`frame is not a map (${describe(value)})`);
  }
  const map = (
    /** @type {Record<string, unknown>} */
    value
  );
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
        `unknown frame type ${describe(map.t) === "string" ? String(map.t) : describe(map.t)}`
      );
  }
  return (
    /** @type {ServerFrame} */
    /** @type {unknown} */
    map
  );
}

// src/file.js
async function sha256Hex(bytes) {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) return null;
  const digest = new Uint8Array(await subtle.digest("SHA-256", bytes));
  let hex = "";
  for (const byte of digest) hex += byte.toString(16).padStart(2, "0");
  return hex;
}
var IntegrityError = class extends Error {
  /**
   * @param {"bad_size" | "bad_sha256"} code
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.name = "IntegrityError";
    this.code = code;
  }
};
async function verifyBytes(bytes, record) {
  if (bytes.byteLength !== record.size) {
    throw new IntegrityError(
      "bad_size",
      `item ${record.item}: got ${bytes.byteLength} bytes, expected ${record.size}`
    );
  }
  const hex = await sha256Hex(
    /** @type {Uint8Array<ArrayBuffer>} */
    bytes
  );
  if (hex === null) return "size";
  if (hex !== record.sha256.toLowerCase()) {
    throw new IntegrityError("bad_sha256", `item ${record.item}: sha256 ${hex}, expected ${record.sha256}`);
  }
  return "sha256";
}
function concatBytes(parts, total) {
  if (parts.length === 1 && parts[0].byteLength === total) return parts[0];
  const out = new Uint8Array(total);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.byteLength;
  }
  return out;
}
var PodstreamFile = class {
  /**
   * @param {ItemRecord & {seq: number}} record
   * @param {{bytes?: Uint8Array, verified?: "sha256" | "size" | "none", fetch?: typeof globalThis.fetch}} source
   */
  constructor(record, source) {
    this.index = record.item;
    this.id = record.id;
    this.mime = record.mime;
    this.size = record.size;
    this.sha256 = record.sha256;
    this.seq = record.seq;
    this.mediaUrl = record.url;
    this.verified = source.verified ?? "none";
    this._blob = source.bytes ? new Blob([
      /** @type {Uint8Array<ArrayBuffer>} */
      source.bytes
    ], { type: record.mime }) : null;
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
};

// src/inputs.js
var LOOKUP_MAX = 1e3;
function isBlob(value) {
  return typeof Blob !== "undefined" && value instanceof Blob;
}
async function blobSha256(blob) {
  if (!globalThis.crypto?.subtle) return null;
  return sha256Hex(await blob.arrayBuffer());
}
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
async function heldOne(transport, sha256, signal) {
  const found = await transport.lookup([sha256], signal);
  if (found === null) return transport.held(sha256, signal);
  return found.get(sha256) ?? null;
}
async function uploadBlob(blob, transport, backoff, options = {}) {
  const { onProgress, signal } = options;
  const retries = options.retries ?? 5;
  const total = blob.size;
  let reported = -1;
  const report = (loaded) => {
    if (loaded === reported) return;
    reported = loaded;
    onProgress?.({ loaded, total });
  };
  signal?.throwIfAborted();
  const sha256 = options.sha256 ?? await blobSha256(blob);
  report(0);
  for (let attempt = 0; ; attempt += 1) {
    signal?.throwIfAborted();
    try {
      const ask = sha256 !== null && (attempt > 0 || !options.missing);
      const held = ask ? await heldOne(
        transport,
        /** @type {string} */
        sha256,
        signal
      ) : null;
      const answer = held ?? await transport.put(blob, sha256, (n) => report(Math.min(n, total)), signal);
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
async function stageImages(input, upload, options = {}) {
  const items = input.items;
  if (!Array.isArray(items)) return input;
  const blobs = [...new Set(items.map((item) => item?.image).filter(isBlob))];
  if (blobs.length === 0) return input;
  const total = blobs.reduce((sum, blob) => sum + blob.size, 0);
  const loaded = new Map(blobs.map((blob) => [blob, 0]));
  let sent = 0;
  let done = 0;
  const report = () => options.onProgress?.({ loaded: sent, total, files: blobs.length, done });
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
  const refs = /* @__PURE__ */ new Map();
  try {
    report();
    await new Promise((resolve, reject) => {
      const byContent = /* @__PURE__ */ new Map();
      const ready = [];
      const queued = [];
      let nextHash = 0;
      let hashing = 0;
      let uploading = 0;
      let lookingUp = false;
      let failed = false;
      const fail = (err) => {
        if (failed) return;
        failed = true;
        abort.abort(err);
        reject(err);
      };
      const finish = (blob, ref) => {
        if (failed) return;
        refs.set(blob, ref);
        progress(blob, blob.size);
        done += 1;
        report();
        if (done === blobs.length) resolve(void 0);
      };
      const staging = (blob, sha256) => {
        let settle = () => {
        };
        const uploaded = new Promise((resolveRef) => settle = resolveRef);
        if (sha256 !== null) byContent.set(sha256, uploaded);
        return {
          blob,
          sha256,
          missing: false,
          resolve: (ref) => {
            settle(ref);
            finish(blob, ref);
          }
        };
      };
      const hashed = (blob) => (sha256) => {
        hashing -= 1;
        const same = sha256 === null ? void 0 : byContent.get(sha256);
        if (same) void same.then((ref) => finish(blob, ref));
        else if (sha256 === null)
          queued.push(staging(blob, null));
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
            queued.push(...batch);
          } else {
            lookingUp = true;
            lookup(
              batch.map((entry) => (
                /** @type {string} */
                entry.sha256
              )),
              signal
            ).then(
              (found) => {
                lookingUp = false;
                for (const entry of batch) {
                  const ref = found?.get(
                    /** @type {string} */
                    entry.sha256
                  );
                  if (ref) entry.resolve(ref);
                  else queued.push({ ...entry, missing: found !== null });
                }
                pump();
              },
              (err) => {
                if (signal.aborted || !isRetryable(err)) return fail(err);
                lookingUp = false;
                queued.push(...batch);
                pump();
              }
            );
          }
        }
        while (uploading < concurrency && queued.length > 0) {
          const entry = (
            /** @type {Staging} */
            queued.shift()
          );
          uploading += 1;
          upload(entry.blob, {
            signal,
            sha256: entry.sha256 ?? void 0,
            missing: entry.missing,
            onProgress: (p) => progress(entry.blob, p.loaded)
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
      const ref = isBlob(item?.image) ? refs.get(item.image) : void 0;
      return ref ? { ...item, image: ref.ref } : item;
    })
  };
}

// src/subscription.js
var RESULT_PROBLEMS = /* @__PURE__ */ new Set(["bad_result", "incomplete_result", "result_too_large"]);
var FILE_KEY = "$file";
var LITERAL_KEY = "$literal";
function substituteFiles(value, replace) {
  if (Array.isArray(value)) return value.map((v) => substituteFiles(v, replace));
  if (value === null || typeof value !== "object") return value;
  const entries = Object.entries(value);
  if (entries.length === 1) {
    const [key, inner] = entries[0];
    if (key === FILE_KEY && Number.isSafeInteger(inner) && /** @type {number} */
    inner >= 0) {
      return replace(
        /** @type {number} */
        inner
      );
    }
    if (key === LITERAL_KEY && inner !== null && typeof inner === "object" && !Array.isArray(inner)) {
      return Object.fromEntries(Object.entries(inner).map(([k, v]) => [k, substituteFiles(v, replace)]));
    }
  }
  return Object.fromEntries(entries.map(([k, v]) => [k, substituteFiles(v, replace)]));
}
function countOrNull(value) {
  return Number.isSafeInteger(value) && /** @type {number} */
  value >= 0 ? (
    /** @type {number} */
    value
  ) : null;
}
var TERMINAL_STATUSES = /* @__PURE__ */ new Set(["COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"]);
function isTerminalStatus(status) {
  return status != null && TERMINAL_STATUSES.has(status);
}
var JobSubscription = class extends Emitter {
  /**
   * @param {string} jobId
   * @param {{from?: number, inline?: boolean, resolveUrl?: (url: string) => string,
   *   fetch?: typeof globalThis.fetch, onClose?: (job: JobSubscription) => void}} [options]
   */
  constructor(jobId, options = {}) {
    super();
    this.jobId = jobId;
    this.inline = options.inline ?? true;
    this.lastSeq = options.from ?? 0;
    if (!Number.isSafeInteger(this.lastSeq) || this.lastSeq < 0) {
      throw new RangeError(`from must be a non-negative integer, got ${String(options.from)}`);
    }
    this.head = 0;
    this.status = null;
    this.recovered = true;
    this.expectedItems = null;
    this.results = [];
    this.doneRecord = null;
    this.failure = null;
    this.resultRecord = null;
    this._resultProblem = null;
    this._manifestResult = void 0;
    this._pending = null;
    this._resolveUrl = options.resolveUrl ?? ((url) => url);
    this._fetch = options.fetch;
    this._onClose = options.onClose;
    this._waiters = /* @__PURE__ */ new Set();
    let resolveDone = () => {
    };
    let rejectDone = () => {
    };
    this.finished = new Promise((resolve, reject) => {
      resolveDone = resolve;
      rejectDone = reject;
    });
    this.finished.catch(() => {
    });
    this._resolveDone = resolveDone;
    this._rejectDone = rejectDone;
  }
  /** Whether no more records will be applied (done, failed or unsubscribed). */
  get closed() {
    return this.doneRecord !== null || this.failure !== null;
  }
  /**
   * Every file of the job in arrival order: those already received first, then each as it arrives. Ends after
   * the `done` record; throws the failure if the subscription ends without one. Each call starts from the first.
   * @returns {AsyncGenerator<PodstreamFile, void, undefined>}
   */
  async *files() {
    let index = 0;
    for (; ; ) {
      while (index < this.results.length) {
        yield this.results[index];
        index += 1;
      }
      if (this.failure) throw this.failure;
      if (this.doneRecord) return;
      await new Promise((resolve) => {
        const wake = () => {
          this._waiters.delete(wake);
          resolve(void 0);
        };
        this._waiters.add(wake);
      });
    }
  }
  /**
   * The job's structured result (a handler wrapped with `worker.wrap`), once the job is done: the value the
   * handler returned with each file it held replaced by that file's URL (an object URL of the verified bytes
   * in inline mode, the relay's media URL otherwise; `null` for an item that failed). `null` when the job
   * has no result. Rejects if the subscription fails, or if the job's result was sent but did not arrive
   * whole (`bad_result`, `incomplete_result`, `result_too_large`: the error's `code`).
   * @returns {Promise<unknown>}
   */
  async result() {
    await this.finished;
    if (this._manifestResult !== void 0) return this._manifestResult;
    const record = this.resultRecord;
    if (record === null) {
      const problem = this._resultProblem;
      if (problem === null) return null;
      throw Object.assign(new Error(`job ${this.jobId}: no result: ${problem.message}`), {
        code: problem.code
      });
    }
    const files = new Map(this.results.map((file) => [file.index, file]));
    return substituteFiles(record.value, (item) => files.get(item)?.url ?? null);
  }
  /** Stop receiving this job (the client sends `unsub`). */
  unsubscribe() {
    if (!this.closed) this._fail("unsubscribed", "unsubscribed", false);
  }
  _wake() {
    for (const wake of [...this._waiters]) wake();
  }
  /**
   * End the subscription without a `done` record.
   * @param {string} code
   * @param {string} message
   * @param {boolean} [report] emit an `error` event (default true)
   */
  _fail(code, message, report = true) {
    if (this.closed) return;
    const error = Object.assign(new Error(`job ${this.jobId}: ${message}`), { code });
    this.failure = error;
    this._pending = null;
    if (report) this.emit("error", { seq: null, item: null, code, message, fatal: true });
    this._rejectDone(error);
    this._wake();
    this._onClose?.(this);
  }
  /**
   * Apply a `subscribed` frame.
   * @param {SubscribedFrame} frame
   */
  _subscribed(frame) {
    this.head = frame.head;
    if (frame.status) this.status = frame.status;
    this.recovered = frame.recovered;
    this.expectedItems = countOrNull(frame.expected_items) ?? this.expectedItems;
    this.emit("subscribed", {
      head: frame.head,
      status: frame.status,
      recovered: frame.recovered,
      expectedItems: this.expectedItems
    });
  }
  /**
   * Apply one `ev` or `chunk` frame of this job. Records at or before `lastSeq` are dropped (they were
   * applied before a reconnect); anything out of order asks the caller to reconnect and resume.
   * @param {EvFrame | ChunkFrame} frame
   * @returns {Promise<FrameOutcome>}
   */
  async _frame(frame) {
    if (this.closed || frame.seq <= this.lastSeq) return void 0;
    if (frame.t === "chunk") return this._chunk(frame);
    const pending = this._pending;
    if (pending) {
      if (frame.seq === pending.record.seq && frame.k === "item") {
        this._pending = null;
      } else if (pending.record.size === 0) {
        await this._complete(pending);
      } else if (pending.received === 0 && frame.seq === pending.record.seq + 1) {
        this._pending = null;
        this._deliver(new PodstreamFile(pending.record, { fetch: this._fetch }));
      } else {
        return "resync";
      }
    }
    if (frame.seq !== this.lastSeq + 1) return "resync";
    return this._record(frame);
  }
  /**
   * @param {EvFrame} ev
   * @returns {Promise<FrameOutcome>}
   */
  async _record(ev) {
    const r = (
      /** @type {Record<string, unknown>} */
      ev
    );
    switch (ev.k) {
      case "status":
        this.status = String(r.status);
        this.lastSeq = ev.seq;
        this.emit("status", {
          seq: ev.seq,
          status: this.status,
          ...typeof r.error === "string" ? { error: r.error } : {}
        });
        return void 0;
      case "progress":
        this.lastSeq = ev.seq;
        this.emit("progress", {
          seq: ev.seq,
          item: Number(r.item),
          phase: "generate",
          step: Number(r.step),
          steps: Number(r.steps)
        });
        return void 0;
      case "item": {
        const url = typeof r.url === "string" && r.url ? this._resolveUrl(r.url) : null;
        const record = {
          seq: ev.seq,
          item: Number(r.item),
          id: typeof r.id === "string" ? r.id : "",
          mime: typeof r.mime === "string" ? r.mime : "application/octet-stream",
          size: Number(r.size),
          sha256: typeof r.sha256 === "string" ? r.sha256 : "",
          url
        };
        if (!this.inline) {
          this._deliver(new PodstreamFile(record, { fetch: this._fetch }));
          return void 0;
        }
        this._pending = { record, chunks: [], received: 0 };
        this.emit("itemstart", record);
        this.emit("progress", {
          seq: ev.seq,
          item: record.item,
          phase: "download",
          received: 0,
          size: record.size
        });
        return void 0;
      }
      case "error": {
        this.lastSeq = ev.seq;
        const error = {
          seq: ev.seq,
          item: typeof r.item === "number" ? r.item : null,
          code: String(r.code ?? "error"),
          message: String(r.message ?? ""),
          fatal: false
        };
        if (error.item === null && RESULT_PROBLEMS.has(error.code)) this._resultProblem = error;
        if (error.item === null && error.code === "restarted") this.resultRecord = null;
        this.emit("error", error);
        return void 0;
      }
      case "result":
        this.lastSeq = ev.seq;
        this.resultRecord = { seq: ev.seq, value: r.value ?? null };
        this.emit("result", this.resultRecord);
        return void 0;
      case "done": {
        this.lastSeq = ev.seq;
        if (typeof r.status === "string") this.status = r.status;
        const done = {
          seq: ev.seq,
          status: this.status ?? "",
          items: Number(r.items ?? this.results.length),
          errors: Number(r.errors ?? 0)
        };
        this.doneRecord = done;
        this.emit("done", done);
        this._resolveDone(done);
        this._wake();
        this._onClose?.(this);
        return void 0;
      }
      default:
        this.lastSeq = ev.seq;
        this.emit("error", {
          seq: ev.seq,
          item: null,
          code: "unknown_kind",
          message: `record ${ev.seq} has a kind this client does not know (${String(ev.k)}): skipped`,
          fatal: false
        });
        return void 0;
    }
  }
  /**
   * @param {ChunkFrame} chunk
   * @returns {Promise<FrameOutcome>}
   */
  async _chunk(chunk) {
    const pending = this._pending;
    if (!pending || chunk.seq !== pending.record.seq || chunk.item !== pending.record.item) return "resync";
    let data = chunk.data;
    if (chunk.off < pending.received) {
      const skip = pending.received - chunk.off;
      if (skip >= data.byteLength && !chunk.last) return void 0;
      data = data.subarray(Math.min(skip, data.byteLength));
    } else if (chunk.off > pending.received) {
      return "resync";
    }
    if (pending.received + data.byteLength > pending.record.size) return "resync";
    if (data.byteLength > 0) {
      pending.chunks.push(data.slice());
      pending.received += data.byteLength;
      this.emit("progress", {
        seq: pending.record.seq,
        item: pending.record.item,
        phase: "download",
        received: pending.received,
        size: pending.record.size
      });
    }
    if (chunk.last) await this._complete(pending);
    return void 0;
  }
  /**
   * The relay cannot send the bytes of the pending item (`err media_unavailable`): that item fails.
   * @param {string} code
   * @param {string} message
   */
  _itemUnavailable(code, message) {
    const pending = this._pending;
    if (!pending) return;
    this._pending = null;
    this.lastSeq = pending.record.seq;
    this.emit("error", { seq: pending.record.seq, item: pending.record.item, code, message, fatal: false });
  }
  /**
   * All bytes of the pending item are in: verify, make its Blob, and only then advance `lastSeq` (with the
   * delivery), so the cursor never passes an item whose file is not whole; if anything here throws, the
   * item is received again.
   * @param {{record: ItemStart, chunks: Uint8Array[], received: number}} pending
   */
  async _complete(pending) {
    this._pending = null;
    const { record } = pending;
    const bytes = concatBytes(pending.chunks, pending.received);
    let verified;
    try {
      verified = await verifyBytes(bytes, record);
    } catch (err) {
      if (!(err instanceof IntegrityError)) throw err;
      this.lastSeq = record.seq;
      this.emit("error", {
        seq: record.seq,
        item: record.item,
        code: err.code,
        message: err.message,
        fatal: false
      });
      return;
    }
    this._deliver(new PodstreamFile(record, { bytes, verified, fetch: this._fetch }));
  }
  /**
   * Apply an item record with its file made: advance `lastSeq` to it, then hand the file out.
   * @param {PodstreamFile} file
   */
  _deliver(file) {
    this.lastSeq = file.seq;
    this.results.push(file);
    this.emit("item", file);
    this._wake();
  }
  /**
   * Render a job from its manifest alone (`GET /v1/jobs/{id}`): URL mode, no websocket. Emits the same events
   * a subscriber of a finished job would see, with `seq` values numbered from 1 in manifest order.
   * @param {Manifest} manifest
   */
  _applyManifest(manifest) {
    let seq = this.lastSeq;
    const status = String(manifest.status);
    this.status = status;
    this.head = typeof manifest.head === "number" ? manifest.head : 0;
    this.expectedItems = countOrNull(manifest.expected_items);
    this.emit("status", { seq: ++seq, status });
    let errors = 0;
    const items = manifest.items ?? [];
    for (const entry of items) {
      if (entry.status === "error" || entry.code) {
        errors += 1;
        this.emit("error", {
          seq: ++seq,
          item: entry.item,
          code: String(entry.code ?? "error"),
          message: String(entry.message ?? ""),
          fatal: false
        });
        continue;
      }
      const file = new PodstreamFile(
        {
          seq: ++seq,
          item: entry.item,
          id: entry.id ?? "",
          mime: entry.mime ?? "application/octet-stream",
          size: Number(entry.size ?? 0),
          sha256: entry.sha256 ?? "",
          url: entry.url ? this._resolveUrl(entry.url) : null
        },
        { fetch: this._fetch }
      );
      this._deliver(file);
    }
    if (Array.isArray(manifest.errors)) {
      for (const problem of manifest.errors) {
        errors += 1;
        this.emit("error", {
          seq: ++seq,
          item: problem.item ?? null,
          code: String(problem.code),
          message: String(problem.message ?? ""),
          fatal: false
        });
      }
    } else if (typeof manifest.errors === "number") {
      errors = Math.max(errors, manifest.errors);
    }
    this._manifestResult = manifest.result ?? null;
    this.lastSeq = seq;
    if (isTerminalStatus(status)) {
      const done = { seq: ++seq, status, items: items.length, errors };
      this.lastSeq = seq;
      this.doneRecord = done;
      this.emit("done", done);
      this._resolveDone(done);
      this._wake();
      this._onClose?.(this);
    }
  }
};

// src/client.js
var AUTH_ERROR_CODES = /* @__PURE__ */ new Set(["unauthorized", "forbidden", "token_expired", "expired"]);
var IGNORED_ERROR_CODES = /* @__PURE__ */ new Set(["not_subscribed", "already_subscribed"]);
var OPEN = 1;
var REFRESH_AT = 0.2;
function isTerminalTokenError(err) {
  return err instanceof RelayHttpError && err.status >= 400 && err.status < 500 && !RETRYABLE_4XX.has(err.status);
}
function defaultNetwork() {
  const g = (
    /** @type {any} */
    globalThis
  );
  if (typeof g.addEventListener !== "function" || typeof g.navigator !== "object") return null;
  return { target: g, isOnline: () => g.navigator.onLine !== false };
}
var PodstreamClient = class extends Emitter {
  /** @param {ClientOptions} [options] */
  constructor(options = {}) {
    super();
    const origin = (
      /** @type {any} */
      globalThis.location?.origin
    );
    const base = options.url ?? origin;
    if (!base) throw new TypeError("PodstreamClient needs options.url outside a browser page");
    this.url = String(base).replace(/\/+$/, "");
    const ws = new URL(`${this.url}/v1/ws`);
    ws.protocol = ws.protocol === "https:" ? "wss:" : "ws:";
    this.wsUrl = options.wsUrl ?? ws.toString();
    this.getToken = options.getToken;
    this.apiKey = options.apiKey;
    this.tokenTtl = options.tokenTtl;
    this._WebSocket = options.WebSocket ?? /** @type {any} */
    globalThis.WebSocket;
    this._fetch = options.fetch ?? globalThis.fetch?.bind(globalThis);
    this.getInputToken = options.getInputToken;
    this._inputToken = null;
    this._noInputLookup = false;
    this._useXhr = options.fetch === void 0 && typeof XMLHttpRequest === "function";
    this.backoff = new Backoff(options.backoff);
    this.connectTimeout = options.connectTimeout ?? 1e4;
    this.maxServerPingDelay = options.maxServerPingDelay ?? 1e4;
    this.state = "idle";
    this._subs = /* @__PURE__ */ new Map();
    this._ws = null;
    this._gen = 0;
    this._queue = Promise.resolve();
    this._token = null;
    this._tokenJobs = /* @__PURE__ */ new Set();
    this._retryTimer = null;
    this._connectTimer = null;
    this._watchdog = null;
    this._pingMs = 0;
    this._byeCode = null;
    this._authRetried = false;
    this._tokenExpiresAt = null;
    this._refreshTimer = null;
    this._network = options.network === void 0 ? defaultNetwork() : options.network;
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
      onClose: (sub) => this._subClosed(sub)
    });
    this._subs.set(jobId, job);
    if (this.state === "connected") {
      if (this._tokenSource() && !this._tokenJobs.has(jobId)) {
        this._reconnectNow("token does not cover a new job");
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
      fetch: this._fetch
    });
    setTimeout(() => job._applyManifest(manifest), 0);
    return job;
  }
  /** @param {JobSubscription} sub */
  _subClosed(sub) {
    if (this._subs.get(sub.jobId) !== sub) return;
    this._subs.delete(sub.jobId);
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
        this._token = await source.call(this, { jobs }) ?? null;
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
    ws.onmessage = (event) => {
      if (gen !== this._gen) return;
      this._armWatchdog(gen);
      const data = event.data;
      this._enqueue(gen, () => this._frame(gen, data));
    };
    ws.onclose = (event) => {
      this._enqueue(gen, () => this._closed(gen, event.code, event.reason));
    };
    ws.onerror = () => {
    };
  }
  /**
   * Run `task` after every earlier frame of this client, unless its socket was abandoned meanwhile.
   * @param {number} gen
   * @param {() => void | Promise<void>} task
   */
  _enqueue(gen, task) {
    this._queue = this._queue.then(() => gen === this._gen ? task() : void 0).catch((err) => this.emit("error", { code: "internal", message: errorMessage(err) }));
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
    let frame;
    try {
      frame = decodeFrame(
        /** @type {ArrayBuffer} */
        data
      );
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
        this._pingMs = frame.ping * 1e3;
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
        if (!job) return;
        const outcome = await job._frame(frame);
        if (outcome === "resync" && gen === this._gen) {
          this.emit("error", {
            code: "out_of_order",
            message: `job ${frame.job}: frame out of order, resuming`
          });
          this._abandon(CloseCode.GOING_AWAY, "resync", true);
        }
        return;
      }
      case "ping":
        this._send({ t: "pong", n: frame.n });
        return;
      case "err": {
        const job = frame.job ? this._subs.get(frame.job) : void 0;
        const message = String(frame.message ?? frame.code);
        if (IGNORED_ERROR_CODES.has(frame.code)) return;
        if (job && frame.code === "media_unavailable") {
          job._itemUnavailable(frame.code, message);
          return;
        }
        if (job && this._tokenSource() && AUTH_ERROR_CODES.has(frame.code) && !this._authRetried) {
          this._authRetried = true;
          this._token = null;
          this._abandon(CloseCode.TOKEN_EXPIRED, "token refused for a job", false);
          return;
        }
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
    this._abandon(1e3, reason, false);
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
    const body = more.length ? { jobs: more } : {};
    if (this.tokenTtl !== void 0) body.ttl_s = this.tokenTtl;
    let answer;
    try {
      answer = await this._http(`/v1/jobs/${encodeURIComponent(first)}/tokens`, { method: "POST", body });
    } catch (err) {
      if (err instanceof RelayHttpError && err.code === "no_auth") return null;
      throw err;
    }
    const expiresAt = typeof answer?.expires_at === "number" ? answer.expires_at * 1e3 : null;
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
    let token;
    try {
      token = await this._mintFor(jobs);
    } catch (err) {
      if (gen !== this._gen) return;
      if (this._failIfTerminal(err, jobs)) return;
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
    const http = (
      /** @type {RelayHttpError} */
      err
    );
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
      ws?.close(1e3, "giving up");
    } catch {
    }
    this._token = null;
    this._tokenJobs = /* @__PURE__ */ new Set();
    this.emit("error", { code, message, fatal: true });
    for (const job of [...this._subs.values()]) job._fail(code, message);
    this._setState("disconnected");
    this.emit("disconnected", { code: 1e3, reason: message, reconnectIn: null });
  }
  /** @param {number} gen */
  _armWatchdog(gen) {
    if (this._pingMs <= 0 || this.state !== "connected") return;
    if (this._watchdog) clearTimeout(this._watchdog);
    this._watchdog = setTimeout(() => {
      if (gen === this._gen) {
        this.emit("error", {
          code: "ping_timeout",
          message: "no frame from the relay within the ping interval"
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
      ws?.close(1e3, "offline");
    } catch {
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
      ws?.close(1e3, "client closed");
    } catch {
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
    const headers = { accept: "application/json" };
    const bearer = init.anonymous ? null : this.apiKey ?? init.token;
    if (bearer) headers.authorization = `Bearer ${bearer}`;
    if (init.body !== void 0) headers["content-type"] = "application/json";
    const method = init.method ?? "GET";
    let response;
    try {
      response = await this._fetch(this.resolve(path), {
        method,
        headers,
        body: init.body === void 0 ? void 0 : JSON.stringify(init.body),
        signal: init.signal
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
      lookup: (sha256s, signal) => this._inputs.lookup(sha256s, signal)
    });
    return this._http("/v1/jobs", {
      method: "POST",
      body: options.policy ? { input: staged, policy: options.policy } : { input: staged },
      signal: options.signal
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
      body: options.ttl === void 0 ? {} : { ttl_s: options.ttl }
    });
  }
  /** @type {InputTransport} */
  get _inputs() {
    return {
      lookup: (sha256s, signal) => this._withInputToken(async (token) => {
        if (this._noInputLookup) return null;
        try {
          const answer = await this._http("/v1/inputs/lookup", {
            method: "POST",
            body: { sha256: sha256s },
            token,
            signal
          });
          return new Map(Object.entries(answer?.held ?? {}));
        } catch (err) {
          if (!(err instanceof RelayHttpError && (err.status === 404 || err.status === 405))) throw err;
          this._noInputLookup = true;
          return null;
        }
      }),
      held: (sha256, signal) => this._withInputToken(async (token) => {
        try {
          return await this._http(`/v1/inputs/${sha256}`, { token, signal });
        } catch (err) {
          if (err instanceof RelayHttpError && err.status === 404) return null;
          throw err;
        }
      }),
      put: (blob, sha256, onSent, signal) => this._withInputToken((token) => this._put(blob, sha256, token, onSent, signal))
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
      const current = this._inputToken ??= Promise.resolve().then(() => source());
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
        signal
      ).catch((err) => Promise.reject(unreachable(err, this.url)));
      return answerOf("PUT", path, status, statusText, text, context);
    }
    if (!this._fetch) throw new Error("no fetch() in this environment");
    let body = blob;
    if (typeof XMLHttpRequest === "undefined") {
      body = countedBody(blob, onSent);
      headers["content-length"] = String(blob.size);
    }
    let response;
    try {
      response = await this._fetch(this.resolve(path), {
        method: "PUT",
        headers,
        body,
        signal,
        ...{ duplex: "half" }
        // needed for a stream body; not in TypeScript's RequestInit yet
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
    return Array.isArray(body) ? body : body?.jobs ?? [];
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
      body: {}
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
    const body = {};
    if (options.ttl !== void 0) body.ttl_s = options.ttl;
    if (options.uses !== void 0) body.uses = options.uses;
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
};
function answerOf(method, path, status, statusText, text, context) {
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
function unreachable(err, url) {
  return err instanceof TypeError ? relayUnreachable(url, err) : err;
}
function credentialOf(bearer, apiKey) {
  if (!bearer) return null;
  return bearer === apiKey ? "key" : "token";
}
function jobOf(path) {
  const found = /^\/v1\/jobs\/([^/?]+)/.exec(path);
  return found ? decodeURIComponent(found[1]) : null;
}
var UPLOAD_PIECE = 64 * 1024;
function countedBody(blob, onRead) {
  let offset = 0;
  return new ReadableStream({
    async pull(controller) {
      if (offset >= blob.size) return controller.close();
      const end = Math.min(blob.size, offset + UPLOAD_PIECE);
      controller.enqueue(new Uint8Array(await blob.slice(offset, end).arrayBuffer()));
      offset = end;
      onRead(offset);
    }
  });
}
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
function errorMessage(err) {
  return err instanceof Error ? err.message : String(err);
}
export {
  Backoff,
  CloseCode,
  Emitter,
  FrameError,
  IntegrityError,
  JobSubscription,
  PROBLEMS,
  PodstreamClient,
  PodstreamError,
  PodstreamEvent,
  PodstreamFile,
  RelayHttpError,
  decodeFrame,
  encodeFrame,
  isTerminalClose,
  isTerminalStatus,
  itemRanges,
  jobEnded,
  sentence,
  sha256Hex,
  substituteFiles
};
