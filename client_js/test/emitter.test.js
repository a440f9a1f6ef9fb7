import assert from "node:assert/strict";
import { test } from "node:test";
import { Emitter, PodstreamEvent } from "../src/emitter.js";

/** @extends {Emitter<{tick: number, note: string}>} */
class Ticker extends Emitter {}

test("on() gets payloads in order, once per handler; off() and the returned function remove it", () => {
  const ticker = new Ticker();
  /** @type {Array<[string, number]>} */
  const seen = [];
  const a = (/** @type {number} */ n) => seen.push(["a", n]);
  ticker.on("tick", a);
  ticker.on("tick", a); // once, as addEventListener does
  const stopB = ticker.on("tick", (n) => seen.push(["b", n]));
  ticker.emit("tick", 1);
  stopB();
  ticker.emit("tick", 2);
  ticker.off("tick", a);
  ticker.emit("tick", 3);
  assert.deepEqual(seen, [["a", 1], ["b", 1], ["a", 2]]); // prettier-ignore
});

test("an emitter is an EventTarget: addEventListener, once and AbortSignal work; the payload is detail", () => {
  const ticker = new Ticker();
  assert.ok(ticker instanceof EventTarget);
  /** @type {unknown[]} */
  const seen = [];
  const abort = new AbortController();
  ticker.addEventListener("note", (e) => seen.push(e instanceof PodstreamEvent && e.detail), { once: true });
  ticker.addEventListener("tick", (e) => seen.push(/** @type {PodstreamEvent} */ (e).detail), {
    signal: abort.signal,
  });
  ticker.emit("note", "hello");
  ticker.emit("note", "again");
  ticker.emit("tick", 7);
  abort.abort();
  ticker.emit("tick", 8);
  assert.deepEqual(seen, ["hello", 7]);
});

test("a handler that throws does not stop the others or the caller; the error is reported as uncaught", async () => {
  const ticker = new Ticker();
  const boom = new Error("boom");
  const reported = new Promise((resolve) => {
    const listeners = process.listeners("uncaughtException");
    process.removeAllListeners("uncaughtException");
    process.once("uncaughtException", (err) => {
      for (const l of listeners) process.on("uncaughtException", l);
      resolve(err);
    });
  });
  /** @type {number[]} */
  const seen = [];
  ticker.on("tick", () => {
    throw boom;
  });
  ticker.on("tick", (n) => seen.push(n));
  ticker.emit("tick", 1);
  assert.deepEqual(seen, [1]);
  assert.equal(await reported, boom);
});
