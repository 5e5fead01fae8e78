// The console's live view in a real browser (run by scripts/netns-console.sh inside a host
// namespace, next to a running job): the trunk's link shows live figures, is not red;
// the trunk is throttled (THROTTLE, a shell command); its link must turn red in the page
// within LIVE_MAX_S seconds. Prints the colours before and after, the seconds it took,
// and saves a screenshot.
//
// Environment: TOPOCCL_BIN, TOPO (the racks' topology file), JOB (the ranks' exporters,
// comma-separated), THROTTLE, CHROMIUM (/usr/bin/chromium), CONSOLE_OUT (target/console),
// LIVE_MAX_S (5), WARMUP_S (60: how long the job may take to show learned figures and a
// calm trunk), CALM_S (3: the trunk not red this long before the throttle).

import { execSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { check, launchChromium, root, run, startConsole } from "./lib.mjs";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`set ${name} (see the header of test/live.mjs)`);
  return v;
};
const RED = "#ff4d4d"; // LEVEL_COLOUR.red in src/graph.ts
const maxS = Number(process.env.LIVE_MAX_S ?? 5);
const warmupS = Number(process.env.WARMUP_S ?? 60);
const out = process.env.CONSOLE_OUT ?? join(root, "target/console");

/** Every drawn edge's name, level (from /api/links) and colour in the page. */
async function colours(page) {
  return page.evaluate(async () => {
    const topo = await (await fetch("api/topology")).json();
    const links = await (await fetch("api/links")).json();
    const g = window.__console.sigma.getGraph();
    return topo.layout.edges.map((e, i) => {
      const f = links.edges.find((x) => x.edge === i);
      return {
        i,
        name: e.name,
        colour: g.getEdgeAttribute(`e${i}`, "color"),
        level: f?.level ?? "none",
        utilisation: f?.utilisation,
        ratio: f?.throughput_ratio,
        congested: f?.congested ?? false,
      };
    });
  });
}

async function main() {
  const bin = env("TOPOCCL_BIN");
  const con = await startConsole(bin, ["--topo", env("TOPO"), "--job", env("JOB"), "--poll-ms", "250"]);
  const browser = await launchChromium(process.env.CHROMIUM ?? "/usr/bin/chromium");
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
    page.on("pageerror", (e) => check(false, "no page errors", String(e)));
    await page.goto(con.url);
    await page.waitForFunction(() => window.__console?.ready === true, null, { timeout: 30000 });
    const edges = await colours(page);
    const trunk = edges.find((e) => e.name.includes("leaf0") && e.name.includes("leaf1"));
    check(trunk !== undefined, "the trunk is drawn", edges.map((e) => e.name).join(", "));
    if (!trunk) return;

    // Live figures with learned baselines on the trunk (the detector judges against them).
    const t0 = Date.now();
    let before = null;
    while (Date.now() - t0 < warmupS * 1000) {
      before = (await colours(page)).find((e) => e.i === trunk.i);
      if (before.level !== "none" && before.ratio !== undefined) break;
      await page.waitForTimeout(250);
    }
    check(before?.ratio !== undefined, `the trunk shows learned live figures within ${warmupS} s`, JSON.stringify(before));
    // A calm start: the trunk not red for CALM_S seconds in a row (a busy machine can make
    // a rank's detector fire on its own for a moment).
    const calmS = Number(process.env.CALM_S ?? 3);
    let calmSince = Date.now();
    let falseAlarms = 0;
    while (Date.now() - calmSince < calmS * 1000 && Date.now() - t0 < warmupS * 1000) {
      before = (await colours(page)).find((e) => e.i === trunk.i);
      if (before.colour === RED) {
        falseAlarms++;
        calmSince = Date.now();
      }
      await page.waitForTimeout(100);
    }
    check(before.colour !== RED && Date.now() - calmSince >= calmS * 1000, `the trunk is not red for ${calmS} s before the throttle`, `${JSON.stringify(before)}; red before it ${falseAlarms} time(s)`);
    console.log(`before: ${JSON.stringify(await colours(page))}`);

    execSync(env("THROTTLE"), { stdio: "inherit", shell: "/bin/bash" });
    const thrown = Date.now();
    const key = `e${trunk.i}`;
    const turned = await page
      .waitForFunction(
        ([k, red]) => window.__console.sigma.getGraph().getEdgeAttribute(k, "color") === red,
        [key, RED],
        { polling: 50, timeout: 30000 },
      )
      .then(() => true)
      .catch(() => false);
    const redS = (Date.now() - thrown) / 1000;
    const after = await colours(page);
    console.log(`after: ${JSON.stringify(after)}`);
    check(turned && redS <= maxS, `the throttled trunk turns red in the page within ${maxS} s`, turned ? `${redS.toFixed(2)} s` : "never (30 s)");
    const pairs = await page.evaluate(async () => (await (await fetch("api/links")).json()).pairs);
    console.log(`pairs after: ${JSON.stringify(pairs.map((p) => [p.rank, p.peer, p.congested, p.throughput_ratio?.toFixed(3)]))}`);
    await page.waitForTimeout(2500); // the page lists alerts every 2 s
    const alerts = await page.textContent("#alert-list");
    check(/congestion/.test(alerts ?? ""), "the congestion alert is listed", (alerts ?? "").slice(0, 200));
    mkdirSync(out, { recursive: true });
    const shot = join(out, "console-netns-live.png");
    await page.screenshot({ path: shot });
    console.log(`screenshot: ${shot}`);
    console.log(`RESULT red_s=${turned ? redS.toFixed(2) : "never"} trunk=${trunk.name} others_red=${after.filter((e) => e.i !== trunk.i && e.colour === RED).length} red_before=${falseAlarms}`);
  } finally {
    await browser.close();
  }
}

await run(main);
