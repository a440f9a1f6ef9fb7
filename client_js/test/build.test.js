// The relay serves relay/static/ without Node: the committed bundle (and client_js/types) must be exactly
// what the sources build to (scripts/build.mjs: `npm run build` writes them, `npm run check` compares). Also
// type-checks src/ and the demo (tsc runs inside the build).
import assert from "node:assert/strict";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { STATIC_DIR, TYPES_DIR, check } from "../scripts/build.mjs";

/** @param {() => Promise<string[]>} run */
async function problemsOf(run) {
  try {
    return await run();
  } catch (err) {
    const out = /** @type {{stdout?: Buffer}} */ (err).stdout;
    return assert.fail(`the build failed (type errors?):\n${out?.toString() ?? err}`);
  }
}

test("relay/static and client_js/types match a fresh build of the sources", async () => {
  const problems = await problemsOf(() => check());
  assert.deepEqual(problems, [], "stale build: run `cd client_js && npm run build` and commit relay/static");
});

test("the check sees a page edited by hand, a file missing and a file the build does not make", async () => {
  const tmp = mkdtempSync(join(tmpdir(), "podstream-static-"));
  try {
    const [staticDir, typesDir] = [join(tmp, "static"), join(tmp, "types")];
    cpSync(STATIC_DIR, staticDir, { recursive: true });
    cpSync(TYPES_DIR, typesDir, { recursive: true });
    const page = join(staticDir, "index.html");
    // the page's inlined CSS (from demo/demo.css) edited in relay/static instead of client_js/demo
    writeFileSync(page, readFileSync(page, "utf8").replace("--bad: #ff6b6b;", "--bad: #ff0000;"));
    rmSync(join(staticDir, "podstream-client.js"));
    writeFileSync(join(staticDir, "demo.css"), "body {}\n"); // a copy beside the built page
    const problems = await problemsOf(() => check(staticDir, typesDir));
    assert.deepEqual(problems.sort(), [
      "relay/static/demo.css: not built from client_js/ (remove it)",
      "relay/static/index.html: differs from a fresh build",
      "relay/static/podstream-client.js: missing",
    ]);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
