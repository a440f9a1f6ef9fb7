// Build what the relay serves without Node: relay/static/index.html (the demo page of demo/: its HTML with
// its CSS and script, demo.js bundled with src/, inlined) and relay/static/podstream-client.js (the library
// as one ESM file), plus types/ (the .d.ts of src/). Nothing else belongs in relay/static/ or types/: both
// are outputs, committed so that the Python package serves the page without Node. `npm run build` (this
// script) writes them afresh; `npm run check` (`--check`) builds into a temporary directory and fails if
// the committed files differ, are missing or are not built (test/build.test.js runs it in `npm test`).
import { execFileSync } from "node:child_process";
import {
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  mkdirSync,
  writeFileSync,
  existsSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

export const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
export const STATIC_DIR = join(ROOT, "..", "relay", "static");
export const TYPES_DIR = join(ROOT, "types");

/** @param {string} entry @param {boolean} minify */
async function bundle(entry, minify) {
  const result = await esbuild.build({
    entryPoints: [join(ROOT, entry)],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    minify,
    legalComments: "none",
    charset: "utf8",
    write: false,
    logLevel: "silent",
  });
  return result.outputFiles[0].text;
}

/**
 * Build every output into `staticDir` and `typesDir`.
 * @param {string} staticDir
 * @param {string} typesDir
 */
export async function build(staticDir, typesDir) {
  const page = readFileSync(join(ROOT, "demo", "index.html"), "utf8");
  const css = readFileSync(join(ROOT, "demo", "demo.css"), "utf8");
  const script = await bundle("demo/demo.js", true);
  if (/<\/script/i.test(script) || /<\/style/i.test(css))
    throw new Error("inlined code contains a closing tag");
  const link = '<link rel="stylesheet" href="demo.css" />';
  const tag = '<script type="module" src="demo.js"></script>';
  if (!page.includes(link) || !page.includes(tag))
    throw new Error("demo/index.html lost its css/script tags");
  const html =
    "<!-- Built by client_js/scripts/build.mjs from client_js/demo/: do not edit. -->\n" +
    page
      .replace(link, () => `<style>\n${css}</style>`)
      .replace(tag, () => `<script type="module">\n${script}</script>`);
  mkdirSync(staticDir, { recursive: true });
  writeFileSync(join(staticDir, "index.html"), html);
  const banner = "// @podstream/client, built by client_js/scripts/build.mjs: do not edit.\n";
  writeFileSync(join(staticDir, "podstream-client.js"), banner + (await bundle("src/index.js", false)));
  const tsc = join(ROOT, "node_modules", "typescript", "bin", "tsc");
  execFileSync(process.execPath, [tsc, "-p", join(ROOT, "tsconfig.json"), "--outDir", typesDir], {
    stdio: "pipe",
  });
  execFileSync(process.execPath, [tsc, "-p", join(ROOT, "demo", "tsconfig.json")], { stdio: "pipe" });
}

/** @param {string} dir @returns {Map<string, string>} */
function readTree(dir) {
  /** @type {Map<string, string>} */
  const files = new Map();
  if (!existsSync(dir)) return files;
  for (const entry of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const path = join(entry.parentPath ?? entry.path, entry.name);
    files.set(relative(dir, path), readFileSync(path, "utf8"));
  }
  return files;
}

/**
 * Build into a temporary directory and list how the committed outputs differ from it.
 * @param {string} [staticDir]  the outputs to check (default: relay/static and client_js/types)
 * @param {string} [typesDir]
 * @returns {Promise<string[]>} one line per differing file (empty: up to date)
 */
export async function check(staticDir = STATIC_DIR, typesDir = TYPES_DIR) {
  const tmp = mkdtempSync(join(tmpdir(), "podstream-build-"));
  try {
    await build(join(tmp, "static"), join(tmp, "types"));
    const problems = [];
    for (const [name, [fresh, committed]] of [
      ["relay/static", [readTree(join(tmp, "static")), readTree(staticDir)]],
      ["client_js/types", [readTree(join(tmp, "types")), readTree(typesDir)]],
    ]) {
      for (const [file, text] of fresh) {
        if (!committed.has(file)) problems.push(`${name}/${file}: missing`);
        else if (committed.get(file) !== text) problems.push(`${name}/${file}: differs from a fresh build`);
      }
      for (const file of committed.keys()) {
        if (!fresh.has(file)) problems.push(`${name}/${file}: not built from client_js/ (remove it)`);
      }
    }
    return problems;
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  try {
    if (process.argv.includes("--check")) {
      const problems = await check();
      if (problems.length) {
        console.error(`stale build (run: cd client_js && npm run build):\n  ${problems.join("\n  ")}`);
        process.exit(1);
      }
      console.log("relay/static and client_js/types match a fresh build");
    } else {
      rmSync(TYPES_DIR, { recursive: true, force: true });
      rmSync(STATIC_DIR, { recursive: true, force: true });
      await build(STATIC_DIR, TYPES_DIR);
      console.log(`built ${relative(process.cwd(), STATIC_DIR)} and ${relative(process.cwd(), TYPES_DIR)}`);
    }
  } catch (err) {
    const out = /** @type {{stdout?: Buffer}} */ (err).stdout;
    console.error(out?.length ? out.toString() : err);
    process.exit(1);
  }
}
