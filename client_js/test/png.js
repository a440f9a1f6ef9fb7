// Real PNG files for the upload tests, made in Node (no image library): each is a distinct colour field with
// noise, so different seeds give different bytes and the files do not compress to nothing.
import { deflateSync } from "node:zlib";

/** @type {Uint32Array} */
const CRC_TABLE = new Uint32Array(256).map((_, n) => {
  let c = n;
  for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

/** @param {Uint8Array} bytes */
function crc32(bytes) {
  let c = 0xffffffff;
  for (const byte of bytes) c = CRC_TABLE[(c ^ byte) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/**
 * @param {string} type
 * @param {Uint8Array} data
 */
function chunk(type, data) {
  const out = Buffer.alloc(12 + data.byteLength);
  out.writeUInt32BE(data.byteLength, 0);
  out.write(type, 4, "latin1");
  out.set(data, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.byteLength)), 8 + data.byteLength);
  return out;
}

/**
 * The colour of image `seed` (what the tests may look for in an output).
 * @param {number} seed
 * @returns {[number, number, number]}
 */
export function colourOf(seed) {
  return [(seed * 67) % 256, (seed * 151 + 80) % 256, (seed * 29 + 160) % 256];
}

/**
 * An RGB PNG of `width` x `height`: the colour of `seed` with some noise.
 * @param {number} seed
 * @param {number} [width]
 * @param {number} [height]
 * @returns {Buffer}
 */
export function pngOf(seed, width = 64, height = 64) {
  const [r, g, b] = colourOf(seed);
  const raw = Buffer.alloc((width * 3 + 1) * height);
  let x = seed * 2654435761 + 7;
  for (let row = 0; row < height; row += 1) {
    const start = row * (width * 3 + 1); // filter byte 0, then the row's pixels
    for (let col = 0; col < width; col += 1) {
      x = (x * 1103515245 + 12345) >>> 0;
      const noise = (x >>> 26) - 32;
      const at = start + 1 + col * 3;
      raw[at] = Math.max(0, Math.min(255, r + noise));
      raw[at + 1] = Math.max(0, Math.min(255, g + noise));
      raw[at + 2] = Math.max(0, Math.min(255, b + noise));
    }
  }
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8); // 8 bits, RGB, deflate, no filter, no interlace
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", deflateSync(raw)),
    chunk("IEND", new Uint8Array(0)),
  ]);
}
