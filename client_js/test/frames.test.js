import assert from "node:assert/strict";
import { test } from "node:test";
import { decode as decodeMsgpack, encode } from "@msgpack/msgpack";
import { CloseCode, FrameError, decodeFrame, encodeFrame, isTerminalClose } from "../src/frames.js";

test("client frames encode as msgpack maps the relay reads", () => {
  const bytes = encodeFrame({ t: "sub", job: "j1", from: 7, inline: true });
  assert.deepEqual(decodeFrameLoose(bytes), { t: "sub", job: "j1", from: 7, inline: true });
});

test("server frames decode with their fields, bin data as Uint8Array", () => {
  const chunk = decodeFrame(
    encode({ t: "chunk", job: "j", seq: 3, item: 0, off: 0, data: new Uint8Array([1, 2, 3]), last: true }),
  );
  assert.equal(chunk.t, "chunk");
  assert.ok(chunk.t === "chunk" && chunk.data instanceof Uint8Array);
  assert.deepEqual(chunk.t === "chunk" && [...chunk.data], [1, 2, 3]);
  const ev = decodeFrame(encode({ t: "ev", job: "j", seq: 1, k: "status", status: "IN_PROGRESS" }));
  assert.deepEqual(ev, { t: "ev", job: "j", seq: 1, k: "status", status: "IN_PROGRESS" });
  assert.equal(decodeFrame(encode({ t: "welcome", v: 1, server: "x", ping: 25 })).t, "welcome");
  const subscribed = { t: "subscribed", job: "j", head: 0, status: "", recovered: true };
  assert.deepEqual(decodeFrame(encode({ ...subscribed, expected_items: 40 })), {
    ...subscribed,
    expected_items: 40,
  });
  assert.equal(decodeFrame(encode({ ...subscribed, expected_items: null })).t, "subscribed");
  assert.equal(decodeFrame(encode(subscribed)).t, "subscribed", "a relay that does not send it");
  assert.equal(decodeFrame(encode({ t: "bye", code: 4001, reason: "slow" })).t, "bye");
});

test("malformed frames are rejected with a FrameError naming the problem", () => {
  const cases = [
    [new Uint8Array([0xc1]), /not msgpack/],
    [encode([1, 2]), /not a map/],
    [encode("hello"), /not a map/],
    [encode({ x: 1 }), /unknown frame type/],
    [encode({ t: "nope" }), /unknown frame type nope/],
    [encode({ t: "ev", job: "j", seq: -1, k: "status" }), /seq must be int/],
    [encode({ t: "ev", job: "j", seq: 1.5, k: "status" }), /seq must be int/],
    [encode({ t: "ev", job: "j", seq: 1, k: 7 }), /k must be string/],
    [encode({ t: "chunk", job: "j", seq: 1, item: 0, off: 0, data: "text", last: true }), /data must be bin/],
    [
      encode({ t: "subscribed", job: "j", head: 0, status: "X", recovered: "yes" }),
      /recovered must be boolean/,
    ],
    [encode({ t: "welcome", v: 1, server: "s" }), /ping must be number/],
    [
      encode({ t: "subscribed", job: "j", head: 0, status: "", recovered: true, expected_items: "40" }),
      /expected_items must be int/,
    ],
  ];
  for (const [bytes, pattern] of /** @type {Array<[Uint8Array, RegExp]>} */ (cases)) {
    assert.throws(
      () => decodeFrame(bytes),
      (err) => err instanceof FrameError && pattern.test(err.message),
    );
  }
});

test("close codes: 4000-4499 reconnect, 4500-4999 terminal", () => {
  assert.equal(isTerminalClose(CloseCode.GOING_AWAY), false);
  assert.equal(isTerminalClose(CloseCode.TOKEN_EXPIRED), false);
  assert.equal(isTerminalClose(CloseCode.TRY_AGAIN), false);
  assert.equal(CloseCode.TRY_AGAIN, 4005);
  assert.equal(isTerminalClose(4499), false);
  assert.equal(isTerminalClose(CloseCode.MALFORMED_FRAME), true);
  assert.equal(isTerminalClose(CloseCode.UNAUTHORIZED), true);
  assert.equal(isTerminalClose(4999), true);
  assert.equal(isTerminalClose(1006), false);
  assert.equal(isTerminalClose(1000), false);
});

/** @param {Uint8Array} bytes client frames are not server frames: decode without validation */
function decodeFrameLoose(bytes) {
  return decodeMsgpack(bytes);
}
