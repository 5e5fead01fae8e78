// What the console's browser tests share: starting `topoccl console`, Debian's Chromium
// through playwright-core (no browser is downloaded), and the checks' bookkeeping.

import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { resolve } from "node:path";
import { chromium } from "playwright-core";

export const root = resolve(new URL("../../..", import.meta.url).pathname);

const children = [];
let failed = 0;

/** Prints `ok`/`FAIL` and counts failures. */
export function check(ok, what, detail = "") {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}${detail ? `: ${detail}` : ""}`);
  if (!ok) failed++;
}

/** Starts `BIN console ARGS`; resolves with its printed URL and its stderr so far. */
export function startConsole(bin, args) {
  const child = spawn(bin, ["console", ...args], { stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  return new Promise((res, rej) => {
    const lines = createInterface({ input: child.stdout });
    lines.on("line", (line) => {
      const m = line.match(/^console: (http:\/\/\S+)$/);
      if (m) res({ url: m[1], stderr: () => stderr });
    });
    child.on("exit", (code) => rej(new Error(`topoccl console exited (${code}): ${stderr}`)));
  });
}

/** Headless Chromium at `path`, WebGL on SwiftShader where there is no GPU. */
export function launchChromium(path) {
  return chromium.launch({
    executablePath: path,
    headless: true,
    args: ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"],
  });
}

/** Runs `main`, stops the consoles started, and exits 1 if any check failed. */
export async function run(main) {
  try {
    await main();
  } catch (e) {
    check(false, "browser test", e instanceof Error ? e.stack : String(e));
  } finally {
    for (const c of children) c.kill();
  }
  if (failed) {
    console.log(`${failed} check(s) failed`);
    process.exit(1);
  }
}
