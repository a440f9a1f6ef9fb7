// The demo page in a real headless Chromium (Debian's `chromium`, driven by playwright-core; no browser is
// ever downloaded), served by a real relay fed by the emulator and a tiny CPU worker (test/stack.js).
// Set SCREENSHOT_DIR to keep the screenshots.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";
import { CHROMIUM_ARGS, findChromium } from "./chromium.js";
import { pngOf } from "./png.js";
import { Stack, unavailable } from "./stack.js";

const executablePath = findChromium();
const missing = executablePath ? unavailable() : "no chromium on PATH (apt-get install chromium)";
if (missing && process.env.CI === "true") throw new Error(`the browser test must run in CI: ${missing}`);
if (missing) {
  console.warn(
    `\n${"!".repeat(100)}\n!!! SKIPPING the real-browser test of the demo page: ${missing}\n${"!".repeat(100)}\n`,
  );
}

const shots = process.env.SCREENSHOT_DIR ?? mkdtempSync(join(tmpdir(), "podstream-shots-"));
mkdirSync(shots, { recursive: true });

/** @type {Stack} */
let stack;
/** @type {import("playwright-core").BrowserContext} */
let context;
/** @type {import("playwright-core").Page} */
let page;
/** @type {string} */
let profile;
/** @type {string[]} */
const pageErrors = [];

before(async () => {
  if (missing) return;
  stack = await new Stack({ chunkBytes: 4096 }).start();
  profile = mkdtempSync(join(tmpdir(), "podstream-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: /** @type {string} */ (executablePath),
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 860 },
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.on("pageerror", (err) => pageErrors.push(err.message));
  page.on("console", (msg) => {
    // Chromium logs every 404 as an error: uploads ask which images the relay holds with one lookup (POST
    // /v1/inputs/lookup, 200 with what is missing), so an image it does not hold yet logs nothing
    if (msg.type() === "error") pageErrors.push(`${msg.text()} (${msg.location().url})`);
  });
});

after(async () => {
  await context?.close();
  await stack?.stop();
  if (profile) rmSync(profile, { recursive: true, force: true });
  if (!process.env.SCREENSHOT_DIR) rmSync(shots, { recursive: true, force: true });
});

/**
 * Fill the form and submit; returns the new job's id (from the URL fragment the page sets).
 * @param {{task: "image-to-video" | "text-to-image", batch: number, size?: number, frames?: number,
 *   prompts?: string[]}} job
 */
async function submit(job) {
  await page.click(`label:has(input[name=task][value="${job.task}"])`);
  await page.fill("#batch", String(job.batch));
  await page.fill("#size", String(job.size ?? 64));
  await page.fill("#steps", "2");
  if (job.frames) await page.fill("#frames", String(job.frames));
  if (job.prompts) await page.fill("#prompts", job.prompts.join("\n"));
  const before = await page.evaluate(() => location.hash);
  await page.click("#submit");
  await page.waitForFunction((old) => location.hash !== old && location.hash.includes("job="), before);
  const id = await page.evaluate(() => new URLSearchParams(location.hash.slice(1)).get("job"));
  assert.ok(id);
  await page.waitForFunction((jobId) => document.getElementById("job-id")?.textContent === jobId, id);
  return id;
}

/** Wait for the open job's `done` (the grid gets data-done). */
async function waitDone(timeout = 120000) {
  await page.waitForSelector("#grid[data-done=true]", { timeout });
}

/**
 * Every `<video>` of the grid reaches readyState >= 2 with these dimensions; returns how many.
 * @param {number} width
 * @param {number} height
 */
async function checkVideos(width, height) {
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
            setTimeout(resolve, 15000);
          }),
      ),
    );
    return list.map((v) => ({
      item: v.closest("[data-item]")?.getAttribute("data-item"),
      readyState: v.readyState,
      width: v.videoWidth,
      height: v.videoHeight,
      error: v.error?.message ?? null,
      scheme: v.src.split(":")[0],
    }));
  });
  for (const video of videos) {
    assert.ok(video.readyState >= 2, `video ${video.item}: readyState ${video.readyState} (${video.error})`);
    assert.equal(video.width, width, `video ${video.item} width`);
    assert.equal(video.height, height, `video ${video.item} height`);
  }
  return videos;
}

/** Every `<img>` of the grid decodes; returns their natural sizes. */
async function checkImages() {
  return page.evaluate(async () => {
    const list = [...document.querySelectorAll("#grid img")].map(
      (el) => /** @type {HTMLImageElement} */ (el),
    );
    return Promise.all(
      list.map(async (img) => {
        await img.decode();
        return {
          item: img.closest("[data-item]")?.getAttribute("data-item"),
          w: img.naturalWidth,
          h: img.naturalHeight,
        };
      }),
    );
  });
}

/** @returns {Promise<Record<string, string>>} item index -> card state */
function cardStates() {
  return page.evaluate(() =>
    Object.fromEntries(
      [...document.querySelectorAll("#grid [data-item]")].map((c) => [
        c.getAttribute("data-item"),
        c.getAttribute("data-state"),
      ]),
    ),
  );
}

/** @param {string} name */
async function screenshot(name) {
  await screenshotOf(page, name);
}

/**
 * @param {import("playwright-core").Page} target
 * @param {string} name
 */
async function screenshotOf(target, name) {
  const path = join(shots, `${name}.png`);
  await target.screenshot({ path, fullPage: true });
  assert.ok(statSync(path).size > 10000, "a real screenshot");
  console.log(`screenshot: ${path}`);
}

test(
  "the relay serves the demo page; an image -> video batch plays in the grid",
  { skip: !!missing },
  async () => {
    await page.goto(`${stack.relayUrl}/#key=${stack.apiKey}`); // the page keeps the API key
    await page.waitForSelector("#job-form");
    const id = await submit({ task: "image-to-video", batch: 4, size: 64, frames: 8 });
    await waitDone();
    assert.deepEqual(await cardStates(), { 0: "ready", 1: "ready", 2: "ready", 3: "ready" });
    const videos = await checkVideos(64, 64);
    assert.equal(videos.length, 4);
    assert.ok(
      videos.every((v) => v.scheme === "blob"),
      "inline bytes, shown as object URLs",
    );
    assert.equal(await page.textContent("#job-status"), "COMPLETED");
    assert.match((await page.textContent("#overall-text")) ?? "", /4 of 4 ready/);
    await page.waitForSelector(`#job-list li[data-job="${id}"]`);
    await screenshot("video-batch");
    assert.deepEqual(pageErrors, []);
  },
);

test(
  "prompt -> images: each image decodes; a bad item shows its error on its card",
  { skip: !!missing },
  async () => {
    const tooLong = "x".repeat(2100);
    await submit({
      task: "text-to-image",
      batch: 3,
      size: 64,
      prompts: ["a red fox", tooLong, "a lighthouse"],
    });
    await waitDone();
    assert.deepEqual(await cardStates(), { 0: "ready", 1: "error", 2: "ready" });
    const images = await checkImages();
    assert.deepEqual(
      images.map((i) => [i.item, i.w, i.h]),
      [
        ["0", 64, 64],
        ["2", 64, 64],
      ],
    );
    const errorText = await page.textContent('#grid [data-item="1"] .error-text');
    assert.match(errorText ?? "", /prompt_too_long/);
    assert.match((await page.textContent("#overall-text")) ?? "", /2 of 3 ready · 1 failed/);
    await screenshot("image-batch-with-error");
  },
);

test("reload mid-job: the page replays what it missed", { skip: !!missing }, async () => {
  const id = await submit({ task: "image-to-video", batch: 8, size: 64, frames: 8 });
  // some results are in, the job is not over: reload
  await page.waitForSelector('#grid [data-state="ready"]', { timeout: 120000 });
  const readyBefore = await page.locator('#grid [data-state="ready"]').count();
  await screenshot("mid-job");
  const doneBefore = await page.evaluate(() => document.getElementById("grid")?.dataset.done === "true");
  await page.reload();
  await page.waitForFunction((jobId) => document.getElementById("job-id")?.textContent === jobId, id);
  await waitDone();
  const states = await cardStates();
  assert.equal(Object.keys(states).length, 8);
  assert.ok(
    Object.values(states).every((s) => s === "ready"),
    JSON.stringify(states),
  );
  assert.equal((await checkVideos(64, 64)).length, 8);
  console.log(`reloaded with ${readyBefore} of 8 ready (job ${doneBefore ? "already" : "not yet"} done)`);
  await screenshot("after-reload");
});

test(
  "30 picked photos: uploaded with progress before the job starts, the job carries refs, 30 clips come back",
  { skip: !!missing },
  async () => {
    const pngs = Array.from({ length: 30 }, (_, i) => pngOf(i, 512, 384)); // about 20 KB each
    const total = pngs.reduce((sum, png) => sum + png.byteLength, 0);
    await page.goto(`${stack.relayUrl}/#key=${stack.apiKey}`);
    await page.waitForSelector("#job-form");
    await page.setInputFiles(
      "#images",
      pngs.map((buffer, i) => ({ name: `photo-${i + 1}.png`, mimeType: "image/png", buffer })),
    );
    assert.equal(await page.inputValue("#batch"), "30", "one clip per picked photo");
    assert.match((await page.textContent("#images-hint")) ?? "", /^30 images picked/);
    /** @type {string[]} */
    const bodies = [];
    let puts = 0;
    let lookups = 0;
    let perFile = 0;
    /** @param {import("playwright-core").Request} request */
    const watch = (request) => {
      const path = new URL(request.url()).pathname;
      if (request.method() === "POST" && path === "/v1/jobs") bodies.push(request.postData() ?? "");
      if (request.method() === "PUT" && path === "/v1/inputs") puts += 1;
      if (request.method() === "POST" && path === "/v1/inputs/lookup") lookups += 1;
      if (/^\/v1\/inputs\/[0-9a-f]{64}$/.test(path)) perFile += 1;
    };
    page.on("request", watch);
    await page.evaluate(() => {
      const texts = /** @type {string[]} */ ([]);
      const box = /** @type {HTMLElement} */ (document.getElementById("upload-text"));
      new MutationObserver(() => texts.push(box.textContent ?? "")).observe(box, {
        childList: true,
        characterData: true,
        subtree: true,
      });
      Object.assign(window, { uploadTexts: texts });
    });
    const id = await submit({ task: "image-to-video", batch: 30, size: 64, frames: 8 });
    page.off("request", watch);
    const texts = /** @type {string[]} */ (
      await page.evaluate(() => /** @type {any} */ (window).uploadTexts)
    );
    const size = (/** @type {number} */ n) =>
      n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} KB` : `${(n / 1024 / 1024).toFixed(1)} MB`;
    assert.ok(
      texts.some((text) => /^Uploading 30 images: ([1-9]|[12]\d) done · [\d.]+ (KB|MB) of /.test(text)),
      `progress shown while uploading: ${texts.slice(0, 5).join(" | ")} ...`,
    );
    assert.equal(await page.textContent("#upload-text"), `Uploaded 30 images · ${size(total)}`);
    assert.equal(await page.getAttribute("#upload", "data-loaded"), String(total));
    assert.equal(puts, 30, "each photo uploaded once");
    assert.ok(lookups >= 1 && lookups < 30, `a few lookups for 30 photos: ${lookups}`);
    assert.equal(perFile, 0, "no per-file GET (whose misses Chromium would log as 404 errors)");
    assert.equal(bodies.length, 1);
    assert.ok(
      bodies[0].length < 6000,
      `the job is small: ${bodies[0].length} bytes for ${total} bytes of photos`,
    );
    const images = JSON.parse(bodies[0]).input.items.map((/** @type {any} */ item) => item.image);
    assert.deepEqual(
      images,
      pngs.map((png) => `input:${createHash("sha256").update(png).digest("hex")}`),
      "item i names photo i",
    );

    await waitDone(240000);
    const states = await cardStates();
    assert.equal(Object.keys(states).length, 30);
    assert.ok(
      Object.values(states).every((state) => state === "ready"),
      JSON.stringify(states),
    );
    assert.equal((await checkVideos(64, 64)).length, 30);
    assert.match((await page.textContent("#overall-text")) ?? "", /30 of 30 ready/);
    const run = (await stack.emulatorStats()).routes.run;
    assert.ok(run.max_request_bytes < 20000, `RunPod's /run bodies stay small: ${run.max_request_bytes}`);
    assert.ok(id);
    await screenshot("thirty-uploaded-photos");
    await page.setInputFiles("#images", []); // back to the sample images
    await page.waitForFunction(() =>
      document.getElementById("images-hint")?.textContent?.startsWith("No images"),
    );
    assert.deepEqual(pageErrors, []);
  },
);

test(
  "open a past job by id: rendered from its manifest, media streamed from the relay",
  { skip: !!missing },
  async () => {
    const jobs = await (await fetch(`${stack.relayUrl}/v1/jobs`, { headers: stack.headers })).json();
    const first = jobs.jobs.find((/** @type {any} */ j) => j.items === 4);
    assert.ok(first, "the first job is listed");
    await page.fill("#open-id", "");
    await page.goto(`${stack.relayUrl}/`); // a fresh page, nothing in memory
    await page.fill("#open-id", first.id);
    await page.click("#open-form button");
    await page.waitForFunction((jobId) => document.getElementById("job-id")?.textContent === jobId, first.id);
    await waitDone();
    const videos = await checkVideos(64, 64);
    assert.equal(videos.length, 4);
    assert.ok(
      videos.every((v) => v.scheme === "http"),
      "URL mode: the relay's media URLs",
    );
    await page.fill("#open-id", "no-such-job");
    await page.click("#open-form button");
    await page.waitForSelector("#job-errors div");
    assert.match((await page.textContent("#job-errors")) ?? "", /No job no-such-job/);
    assert.deepEqual(
      pageErrors.filter((e) => !/404/.test(e)),
      [],
    );
  },
);

/**
 * Record what the open job's progress says each time its line changes: the line, the bar (inline width and
 * state), the cards by state and the connection pill. For the page loaded now (a reload drops it).
 * @param {import("playwright-core").Page} target
 */
async function watchProgress(target) {
  await target.evaluate(() => {
    /** @type {any[]} */
    const samples = [];
    const text = /** @type {HTMLElement} */ (document.getElementById("overall-text"));
    const take = () => {
      const states = [...document.querySelectorAll("#grid [data-item]")].map((c) =>
        c.getAttribute("data-state"),
      );
      const count = (/** @type {string[]} */ ...names) =>
        states.filter((s) => names.includes(s ?? "")).length;
      samples.push({
        text: text.textContent,
        width: /** @type {HTMLElement} */ (document.getElementById("overall")).style.width,
        bar: document.getElementById("overall-bar")?.dataset.state,
        cards: states.length,
        ready: count("ready"),
        failed: count("error"),
        missing: count("missing"),
        inflight: count("generating", "receiving"),
        pill: document.getElementById("conn")?.textContent,
        status: document.getElementById("job-status")?.textContent,
      });
    };
    new MutationObserver(take).observe(text, { childList: true, characterData: true, subtree: true });
    Object.assign(window, { progressSamples: samples });
  });
}

/**
 * The samples `watchProgress` recorded so far, and forget them.
 * @param {import("playwright-core").Page} target
 * @returns {Promise<Array<{text: string, width: string, bar: string, cards: number, ready: number,
 *   failed: number, missing: number, inflight: number, pill: string, status: string}>>}
 */
function progressSamples(target) {
  return target.evaluate(() => /** @type {any} */ (window).progressSamples.splice(0));
}

/** @param {number} n  as the page writes a size */
function formatSize(n) {
  if (n < 1024) return `${n} B`;
  return n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} KB` : `${(n / 1024 / 1024).toFixed(1)} MB`;
}

/**
 * Open a job by id in `target` (a page already loaded) and wait for its `done`.
 * @param {import("playwright-core").Page} target
 * @param {string} id
 */
async function openById(target, id) {
  await target.fill("#open-id", id);
  await target.click("#open-form button");
  await target.waitForFunction((jobId) => document.getElementById("job-id")?.textContent === jobId, id);
}

/**
 * The manifest of a job (GET /v1/jobs/{id}) with the API key.
 * @param {string} id
 */
async function manifestOf(id) {
  return (await fetch(`${stack.relayUrl}/v1/jobs/${id}`, { headers: stack.headers })).json();
}

test(
  "progress of a live 40-item job submitted elsewhere: k of 40 from the first frame, the bar its share; its replay says the same",
  { skip: !!missing },
  async () => {
    const items = Array.from({ length: 40 }, (_, i) => ({ prompt: `a paper boat, ${i}`, seed: i }));
    const input = { task: "text-to-image", items, params: { width: 64, height: 64, steps: 2 } };
    const job = await post("/v1/jobs", { input }); // not from this page: it does not know the job's size
    const errorsBefore = pageErrors.length; // the test before looked for a job that does not exist (404)
    await page.goto(`${stack.relayUrl}/#key=${stack.apiKey}`);
    await page.waitForSelector("#job-form");
    await watchProgress(page);
    await openById(page, job.id);
    await waitDone();
    const samples = await progressSamples(page);
    const live = samples.filter((x) => x.bar === "live");
    assert.ok(
      live.length >= 5,
      `the line changed as results came: ${samples.map((x) => x.text).join(" | ")}`,
    );
    for (const x of live) {
      const m = /^(\d+) of 40 ready · [\d.]+ (B|KB|MB) received$/.exec(x.text);
      assert.ok(m, `live: "${x.text}"`);
      assert.equal(Number(m[1]), x.ready, `the line counts the ready cards: ${JSON.stringify(x)}`);
      assert.equal(x.cards, 40, "a card for each of the 40 items from the start");
      const percent = Number(x.width.replace("%", ""));
      const low = Math.min(99, Math.floor((100 * x.ready) / 40)); // full only at `done`
      const high = Math.floor((100 * (x.ready + x.inflight)) / 40);
      assert.ok(low <= percent && percent <= Math.min(99, high), `bar ${x.width} for ${JSON.stringify(x)}`);
      assert.equal(x.pill, "live");
    }
    assert.ok(
      samples.every((x) => !/\+|so far/.test(x.text)),
      "never a guessed total once the relay said 40",
    );
    const manifest = await manifestOf(job.id);
    assert.equal(manifest.expected_items, 40);
    const size = manifest.items.reduce((sum, /** @type {any} */ item) => sum + item.size, 0);
    assert.equal(await page.textContent("#overall-text"), `40 of 40 ready · ${formatSize(size)} received`);
    assert.equal(await page.getAttribute("#overall", "style"), "width: 100%;");
    assert.equal(await page.getAttribute("#overall-bar", "data-state"), "done");
    assert.equal(await page.textContent("#job-status"), "COMPLETED");

    // the finished job again, in a page that has nothing of it: a replay from its manifest
    await page.goto(`${stack.relayUrl}/`);
    await page.waitForSelector("#job-form");
    await openById(page, job.id);
    await waitDone();
    assert.equal(await page.textContent("#overall-text"), `40 of 40 ready · ${formatSize(size)}`);
    assert.equal(await page.getAttribute("#overall", "style"), "width: 100%;");
    assert.equal(await page.getAttribute("#overall-bar", "data-state"), "done");
    assert.equal(await page.textContent("#job-status"), "COMPLETED");
    assert.equal(await page.textContent("#conn"), "replay", "not `idle`: the job is shown from its record");
    assert.deepEqual(Object.values(await cardStates()), Array(40).fill("ready"));
    await screenshot("replay-40");
    assert.deepEqual(pageErrors.slice(errorsBefore), []);
  },
);

test(
  "a job attached from elsewhere (no total known): ready so far and a moving bar, never a made-up share",
  { skip: !!missing },
  async () => {
    const items = Array.from({ length: 8 }, (_, i) => ({ prompt: `a lighthouse, ${i}`, seed: i }));
    const input = { task: "text-to-image", items, params: { width: 64, height: 64, steps: 10 } };
    const run = await fetch(`${stack.emulatorUrl}/run`, {
      method: "POST",
      headers: { authorization: `Bearer ${stack.runpodKey}`, "content-type": "application/json" },
      body: JSON.stringify({ input }),
    });
    const { id } = await run.json();
    await post(`/v1/jobs/${id}/attach`, {});
    await page.goto(`${stack.relayUrl}/#key=${stack.apiKey}`);
    await page.waitForSelector("#job-form");
    await watchProgress(page);
    await openById(page, id);
    await waitDone();
    const samples = await progressSamples(page);
    const running = samples.filter((x) => x.bar === "unknown" && x.text !== "opening the job…");
    assert.ok(running.length >= 1, samples.map((x) => x.text).join(" | "));
    for (const x of running) {
      assert.match(x.text, /^\d+ ready so far · [\d.]+ (B|KB|MB) received$/);
      assert.equal(x.width, "", "no share of an unknown total");
    }
    assert.match((await page.textContent("#overall-text")) ?? "", /^8 of 8 ready · [\d.]+ KB received$/);
    assert.equal(await page.getAttribute("#overall", "style"), "width: 100%;");
  },
);

/** @type {import("playwright-core").Browser | null} */
let plainBrowser = null;

/**
 * A page in a new, empty browser profile: no API key in its storage, nothing from the other tests.
 * @returns {Promise<import("playwright-core").Page>}
 */
async function freshPage() {
  plainBrowser ??= await chromium.launch({
    executablePath: /** @type {string} */ (executablePath),
    headless: true,
    args: CHROMIUM_ARGS,
  });
  const fresh = await (await plainBrowser.newContext({ viewport: { width: 1280, height: 860 } })).newPage();
  fresh.on("pageerror", (err) => pageErrors.push(err.message));
  return fresh;
}
after(async () => {
  await plainBrowser?.close();
});

/**
 * POST to the relay with the API key; the parsed answer.
 * @param {string} path
 * @param {unknown} body
 */
async function post(path, body) {
  const headers = { ...stack.headers, "content-type": "application/json" };
  const answer = await fetch(`${stack.relayUrl}${path}`, {
    method: "POST",
    headers,
    body: JSON.stringify(body),
  });
  if (!answer.ok) assert.fail(`${path}: ${answer.status} ${await answer.text()}`);
  return answer.json();
}

test(
  "a link with a one-time code shows the job in a browser that has no key; reused elsewhere it says why not",
  { skip: !!missing },
  async () => {
    const prompts = ["a red fox", "a paper boat"];
    const input = { task: "text-to-image", items: prompts.map((prompt) => ({ prompt })), params: { width: 64, height: 64, steps: 2 } }; // prettier-ignore
    const job = await post("/v1/jobs", { input });
    const link = await post(`/v1/jobs/${job.id}/links`, {});
    const url = `${stack.relayUrl}/#job=${job.id}&code=${link.code}`;
    assert.doesNotMatch(url, /psk_/, "no API key in the link");
    const viewer = await freshPage();
    await viewer.goto(url);
    await viewer.waitForSelector("#grid[data-done=true]", { timeout: 120000 });
    const images = await viewer.evaluate(() =>
      Promise.all(
        [...document.querySelectorAll("#grid img")].map(async (el) => {
          const img = /** @type {HTMLImageElement} */ (el);
          await img.decode();
          return [img.naturalWidth, img.naturalHeight];
        }),
      ),
    );
    assert.deepEqual(images, [[64, 64], [64, 64]], "the job's two images, decoded"); // prettier-ignore
    assert.equal(await viewer.textContent("#job-status"), "COMPLETED");
    assert.doesNotMatch(viewer.url(), /code=/, "the page dropped the code from its address");
    // no key is not an error: a hint in the page's muted colour, not the red of #jobs-error
    assert.equal(
      await viewer.textContent("#jobs-note"),
      "Enter the relay's API key (top right) to list and submit jobs.",
    );
    assert.equal(await viewer.textContent("#jobs-error"), "");
    const colours = await viewer.evaluate(() => {
      const color = (/** @type {string} */ id) =>
        getComputedStyle(/** @type {HTMLElement} */ (document.getElementById(id))).color;
      const probe = document.createElement("p");
      probe.className = "form-error";
      document.body.append(probe);
      const red = getComputedStyle(probe).color;
      probe.remove();
      return { note: color("jobs-note"), hint: color("images-hint"), red };
    });
    assert.equal(colours.note, colours.hint, "the key prompt looks like the page's other hints");
    assert.notEqual(colours.note, colours.red);
    await viewer.reload(); // the token the code was traded for is kept: the job shows again
    await viewer.waitForSelector("#grid[data-done=true]", { timeout: 60000 });
    assert.equal(await viewer.locator("#grid img").count(), 2);

    const second = await freshPage(); // the same link, in another browser: the code is spent
    await second.goto(url);
    await second.waitForSelector("#job-errors div");
    assert.equal(
      await second.textContent("#job-errors"),
      "This link cannot be used: this link is unknown, used up or expired: ask for a new one",
    );
    assert.ok(await second.isHidden("#cancel"), "nothing to cancel, and no key to cancel with");
    await screenshotOf(second, "spent-link");
  },
);

test(
  "a wrong API key: the page says what was rejected, as the CLI does, never [object Object]",
  { skip: !!missing },
  async () => {
    const viewer = await freshPage();
    await viewer.goto(`${stack.relayUrl}/#key=psk_not-a-key-of-this-relay`);
    await viewer.waitForFunction(() => document.getElementById("jobs-error")?.textContent);
    assert.equal(await viewer.textContent("#jobs-error"), "job list: the relay rejected the API key");
    await viewer.fill("#batch", "1");
    await viewer.click("#submit");
    await viewer.waitForFunction(() => document.getElementById("form-error")?.textContent);
    assert.equal(await viewer.textContent("#form-error"), "the relay rejected the API key");
    await viewer.fill("#open-id", "some-job");
    await viewer.click("#open-form button");
    await viewer.waitForSelector("#job-errors div");
    assert.equal(await viewer.textContent("#job-errors"), "the relay rejected the API key");
    assert.ok(await viewer.isHidden("#cancel"), "no Cancel for a job that could not be opened");
    assert.doesNotMatch((await viewer.textContent("body")) ?? "", /object Object/);
    await screenshotOf(viewer, "wrong-key");
  },
);

// Last: the worker may go on with the cancelled job's items for a while after the relay has closed it.
test(
  "a cancelled job: what came, and the rest not delivered (not failed), live and in its replay",
  { skip: !!missing },
  async () => {
    const items = Array.from({ length: 40 }, (_, i) => ({ prompt: `a red fox, ${i}`, seed: i }));
    const input = { task: "text-to-image", items, params: { width: 64, height: 64, steps: 12 } };
    const job = await post("/v1/jobs", { input });
    await page.goto(`${stack.relayUrl}/#key=${stack.apiKey}`);
    await page.waitForSelector("#job-form");
    await openById(page, job.id);
    await page.waitForSelector('#grid [data-state="ready"]', { timeout: 120000 });
    await page.click("#cancel");
    await waitDone();
    assert.equal(await page.textContent("#job-status"), "CANCELLED");
    const text = (await page.textContent("#overall-text")) ?? "";
    const m = /^(\d+) of 40 ready · (\d+) not delivered · [\d.]+ (B|KB|MB) received$/.exec(text);
    assert.ok(m, text);
    const ready = Number(m[1]);
    assert.ok(ready >= 1 && ready < 40 && ready + Number(m[2]) === 40, text);
    const states = Object.values(await cardStates());
    assert.equal(states.filter((s) => s === "ready").length, ready);
    assert.equal(states.filter((s) => s === "missing").length, 40 - ready, JSON.stringify(states));
    const width = `width: ${Math.floor((100 * ready) / 40)}%;`;
    assert.equal(await page.getAttribute("#overall", "style"), width, "the bar stops at what came");
    assert.equal(await page.getAttribute("#overall-bar", "data-state"), "stopped");
    await cancelledNote(ready);
    await screenshot("cancelled");

    await page.goto(`${stack.relayUrl}/`);
    await page.waitForSelector("#job-form");
    await openById(page, job.id);
    await waitDone();
    const replay = (await page.textContent("#overall-text")) ?? "";
    assert.match(
      replay,
      new RegExp(`^${ready} of 40 ready · ${40 - ready} not delivered · [\\d.]+ (B|KB|MB)$`),
    );
    assert.equal(await page.getAttribute("#overall", "style"), width);
    assert.equal(await page.textContent("#conn"), "replay");
    await cancelledNote(ready);
  },
);

/**
 * A cancelled job reads as what happened, in the CLI's words and a note's colour: no red box saying
 * `missing_manifest`, no error for items the job never made.
 * @param {number} ready  files that arrived
 */
async function cancelledNote(ready) {
  const never = ready === 39 ? "item 39" : `items ${ready}-39`;
  assert.equal(
    await page.textContent("#job-note"),
    `The job was cancelled: ${ready} of 40 files arrived; never sent: ${never}.`,
  );
  assert.equal(await page.textContent("#job-errors"), "", "stopping a job is not an error");
  const colours = await page.evaluate(() => {
    const color = (/** @type {Element} */ el) => getComputedStyle(el).color;
    const probe = document.createElement("p");
    probe.className = "form-error";
    document.body.append(probe);
    const red = color(probe);
    probe.remove();
    return { note: color(/** @type {Element} */ (document.getElementById("job-note"))), red };
  });
  assert.notEqual(colours.note, colours.red, "the note is not in the colour of an error");
}
