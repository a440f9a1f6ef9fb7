// The npm package as a user gets it: `npm pack`, installed from the tarball into a scratch project (its one
// dependency, @msgpack/msgpack, from the npm cache or registry), then imported in Node, type-checked with
// TypeScript (node16 and bundler resolution), and bundled for the browser with esbuild.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";
import * as esbuild from "esbuild";

const CLIENT = dirname(dirname(fileURLToPath(import.meta.url)));
const TSC = join(CLIENT, "node_modules", "typescript", "bin", "tsc");
const pkg = JSON.parse(readFileSync(join(CLIENT, "package.json"), "utf8"));

/** @type {string} */
let scratch;
/** @type {{filename: string, files: {path: string}[]}} */
let packed;

/**
 * @param {string} file
 * @param {string[]} args
 * @param {string} cwd
 */
const run = (file, args, cwd) => execFileSync(file, args, { cwd, encoding: "utf8", stdio: "pipe" });

before(() => {
  scratch = mkdtempSync(join(tmpdir(), "podstream-npm-"));
  [packed] = JSON.parse(run("npm", ["pack", "--json", "--pack-destination", scratch], CLIENT));
  writeFileSync(
    join(scratch, "package.json"),
    JSON.stringify({ name: "scratch", private: true, type: "module" }),
  );
  run(
    "npm",
    ["install", "--no-audit", "--no-fund", "--prefer-offline", join(scratch, packed.filename)],
    scratch,
  );
});
after(() => {
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

test("the tarball holds the library, its types, README and the project's Apache-2.0 licence, nothing else", () => {
  assert.equal(pkg.license, "Apache-2.0");
  const paths = packed.files.map((f) => f.path).sort();
  assert.ok(paths.includes("src/index.js") && paths.includes("types/index.d.ts"), paths.join(" "));
  assert.deepEqual(
    paths.filter((p) => !/^(src\/[a-z]+\.js|types\/[a-z]+\.d\.ts)$/.test(p)),
    ["LICENSE", "README.md", "package.json"],
  );
  const installed = join(scratch, "node_modules", "@podstream", "client");
  assert.equal(
    readFileSync(join(installed, "LICENSE"), "utf8"),
    readFileSync(join(CLIENT, "..", "LICENSE"), "utf8"),
  );
  assert.equal(JSON.parse(readFileSync(join(installed, "package.json"), "utf8")).license, "Apache-2.0");
});

test("installed, it imports in Node through its exports", () => {
  const code =
    'import { PodstreamClient, RelayHttpError, isTerminalStatus } from "@podstream/client";\n' +
    'const c = new PodstreamClient({ url: "http://127.0.0.1:1", network: null });\n' +
    'console.log(typeof PodstreamClient, c.wsUrl, new RelayHttpError({status: 401, code: "unauthorized", message: "unknown API key", method: "GET", path: "/", body: null}).message, isTerminalStatus("COMPLETED"));\n';
  writeFileSync(join(scratch, "use.mjs"), code);
  assert.equal(
    run(process.execPath, ["use.mjs"], scratch).trim(),
    "function ws://127.0.0.1:1/v1/ws unknown API key true",
  );
  // only the documented entry point is public
  writeFileSync(join(scratch, "deep.mjs"), 'await import("@podstream/client/src/client.js");\n');
  assert.throws(() => run(process.execPath, ["deep.mjs"], scratch), /ERR_PACKAGE_PATH_NOT_EXPORTED/);
});

test("its types work for a TypeScript project, with node16 and with bundler resolution", () => {
  const code = [
    'import { PodstreamClient, type ProgressEvent, type DoneEvent } from "@podstream/client";',
    'const client = new PodstreamClient({ url: "https://relay.example.com", apiKey: "psk_x", tokenTtl: 600 });',
    'const job = client.subscribe("job-1");',
    'job.on("progress", (p: ProgressEvent) => console.log(p.phase === "generate" ? p.step : p.received));',
    "const done: Promise<DoneEvent> = job.finished;",
    "void done;",
    "// @ts-expect-error: not an event of a job",
    'job.on("progres", () => {});',
    "",
  ].join("\n");
  writeFileSync(join(scratch, "main.ts"), code);
  const settings = [
    { module: "node16", moduleResolution: "node16" },
    { module: "esnext", moduleResolution: "bundler" },
  ];
  for (const resolution of settings) {
    const compilerOptions = { noEmit: true, strict: true, target: "es2022", lib: ["es2023", "dom", "dom.iterable"], types: [], ...resolution }; // prettier-ignore
    writeFileSync(join(scratch, "tsconfig.json"), JSON.stringify({ compilerOptions, files: ["main.ts"] }));
    try {
      run(process.execPath, [TSC, "-p", "tsconfig.json"], scratch);
    } catch (err) {
      assert.fail(`tsc ${JSON.stringify(resolution)}:\n${/** @type {any} */ (err).stdout}`);
    }
  }
});

test("it bundles for the browser with esbuild, @msgpack/msgpack included", async () => {
  writeFileSync(
    join(scratch, "page.js"),
    'import { PodstreamClient } from "@podstream/client";\nexport const client = new PodstreamClient({ url: "https://relay.example.com" });\n',
  );
  const result = await esbuild.build({
    absWorkingDir: scratch,
    entryPoints: ["page.js"],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    write: false,
    metafile: true,
    logLevel: "silent",
  });
  const inputs = Object.keys(result.metafile.inputs);
  assert.ok(inputs.includes("node_modules/@podstream/client/src/index.js"), inputs.join("\n"));
  assert.ok(
    inputs.some((p) => p.startsWith("node_modules/@msgpack/msgpack/")),
    inputs.join("\n"),
  );
  assert.ok(
    !inputs.some((p) => /node:|^ws\b|node_modules\/ws\//.test(p)),
    "no Node-only module in a browser bundle",
  );
  assert.ok(result.outputFiles[0].text.includes("no welcome from the relay"), "the client's code is in it");
});
