import assert from "node:assert/strict";
import { test } from "node:test";
import { Backoff } from "../src/backoff.js";

test("full jitter: each delay is uniform in [0, min(max, min * 2^n)]", () => {
  const ceilings = [];
  const top = new Backoff({ minDelay: 100, maxDelay: 1000, random: () => 0.999999 });
  for (let i = 0; i < 7; i += 1) ceilings.push(top.next());
  assert.deepEqual(ceilings, [99, 199, 399, 799, 999, 999, 999]);
  const bottom = new Backoff({ minDelay: 100, maxDelay: 1000, random: () => 0 });
  assert.deepEqual([bottom.next(), bottom.next(), bottom.next()], [0, 0, 0]);
  const half = new Backoff({ minDelay: 100, maxDelay: 1000, random: () => 0.5 });
  assert.deepEqual([half.next(), half.next(), half.next()], [50, 100, 200]);
});

test("delays are spread out (jitter), not in lockstep", () => {
  const delays = new Set();
  for (let i = 0; i < 50; i += 1) {
    const backoff = new Backoff({ minDelay: 1000, maxDelay: 30000 });
    backoff.attempt = 4;
    const delay = backoff.next();
    assert.ok(delay >= 0 && delay < 16000, `delay ${delay}`);
    delays.add(delay);
  }
  assert.ok(delays.size > 40, `only ${delays.size} distinct delays out of 50`);
});

test("reset starts over; huge attempt counts stay capped", () => {
  const backoff = new Backoff({ minDelay: 10, maxDelay: 500, random: () => 0.999999 });
  backoff.attempt = 5000;
  assert.equal(backoff.ceiling(), 500);
  assert.equal(backoff.next(), 499);
  backoff.reset();
  assert.equal(backoff.attempt, 0);
  assert.equal(backoff.next(), 9);
});

test("bad bounds are refused", () => {
  assert.throws(() => new Backoff({ minDelay: 0 }), RangeError);
  assert.throws(() => new Backoff({ minDelay: 100, maxDelay: 50 }), RangeError);
});
