// Uploading job inputs (src/inputs.js through PodstreamClient) against the fake relay's HTTP side
// (test/fake_relay.js FakeInputs): skip what the relay holds (one lookup per batch; per file from a relay
// without lookups), retry network errors and 5xx (asking again first), never a 4xx, byte progress, and
// submit() replacing Files and Blobs by their refs.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import { PodstreamClient, RelayHttpError } from "../src/client.js";
import { FakeInputs, bytesOf } from "./fake_relay.js";

/**
 * A fake relay and a client of it, both stopped when the test ends.
 * @param {import("node:test").TestContext} t
 * @param {{keys?: string[]}} [relayOptions]
 * @param {import("../src/client.js").ClientOptions} [clientOptions]
 */
async function setup(t, relayOptions = {}, clientOptions = {}) {
  const relay = new FakeInputs(relayOptions);
  const url = await relay.listen();
  const client = new PodstreamClient({
    url,
    network: null,
    backoff: { minDelay: 5, maxDelay: 20 },
    ...clientOptions,
  });
  t.after(async () => {
    client.close();
    await relay.close();
  });
  return { relay, client };
}

/**
 * A Blob that starts like a PNG (the fake relay checks only the magic bytes).
 * @param {number} size
 * @param {number} seed
 */
function png(size, seed) {
  const bytes = bytesOf(size, seed);
  bytes.set([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return new Blob([bytes], { type: "image/png" });
}

/** @param {Blob} blob */
async function sha256(blob) {
  return createHash("sha256")
    .update(new Uint8Array(await blob.arrayBuffer()))
    .digest("hex");
}

test("uploadInput: PUT once with its sha256, with byte progress to the total; the same bytes again are skipped", async (t) => {
  const { relay, client } = await setup(t, { keys: ["key-1"] }, { apiKey: "key-1" });
  const blob = png(1_000_000, 1);
  const hex = await sha256(blob);
  /** @type {number[]} */
  const loaded = [];
  const answer = await client.uploadInput(blob, {
    onProgress: (p) => {
      assert.equal(p.total, blob.size);
      loaded.push(p.loaded);
    },
  });
  assert.deepEqual(
    { ...answer, url: undefined, expires_at: undefined },
    {
      ref: `input:${hex}`,
      sha256: hex,
      bytes: blob.size,
      mime: "image/png",
      url: undefined,
      expires_at: undefined,
    },
  );
  assert.match(answer.url, /^http:\/\/127\.0\.0\.1:\d+\/v1\/inputs\//);
  assert.deepEqual(relay.log(), ["POST /v1/inputs/lookup 200", "PUT /v1/inputs 201"]);
  assert.deepEqual(relay.lookedUp, [[hex]]);
  assert.ok(relay.requests.every((r) => r.auth === "key-1"));
  assert.equal(relay.requests[1].bytes, blob.size);
  assert.equal(loaded[0], 0);
  assert.equal(loaded.at(-1), blob.size);
  assert.ok(loaded.length > 3, `progress along the way: ${loaded}`);
  assert.deepEqual(
    [...loaded].sort((a, b) => a - b),
    loaded,
    "only forward",
  );

  /** @type {number[]} */
  const again = [];
  const copy = new Blob([await blob.arrayBuffer()]); // another Blob, the same bytes
  assert.deepEqual(
    (await client.uploadInput(copy, { onProgress: (p) => again.push(p.loaded) })).ref,
    answer.ref,
  );
  assert.deepEqual(relay.log().slice(2), ["POST /v1/inputs/lookup 200"], "held: not uploaded again");
  assert.deepEqual(again, [0, blob.size]);
});

test("a 503 and a dropped connection are retried (asking first whether the relay holds the file)", async (t) => {
  const { relay, client } = await setup(t);
  relay.faults = [503, "drop"];
  const blob = png(200_000, 2);
  const hex = await sha256(blob);
  /** @type {number[]} */
  const loaded = [];
  const answer = await client.uploadInput(blob, { onProgress: (p) => loaded.push(p.loaded) });
  assert.equal(answer.ref, `input:${hex}`);
  assert.deepEqual(relay.log(), [
    "POST /v1/inputs/lookup 200",
    "PUT /v1/inputs 503",
    "POST /v1/inputs/lookup 200",
    "PUT /v1/inputs 0",
    "POST /v1/inputs/lookup 200",
    "PUT /v1/inputs 201",
  ]);
  assert.deepEqual(relay.lookedUp, [[hex], [hex], [hex]]);
  assert.equal(loaded.at(-1), blob.size);
  assert.ok(relay.held.has(hex));
});

test("resume: a try that the relay stored before failing is not uploaded again", async (t) => {
  const { relay, client } = await setup(t);
  relay.faults = ["store-then-503"];
  const blob = png(5000, 3);
  const hex = await sha256(blob);
  assert.equal((await client.uploadInput(blob)).sha256, hex);
  assert.deepEqual(relay.log(), [
    "POST /v1/inputs/lookup 200",
    "PUT /v1/inputs 503",
    "POST /v1/inputs/lookup 200",
  ]);
});

test("a 4xx is final: 415 throws the relay's code after one PUT", async (t) => {
  const { relay, client } = await setup(t);
  const text = new Blob(["not an image"], { type: "text/plain" });
  await assert.rejects(client.uploadInput(text), (err) => {
    assert.ok(err instanceof RelayHttpError);
    assert.equal(err.status, 415);
    assert.equal(err.code, "unsupported_media_type");
    assert.equal(err.method, "PUT");
    return true;
  });
  assert.deepEqual(
    relay.log().map((line) => line.split(" ")[0] + " " + line.split(" ")[2]),
    ["POST 200", "PUT 415"],
  );
});

test("5xx after every retry: the last error is thrown; 507 (quota) is not retried", async (t) => {
  const { relay, client } = await setup(t);
  relay.faults = [503, 502, 500];
  await assert.rejects(client.uploadInput(png(100, 4), { retries: 2 }), { status: 500, code: "unavailable" });
  assert.equal(relay.requests.filter((r) => r.method === "PUT").length, 3);
  relay.faults = [507];
  await assert.rejects(client.uploadInput(png(100, 5)), { status: 507 });
  assert.equal(relay.requests.filter((r) => r.method === "PUT").length, 4);
});

test("an aborted upload rejects with the signal's reason and stops retrying", async (t) => {
  const { relay, client } = await setup(t, {}, { backoff: { minDelay: 5000, maxDelay: 5000 } });
  relay.faults = [503, 503, 503];
  const abort = new AbortController();
  const upload = client.uploadInput(png(100, 6), { signal: abort.signal });
  while (!relay.requests.some((r) => r.method === "PUT")) await new Promise((r) => setTimeout(r, 5));
  abort.abort(new Error("user cancelled"));
  await assert.rejects(upload, /user cancelled/);
  assert.equal(relay.requests.filter((r) => r.method === "PUT").length, 1);
});

test("submit: Files and Blobs become refs, each content uploaded once, with progress over all files", async (t) => {
  const { relay, client } = await setup(t);
  const a = png(30_000, 7);
  const b = new File([png(50_000, 8)], "b.png", { type: "image/png" });
  const aCopy = new Blob([await a.arrayBuffer()], { type: "image/png" });
  relay.faults = [503]; // one upload is retried on the way
  const images = [a, b, a, "https://example.com/cat.png", aCopy];
  const input = { task: "image-to-video", items: images.map((image, i) => ({ id: `clip-${i}`, image })) };
  /** @type {import("../src/inputs.js").BatchProgress[]} */
  const events = [];
  const submitted = await client.submit(input, { onUploadProgress: (p) => events.push(p) });
  assert.equal(submitted.id, "job-1");
  const [ha, hb] = [await sha256(a), await sha256(b)];
  assert.deepEqual(
    relay.jobs[0].input.items.map((/** @type {any} */ item) => item.image),
    [`input:${ha}`, `input:${hb}`, `input:${ha}`, "https://example.com/cat.png", `input:${ha}`],
  );
  assert.deepEqual(relay.jobs[0].input.items[1], { id: "clip-1", image: `input:${hb}` });
  assert.equal(input.items[0].image, a, "the caller's input is left as it was");
  assert.equal(
    relay.log().filter((line) => line === "PUT /v1/inputs 201").length,
    2,
    "two contents, two uploads",
  );
  assert.deepEqual([...new Set(relay.lookedUp.flat())].sort(), [ha, hb].sort(), "each content looked up");
  assert.equal(relay.lookedUp.flat().length, 3, "in the batch, and again before the retried upload");
  assert.ok(!relay.log().some((line) => line.startsWith("GET ")), "no lookup per file");
  const total = a.size + b.size + aCopy.size;
  assert.deepEqual(events.at(-1), { loaded: total, total, files: 3, done: 3 });
  assert.deepEqual(events[0], { loaded: 0, total, files: 3, done: 0 });
  assert.ok(events.every((e) => e.loaded <= e.total && e.done <= e.files));
});

test("submit without Blobs posts the input as given; a failed upload fails the submit", async (t) => {
  const { relay, client } = await setup(t);
  await client.submit({ task: "text-to-image", items: [{ prompt: "a fox" }] });
  assert.deepEqual(relay.log(), ["POST /v1/jobs 201"]);
  const bad = new Blob(["GIF? no"]);
  await assert.rejects(
    client.submit({ items: [{ image: png(100, 9) }, { image: bad }] }, { uploadConcurrency: 1 }),
    { code: "unsupported_media_type" },
  );
  assert.equal(relay.jobs.length, 1, "nothing submitted");
});

test("without an API key, uploads use getInputToken's token, asked for again after a 401", async (t) => {
  const { relay, client: backend } = await setup(t, { keys: ["key-1"] }, { apiKey: "key-1" });
  let calls = 0;
  const browser = new PodstreamClient({
    url: relay.url,
    network: null,
    getInputToken: async () => {
      calls += 1;
      return calls === 1 ? "stale-token" : (await backend.mintInputToken({ ttl: 60 })).token;
    },
  });
  t.after(() => browser.close());
  const answer = await browser.uploadInput(png(1000, 10));
  assert.equal(calls, 2);
  assert.deepEqual(
    relay.requests.map((r) => `${r.method} ${r.status} ${r.auth}`),
    [`POST 401 stale-token`, "POST 201 key-1", `POST 200 input-token-1`, `PUT 201 input-token-1`],
  );
  await browser.uploadInput(png(1000, 11));
  assert.equal(calls, 2, "the token is kept");
  assert.ok(relay.held.has(answer.sha256));
});

test("submit: one lookup for a batch, only the missing files are uploaded, the held ones keep their answer", async (t) => {
  const { relay, client } = await setup(t);
  const blobs = Array.from({ length: 9 }, (_, i) => png(2000 + i, 20 + i));
  for (const blob of blobs.slice(0, 5)) await client.uploadInput(blob);
  relay.requests.length = 0;
  relay.lookedUp.length = 0;
  const input = { task: "image-to-video", items: blobs.map((image, i) => ({ id: `c${i}`, image })) };
  /** @type {import("../src/inputs.js").BatchProgress[]} */
  const events = [];
  await client.submit(input, { onUploadProgress: (p) => events.push(p), uploadConcurrency: 3 });
  const hexes = await Promise.all(blobs.map(sha256));
  assert.deepEqual(relay.lookedUp.flat().sort(), [...hexes].sort(), "every file asked about once");
  assert.ok(relay.lookedUp.length < blobs.length, `lookups of several files: ${relay.lookedUp.length}`);
  assert.equal(relay.requests.filter((r) => r.method === "PUT").length, 4, "only the missing ones");
  assert.ok(!relay.log().some((line) => line.includes(" 404")), "no 404 for a file the relay lacks");
  assert.deepEqual(
    relay.jobs[0].input.items.map((/** @type {any} */ item) => item.image),
    hexes.map((hex) => `input:${hex}`),
  );
  const total = blobs.reduce((sum, blob) => sum + blob.size, 0);
  assert.deepEqual(events.at(-1), { loaded: total, total, files: 9, done: 9 });
});

test("a relay without the lookup route (405): each file is asked for (GET), once the lookup was refused", async (t) => {
  const { relay, client } = await setup(t, { lookups: false });
  const held = png(3000, 40);
  const fresh = [png(3001, 41), png(3002, 42)];
  const [heldHex] = [await sha256(held)];
  await client.uploadInput(held);
  assert.deepEqual(relay.log(), [
    "POST /v1/inputs/lookup 405",
    `GET /v1/inputs/${heldHex} 404`,
    "PUT /v1/inputs 201",
  ]);
  relay.requests.length = 0;
  const input = { items: [held, ...fresh].map((image) => ({ image })) };
  await client.submit(input, { uploadConcurrency: 1 });
  assert.deepEqual(
    relay.log().map((line) => line.replace(/[0-9a-f]{64}/, "<sha256>")),
    [
      "GET /v1/inputs/<sha256> 200",
      "GET /v1/inputs/<sha256> 404",
      "PUT /v1/inputs 201",
      "GET /v1/inputs/<sha256> 404",
      "PUT /v1/inputs 201",
      "POST /v1/jobs 201",
    ],
    "the lookup is not tried again by this client",
  );
});

test("a lookup answering 503 is retried (in a batch: each file asks on its own); a 403 fails the submit before anything is uploaded", async (t) => {
  const { relay, client } = await setup(t);
  relay.lookupFaults = [503];
  const blob = png(4000, 50);
  assert.equal((await client.uploadInput(blob)).sha256, await sha256(blob));
  assert.deepEqual(relay.log(), [
    "POST /v1/inputs/lookup 503",
    "POST /v1/inputs/lookup 200",
    "PUT /v1/inputs 201",
  ]);
  relay.requests.length = 0;
  relay.lookupFaults = [503];
  const pair = [png(4003, 53), png(4004, 54)];
  await client.submit({ items: pair.map((image) => ({ image })) }, { uploadConcurrency: 1 });
  assert.equal(relay.log()[0], "POST /v1/inputs/lookup 503");
  assert.deepEqual(relay.log().slice(1).sort(), [
    "POST /v1/inputs/lookup 200",
    "POST /v1/inputs/lookup 200",
    "POST /v1/jobs 201",
    "PUT /v1/inputs 201",
    "PUT /v1/inputs 201",
  ]);
  relay.requests.length = 0;
  relay.lookupFaults = [403];
  await assert.rejects(client.submit({ items: [{ image: png(4001, 51) }, { image: png(4002, 52) }] }), {
    status: 403,
  });
  assert.deepEqual(relay.log(), ["POST /v1/inputs/lookup 403"]);
  assert.equal(relay.jobs.length, 1, "only the one before");
});
