// The client against the real system: relay + RunPod emulator + one worker process running the tiny
// pipelines on CPU (test/stack.js). Files are real MP4/PNG bytes made by the worker and checked against the
// relay's manifest.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, test } from "node:test";
import { WebSocket } from "ws";
import { PodstreamClient } from "../src/client.js";
import { Stack, unavailable } from "./stack.js";

const missing = unavailable();
if (missing && process.env.CI === "true") throw new Error(`integration test cannot run in CI: ${missing}`);
if (missing) console.warn(`\n!!! SKIPPING the relay integration tests: ${missing} !!!\n`);

/** @type {Stack} */
let stack;
before(async () => {
  if (!missing) stack = await new Stack({ chunkBytes: 4096 }).start();
});
after(async () => {
  await stack?.stop();
});

/** @param {import("node:test").TestContext} t */
function newClient(t) {
  const client = new PodstreamClient({
    url: stack.relayUrl,
    apiKey: stack.apiKey,
    getToken: ({ jobs }) => stack.token(jobs),
    WebSocket,
    network: null,
    backoff: { minDelay: 50, maxDelay: 500 },
  });
  t.after(() => client.close());
  return client;
}

/** @param {Uint8Array} bytes */
const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

/**
 * @param {number} n
 * @param {{bad?: number[]}} [options] indices of items whose image is not an image
 */
function videoInput(n, options = {}) {
  const png = Buffer.from(
    // a 2x2 PNG: the worker resizes it to the requested size
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg==",
    "base64",
  ).toString("base64");
  const items = Array.from({ length: n }, (_, i) => ({
    id: `clip-${i}`,
    image: options.bad?.includes(i) ? "bm90IGFuIGltYWdl" : png,
    seed: i,
  }));
  return { task: "image-to-video", items, params: { width: 64, height: 64, frames: 8, steps: 2 } };
}

/** @param {number} n */
function imageInput(n) {
  const items = Array.from({ length: n }, (_, i) => ({ id: `img-${i}`, prompt: `picture ${i}`, seed: i }));
  return { task: "text-to-image", items, params: { width: 64, height: 64, steps: 2 } };
}

/**
 * Every file of `job` (after done) as {index, sha256, size, mime}, and the bytes' first box for MP4s.
 * @param {import("../src/subscription.js").JobSubscription} job
 */
async function collect(job) {
  const files = [];
  for await (const file of job.files()) {
    const bytes = new Uint8Array(await (await file.blob()).arrayBuffer());
    files.push({ index: file.index, sha256: sha256(bytes), size: bytes.byteLength, mime: file.mime, bytes });
  }
  return files;
}

/**
 * The relay's manifest entries as {index, sha256, size, mime}.
 * @param {PodstreamClient} client
 * @param {string} id
 */
async function manifestFiles(client, id) {
  const manifest = await client.getJob(id);
  return (manifest.items ?? []).map((/** @type {any} */ e) => ({
    index: e.item,
    sha256: e.sha256,
    size: e.size,
    mime: e.mime,
  }));
}

/** @param {Array<{index: number, sha256: string, size: number, mime: string}>} files */
const summary = (files) =>
  files.map(({ index, sha256: hash, size, mime }) => ({ index, sha256: hash, size, mime }));

test(
  "a job of N files arrives whole over the real relay; a bad item fails alone",
  { skip: !!missing },
  async (t) => {
    const client = newClient(t);
    const submitted = await client.submit(videoInput(5, { bad: [2] }));
    const job = client.subscribe(submitted.id);
    /** @type {any[]} */
    const errors = [];
    job.on("error", (e) => errors.push(e));
    const steps = new Set();
    job.on("progress", (p) => p.phase === "generate" && steps.add(p.item));
    const files = await collect(job);
    const done = await job.finished;
    assert.equal(done.status, "COMPLETED");
    assert.deepEqual(
      files.map((f) => f.index),
      [0, 1, 3, 4],
    );
    for (const file of files) {
      assert.equal(file.mime, "video/mp4");
      assert.equal(Buffer.from(file.bytes.subarray(4, 8)).toString("latin1"), "ftyp", "an MP4 file");
    }
    assert.deepEqual(summary(files), await manifestFiles(client, submitted.id));
    assert.deepEqual(
      errors.map((e) => [e.item, e.fatal]),
      [[2, false]],
    );
    assert.ok(steps.size > 0, "generation progress was reported");
  },
);

test(
  "relay restart and client-side drops mid-stream: every file arrives exactly once",
  { skip: !!missing },
  async (t) => {
    const client = newClient(t);
    const total = 10;
    const submitted = await client.submit(imageInput(total));
    const job = client.subscribe(submitted.id);
    /** @type {number[]} */
    const closeCodes = [];
    client.on("disconnected", ({ code }) => closeCodes.push(code));
    /** @type {number[]} */
    const delivered = [];
    let restart = /** @type {Promise<void> | null} */ (null);
    let beforeRestart = -1;
    let drops = 0;
    job.on("item", (file) => {
      delivered.push(file.index);
      if (delivered.length === 2 && !restart) {
        beforeRestart = delivered.length;
        // server side: bye 4000, the socket closes, the relay comes back
        restart = stack.restartRelay();
      }
    });
    job.on("progress", (p) => {
      // client side, once the bye 4000 reached the socket (so these bytes come from the relay that is back:
      // not from when `restartRelay` returns, by which time a loaded machine may have delivered them all):
      // the socket drops in the middle of an item's bytes, twice
      const byeSeen = closeCodes.includes(4000);
      if (p.phase === "download" && p.received > 0 && p.received < p.size && drops < 2 && byeSeen) {
        drops += 1;
        /** @type {any} */ (client)._ws?.terminate();
      }
    });
    /** @type {Set<number>} */
    const reported = new Set();
    job.on("error", (e) => e.item !== null && reported.add(e.item));
    const files = await collect(job);
    await restart;
    assert.equal(new Set(delivered).size, delivered.length, `no file twice: ${delivered}`);
    assert.deepEqual(
      summary(files),
      await manifestFiles(client, submitted.id),
      "exactly what the relay holds",
    );
    assert.deepEqual(
      [...delivered].sort((a, b) => a - b),
      Array.from({ length: total }, (_, i) => i),
      `every file arrived (delivered ${delivered}; reported as failed: ${[...reported]})`,
    );
    assert.ok(beforeRestart > 0 && beforeRestart < total, "the restart came mid-job");
    assert.equal(drops, 2, "the client dropped its socket mid-item twice");
    assert.ok(closeCodes.includes(4000), `the relay said bye 4000 (server going away): ${closeCodes}`);
  },
);

test("late join, resume from a seq, and URL mode replay a finished job", { skip: !!missing }, async (t) => {
  const client = newClient(t);
  const submitted = await client.submit(imageInput(3));
  const live = client.subscribe(submitted.id);
  /** @type {number[]} */
  const itemSeqs = [];
  live.on("item", (file) => itemSeqs.push(file.seq));
  const first = summary(await collect(live));
  assert.equal(first.length, 3);

  const late = newClient(t).subscribe(submitted.id);
  assert.deepEqual(summary(await collect(late)), first, "a late subscriber from 0 gets the same files");

  const resumed = newClient(t).subscribe(submitted.id, { from: itemSeqs[0] });
  assert.deepEqual(
    summary(await collect(resumed)).map((f) => f.index),
    [1, 2],
    "from the seq of item 0: only what follows it",
  );

  const urlMode = newClient(t).subscribe(submitted.id, { inline: false });
  const viaUrls = await collect(urlMode);
  assert.deepEqual(summary(viaUrls), first, "inline: false fetches each file from its media URL, verified");

  const opened = await newClient(t).open(submitted.id);
  assert.equal(opened.inline, false, "a finished job opens from its manifest alone");
  assert.deepEqual(summary(await collect(opened)), first);
});

/**
 * A client of the real relay with only an API key: no getToken.
 * @param {import("node:test").TestContext} t
 * @param {Partial<import("../src/client.js").ClientOptions>} [options]
 */
function keyClient(t, options = {}) {
  const client = new PodstreamClient({
    url: stack.relayUrl,
    apiKey: stack.apiKey,
    WebSocket,
    network: null,
    backoff: { minDelay: 50, maxDelay: 500 },
    ...options,
  });
  t.after(() => client.close());
  return client;
}

/**
 * Subscribe with `client` to `jobId` and wait for the subscription to end; what the caller saw.
 * @param {PodstreamClient} client
 * @param {string} jobId
 */
async function failedSubscription(client, jobId) {
  /** @type {any[]} */
  const clientErrors = [];
  client.on("error", (e) => clientErrors.push(e));
  /** @type {any[]} */
  const disconnects = [];
  client.on("disconnected", (e) => disconnects.push(e));
  const job = client.subscribe(jobId);
  /** @type {any[]} */
  const jobErrors = [];
  job.on("error", (e) => jobErrors.push(e));
  const rejected = await job.finished.then(
    () => assert.fail("finished should reject"),
    (/** @type {any} */ err) => err,
  );
  return { clientErrors, disconnects, jobErrors, rejected };
}

test(
  "given only an API key, the client mints its own token and gets every file",
  { skip: !!missing },
  async (t) => {
    const client = keyClient(t);
    /** @type {any[]} */
    const minted = [];
    client.on("token", (e) => minted.push(e));
    const submitted = await client.submit(imageInput(2));
    const job = client.subscribe(submitted.id);
    const files = await collect(job);
    assert.equal((await job.finished).status, "COMPLETED");
    assert.deepEqual(summary(files), await manifestFiles(client, submitted.id));
    assert.deepEqual(minted[0].jobs, [submitted.id]);
    assert.ok(minted[0].expiresAt > Date.now(), "the relay said when the token expires");
  },
);

test(
  "terminal failures reach the caller at once: a wrong key, a key that may not read, an unknown job",
  { skip: !!missing },
  async (t) => {
    const submitted = await keyClient(t).submit(imageInput(1));

    const wrong = await failedSubscription(
      keyClient(t, { apiKey: "psk_not-a-key-of-this-relay" }),
      submitted.id,
    );
    assert.deepEqual(
      wrong.jobErrors.map((e) => [e.code, e.fatal, e.message]),
      [["key_rejected", true, `no token for ${submitted.id}: the relay rejected the API key`]],
    );
    assert.equal(wrong.rejected.code, "key_rejected");
    assert.match(wrong.rejected.message, /the relay rejected the API key/);
    assert.deepEqual(wrong.clientErrors.map((e) => [e.code, e.fatal]), [["key_rejected", true]]); // prettier-ignore
    assert.deepEqual(
      wrong.disconnects.map((e) => e.reconnectIn),
      [null],
      "it does not reconnect",
    );

    const reader = await failedSubscription(keyClient(t, { apiKey: stack.writeOnlyKey }), submitted.id);
    assert.deepEqual(
      reader.jobErrors.map((e) => [e.code, e.fatal, e.message]),
      [
        [
          "not_allowed",
          true,
          `no token for ${submitted.id}: the relay does not allow this: this API key lacks the scope jobs:read`,
        ],
      ],
    );
    assert.deepEqual(reader.disconnects.map((e) => e.reconnectIn), [null]); // prettier-ignore

    const client = keyClient(t);
    const unknown = await failedSubscription(client, "no-such-job");
    assert.deepEqual(
      unknown.jobErrors.map((e) => [e.code, e.fatal]),
      [["job_not_found", true]],
    );
    assert.equal(unknown.rejected.message, "job no-such-job: the relay does not know the job no-such-job");
    const alive = await collect(client.subscribe(submitted.id));
    assert.equal(alive.length, 1, "the connection goes on for the jobs that exist");

    // A token the relay does not know closes the socket (4501): the same cause has one code, whichever
    // channel said it, and the sentence names the token, not a key.
    const badToken = await failedSubscription(
      keyClient(t, { apiKey: undefined, getToken: () => "abc" }),
      submitted.id,
    );
    const refused = ["token_rejected", true, "the relay rejected the token: it is not one this relay issued"];
    assert.deepEqual(
      badToken.clientErrors.map((e) => [e.code, e.fatal, e.message]),
      [refused],
    );
    assert.deepEqual(
      badToken.jobErrors.map((e) => [e.code, e.fatal, e.message]),
      [refused],
    );
    assert.equal(badToken.rejected.code, "token_rejected");
    assert.deepEqual(badToken.disconnects.map((e) => e.reconnectIn), [null]); // prettier-ignore
  },
);

test("a minted token is renewed on the open socket before it expires", { skip: !!missing }, async (t) => {
  const client = keyClient(t, { tokenTtl: 2 });
  // One worker: a long job first keeps the next one queued for as long as this test needs.
  const blocker = await client.submit(videoInput(40));
  t.after(() => client.cancel(blocker.id));
  const waiting = await client.submit(imageInput(1));
  /** @type {number[]} */
  const disconnects = [];
  client.on("disconnected", ({ code }) => disconnects.push(code));
  let connects = 0;
  client.on("connected", () => (connects += 1));
  const renewed = new Promise((resolve) => {
    let minted = 0;
    client.on("token", () => (minted += 1) === 3 && resolve(undefined)); // the first, then two renewals
  });
  const job = client.subscribe(waiting.id);
  await renewed;
  assert.notEqual(job.status, "COMPLETED", "still waiting for the worker");
  await client.cancel(waiting.id);
  const done = await job.finished;
  assert.equal(done.status, "CANCELLED");
  assert.equal(connects, 1, "one socket the whole time");
  assert.deepEqual(disconnects, [], "the relay never closed it (no 4003 token expiry)");
});
