// PodstreamClient against a real websocket server on 127.0.0.1 (test/fake_relay.js) that speaks the protocol
// and injects the failures: drops, bye codes, silence, expired tokens, offline.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import { WebSocket } from "ws";
import { createServer } from "node:http";
import { PodstreamClient, RelayHttpError } from "../src/client.js";
import { PodstreamError } from "../src/errors.js";
import { FakeJob, FakeRelay, bytesOf, finishedJob } from "./fake_relay.js";

/**
 * A fake relay and a client of it, both stopped when the test ends.
 * @param {import("node:test").TestContext} t
 * @param {import("./fake_relay.js").FakeRelayOptions} [relayOptions]
 * @param {import("../src/client.js").ClientOptions} [clientOptions]
 */
async function setup(t, relayOptions = {}, clientOptions = {}) {
  const relay = new FakeRelay({ chunkSize: 1000, ...relayOptions });
  const wsUrl = await relay.listen();
  const client = new PodstreamClient({
    url: "http://127.0.0.1:1",
    wsUrl,
    WebSocket,
    network: null,
    backoff: { minDelay: 20, maxDelay: 100 },
    ...clientOptions,
  });
  t.after(async () => {
    client.close();
    await relay.close();
  });
  return { relay, client };
}

/**
 * Every file of the subscription as [index, sha256], after done.
 * @param {import("../src/subscription.js").JobSubscription} job
 */
async function collect(job) {
  const out = [];
  for await (const file of job.files()) {
    const bytes = new Uint8Array(await (await file.blob()).arrayBuffer());
    out.push([file.index, createHash("sha256").update(bytes).digest("hex")]);
  }
  return out;
}

/** @param {FakeJob} job */
function expected(job) {
  return job.records
    .filter((r) => r.k === "item")
    .map((r) => [
      r.item,
      createHash("sha256")
        .update(/** @type {Uint8Array} */ (job.bytes.get(r.seq)))
        .digest("hex"),
    ]);
}

/**
 * Wait until `predicate()` holds (polling), failing after 5 s.
 * @param {() => boolean} predicate
 * @param {string} what
 */
async function until(predicate, what) {
  const deadline = Date.now() + 5000;
  while (!predicate()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for: ${what}`);
    await sleep(5);
  }
}

/** @param {number} ms */
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

test("a finished job of N files arrives whole, in order, each once", async (t) => {
  const { relay, client } = await setup(t);
  const fake = relay.add(finishedJob("job1", [3000, 0, 4500, 1, 2500]));
  const job = client.subscribe("job1");
  assert.deepEqual(await collect(job), expected(fake));
  assert.equal((await job.finished).status, "COMPLETED");
  assert.equal(client.state, "connected");
  const subs = relay.received.filter((r) => r.frame.t === "sub").map((r) => r.frame);
  assert.deepEqual(subs, [{ t: "sub", job: "job1", from: 0, inline: true }]);
  relay.add(new FakeJob("job1b"));
  const unsubscribing = client.subscribe("job1b");
  await until(() => relay.received.some((r) => r.frame.t === "sub" && r.frame.job === "job1b"), "sub");
  unsubscribing.unsubscribe();
  await until(() => relay.received.some((r) => r.frame.t === "unsub" && r.frame.job === "job1b"), "unsub");
  assert.ok(
    !relay.received.some((r) => r.frame.t === "unsub" && r.frame.job === "job1"),
    "no unsub after done: the relay ends that cursor itself",
  );
});

test("server-side drops and bye-reconnect codes mid-stream: every file still arrives exactly once", async (t) => {
  const { relay, client } = await setup(t);
  const fake = relay.add(finishedJob("job2", [2500, 3500, 1500, 4000, 500, 2000]));
  relay.fault = { afterFrames: 4, action: "drop", times: 3 };
  const job = client.subscribe("job2");
  /** @type {number[]} */
  const delivered = [];
  job.on("item", (file) => delivered.push(file.index));
  const first = collect(job);
  while (relay.fault.times > 0) await sleep(5);
  relay.fault = { afterFrames: 6, action: { bye: 4001 }, times: 2 };
  assert.deepEqual(await first, expected(fake));
  assert.deepEqual(delivered, [0, 1, 2, 3, 4, 5]);
  assert.ok(relay.connections >= 4, `reconnected (${relay.connections} connections)`);
  const froms = relay.received.filter((r) => r.frame.t === "sub").map((r) => r.frame.from);
  assert.ok(
    froms.some((from) => from > 0),
    `resumed from a later seq: ${froms}`,
  );
  assert.deepEqual(
    [...froms].sort((a, b) => a - b),
    froms,
    "resume points only move forward",
  );
});

test("client-side drops mid-stream: resumes from the last applied seq, nothing duplicated", async (t) => {
  const { relay, client } = await setup(t);
  const fake = relay.add(new FakeJob("live"));
  const job = client.subscribe("live");
  const files = collect(job);
  fake.append({ k: "status", status: "IN_PROGRESS" });
  for (let item = 0; item < 8; item += 1) {
    fake.append({ k: "progress", item, step: 1, steps: 1 });
    fake.addItem(item, bytesOf(1500 + item * 700, item), { mime: "image/png" });
    await sleep(5);
    if (item % 3 === 1) client._ws?.terminate?.(); // the browser's network drops
  }
  fake.append({ k: "done", status: "COMPLETED", items: 8, errors: 0 });
  assert.deepEqual(await files, expected(fake));
  assert.ok(relay.connections >= 2);
});

test("a terminal close code ends the subscriptions and does not reconnect", async (t) => {
  const { relay, client } = await setup(t, { checkToken: () => false }, { getToken: () => "bad" });
  relay.add(finishedJob("job3", [10]));
  const job = client.subscribe("job3");
  /** @type {any[]} */
  const errors = [];
  job.on("error", (e) => errors.push(e));
  await assert.rejects(job.finished, /the relay rejected the token/);
  assert.deepEqual(
    errors.map((e) => [e.code, e.fatal]),
    [["token_rejected", true]],
  );
  await sleep(150);
  assert.equal(relay.connections, 1, "no reconnect after 4501");
  assert.equal(client.state, "disconnected");
});

test("token expiry (4003): getToken is called again and the new token is used", async (t) => {
  let minted = 0;
  const valid = new Set(["t1", "t2"]);
  /** @type {Array<string[]>} */
  const asked = [];
  const { relay, client } = await setup(
    t,
    { checkToken: (token) => valid.has(token) },
    {
      getToken: async ({ jobs }) => {
        asked.push(jobs);
        minted += 1;
        return `t${minted}`;
      },
    },
  );
  const fake = relay.add(finishedJob("job4", [5000, 5000, 5000]));
  relay.fault = { afterFrames: 5, action: { bye: 4003 }, times: 1 };
  const job = client.subscribe("job4");
  assert.deepEqual(await collect(job), expected(fake));
  const auths = relay.received.filter((r) => r.frame.t === "auth").map((r) => [r.conn, r.frame.token]);
  assert.deepEqual(auths, [
    [1, "t1"],
    [2, "t2"],
  ]);
  assert.deepEqual(asked, [["job4"], ["job4"]]);
});

test("a token is reused across ordinary reconnects", async (t) => {
  let minted = 0;
  const { relay, client } = await setup(
    t,
    { checkToken: (token) => token === "only" },
    { getToken: () => (++minted === 1 ? "only" : "other") },
  );
  const fake = relay.add(finishedJob("job5", [4000, 4000]));
  relay.fault = { afterFrames: 3, action: { bye: 4000 }, times: 1 };
  assert.deepEqual(await collect(client.subscribe("job5")), expected(fake));
  assert.equal(minted, 1);
});

test("pings are answered; a silent relay trips the watchdog and the client reconnects", async (t) => {
  // The watchdog allows 300 ms without a ping (pings come every 20 ms): a loaded machine's stalls stay under it.
  const { relay, client } = await setup(t, { ping: 0.05 }, { maxServerPingDelay: 300 });
  relay.pingEveryMs = 20;
  const fake = relay.add(new FakeJob("quiet"));
  const job = client.subscribe("quiet");
  const ponged = () => relay.received.filter((r) => r.frame.t === "pong").length;
  for (let waited = 0; ponged() < 3 && waited < 5000; waited += 10) await sleep(10);
  assert.ok(ponged() >= 3, "pongs sent");
  assert.equal(relay.connections, 1, "pings keep the connection alive");
  relay.silent = true;
  /** @type {any[]} */
  const clientErrors = [];
  client.on("error", (e) => clientErrors.push(e.code));
  while (relay.connections < 2) await sleep(10);
  assert.ok(clientErrors.includes("ping_timeout"));
  relay.silent = false;
  fake.append({ k: "status", status: "IN_PROGRESS" });
  fake.addItem(0, bytesOf(100, 1));
  fake.append({ k: "done", status: "COMPLETED", items: 1, errors: 0 });
  assert.deepEqual(await collect(job), expected(fake));
});

test("offline pauses the connection; online reconnects at once and resumes", async (t) => {
  const target = new EventTarget();
  let online = true;
  const { relay, client } = await setup(
    t,
    {},
    { network: { target, isOnline: () => online }, backoff: { minDelay: 5000, maxDelay: 10000 } },
  );
  const fake = relay.add(new FakeJob("net"));
  const job = client.subscribe("net");
  fake.append({ k: "status", status: "IN_PROGRESS" });
  fake.addItem(0, bytesOf(2000, 1));
  while (job.results.length < 1) await sleep(5);
  online = false;
  target.dispatchEvent(new Event("offline"));
  assert.equal(client.state, "offline");
  fake.addItem(1, bytesOf(2000, 2));
  fake.append({ k: "done", status: "COMPLETED", items: 2, errors: 0 });
  await sleep(50);
  assert.equal(job.results.length, 1, "nothing while offline");
  const connectionsBefore = relay.connections;
  online = true;
  const started = Date.now();
  target.dispatchEvent(new Event("online"));
  assert.deepEqual(await collect(job), expected(fake));
  assert.ok(Date.now() - started < 2000, "reconnected at once, not after the 5 s backoff");
  assert.equal(relay.connections, connectionsBefore + 1);
});

test("several jobs share one connection; an unknown job fails alone", async (t) => {
  const { relay, client } = await setup(t);
  const a = relay.add(finishedJob("a", [1200, 800]));
  const b = relay.add(finishedJob("b", [3000]));
  const jobA = client.subscribe("a");
  const jobB = client.subscribe("b");
  const missing = client.subscribe("nope");
  const [filesA, filesB] = await Promise.all([collect(jobA), collect(jobB)]);
  assert.deepEqual(filesA, expected(a));
  assert.deepEqual(filesB, expected(b));
  await assert.rejects(missing.finished, {
    code: "job_not_found",
    message: /the relay does not know the job nope/,
  });
  assert.equal(relay.connections, 1);
});

test("a malformed frame from the relay drops the connection and resumes", async (t) => {
  const { relay, client } = await setup(t);
  const fake = relay.add(finishedJob("m", [2000, 2000]));
  let sentGarbage = false;
  relay.wss.on("connection", (ws) => {
    if (!sentGarbage) {
      sentGarbage = true;
      ws.send(Buffer.from([0xc1]));
    }
  });
  const job = client.subscribe("m");
  assert.deepEqual(await collect(job), expected(fake));
  assert.ok(relay.connections >= 2);
});

test("a failed HTTP call says its cause: status, the cause's code and sentence, the relay's own code", async () => {
  /** @type {Array<[number, string, string, string]>} status, status text, content type, body of each answer */
  const answers = [
    [
      401,
      "Unauthorized",
      "application/json",
      '{"error": {"code": "unauthorized", "message": "unknown API key"}}',
    ],
    [404, "Not Found", "application/json", '{"error": "not_found", "message": "no such job"}'],
    [502, "Bad Gateway", "text/html", "<html><body>Bad Gateway</body></html>"], // a proxy's page
  ];
  /** @type {typeof globalThis.fetch} */
  const fetch = async () => {
    const [status, statusText, type, body] = /** @type {[number, string, string, string]} */ (
      answers.shift()
    );
    return new Response(body, { status, statusText, headers: { "content-type": type } });
  };
  const client = new PodstreamClient({ url: "http://relay.test", fetch, network: null });
  const seen = [];
  for (const call of [() => client.listJobs(), () => client.getJob("j1"), () => client.cancel("j1")]) {
    try {
      await call();
      assert.fail("the call should have failed");
    } catch (err) {
      assert.ok(err instanceof RelayHttpError);
      seen.push([err.status, err.code, err.relayCode, err.message, err.method, err.path]);
      assert.doesNotMatch(String(err), /\[object Object\]/);
    }
  }
  assert.deepEqual(seen, [
    [401, "credential_missing", "unauthorized", "the relay needs an API key or a token, and none was given", "GET", "/v1/jobs"], // prettier-ignore
    [404, "job_not_found", "not_found", "the relay does not know the job j1", "GET", "/v1/jobs/j1"],
    [502, "http_502", "http_502", "502 Bad Gateway", "DELETE", "/v1/jobs/j1"],
  ]);
});

test("a relay that is down: relay_unreachable, naming its URL, not fetch's TypeError", async () => {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(undefined)));
  const { port } = /** @type {import("node:net").AddressInfo} */ (server.address());
  await new Promise((resolve) => server.close(() => resolve(undefined))); // nothing listens there now
  const url = `http://127.0.0.1:${port}`;
  const client = new PodstreamClient({ url, apiKey: "psk_x", network: null });
  for (const call of [
    () => client.listJobs(),
    () => client.getJob("j1"),
    () => client.submit({ items: [] }),
  ]) {
    await assert.rejects(call(), (/** @type {any} */ err) => {
      assert.ok(err instanceof PodstreamError, String(err));
      assert.equal(err.code, "relay_unreachable");
      assert.equal(err.message, `cannot reach the relay at ${url}`);
      assert.ok(err.cause instanceof TypeError, "what fetch threw stays as the cause");
      return true;
    });
  }
});
