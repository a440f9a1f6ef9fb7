// Docs cannot drift from the library: every `js` / `ts` code block in client_js/README.md, the repository's
// README.md and docs/*.md is type-checked (strict) against client_js/types, importing "@podstream/client" as
// a user's project does; a block whose info string is `js run` also runs in Node against the real relay
// (test/stack.js), with PODSTREAM_RELAY and PODSTREAM_API_KEY set.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { after, test } from "node:test";
import ts from "typescript";
import { Stack, unavailable } from "./stack.js";

const CLIENT = dirname(dirname(fileURLToPath(import.meta.url)));
const REPO = dirname(CLIENT);
const LANGS = new Map([["js", "js"], ["javascript", "js"], ["mjs", "js"], ["ts", "ts"], ["typescript", "ts"]]); // prettier-ignore

/**
 * @typedef {{source: string, line: number, lang: "js" | "ts", run: boolean, code: string}} Block
 *   `line`: the block's first code line in its markdown file (1-based)
 */

/** @returns {string[]} the markdown files whose blocks are checked */
export function markdownFiles() {
  const docs = readdirSync(join(REPO, "docs"))
    .filter((name) => name.endsWith(".md"))
    .map((name) => join(REPO, "docs", name));
  return [join(REPO, "README.md"), join(CLIENT, "README.md"), ...docs.sort()];
}

/**
 * The JS/TS blocks of a markdown text.
 * @param {string} text
 * @param {string} source  its path, for messages
 * @returns {Block[]}
 */
export function extractBlocks(text, source) {
  /** @type {Block[]} */
  const blocks = [];
  const fence = /^```([A-Za-z]*)([^\n]*)\n([\s\S]*?)^```[ \t]*$/gm;
  for (const match of text.matchAll(fence)) {
    const lang = LANGS.get(match[1].toLowerCase());
    if (!lang) continue;
    const line = text.slice(0, match.index).split("\n").length + 1;
    const run = match[2].trim().split(/\s+/).includes("run");
    blocks.push({ source, line, lang: /** @type {"js" | "ts"} */ (lang), run, code: match[3] });
  }
  return blocks;
}

/**
 * Type-check `blocks` as files of a project next to the package (so "@podstream/client" resolves to it, by
 * its `exports`, as it does for a user); one line per problem, located in the markdown file.
 * @param {Block[]} blocks
 * @returns {{problems: string[], files: Map<Block, string>, dir: string}}  the files are kept until `dir` is removed
 */
export function typeCheck(blocks) {
  const dir = mkdtempSync(join(CLIENT, ".doc-blocks-"));
  /** @type {Map<Block, string>} */
  const files = new Map();
  /** @type {Map<string, Block>} */
  const byFile = new Map();
  blocks.forEach((block, n) => {
    const name = `${basename(block.source, ".md")}-${n}.${block.lang === "ts" ? "ts" : "mjs"}`;
    const path = join(dir, name);
    // `export {}`: each block is a module of its own, whether or not it imports anything.
    writeFileSync(path, `${block.code}\nexport {};\n`);
    files.set(block, path);
    byFile.set(path, block);
  });
  const program = ts.createProgram([...byFile.keys()], {
    strict: true,
    noEmit: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    lib: ["lib.es2023.d.ts", "lib.dom.d.ts", "lib.dom.iterable.d.ts"],
    types: ["node"],
    typeRoots: [join(CLIENT, "node_modules", "@types")],
    allowJs: true,
    checkJs: true,
    skipLibCheck: true,
  });
  const problems = ts.getPreEmitDiagnostics(program).map((d) => {
    const text = ts.flattenDiagnosticMessageText(d.messageText, "\n");
    const block = d.file ? byFile.get(d.file.fileName) : undefined;
    if (!d.file || !block || d.start === undefined) return `TS${d.code}: ${text}`;
    const { line, character } = d.file.getLineAndCharacterOfPosition(d.start);
    return `${relative(REPO, block.source)}:${block.line + line}:${character + 1}: TS${d.code} ${text}`;
  });
  return { problems, files, dir };
}

const blocks = markdownFiles().flatMap((path) => extractBlocks(readFileSync(path, "utf8"), path));
/** @type {string[]} */
const tempDirs = [];
after(() => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

test("every JS/TS block of the READMEs and docs/ type-checks against client_js/types", () => {
  const inClientReadme = blocks.filter((b) => b.source === join(CLIENT, "README.md"));
  assert.ok(
    inClientReadme.some((b) => b.lang === "ts"),
    "client_js/README.md has its TypeScript example",
  );
  assert.ok(
    inClientReadme.some((b) => b.run),
    "and a block that runs",
  );
  const { problems, dir } = typeCheck(blocks);
  tempDirs.push(dir);
  assert.deepEqual(problems, [], `type errors in documented code:\n${problems.join("\n")}`);
  console.log(
    `${blocks.length} blocks type-checked: ${[...new Set(blocks.map((b) => relative(REPO, b.source)))].join(", ")}`,
  );
});

test("the check finds what it should: the README's old example fails with TS2339", () => {
  const old = [
    'import { PodstreamClient } from "@podstream/client";',
    'const relay = new PodstreamClient({ url: "http://127.0.0.1:8700" });',
    'const job = relay.subscribe("job-1", { from: 0, inline: true });',
    'job.on("progress", (p) => console.log(p.item, p.phase, p.step ?? p.received, p.steps ?? p.size));',
    'job.on("progres", () => {}); // a misspelt event',
  ].join("\n");
  const text = `# x\n\n\`\`\`ts\n${old}\n\`\`\`\n`;
  const { problems, dir } = typeCheck(extractBlocks(text, join(CLIENT, "OLD.md")));
  tempDirs.push(dir);
  const codes = problems.map((p) => p.replace(/^.*?: (TS\d+) .*$/s, "$1"));
  assert.deepEqual(codes, ["TS2339", "TS2339", "TS2339", "TS2339", "TS2345"], problems.join("\n"));
  assert.match(problems[0], /^client_js\/OLD\.md:7:\d+: TS2339 Property 'step' does not exist on type/);
});

const missing = unavailable();
if (missing && process.env.CI === "true")
  throw new Error(`the docs' runnable blocks must run in CI: ${missing}`);
if (missing) console.warn(`\n!!! SKIPPING the docs' runnable blocks: ${missing} !!!\n`);

test("every `js run` block runs against the real relay", { skip: !!missing }, async (t) => {
  const runnable = blocks.filter((b) => b.run);
  assert.ok(runnable.length > 0);
  const stack = await new Stack().start();
  t.after(() => stack.stop());
  const { files, dir } = typeCheck(runnable);
  tempDirs.push(dir);
  for (const block of runnable) {
    const cwd = mkdtempSync(join(tmpdir(), "podstream-doc-run-"));
    tempDirs.push(cwd);
    mkdirSync(cwd, { recursive: true });
    const child = spawn(process.execPath, [/** @type {string} */ (files.get(block))], {
      cwd,
      env: { ...process.env, PODSTREAM_RELAY: stack.relayUrl, PODSTREAM_API_KEY: stack.apiKey },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    child.stdout.on("data", (d) => (output += d));
    child.stderr.on("data", (d) => (output += d));
    const code = await new Promise((resolve) => child.once("exit", resolve));
    const where = `${relative(REPO, block.source)}:${block.line}`;
    assert.equal(code, 0, `${where} exited with ${code}:\n${output}\n${stack.logTails()}`);
    // What it says it saved is there, and is what it says.
    for (const [, name, size] of output.matchAll(/^saved (\S+): (\d+) bytes, image\/png/gm)) {
      const bytes = readFileSync(join(cwd, name));
      assert.equal(bytes.byteLength, Number(size), `${where}: ${name}`);
      assert.equal(bytes.subarray(1, 4).toString("latin1"), "PNG", `${where}: ${name} is a PNG`);
    }
    assert.match(output, /^saved .+verified by sha256$/m, `${where}:\n${output}`);
    assert.match(output, /: COMPLETED$/m, `${where}:\n${output}`);
  }
});
