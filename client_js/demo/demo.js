// The relay's demo page: submit a batch, watch each result arrive, open any past job. Built with
// scripts/build.mjs into relay/static/index.html (inlined), so the relay serves it without Node.
import { PodstreamClient, RelayHttpError, isTerminalStatus, jobEnded } from "../src/index.js";
import { formatBytes, jobProgress } from "./progress.js";

/**
 * @typedef {import("../src/subscription.js").JobSubscription} JobSubscription
 * @typedef {import("../src/file.js").PodstreamFile} PodstreamFile
 * @typedef {"queued" | "generating" | "receiving" | "ready" | "error" | "missing"} CardState  `missing`:
 *   never delivered (the job was cancelled, failed or timed out first)
 * @typedef {{root: HTMLElement, media: HTMLElement, fill: HTMLElement, name: HTMLElement, info: HTMLElement,
 *   state: CardState, fraction: number, received: number}} Card
 * @typedef {object} View  the job on show
 * @property {string} id
 * @property {JobSubscription | null} sub
 * @property {Map<number, Card>} cards
 * @property {number | null} total  how many items the job asks for: the relay's `expected_items`, else what
 *   this browser submitted; null while unknown
 * @property {number} bytes  bytes received (live), or the size of the files shown (a replay)
 * @property {string} status  the job's RunPod status as last heard ("…" before that)
 * @property {boolean} opened  the relay answered: `subscribed`, or the manifest of a finished job
 * @property {boolean} finished  its `done` arrived
 * @property {boolean} replay  a finished job shown from its manifest, not a live stream
 */

const KEY_STORAGE = "podstream.apiKey";
const JOBS_STORAGE = "podstream.jobs";
/** Read-only tokens from link codes, by job: `{token, expiresAt}` (unix ms). */
const LINKS_STORAGE = "podstream.links";

/**
 * @template {HTMLElement} T
 * @param {string} id
 * @returns {T}
 */
function $(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing #${id}`);
  return /** @type {T} */ (el);
}

/**
 * Create an element with attributes and children.
 * @param {string} tag
 * @param {Record<string, string>} [attrs]
 * @param {Array<Node | string>} [children]
 * @returns {HTMLElement}
 */
function h(tag, attrs = {}, children = []) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") el.className = value;
    else el.setAttribute(name, value);
  }
  el.append(...children);
  return el;
}

/** @param {unknown} err  a RelayHttpError's message is the relay's own sentence */
function message(err) {
  return err instanceof Error ? err.message : String(err);
}

// ---- credentials: the API key (from #key= once, then local storage), or a link's read-only token -----------

const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.has("key")) {
  localStorage.setItem(KEY_STORAGE, fragment.get("key") ?? "");
  fragment.delete("key");
}
/** A link code (`/#job=ID&code=C`, as `podstream demo` prints it): traded for a token below, then dropped. */
const linkCode = fragment.get("code");
fragment.delete("code");
fragment.delete("token");
history.replaceState(
  null,
  "",
  `${location.pathname}${location.search}${fragment.size ? `#${fragment}` : ""}`,
);
const linkJob = fragment.get("job") ?? new URLSearchParams(location.search).get("job");
const keyInput = /** @type {HTMLInputElement} */ ($("api-key"));
keyInput.value = localStorage.getItem(KEY_STORAGE) ?? "";

/** Jobs submitted from this browser: how many items each has (the relay's list may not say). */
/** @type {Record<string, {total: number, task: string, at: number}>} */
const knownJobs = JSON.parse(localStorage.getItem(JOBS_STORAGE) ?? "{}");

/** @returns {Record<string, {token: string, expiresAt: number}>} the unexpired link tokens */
function linkTokens() {
  /** @type {Record<string, {token: string, expiresAt: number}>} */
  const all = JSON.parse(localStorage.getItem(LINKS_STORAGE) ?? "{}");
  return Object.fromEntries(Object.entries(all).filter(([, t]) => t.expiresAt > Date.now()));
}

/**
 * The token for `jobs` from a link: one job only (a link is for one job). An expired one ends the subscription
 * with a sentence (a 4xx RelayHttpError is final for the client), rather than being retried.
 * @param {{jobs: string[]}} context
 * @returns {string | null}
 */
function tokenFromLinks({ jobs }) {
  if (jobs.length !== 1) return null;
  const found = linkTokens()[jobs[0]];
  if (found) return found.token;
  throw new RelayHttpError({
    status: 401, code: "credential_missing", method: "GET", path: `/v1/jobs/${jobs[0]}`, body: null,
    message: "this page has no API key, and no link to this job (or its link expired): open a new link",
  }); // prettier-ignore
}

/**
 * Which credential the client uses: the API key if there is one (the client mints and renews tokens itself),
 * else tokens from links.
 * @param {string} key
 */
function useKey(key) {
  client.apiKey = key || undefined;
  client.getToken = key ? undefined : tokenFromLinks;
}

/** @type {PodstreamClient} */
const client = new PodstreamClient({ url: location.origin });
useKey(keyInput.value);

/** Trade the link's code for a read-only token of its job (unless this browser already holds one). */
async function redeemLink() {
  if (!linkCode || !linkJob || client.apiKey || linkTokens()[linkJob]) return;
  const { job, token, expires_at: expiresAt } = await client.redeemLink(linkCode);
  if (token === null) return; // a relay without auth
  const tokens = linkTokens();
  tokens[job] = { token, expiresAt: expiresAt * 1000 };
  localStorage.setItem(LINKS_STORAGE, JSON.stringify(tokens));
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem(KEY_STORAGE, keyInput.value);
  useKey(keyInput.value);
  /** @type {HTMLDetailsElement} */ (keyInput.closest("details")).open = false;
  void refreshJobs();
});

const conn = $("conn");
/** While the client waits to reconnect: when, as the pill says it. @type {string | null} */
let reconnecting = null;

/**
 * The pill at the top: the websocket's state, or `replay` while the job on show is a finished one read from
 * its manifest (no live stream is needed for it, whatever the socket is doing).
 */
function showConnection() {
  const state = view?.replay ? "replay" : client.state;
  conn.dataset.state = state;
  conn.textContent =
    state === "connected" ? "live" : state === "disconnected" && reconnecting ? reconnecting : state;
  conn.title =
    state === "replay"
      ? "a finished job, shown from the relay's record of it: nothing live to follow"
      : "websocket to the relay";
}
client.on("state", () => {
  reconnecting = null;
  showConnection();
});
client.on("disconnected", ({ reconnectIn }) => {
  reconnecting = reconnectIn === null ? null : `reconnecting in ${(reconnectIn / 1000).toFixed(1)} s`;
  showConnection();
});

// ---- the new-job form -------------------------------------------------------------------------------

const form = /** @type {HTMLFormElement} */ ($("job-form"));
const imagesInput = /** @type {HTMLInputElement} */ ($("images"));
const formError = $("form-error");

function task() {
  return /** @type {HTMLInputElement} */ (form.querySelector("input[name=task]:checked")).value;
}

function showTaskFields() {
  for (const el of form.querySelectorAll("[data-task]")) {
    /** @type {HTMLElement} */ (el).hidden = /** @type {HTMLElement} */ (el).dataset.task !== task();
  }
}
form.addEventListener("change", showTaskFields);
showTaskFields();

/**
 * The source images: the picked files, or samples drawn in the page. Each is uploaded to the relay when a job
 * is submitted (the job names it by its ref); `url` is an object URL for its thumbnail.
 * @typedef {{blob: Blob, url: string}} Source
 */
/** @type {Source[]} */
let sources = [];

/**
 * Sample images drawn in the page: a gradient, a few shapes and the item number.
 * @param {number} count
 * @param {number} size
 * @returns {Promise<Blob[]>} PNGs
 */
async function sampleImages(count, size) {
  const canvas = document.createElement("canvas");
  canvas.width = size;
  canvas.height = size;
  const ctx = /** @type {CanvasRenderingContext2D} */ (canvas.getContext("2d"));
  const out = [];
  for (let i = 0; i < count; i += 1) {
    const hue = (i * 47) % 360;
    const gradient = ctx.createLinearGradient(0, 0, size, size);
    gradient.addColorStop(0, `hsl(${hue} 70% 55%)`);
    gradient.addColorStop(1, `hsl(${(hue + 120) % 360} 70% 25%)`);
    ctx.fillStyle = gradient;
    ctx.fillRect(0, 0, size, size);
    for (let k = 0; k < 4; k += 1) {
      ctx.fillStyle = `hsla(${(hue + k * 90) % 360} 80% 70% / 0.55)`;
      ctx.beginPath();
      const x = ((k * 73 + i * 31) % 100) / 100;
      const y = ((k * 41 + i * 17) % 100) / 100;
      ctx.arc(x * size, y * size, size * (0.08 + 0.04 * k), 0, Math.PI * 2);
      ctx.fill();
    }
    ctx.fillStyle = "rgba(255,255,255,0.9)";
    ctx.font = `bold ${Math.round(size * 0.4)}px system-ui, sans-serif`;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(String(i + 1), size / 2, size / 2);
    out.push(
      await new Promise((resolve, reject) =>
        canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("cannot draw"))), "image/png"),
      ),
    );
  }
  return out;
}

/** @param {Blob[]} blobs */
function setSources(blobs) {
  for (const source of sources) URL.revokeObjectURL(source.url);
  sources = blobs.map((blob) => ({ blob, url: URL.createObjectURL(blob) }));
  const box = $("sources");
  box.replaceChildren(...sources.slice(0, 24).map(({ url }) => h("img", { src: url, alt: "" })));
  const picked = imagesInput.files?.length ?? 0;
  $("images-hint").textContent = picked
    ? `${picked} image${picked === 1 ? "" : "s"} picked, uploaded when you submit; the batch cycles through them.`
    : "No images picked: sample images drawn in this page are used.";
}

/** Until the samples are drawn (a submit waits for them). */
let sourcesReady = sampleImages(6, 256).then(setSources);

imagesInput.addEventListener("change", () => {
  const files = [...(imagesInput.files ?? [])];
  if (files.length) {
    // one clip per picked image
    /** @type {HTMLInputElement} */ ($("batch")).value = String(Math.min(files.length, 1000));
    setSources(files);
    sourcesReady = Promise.resolve();
  } else {
    sourcesReady = sampleImages(6, 256).then(setSources);
  }
});

/** @param {string} id */
function numberField(id) {
  const input = /** @type {HTMLInputElement} */ ($(id));
  const value = Number(input.value);
  if (!Number.isInteger(value) || value < Number(input.min) || value > Number(input.max)) {
    throw new Error(
      `${input.closest("label")?.firstChild?.textContent?.trim() ?? id}: ${input.min}–${input.max}`,
    );
  }
  return value;
}

/** The worker input for the form's settings (docs/worker.md). */
function buildInput() {
  const batch = numberField("batch");
  const size = numberField("size");
  const steps = numberField("steps");
  if (task() === "image-to-video") {
    const frames = numberField("frames");
    const items = Array.from({ length: batch }, (_, i) => ({
      id: `clip-${i + 1}`,
      image: sources[i % sources.length].blob,
      seed: i,
    }));
    return {
      task: "image-to-video",
      items,
      params: { width: size, height: size, frames, steps },
      output: { format: "mp4" },
    };
  }
  const prompts = /** @type {HTMLTextAreaElement} */ ($("prompts")).value
    .split("\n")
    .map((line) => line.trim())
    .filter(Boolean);
  if (!prompts.length) throw new Error("write at least one prompt");
  const items = Array.from({ length: batch }, (_, i) => ({
    id: `image-${i + 1}`,
    prompt: prompts[i % prompts.length],
    seed: i,
  }));
  return {
    task: "text-to-image",
    items,
    params: { width: size, height: size, steps },
    output: { format: "png" },
  };
}

/**
 * Show the uploads of a submit: a bar, and how many files and bytes are done. It stays up after the submit.
 * @param {import("../src/inputs.js").BatchProgress} p
 * @param {boolean} [submitted]  the job was submitted
 */
function showUpload(p, submitted = false) {
  const box = $("upload");
  box.hidden = false;
  Object.assign(box.dataset, { loaded: p.loaded, total: p.total, done: p.done, files: p.files });
  $("upload-fill").style.width = `${p.total ? Math.round((100 * p.loaded) / p.total) : 100}%`;
  const images = `${p.files} image${p.files === 1 ? "" : "s"}`;
  $("upload-text").textContent =
    p.done === p.files
      ? `Uploaded ${images} · ${formatBytes(p.total)}${submitted ? "" : "; submitting the job…"}`
      : `Uploading ${images}: ${p.done} done · ${formatBytes(p.loaded)} of ${formatBytes(p.total)}`;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  formError.textContent = "";
  const button = /** @type {HTMLButtonElement} */ ($("submit"));
  button.disabled = true;
  $("upload").hidden = true;
  try {
    await sourcesReady;
    const input = buildInput();
    /** @type {import("../src/inputs.js").BatchProgress | null} */
    let uploads = null;
    const job = await client.submit(input, { onUploadProgress: (p) => showUpload((uploads = p)) });
    if (uploads) showUpload(uploads, true);
    knownJobs[job.id] = { total: input.items.length, task: input.task, at: Date.now() };
    localStorage.setItem(JOBS_STORAGE, JSON.stringify(knownJobs));
    location.hash = `job=${encodeURIComponent(job.id)}`; // opens it (hashchange)
    void refreshJobs();
  } catch (err) {
    formError.textContent = message(err);
  } finally {
    button.disabled = false;
  }
});

// ---- the job list -----------------------------------------------------------------------------------

const jobList = $("job-list");

/** @param {Record<string, any>} job */
function jobWhen(job) {
  const raw = job.created_at ?? job.created ?? job.submitted_at ?? knownJobs[job.id]?.at;
  if (raw === undefined || raw === null) return "";
  const date = new Date(typeof raw === "number" && raw < 1e12 ? raw * 1000 : raw);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleTimeString();
}

async function refreshJobs() {
  try {
    const jobs = await client.listJobs();
    $("jobs-error").textContent = "";
    $("jobs-note").textContent = "";
    jobList.replaceChildren(
      ...jobs.map((job) => {
        const status = String(job.status ?? "");
        const li = h("li", { "data-job": job.id, title: job.id }, [
          h("code", {}, [job.id]),
          h("span", { class: "row-meta" }, [
            h("span", { class: "when" }, [
              typeof job.items === "number" ? `${job.items} file${job.items === 1 ? "" : "s"} · ` : "",
              jobWhen(job),
            ]),
            h("span", { class: "badge", "data-status": status }, [status]),
          ]),
        ]);
        if (view?.id === job.id) li.setAttribute("aria-current", "true");
        li.addEventListener("click", () => (location.hash = `job=${encodeURIComponent(job.id)}`));
        return li;
      }),
    );
    if (!jobs.length) jobList.replaceChildren(h("li", { class: "muted" }, ["no jobs yet"]));
  } catch (err) {
    // No key is not an error: the page says what to do, in the colour of a hint.
    const noKey = !client.apiKey && err instanceof RelayHttpError && err.status === 401;
    $("jobs-note").textContent = noKey
      ? "Enter the relay's API key (top right) to list and submit jobs."
      : "";
    $("jobs-error").textContent = noKey ? "" : `job list: ${message(err)}`;
  }
}
$("refresh-jobs").addEventListener("click", () => void refreshJobs());
$("open-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const id = /** @type {HTMLInputElement} */ ($("open-id")).value.trim();
  if (id) location.hash = `job=${encodeURIComponent(id)}`;
});

// ---- one job: the grid ------------------------------------------------------------------------------

/** @type {View | null} */
let view = null;
const grid = $("grid");

/** @param {number} index */
function card(index) {
  if (!view) throw new Error("no job open");
  let found = view.cards.get(index);
  if (found) return found;
  const fill = h("div", { class: "fill" });
  const media = h("div", { class: "media" }, [h("div", { class: "placeholder" }, ["queued"])]);
  const name = h("span", { class: "name" }, [`#${index + 1}`]);
  const info = h("span", { class: "info muted" });
  const root = h("article", { class: "card", "data-item": String(index), "data-state": "queued" }, [
    media,
    h("div", { class: "bar" }, [fill]),
    h("div", { class: "meta" }, [name, info]),
  ]);
  found = { root, media, fill, name, info, state: "queued", fraction: 0, received: 0 };
  view.cards.set(index, found);
  // keep the grid in item order whatever order the cards are created in
  const after = [...view.cards.keys()].filter((k) => k > index).sort((a, b) => a - b)[0];
  const next = after === undefined ? null : (view.cards.get(after)?.root ?? null);
  grid.insertBefore(root, next);
  return found;
}

/**
 * @param {Card} c
 * @param {CardState} state
 * @param {number} fraction
 * @param {string} [text]
 */
function setCard(c, state, fraction, text) {
  if (isSettled(c)) return;
  c.state = state;
  c.fraction = fraction;
  c.root.dataset.state = state;
  c.fill.style.width = `${Math.round(fraction * 100)}%`;
  if (text !== undefined) {
    const placeholder = c.media.querySelector(".placeholder");
    if (placeholder) placeholder.textContent = text;
  }
  updateOverall();
}

/** @param {Card} c  whether the card shows its final state (a file, a failure, or never delivered) */
function isSettled(c) {
  return c.state === "ready" || c.state === "error" || c.state === "missing";
}

/** The line under the job's title and the overall bar, from the cards (test/demo_progress.test.js). */
function updateOverall() {
  if (!view) return;
  let ready = 0;
  let failed = 0;
  let partial = 0;
  for (const c of view.cards.values()) {
    if (c.state === "ready") ready += 1;
    else if (c.state === "error") failed += 1;
    else if (c.state !== "missing") partial += c.fraction;
  }
  const p = jobProgress({
    total: view.total,
    shown: view.cards.size,
    ready,
    failed,
    partial,
    bytes: view.bytes,
    finished: view.finished,
    replay: view.replay,
  });
  if (view.status === "unknown")
    Object.assign(p, { text: "—", percent: 0, state: "stopped" }); // not opened
  else if (!view.opened) Object.assign(p, { text: "opening the job…", percent: null, state: "unknown" });
  const bar = $("overall-bar");
  bar.dataset.state = p.state;
  bar.setAttribute("aria-valuetext", p.text);
  if (p.percent === null) bar.removeAttribute("aria-valuenow");
  else bar.setAttribute("aria-valuenow", String(p.percent));
  const overall = $("overall");
  overall.style.width = p.percent === null ? "" : `${p.percent}%`;
  Object.assign(overall.dataset, {
    ready: String(ready),
    failed: String(failed),
    undelivered: String(p.undelivered),
    total: p.total === null ? "" : String(p.total),
  });
  $("overall-text").textContent = p.text;
}

/**
 * What the job asks for, once known (the relay's `expected_items`): a card for every item from the start.
 * @param {View} current
 * @param {number | null} total
 */
function learnTotal(current, total) {
  if (total === null || current !== view || total === current.total) return;
  current.total = total;
  for (let i = 0; i < total; i += 1) card(i);
  updateOverall();
}

/** @param {string} status  "…" before the relay answers, "unknown" when the job cannot be opened */
function setStatus(status) {
  if (view) view.status = status;
  const badge = $("job-status");
  badge.textContent = status;
  badge.dataset.status = status;
  // Only a job that is still running can be cancelled, and only with an API key (a link gives read access).
  $("cancel").hidden = isTerminalStatus(status) || status === "unknown" || status === "…" || !client.apiKey;
  updateOverall();
}

/** @param {string} status  whether a job with this status stopped before it completed */
function endedEarly(status) {
  return isTerminalStatus(status) && status !== "COMPLETED";
}

/** @param {string} text */
function jobError(text) {
  $("job-errors").append(h("div", {}, [text]));
}

/**
 * A card whose item will never come (the job ended first).
 * @param {Card} c
 * @param {string} why  its tooltip
 */
function notDelivered(c, why) {
  c.media.replaceChildren(h("div", { class: "placeholder" }, ["not delivered"]));
  c.info.textContent = "";
  c.root.title = why;
  c.state = "queued"; // let setCard through
  setCard(c, "missing", 0);
}

/** @param {PodstreamFile} file */
function showFile(file) {
  if (!view) return;
  const c = card(file.index);
  const isVideo = file.mime.startsWith("video/");
  const el = /** @type {HTMLVideoElement | HTMLImageElement} */ (h(isVideo ? "video" : "img"));
  if (el instanceof HTMLVideoElement) {
    el.muted = true;
    el.loop = true;
    el.autoplay = true;
    el.playsInline = true;
    el.controls = true;
  } else {
    el.alt = file.id || `item ${file.index + 1}`;
  }
  el.src = file.url;
  c.media.replaceChildren(el);
  c.name.textContent = file.id ? `#${file.index + 1} · ${file.id}` : `#${file.index + 1}`;
  const counted = c.state === "ready" ? file.size : c.received; // bytes already in view.bytes
  view.bytes += file.size - counted;
  c.info.replaceChildren(
    formatBytes(file.size),
    " ",
    h("span", { class: "ok", title: `sha256 ${file.sha256}` }, [
      file.verified === "sha256" ? "✓ sha256" : file.inline ? "✓ size" : "↗ url",
    ]),
  );
  c.received = file.size;
  c.state = "queued"; // let setCard through
  setCard(c, "ready", 1);
}

/**
 * Show a job: from its manifest if it is finished (media streamed by the browser from the relay), else
 * subscribed over the websocket from seq 0, so a reload replays everything the page had not kept.
 * @param {string} id
 */
async function openJob(id) {
  view?.sub?.unsubscribe();
  for (const c of view?.cards.values() ?? []) {
    const media = /** @type {HTMLVideoElement | HTMLImageElement | null} */ (
      c.media.querySelector("video, img")
    );
    if (media?.src.startsWith("blob:")) URL.revokeObjectURL(media.src);
  }
  grid.replaceChildren();
  delete grid.dataset.done;
  $("job-errors").replaceChildren();
  $("job-note").textContent = "";
  $("empty").hidden = true;
  $("job").hidden = false;
  $("job-id").textContent = id;
  /** @type {View} */
  const current = {
    id,
    sub: null,
    cards: new Map(),
    total: knownJobs[id]?.total ?? null, // until the relay says (expected_items)
    bytes: 0,
    status: "…",
    opened: false,
    finished: false,
    replay: false,
  };
  view = current;
  setStatus("…");
  showConnection();
  for (const li of jobList.querySelectorAll("li")) li.toggleAttribute("aria-current", li.dataset.job === id);
  for (let i = 0; i < (current.total ?? 0); i += 1) card(i);
  updateOverall();
  /** @type {JobSubscription} */
  let sub;
  try {
    sub = await client.open(id);
  } catch (err) {
    if (view !== current) return;
    setStatus("unknown");
    jobError(
      err instanceof RelayHttpError && err.status === 404 ? `No job ${id} on this relay.` : message(err),
    );
    return;
  }
  if (view !== current) {
    sub.unsubscribe();
    return;
  }
  current.sub = sub;
  // `open` reads a finished job from its manifest (URL mode, no socket; this page subscribes to a running
  // one inline): its files are shown by URL, and the pill says it is a replay.
  current.replay = !sub.inline;
  showConnection();
  sub.on("status", ({ status, error }) => {
    current.opened = true;
    learnTotal(current, sub.expectedItems); // a replay learns it from the manifest, before this event
    setStatus(status);
    if (error) jobError(`${status}: ${error}`);
  });
  sub.on("subscribed", ({ status, recovered, expectedItems }) => {
    current.opened = true;
    learnTotal(current, expectedItems);
    setStatus(status || current.status); // "" before the relay's first poll of the job
    if (!recovered) jobError("The relay no longer has every event of this job; some results may be missing.");
  });
  sub.on("progress", (p) => {
    const c = card(p.item);
    if (isSettled(c)) return;
    if (p.phase === "generate") {
      setCard(
        c,
        "generating",
        0.5 * (p.steps ? p.step / p.steps : 0),
        `generating · step ${p.step}/${p.steps}`,
      );
    } else {
      current.bytes += p.received - c.received;
      c.received = p.received;
      const pct = p.size ? Math.floor((100 * p.received) / p.size) : 100;
      setCard(
        c,
        "receiving",
        0.5 + 0.5 * (p.size ? p.received / p.size : 1),
        `receiving · ${pct}% of ${formatBytes(p.size)}`,
      );
    }
  });
  sub.on("item", showFile);
  sub.on("error", (e) => {
    if (e.item === null) {
      // A job stopped early never sends its manifest: that is the stop, said once at `done`, not an error.
      if (e.code === "missing_manifest" && endedEarly(current.status)) return;
      jobError(e.fatal ? `Connection: ${e.message}` : `${e.code}: ${e.message}`);
      if (e.code === "restarted") {
        // RunPod re-ran the job: the items that follow replace the ones shown so far
        current.bytes = 0;
        for (const c of current.cards.values()) {
          c.state = "queued";
          c.received = 0;
          c.media.replaceChildren(h("div", { class: "placeholder" }, ["queued"]));
          c.info.textContent = "";
          c.root.removeAttribute("title");
          setCard(c, "queued", 0);
        }
        updateOverall();
      }
      return;
    }
    const c = card(e.item);
    if (isSettled(c)) return;
    if (e.code === "missing_item" && isTerminalStatus(current.status) && current.status !== "COMPLETED") {
      notDelivered(c, e.message); // the job was stopped before this item was made: not a failure of it
      return;
    }
    c.media.replaceChildren(
      h("div", { class: "error-text" }, [h("strong", {}, [e.code]), h("br"), e.message]),
    );
    c.info.textContent = "failed";
    c.state = "queued";
    setCard(c, "error", 1);
  });
  sub.on("done", ({ status }) => {
    setStatus(status);
    current.finished = true;
    for (const c of current.cards.values()) {
      if (!isSettled(c)) notDelivered(c, `the job ended (${status}) before this item was delivered`);
    }
    if (endedEarly(status)) {
      // What happened, in the words of the CLI's summary, in the colour of a note: stopping a job is no error.
      const cards = [...current.cards.entries()];
      const ready = cards.filter(([, c]) => c.state === "ready").length;
      const never = cards.filter(([, c]) => c.state === "missing").map(([index]) => index);
      const line = jobEnded(status, ready, current.total, never);
      $("job-note").textContent = `${line[0].toUpperCase()}${line.slice(1)}.`;
    }
    updateOverall();
    grid.dataset.done = "true";
    void refreshJobs();
  });
}

$("cancel").addEventListener("click", async () => {
  if (!view) return;
  try {
    await client.cancel(view.id);
  } catch (err) {
    jobError(`cancel: ${message(err)}`);
  }
});

function route() {
  const id =
    new URLSearchParams(location.hash.slice(1)).get("job") ?? new URLSearchParams(location.search).get("job");
  if (id && id !== view?.id) void openJob(id);
}
window.addEventListener("hashchange", route);
redeemLink().then(route, (err) => {
  $("empty").hidden = true;
  $("job").hidden = false;
  $("job-id").textContent = linkJob ?? "";
  setStatus("unknown");
  jobError(`This link cannot be used: ${message(err)}`);
});
void refreshJobs();
setInterval(() => {
  if (document.visibilityState === "visible") void refreshJobs();
}, 5000);

// for tests and the console
Object.assign(window, {
  podstream: {
    client,
    get view() {
      return view;
    },
  },
});
