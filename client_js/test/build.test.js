// The relay serves relay/static/ without Node: the committed bundle (and client_js/types) must be exactly
// what the sources build to. Also type-checks src/ and the demo (tsc runs inside the build).
import assert from "node:assert/strict";
import { test } from "node:test";
import { check } from "../scripts/build.mjs";

test("relay/static and client_js/types match a fresh build of the sources", async () => {
  let problems;
  try {
    problems = await check();
  } catch (err) {
    const out = /** @type {{stdout?: Buffer}} */ (err).stdout;
    assert.fail(`the build failed (type errors?):\n${out?.toString() ?? err}`);
  }
  assert.deepEqual(problems, [], "stale build: run `cd client_js && npm run build` and commit relay/static");
});
