// `podstream demo` as a user runs it, and the link it prints opened in a real headless Chromium (Debian's
// `chromium` through playwright-core) with an empty profile: the page shows the job's files with no API key.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { chromium } from "playwright-core";
import { CHROMIUM_ARGS, findChromium } from "./chromium.js";
import { PYTHON, REPO, unavailable } from "./stack.js";

const executablePath = findChromium();
const missing = executablePath ? unavailable() : "no chromium on PATH (apt-get install chromium)";
if (missing && process.env.CI === "true") throw new Error(`the demo link test must run in CI: ${missing}`);
if (missing) console.warn(`\n!!! SKIPPING the demo link test: ${missing} !!!\n`);

/** The page link as `podstream demo` prints it, alone on its line. */
const LINK = /^(http:\/\/127\.0\.0\.1:\d+)\/#job=([A-Za-z0-9_-]+)&code=([A-Za-z0-9_-]+)$/m;

test(
  "the link `podstream demo` prints opens the job's files in a browser that has no key",
  { skip: !!missing },
  async (t) => {
    const out = mkdtempSync(join(tmpdir(), "podstream-demo-"));
    const args = ["-m", "podstream", "demo", "--keep-running", "--out", out, "--videos", "2", "--images", "1", "--size", "64"]; // prettier-ignore
    const demo = spawn(PYTHON, args, {
      cwd: REPO,
      env: { ...process.env, COLUMNS: "50" },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true, // its own process group: Ctrl-C (SIGINT) reaches it alone
    });
    let output = "";
    const exited = new Promise((resolve) => demo.once("exit", (code) => resolve(code)));
    /** @type {Promise<void>} */
    const running = new Promise((resolve, reject) => {
      const read = (/** @type {Buffer} */ data) => {
        output += data.toString();
        if (output.includes("press Ctrl-C")) resolve();
      };
      demo.stdout.on("data", read);
      demo.stderr.on("data", read);
      demo.once("exit", (code) => reject(new Error(`the demo exited with ${code}:\n${output}`)));
    });
    /** @type {import("playwright-core").Browser | null} */
    let browser = null;
    t.after(async () => {
      await browser?.close();
      if (demo.exitCode === null) {
        try {
          process.kill(-(/** @type {number} */ (demo.pid)), "SIGKILL");
        } catch {
          // gone
        }
      }
      rmSync(out, { recursive: true, force: true });
    });

    await running;
    const found = LINK.exec(output);
    assert.ok(found, `a link whole on a line of its own:\n${output}`);
    const [url, , job] = found;
    assert.doesNotMatch(output, /psk_/, "the API key is never printed, in a link or elsewhere");
    console.log(`the demo printed: ${url} (${url.length} characters)`);

    browser = await chromium.launch({
      executablePath: /** @type {string} */ (executablePath),
      args: CHROMIUM_ARGS,
    });
    const page = await (await browser.newContext()).newPage();
    /** @type {string[]} */
    const pageErrors = [];
    page.on("pageerror", (err) => pageErrors.push(err.message));
    await page.goto(url);
    await page.waitForSelector("#grid[data-done=true]", { timeout: 60000 });
    assert.equal(await page.textContent("#job-id"), job);
    assert.equal(await page.textContent("#job-status"), "COMPLETED");
    const videos = await page.evaluate(async () => {
      const list = [...document.querySelectorAll("#grid video")].map(
        (el) => /** @type {HTMLVideoElement} */ (el),
      );
      await Promise.all(
        list.map(
          (v) =>
            new Promise((resolve) => {
              if (v.readyState >= 2 || v.error) return resolve(undefined);
              v.addEventListener("loadeddata", () => resolve(undefined), { once: true });
              v.addEventListener("error", () => resolve(undefined), { once: true });
            }),
        ),
      );
      return list.map((v) => [v.readyState >= 2, v.videoWidth, v.videoHeight]);
    });
    assert.deepEqual(videos, [[true, 64, 64], [true, 64, 64]], "the first job's two videos play"); // prettier-ignore
    assert.match((await page.textContent("#overall-text")) ?? "", /2 of 2 ready/);
    assert.deepEqual(pageErrors, []);

    demo.kill("SIGINT"); // Ctrl-C
    assert.equal(await exited, 130, output); // stopped by Ctrl-C, as every podstream command
    assert.match(output, /stopping/);
  },
);
