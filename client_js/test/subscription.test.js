import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import { JobSubscription } from "../src/subscription.js";
import { bytesOf } from "./fake_relay.js";

/** @param {Uint8Array} data */
const sha = (data) => createHash("sha256").update(data).digest("hex");

/**
 * The frames a relay sends for an item record at `seq` with bytes `data` in chunks of `size`.
 * @param {number} seq
 * @param {number} item
 * @param {Uint8Array} data
 * @param {number} size
 * @returns {any[]}
 */
function itemFrames(seq, item, data, size, overrides = {}) {
  const frames = [
    {
      t: "ev",
      job: "j",
      seq,
      k: "item",
      item,
      id: `id${item}`,
      mime: "image/png",
      size: data.byteLength,
      sha256: sha(data),
      url: `/v1/jobs/j/media/${item}`,
      ...overrides,
    },
  ];
  let off = 0;
  do {
    const end = Math.min(off + size, data.byteLength);
    frames.push({
      t: "chunk",
      job: "j",
      seq,
      item,
      off,
      data: data.subarray(off, end),
      last: end === data.byteLength,
    });
    off = end;
  } while (off < data.byteLength);
  return frames;
}

/** @param {JobSubscription} job */
function record(job) {
  /** @type {any[]} */
  const events = [];
  for (const name of ["status", "progress", "item", "error", "done"]) {
    job.on(name, (payload) => events.push([name, payload]));
  }
  return events;
}

/**
 * @param {JobSubscription} job
 * @param {any[]} frames
 */
async function feed(job, frames) {
  const outcomes = [];
  for (const frame of frames) outcomes.push(await job._frame(frame));
  return outcomes;
}

test("records apply in order; chunks assemble into a verified Blob of the right MIME type", async () => {
  const job = new JobSubscription("j");
  const events = record(job);
  const data = bytesOf(1000, 1);
  await feed(job, [
    { t: "ev", job: "j", seq: 1, k: "status", status: "IN_PROGRESS" },
    { t: "ev", job: "j", seq: 2, k: "progress", item: 0, step: 1, steps: 4 },
    ...itemFrames(3, 0, data, 300),
    { t: "ev", job: "j", seq: 4, k: "done", status: "COMPLETED", items: 1, errors: 0 },
  ]);
  assert.equal(job.lastSeq, 4);
  assert.equal(job.status, "COMPLETED");
  const [file] = job.results;
  assert.equal(file.index, 0);
  assert.equal(file.id, "id0");
  assert.equal(file.verified, "sha256");
  const blob = await file.blob();
  assert.equal(blob.type, "image/png");
  assert.deepEqual(new Uint8Array(await blob.arrayBuffer()), data);
  const downloads = events
    .filter(([n, p]) => n === "progress" && p.phase === "download")
    .map(([, p]) => p.received);
  assert.deepEqual(downloads, [0, 300, 600, 900, 1000]);
  assert.deepEqual(
    events.map(([n]) => n).filter((n) => n !== "progress"),
    ["status", "item", "done"],
  );
  assert.deepEqual(await job.finished, { seq: 4, status: "COMPLETED", items: 1, errors: 0 });
});

test("a record kind from a newer relay is reported, skipped, and the job goes on", async () => {
  const job = new JobSubscription("j");
  const events = record(job);
  const data = bytesOf(20, 3);
  const outcomes = await feed(job, [
    { t: "ev", job: "j", seq: 1, k: "status", status: "IN_PROGRESS" },
    { t: "ev", job: "j", seq: 2, k: "hologram", frames: 3 },
    ...itemFrames(3, 0, data, 8),
    { t: "ev", job: "j", seq: 4, k: "done", status: "COMPLETED", items: 1, errors: 0 },
  ]);
  assert.ok(
    outcomes.every((o) => o === undefined),
    "no resync, no close",
  );
  const [unknown] = events.filter(([n]) => n === "error").map(([, p]) => p);
  assert.equal(unknown.code, "unknown_kind");
  assert.equal(unknown.seq, 2);
  assert.equal(unknown.fatal, false);
  assert.match(unknown.message, /hologram/);
  assert.equal(job.results.length, 1);
  assert.deepEqual(await job.finished, { seq: 4, status: "COMPLETED", items: 1, errors: 0 });
});

test("resume: records at or before lastSeq are dropped, so a replay applies nothing twice", async () => {
  const job = new JobSubscription("j", { from: 2 });
  const events = record(job);
  const data = bytesOf(10, 2);
  const frames = [
    { t: "ev", job: "j", seq: 1, k: "status", status: "IN_PROGRESS" },
    { t: "ev", job: "j", seq: 2, k: "progress", item: 0, step: 1, steps: 1 },
    ...itemFrames(3, 0, data, 4),
  ];
  await feed(job, frames);
  await feed(job, frames); // the relay replays after a reconnect
  assert.equal(job.results.length, 1);
  assert.equal(events.filter(([n]) => n === "status").length, 0);
  assert.equal(job.lastSeq, 3);
});

test("an item cut off mid-bytes is not applied; its replay from offset 0 completes it once", async () => {
  const job = new JobSubscription("j");
  const data = bytesOf(100, 3);
  const frames = itemFrames(1, 0, data, 30);
  await feed(job, frames.slice(0, 3)); // record + 2 of 4 chunks, then the connection dropped
  assert.equal(job.lastSeq, 0, "a partial item does not advance the cursor");
  assert.equal(job.results.length, 0);
  await feed(job, frames); // resumed from seq 0: the record and all chunks again
  assert.equal(job.results.length, 1);
  assert.deepEqual(new Uint8Array(await (await job.results[0].blob()).arrayBuffer()), data);
});

test("the cursor passes an item only with its verified Blob; stopped while finishing, it comes again", async () => {
  const job = new JobSubscription("j");
  const data = bytesOf(100, 4);
  const frames = itemFrames(1, 0, data, 30);
  await feed(job, frames.slice(0, -1));
  const finishing = job._frame(frames[frames.length - 1]); // the last chunk: verifying starts
  assert.equal(job.lastSeq, 0, "not while the bytes are being verified");
  await finishing;
  assert.equal(job.lastSeq, 1);

  const again = new JobSubscription("j");
  const RealBlob = globalThis.Blob;
  globalThis.Blob = class extends RealBlob {
    constructor() {
      super();
      throw new RangeError("out of memory"); // the file cannot be made
    }
  };
  try {
    await assert.rejects(feed(again, frames), RangeError);
  } finally {
    globalThis.Blob = RealBlob;
  }
  assert.equal(again.lastSeq, 0, "an item whose Blob was not made is not passed");
  assert.equal(again.results.length, 0);
  await feed(again, frames); // resumed from lastSeq: the record and its bytes again
  assert.equal(again.lastSeq, 1);
  assert.deepEqual(new Uint8Array(await (await again.results[0].blob()).arrayBuffer()), data);
});

test("gaps and out-of-order chunks ask for a resync instead of applying", async () => {
  const job = new JobSubscription("j");
  assert.deepEqual(await feed(job, [{ t: "ev", job: "j", seq: 2, k: "status", status: "X" }]), ["resync"]);
  assert.equal(job.lastSeq, 0);
  const data = bytesOf(100, 4);
  const frames = itemFrames(1, 0, data, 40);
  assert.deepEqual(await feed(job, [frames[0], frames[2]]), [undefined, "resync"]); // skipped a chunk
  const fresh = new JobSubscription("j");
  assert.deepEqual(await feed(fresh, [frames[1]]), ["resync"]); // a chunk without its record
  const other = new JobSubscription("j");
  // a new record while an item's bytes are incomplete
  assert.deepEqual(
    await feed(other, [frames[0], frames[1], { t: "ev", job: "j", seq: 2, k: "status", status: "X" }]),
    [undefined, undefined, "resync"],
  );
  const tooLong = new JobSubscription("j");
  const bad = itemFrames(1, 0, data, 100);
  bad[1] = { ...bad[1], data: bytesOf(150, 1) };
  assert.deepEqual(await feed(tooLong, bad), [undefined, "resync"]);
});

test("an overlapping chunk keeps only the new bytes", async () => {
  const job = new JobSubscription("j");
  const data = bytesOf(100, 5);
  const [rec, first, second] = itemFrames(1, 0, data, 60);
  await feed(job, [rec, first, { ...first, last: false }, { ...second, off: 50, data: data.subarray(50) }]);
  assert.deepEqual(new Uint8Array(await (await job.results[0].blob()).arrayBuffer()), data);
});

test("bytes that fail sha256 or size become a per-item error; the job goes on", async () => {
  const job = new JobSubscription("j");
  const events = record(job);
  const data = bytesOf(64, 6);
  await feed(job, [
    ...itemFrames(1, 0, data, 64, { sha256: "0".repeat(64) }),
    ...itemFrames(2, 1, data, 64),
    { t: "ev", job: "j", seq: 3, k: "error", item: 2, code: "generation_failed", message: "boom" },
    { t: "ev", job: "j", seq: 4, k: "done", status: "COMPLETED", items: 3, errors: 1 },
  ]);
  const errors = events.filter(([n]) => n === "error").map(([, e]) => [e.item, e.code, e.fatal]);
  assert.deepEqual(errors, [
    [0, "bad_sha256", false],
    [2, "generation_failed", false],
  ]);
  assert.deepEqual(
    job.results.map((f) => f.index),
    [1],
  );
  assert.equal(job.lastSeq, 4);
});

test("an empty file may come with one empty chunk or none", async () => {
  const empty = new Uint8Array(0);
  const job = new JobSubscription("j");
  await feed(job, [
    ...itemFrames(1, 0, empty, 10),
    { t: "ev", job: "j", seq: 2, k: "done", status: "COMPLETED" },
  ]);
  assert.equal(job.results.length, 1);
  const bare = new JobSubscription("j");
  await feed(bare, [
    itemFrames(1, 0, empty, 10)[0],
    { t: "ev", job: "j", seq: 2, k: "done", status: "COMPLETED" },
  ]);
  assert.equal(bare.results.length, 1);
  assert.equal(bare.results[0].size, 0);
});

test("files() yields earlier and later files in order and ends at done", async () => {
  const job = new JobSubscription("j");
  await feed(job, itemFrames(1, 0, bytesOf(5, 1), 5));
  const seen = [];
  const consumer = (async () => {
    for await (const file of job.files()) seen.push(file.index);
  })();
  await feed(job, [...itemFrames(2, 1, bytesOf(5, 2), 5), ...itemFrames(3, 2, bytesOf(5, 3), 5)]);
  await feed(job, [{ t: "ev", job: "j", seq: 4, k: "done", status: "COMPLETED", items: 3, errors: 0 }]);
  await consumer;
  assert.deepEqual(seen, [0, 1, 2]);
  const again = [];
  for await (const file of job.files()) again.push(file.index);
  assert.deepEqual(again, [0, 1, 2]);
});

test("files() throws when the subscription fails; unsubscribe ends it quietly", async () => {
  const job = new JobSubscription("j");
  const iterate = (async () => {
    for await (const _ of job.files()) {
      // nothing arrives
    }
  })();
  job._fail("close_4501", "unauthorized");
  await assert.rejects(iterate, /unauthorized/);
  await assert.rejects(job.finished, /unauthorized/);
  const quiet = new JobSubscription("j");
  const errors = record(quiet).filter(([n]) => n === "error");
  quiet.unsubscribe();
  assert.equal(errors.length, 0);
  assert.equal(quiet.closed, true);
});

test("URL mode: item records carry absolute media URLs; blob() downloads and verifies", async () => {
  const data = bytesOf(300, 7);
  /** @type {string[]} */
  const fetched = [];
  /** @type {typeof fetch} */
  const fakeFetch = async (url) => {
    fetched.push(String(url));
    return new Response(data);
  };
  const job = new JobSubscription("j", {
    inline: false,
    resolveUrl: (url) => new URL(url, "http://relay.test/").toString(),
    fetch: fakeFetch,
  });
  await feed(job, [itemFrames(1, 0, data, 300)[0]]);
  const [file] = job.results;
  assert.equal(file.url, "http://relay.test/v1/jobs/j/media/0");
  assert.equal(file.verified, "none");
  const blob = await file.blob();
  assert.equal(blob.size, 300);
  assert.equal(file.verified, "sha256");
  assert.deepEqual(fetched, ["http://relay.test/v1/jobs/j/media/0"]);
  const corrupt = new JobSubscription("j", {
    inline: false,
    fetch: async () => new Response(bytesOf(300, 8)),
  });
  await feed(corrupt, [itemFrames(1, 0, data, 300)[0]]);
  await assert.rejects(corrupt.results[0].blob(), /sha256/);
});

test("a finished job renders from its manifest alone", async () => {
  const job = new JobSubscription("j", { resolveUrl: (url) => `http://r${url}` });
  const events = record(job);
  job._applyManifest({
    status: "COMPLETED",
    items: [
      { item: 0, id: "a", mime: "video/mp4", size: 10, sha256: "ab", url: "/m/0", status: "ok" },
      { item: 1, id: "b", status: "error", code: "bad_image", message: "cannot decode" },
    ],
    errors: 1,
  });
  assert.deepEqual(
    events.map(([n]) => n),
    ["status", "item", "error", "done"],
  );
  assert.equal(job.results[0].url, "http://r/m/0");
  assert.deepEqual(await job.finished, { seq: 4, status: "COMPLETED", items: 2, errors: 1 });
});

test("expectedItems: how many items the job's input asks for, from subscribed or the manifest", () => {
  const live = new JobSubscription("j");
  /** @type {any[]} */
  const events = [];
  live.on("subscribed", (payload) => events.push(["subscribed", payload]));
  assert.equal(live.expectedItems, null);
  live._subscribed({ t: "subscribed", job: "j", head: 0, status: "", recovered: true, expected_items: 40 });
  assert.equal(live.expectedItems, 40);
  assert.deepEqual(events.at(-1), [
    "subscribed",
    { head: 0, status: "", recovered: true, expectedItems: 40 },
  ]);
  // a reconnect to a relay that does not say keeps what is known
  live._subscribed({ t: "subscribed", job: "j", head: 3, status: "IN_PROGRESS", recovered: true });
  assert.equal(live.expectedItems, 40);
  const attached = new JobSubscription("j");
  attached._subscribed({
    t: "subscribed",
    job: "j",
    head: 0,
    status: "",
    recovered: true,
    expected_items: null,
  });
  assert.equal(attached.expectedItems, null);
  const finished = new JobSubscription("j");
  finished._applyManifest({ status: "CANCELLED", items: [], expected_items: 12 });
  assert.equal(finished.expectedItems, 12);
  const unknown = new JobSubscription("j");
  unknown._applyManifest({ status: "COMPLETED", items: [] });
  assert.equal(unknown.expectedItems, null);
});

test("an item record without bytes (uploaded out of band) becomes a URL-only file", async () => {
  const job = new JobSubscription("j");
  const data = bytesOf(50, 9);
  const outcomes = await feed(job, [
    { ...itemFrames(1, 0, data, 50)[0], url: "https://bucket.example/x.mp4" },
    { t: "ev", job: "j", seq: 2, k: "done", status: "COMPLETED", items: 1, errors: 0 },
  ]);
  assert.deepEqual(outcomes, [undefined, undefined]);
  assert.equal(job.results[0].inline, false);
  assert.equal(job.results[0].url, "https://bucket.example/x.mp4");
  assert.equal(job.lastSeq, 2);
});

test("the relay losing an item's file fails that item only", async () => {
  const job = new JobSubscription("j");
  const events = record(job);
  const data = bytesOf(500, 10);
  await feed(job, itemFrames(1, 0, data, 100).slice(0, 2));
  job._itemUnavailable("media_unavailable", "gone");
  await feed(job, [{ t: "ev", job: "j", seq: 2, k: "done", status: "COMPLETED", items: 1, errors: 0 }]);
  const errors = events.filter(([n]) => n === "error").map(([, e]) => [e.item, e.code]);
  assert.deepEqual(errors, [[0, "media_unavailable"]]);
  assert.equal(job.doneRecord?.seq, 2);
});

test("result(): the handler's value with each file reference replaced by that file's object URL", async () => {
  const job = new JobSubscription("j");
  const results = record(job);
  job.on("result", (r) => results.push(["result", r]));
  const png = bytesOf(0, 3000);
  const value = {
    images: [{ $file: 0 }, { $file: 1 }],
    count: 2,
    meta: { $literal: { $file: "not a reference" } }, // a user's own `$` object, escaped by the worker
  };
  await feed(job, [
    ...itemFrames(1, 0, png, 1000),
    { t: "ev", job: "j", seq: 2, k: "error", item: 1, code: "bad_image", message: "cannot decode" },
    { t: "ev", job: "j", seq: 3, k: "result", value },
    { t: "ev", job: "j", seq: 4, k: "done", status: "COMPLETED", items: 2, errors: 1 },
  ]);
  assert.deepEqual(
    results.map(([name]) => name).filter((name) => name !== "progress"),
    ["item", "error", "result", "done"],
  );
  const result = /** @type {any} */ (await job.result());
  assert.match(result.images[0], /^blob:/, "an object URL of item 0's verified bytes");
  assert.equal(result.images[0], job.results[0].url);
  assert.equal((await job.results[0].blob()).size, png.byteLength);
  assert.deepEqual(
    { ...result, images: [typeof result.images[0], result.images[1]] },
    { images: ["string", null], count: 2, meta: { $file: "not a reference" } },
    "the failed item is null; the escaped object comes back as the handler wrote it",
  );
  assert.deepEqual(job.resultRecord?.value, value, "the record keeps the value as sent");
});

test("result(): null without one; rejected when it was sent but did not arrive whole", async () => {
  const plain = new JobSubscription("j");
  await feed(plain, [{ t: "ev", job: "j", seq: 1, k: "done", status: "COMPLETED", items: 0, errors: 0 }]);
  assert.equal(await plain.result(), null);

  const broken = new JobSubscription("j");
  await feed(broken, [
    { t: "ev", job: "j", seq: 1, k: "error", item: null, code: "incomplete_result", message: "page 1 of 2 never came" },
    { t: "ev", job: "j", seq: 2, k: "done", status: "COMPLETED", items: 0, errors: 1 },
  ]); // prettier-ignore
  await assert.rejects(broken.result(), {
    code: "incomplete_result",
    message: "job j: no result: page 1 of 2 never came",
  });

  const failed = new JobSubscription("j");
  failed._fail("close_4501", "unknown token");
  await assert.rejects(failed.result(), { code: "close_4501" });
});

test("result() of a job opened from its manifest: the relay's media URLs are already in place", async () => {
  const job = new JobSubscription("j", { resolveUrl: (url) => `http://r${url}` });
  job._applyManifest({
    status: "COMPLETED",
    items: [{ item: 0, id: "a", mime: "image/png", size: 10, sha256: "ab", url: "/m/0", status: "ok" }],
    errors: 0,
    result: { images: ["http://r/m/0?exp=1&sig=x"] },
  });
  assert.deepEqual(await job.result(), { images: ["http://r/m/0?exp=1&sig=x"] });
});
