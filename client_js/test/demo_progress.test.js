// The demo page's progress line and bar in every state of a job (demo/progress.js; the page in Chromium is
// test/browser.test.js).
import assert from "node:assert/strict";
import { test } from "node:test";
import { jobProgress } from "../demo/progress.js";

/** @param {Partial<import("../demo/progress.js").JobCounts>} counts */
const progress = (counts) =>
  jobProgress({
    total: 40,
    shown: 40,
    ready: 0,
    failed: 0,
    partial: 0,
    bytes: 0,
    finished: false,
    replay: false,
    ...counts,
  });

test("live, total known: k of the job's total, the bar its share with in-flight items, never full early", () => {
  const p = progress({ ready: 4, partial: 1.5, bytes: 40 * 1024 });
  assert.equal(p.text, "4 of 40 ready · 40.0 KB received");
  assert.equal(p.percent, 13); // (4 + 1.5) / 40
  assert.equal(p.state, "live");
  assert.equal(progress({ ready: 0 }).text, "0 of 40 ready · 0 B received");
  assert.equal(progress({ ready: 0 }).percent, 0);
  assert.equal(progress({ ready: 40 }).percent, 99, "full only once the job is done");
  const more = progress({ ready: 41, shown: 42 }); // more items than announced
  assert.equal(more.text, "41 of 42 ready · 0 B received");
});

test("live, total unknown (a job attached from elsewhere): no made-up total, an indeterminate bar", () => {
  const p = progress({ total: null, shown: 3, ready: 3, bytes: 2048 });
  assert.equal(p.text, "3 ready so far · 2.0 KB received");
  assert.equal(p.percent, null);
  assert.equal(p.state, "unknown");
  assert.equal(p.total, null);
});

test("done: complete, with failures, and with an unknown total", () => {
  const full = progress({ ready: 40, finished: true, bytes: 3 * 1024 * 1024 });
  assert.deepEqual(full, {
    text: "40 of 40 ready · 3.0 MB received",
    percent: 100,
    state: "done",
    total: 40,
    undelivered: 0,
  });
  const failures = progress({ total: 3, shown: 3, ready: 2, failed: 1, finished: true });
  assert.equal(failures.text, "2 of 3 ready · 1 failed · 0 B received");
  assert.equal(failures.percent, 100);
  assert.equal(failures.state, "done");
  const unknown = progress({ total: null, shown: 5, ready: 5, finished: true });
  assert.equal(unknown.text, "5 of 5 ready · 0 B received");
  assert.equal(unknown.percent, 100);
});

test("cancelled, failed or timed out: what never came is said, the bar stops at what did", () => {
  const p = progress({ ready: 2, failed: 1, finished: true, bytes: 18 * 1024 });
  assert.equal(p.text, "2 of 40 ready · 1 failed · 37 not delivered · 18.0 KB received");
  assert.equal(p.percent, 7); // 3 of 40
  assert.equal(p.state, "stopped");
  assert.equal(p.undelivered, 37);
  const nothing = progress({ total: 0, shown: 0, finished: true });
  assert.equal(nothing.text, "0 of 0 ready · 0 B received");
  assert.equal(nothing.percent, 100);
});

test("a replay (a finished job from its manifest): the files' size, not bytes received", () => {
  const p = progress({ ready: 40, finished: true, replay: true, bytes: 388096 });
  assert.equal(p.text, "40 of 40 ready · 379.0 KB");
  assert.equal(p.percent, 100);
  const cancelled = progress({ ready: 2, finished: true, replay: true, bytes: 18534 });
  assert.equal(cancelled.text, "2 of 40 ready · 38 not delivered · 18.1 KB");
  assert.equal(cancelled.state, "stopped");
});
