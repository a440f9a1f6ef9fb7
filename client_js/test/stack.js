// The real system on loopback for integration and browser tests: the RunPod emulator with one real worker
// process (tiny pipelines on CPU) and the relay polling it, each a child process in its own process group,
// on free ports. Everything started here is stopped by `stop()`.
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = dirname(dirname(dirname(fileURLToPath(import.meta.url))));
export const PYTHON = join(REPO, ".venv", "bin", "python");
const ENDPOINT = "local";

/** Why the stack cannot run here (no venv), or null. */
export function unavailable() {
  if (!existsSync(PYTHON)) return `no Python venv at ${PYTHON} (run: make venv)`;
  return null;
}

/** @returns {Promise<number>} a port free on 127.0.0.1 right now */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** @param {number} ms */
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class Child {
  /**
   * @param {string} name
   * @param {string[]} args
   * @param {Record<string, string>} env
   * @param {string} log
   */
  constructor(name, args, env, log) {
    this.name = name;
    this.args = args;
    this.env = env;
    this.log = log;
    /** @type {import("node:child_process").ChildProcess | null} */
    this.process = null;
    /** @type {number | null} */
    this.exitCode = null;
  }

  start() {
    const out = openSync(this.log, "a");
    this.exitCode = null;
    const child = spawn(PYTHON, this.args, {
      cwd: REPO,
      env: { ...process.env, ...this.env, PYTHONUNBUFFERED: "1" },
      stdio: ["ignore", out, out],
      detached: true, // its own process group, so stop() also reaches the workers it starts
    });
    child.on("exit", (code, signal) => {
      this.exitCode = code ?? (signal ? 128 : -1);
    });
    this.process = child;
  }

  tail() {
    try {
      return readFileSync(this.log, "utf8").split("\n").slice(-25).join("\n");
    } catch {
      return "";
    }
  }

  /** SIGTERM the process group, then SIGKILL after `graceMs`. */
  async stop(graceMs = 8000) {
    const child = this.process;
    if (!child || child.pid === undefined) return;
    this.process = null;
    const exited = new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve(undefined);
      else child.once("exit", () => resolve(undefined));
    });
    const signal = (/** @type {NodeJS.Signals} */ sig) => {
      try {
        process.kill(-(/** @type {number} */ (child.pid)), sig);
      } catch {
        // already gone
      }
    };
    signal("SIGTERM");
    const timer = setTimeout(() => signal("SIGKILL"), graceMs);
    await exited;
    clearTimeout(timer);
    signal("SIGKILL"); // leftovers of the group (e.g. a worker that ignored SIGTERM)
  }
}

/**
 * @typedef {object} StackOptions
 * @property {number} [workers]  worker processes (default 1)
 * @property {number} [chunkBytes]  relay chunk frame size (default 8192, so small files still span chunks)
 * @property {string} [workerCmd]  the command of each worker (default: `python -m worker`, tiny pipelines)
 * @property {Record<string, string>} [relayEnv]  more PODSTREAM_* settings for the relay
 */

export class Stack {
  /** @param {StackOptions} [options] */
  constructor(options = {}) {
    this.options = options;
    this.dir = mkdtempSync(join(tmpdir(), "podstream-stack-"));
    this.logs = join(this.dir, "logs");
    mkdirSync(this.logs);
    this.runpodKey = `rp-test-${Math.random().toString(36).slice(2)}`;
    /** The relay's API key (auth is on by default; the relay is configured with its sha256). */
    this.apiKey = `psk_${randomBytes(32).toString("base64url")}`;
    /** A second key that may only submit (scope `jobs:write`): it may not read jobs or mint tokens. */
    this.writeOnlyKey = `psk_${randomBytes(32).toString("base64url")}`;
    this.relayUrl = "";
    this.emulatorUrl = "";
    /** @type {Child[]} */
    this.children = [];
    /** @type {Child | null} */
    this.relay = null;
  }

  async start() {
    const [emulatorPort, relayPort] = [await freePort(), await freePort()];
    this.emulatorUrl = `http://127.0.0.1:${emulatorPort}/v2/${ENDPOINT}`;
    this.relayUrl = `http://127.0.0.1:${relayPort}`;
    const emulator = new Child(
      "emulator",
      [
        "-m", "podstream", "emulator", "--host", "127.0.0.1", "--port", String(emulatorPort),
        "--endpoint-id", ENDPOINT, "--api-key", this.runpodKey, "--workers", String(this.options.workers ?? 1),
        "--worker-cmd", this.options.workerCmd ?? `${PYTHON} -m worker`, "--worker-log-dir", this.logs,
      ], // prettier-ignore
      // The workers it starts inherit this environment: they may fetch staged inputs from the relay on loopback.
      { PODSTREAM_MODEL: "tiny", PODSTREAM_INPUT_HOSTS: `127.0.0.1:${relayPort}` },
      join(this.logs, "emulator.log"),
    );
    const relayEnv = {
      PODSTREAM_RUNPOD_URL: this.emulatorUrl,
      PODSTREAM_RUNPOD_KEY: this.runpodKey,
      PODSTREAM_API_KEYS: [
        `sha256:${createHash("sha256").update(this.apiKey).digest("hex")}`,
        `writer=sha256:${createHash("sha256").update(this.writeOnlyKey).digest("hex")}/jobs:write`,
      ].join(","),
      PODSTREAM_DATA_DIR: join(this.dir, "relay-data"),
      PODSTREAM_HOST: "127.0.0.1",
      PODSTREAM_PORT: String(relayPort),
      PODSTREAM_FSYNC: "never",
      PODSTREAM_CHUNK_BYTES: String(this.options.chunkBytes ?? 8192),
      PODSTREAM_POLL_WAIT_MS: "2000",
      ...this.options.relayEnv,
    };
    const relay = new Child(
      "relay",
      relayCommand(relayPort, relayEnv),
      relayEnv,
      join(this.logs, "relay.log"),
    );
    this.children = [emulator, relay];
    this.relay = relay;
    try {
      for (const child of this.children) child.start();
      await this.waitReady();
    } catch (err) {
      await this.stop();
      throw err;
    }
    return this;
  }

  /** Until the relay answers /healthz and a worker is ready (the first start loads torch: up to ~90 s). */
  async waitReady(timeoutMs = 180000) {
    const deadline = Date.now() + timeoutMs;
    let relayUp = false;
    let workerUp = false;
    while (!(relayUp && workerUp)) {
      for (const child of this.children) {
        if (child.exitCode !== null) {
          throw new Error(`the ${child.name} exited with ${child.exitCode}:\n${child.tail()}`);
        }
      }
      if (Date.now() > deadline) {
        const waiting = relayUp ? "a worker" : "the relay";
        throw new Error(`${waiting} not ready in ${timeoutMs / 1000} s; logs in ${this.logs}`);
      }
      relayUp ||= await ok(`${this.relayUrl}/healthz`);
      if (!workerUp) {
        try {
          const response = await fetch(`${this.emulatorUrl}/health`, {
            headers: { authorization: `Bearer ${this.runpodKey}` },
          });
          const workers = (await response.json()).workers ?? {};
          workerUp = (workers.ready ?? 0) + (workers.running ?? 0) > 0;
        } catch {
          // not up yet
        }
      }
      await sleep(250);
    }
  }

  /** Stop the relay (SIGTERM: it says bye 4000 to every websocket) and start it again on the same port. */
  async restartRelay() {
    const relay = /** @type {Child} */ (this.relay);
    await relay.stop();
    relay.start();
    const deadline = Date.now() + 60000;
    while (!(await ok(`${this.relayUrl}/healthz`))) {
      if (relay.exitCode !== null)
        throw new Error(`the relay exited with ${relay.exitCode}:\n${relay.tail()}`);
      if (Date.now() > deadline) throw new Error("the relay did not come back");
      await sleep(100);
    }
  }

  async stop() {
    // the relay first (it polls the emulator), then the emulator and its workers
    for (const child of [...this.children].reverse()) await child.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** `Authorization` with the API key, for direct HTTP calls. */
  get headers() {
    return { authorization: `Bearer ${this.apiKey}` };
  }

  /**
   * A subscriber token for `jobs` (`POST /v1/jobs/{id}/tokens`), as a `getToken` would get one.
   * @param {string[]} jobs
   * @returns {Promise<string | null>}
   */
  async token(jobs) {
    if (jobs.length === 0) return null;
    const [first, ...more] = jobs;
    const response = await fetch(`${this.relayUrl}/v1/jobs/${encodeURIComponent(first)}/tokens`, {
      method: "POST",
      headers: { ...this.headers, "content-type": "application/json" },
      body: JSON.stringify({ jobs: more }),
    });
    if (!response.ok) throw new Error(`token: HTTP ${response.status} ${await response.text()}`);
    return (await response.json()).token;
  }

  /**
   * The emulator's request statistics (`GET /_emulator/stats`): per route (`run`, ...), requests and the
   * largest request body.
   * @returns {Promise<{routes: Record<string, {max_request_bytes: number, requests: number}>}>}
   */
  async emulatorStats() {
    const response = await fetch(new URL("/_emulator/stats", this.emulatorUrl), {
      headers: { authorization: `Bearer ${this.runpodKey}` },
    });
    if (!response.ok) throw new Error(`emulator stats: HTTP ${response.status}`);
    return response.json();
  }

  /** The last lines of every log, for a failing test's message. */
  logTails() {
    return this.children.map((c) => `--- ${c.name}\n${c.tail()}`).join("\n");
  }
}

/** @param {string} url */
async function ok(url) {
  try {
    return (await fetch(url)).ok;
  } catch {
    return false;
  }
}

/**
 * `podstream relay` on `port` (the other settings come from its PODSTREAM_* environment).
 * @param {number} port
 * @param {Record<string, string>} env
 * @returns {string[]}
 */
function relayCommand(port, env) {
  return ["-m", "podstream", "relay", "--runpod-url", env.PODSTREAM_RUNPOD_URL, "--data-dir",
    env.PODSTREAM_DATA_DIR, "--host", "127.0.0.1", "--port", String(port), "--log-level", "warning"]; // prettier-ignore
}
