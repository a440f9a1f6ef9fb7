// Uploads against the real system (test/stack.js: relay + emulator + one tiny CPU worker): Files and Blobs
// in submit() are staged in the relay and the job carries refs; the worker fetches them from the relay (it
// may: the stack sets PODSTREAM_INPUT_HOSTS for it) and every item completes.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, test } from "node:test";
import { WebSocket } from "ws";
import { PodstreamClient, RelayHttpError } from "../src/client.js";
import { pngOf } from "./png.js";
import { Stack, unavailable } from "./stack.js";

const missing = unavailable();
if (missing && process.env.CI === "true") throw new Error(`integration test cannot run in CI: ${missing}`);
if (missing) console.warn(`\n!!! SKIPPING the input upload integration tests: ${missing} !!!\n`);

/** @type {Stack} */
let stack;
before(async () => {
  if (!missing) stack = await new Stack({ chunkBytes: 4096 }).start();
});
after(async () => {
  await stack?.stop();
});

/** @typedef {{method: string, path: string, bytes: number, status: number}} Call */

/**
 * A client with the API key whose HTTP calls are recorded.
 * @param {import("node:test").TestContext} t
 * @param {import("../src/client.js").ClientOptions} [options]
 */
function newClient(t, options = {}) {
  /** @type {Call[]} */
  const calls = [];
  /** @type {typeof fetch} */
  const recording = async (url, init) => {
    const response = await fetch(url, init);
    const body = init?.body;
    calls.push({
      method: init?.method ?? "GET",
      path: new URL(String(url)).pathname,
      bytes: typeof body === "string" ? Buffer.byteLength(body) : 0,
      status: response.status,
    });
    return response;
  };
  const client = new PodstreamClient({
    url: stack.relayUrl,
    apiKey: stack.apiKey,
    WebSocket,
    network: null,
    fetch: recording,
    backoff: { minDelay: 50, maxDelay: 500 },
    ...options,
  });
  t.after(() => client.close());
  return { client, calls };
}

/** @param {Uint8Array} bytes */
const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

test(
  "submit with 12 PNG Blobs: uploaded, sent as refs in a small job, every clip made; again: nothing uploaded",
  { skip: !!missing },
  async (t) => {
    const { client, calls } = newClient(t);
    const pngs = Array.from({ length: 12 }, (_, i) => pngOf(i, 96, 96));
    const blobs = pngs.map((png) => new Blob([png], { type: "image/png" }));
    const input = {
      task: "image-to-video",
      items: blobs.map((image, i) => ({ id: `clip-${i}`, image, seed: i })),
      params: { width: 64, height: 64, frames: 8, steps: 2 },
    };
    /** @type {import("../src/inputs.js").BatchProgress[]} */
    const progress = [];
    const submitted = await client.submit(input, { onUploadProgress: (p) => progress.push(p) });
    const total = pngs.reduce((sum, png) => sum + png.byteLength, 0);
    assert.deepEqual(progress.at(-1), { loaded: total, total, files: 12, done: 12 });
    assert.equal(calls.filter((c) => c.method === "PUT" && c.status === 201).length, 12);
    const post = /** @type {Call} */ (calls.find((c) => c.path === "/v1/jobs"));
    assert.ok(post.bytes < 3000, `the job is refs, not images: ${post.bytes} bytes (images: ${total})`);

    const job = client.subscribe(submitted.id);
    /** @type {any[]} */
    const errors = [];
    job.on("error", (e) => errors.push(e));
    const indices = [];
    for await (const file of job.files()) {
      assert.equal(file.mime, "video/mp4");
      indices.push(file.index);
    }
    assert.deepEqual(errors, []);
    assert.equal((await job.finished).status, "COMPLETED");
    assert.deepEqual(
      indices.sort((a, b) => a - b),
      Array.from({ length: 12 }, (_, i) => i),
    );
    const run = (await stack.emulatorStats()).routes.run;
    assert.ok(run.max_request_bytes < 20000, `RunPod's /run bodies stay small: ${run.max_request_bytes}`);

    calls.length = 0;
    const again = await client.submit(input); // the relay holds every image: only lookups (a few, batched)
    const lookups = calls.slice(0, -1);
    assert.ok(lookups.length >= 1 && lookups.length <= 12, `lookups: ${lookups.length}`);
    assert.ok(
      lookups.every((c) => c.method === "POST" && c.path === "/v1/inputs/lookup" && c.status === 200),
    );
    assert.deepEqual(
      calls.slice(-1).map((c) => `${c.method} ${c.path} ${c.status}`),
      ["POST /v1/jobs 201"],
    );
    assert.equal((await client.subscribe(again.id).finished).status, "COMPLETED");
  },
);

test(
  "uploadInput: the relay's answer; a text file is refused with its code",
  { skip: !!missing },
  async (t) => {
    const { client } = newClient(t);
    const png = pngOf(100);
    const answer = await client.uploadInput(new Blob([png]));
    assert.equal(answer.ref, `input:${sha256(png)}`);
    assert.equal(answer.sha256, sha256(png));
    assert.equal(answer.bytes, png.byteLength);
    assert.equal(answer.mime, "image/png");
    assert.ok(answer.expires_at > Date.now() / 1000);
    const fetched = await fetch(answer.url); // the signed URL the worker uses: no credential needed
    assert.equal(fetched.status, 200);
    assert.equal(sha256(new Uint8Array(await fetched.arrayBuffer())), answer.sha256);

    await assert.rejects(client.uploadInput(new Blob(["just text"], { type: "text/plain" })), (err) => {
      assert.ok(err instanceof RelayHttpError, String(err));
      assert.equal(err.status, 415);
      assert.equal(err.code, "unsupported_media_type");
      return true;
    });
  },
);

test(
  "a browser without the key uploads with an input token; the key's jobs may use what it uploaded",
  { skip: !!missing },
  async (t) => {
    const { client: backend } = newClient(t);
    const { client: browser, calls } = newClient(t, {
      apiKey: undefined,
      getInputToken: async () => (await backend.mintInputToken({ ttl: 60 })).token,
    });
    const answer = await browser.uploadInput(new Blob([pngOf(200)]));
    assert.deepEqual(
      calls.map((c) => `${c.method} ${c.path.replace(/[0-9a-f]{64}/, "<sha256>")} ${c.status}`),
      ["POST /v1/inputs/lookup 200", "PUT /v1/inputs 201"],
    );
    await assert.rejects(browser.listJobs(), { status: 401 }, "the token is good for inputs only");
    const input = {
      task: "image-to-video",
      items: [{ id: "from-browser", image: answer.ref }],
      params: { width: 64, height: 64, frames: 8, steps: 2 },
    };
    const submitted = await backend.submit(input);
    const files = [];
    for await (const file of backend.subscribe(submitted.id).files()) files.push(file.id);
    assert.deepEqual(files, ["from-browser"]);
  },
);
