// job.result() against the real system: the emulator runs examples/batch_images/handler.py (a RunPod handler
// returning base64 PNGs in a dict, ported with worker.wrap), the relay journals its result, and the client
// gives the dict back with each image replaced by a URL of the verified file.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, test } from "node:test";
import { WebSocket } from "ws";
import { PodstreamClient } from "../src/client.js";
import { PYTHON, Stack, unavailable } from "./stack.js";

const missing = unavailable();
if (missing && process.env.CI === "true") throw new Error(`the result test cannot run in CI: ${missing}`);
if (missing) console.warn(`\n!!! SKIPPING the job.result() integration test: ${missing} !!!\n`);

/** @type {Stack} */
let stack;
before(async () => {
  if (missing) return;
  stack = await new Stack({
    workerCmd: `${PYTHON} examples/batch_images/handler.py`,
    relayEnv: { PODSTREAM_INPUT_SCHEMA: "off" }, // the handler's own input, not the built-in worker's
  }).start();
});
after(async () => {
  await stack?.stop();
});

/** @param {import("node:test").TestContext} t */
function newClient(t) {
  const client = new PodstreamClient({ url: stack.relayUrl, apiKey: stack.apiKey, WebSocket, network: null });
  t.after(() => client.close());
  return client;
}

/** @param {Uint8Array} bytes */
const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

test(
  "job.result() gives the handler's dict back, each base64 image now a URL of its verified file",
  { skip: !!missing },
  async (t) => {
    const client = newClient(t);
    const input = { prompt: "a red fox", num_images: 3, width: 64, height: 64, seed: 7 };
    const { id } = await client.submit(input);
    const job = client.subscribe(id);
    const result = /** @type {any} */ (await job.result());
    assert.equal((await job.finished).status, "COMPLETED");
    assert.deepEqual(
      { ...result, images: result.images.length },
      { images: 3, count: 3, prompt: "a red fox" },
    );
    const manifest = await client.getJob(id);
    for (const [i, url] of result.images.entries()) {
      const file = job.results.find((f) => f.index === i);
      assert.ok(file, `item ${i} arrived`);
      assert.equal(url, file.url, "the object URL of that item's file");
      assert.match(url, /^blob:/);
      const bytes = new Uint8Array(await (await file.blob()).arrayBuffer());
      assert.equal(Buffer.from(bytes.subarray(1, 4)).toString("latin1"), "PNG");
      assert.equal(sha256(bytes), manifest.items[i].sha256);
    }

    // URL mode and a job opened from its manifest: media URLs of the relay, which serve the same bytes
    for (const other of [newClient(t).subscribe(id, { inline: false }), await newClient(t).open(id)]) {
      const viaUrls = /** @type {any} */ (await other.result());
      assert.equal(viaUrls.count, 3);
      for (const [i, url] of viaUrls.images.entries()) {
        assert.match(url, new RegExp(`^${stack.relayUrl}/v1/jobs/${id}/media/${i}\\b`));
        const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer()); // a signed URL: no header needed
        assert.equal(sha256(bytes), manifest.items[i].sha256);
      }
    }
  },
);
