// Drives Debian's chromium against a running aggregatord's dashboard.
//   node dashboard.mjs URL SCREENSHOT TOPIC ROOM RULE
// Progress markers go to stderr; the Rust test waits for STOP_NODE, then kills
// the node, and expects exit status 0.
import { chromium } from "playwright-core";

const [url, screenshot, topic, room, rule] = process.argv.slice(2);
const say = m => console.error(m);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1300, height: 900 } });
let failed = false;
try {
  await page.goto(url);
  const value = `tr[data-topic="${topic}"] .value`;
  await page.waitForSelector(value, { timeout: 20000 });
  // Live means a newer reading replaced the row's: its timestamp, not its value,
  // since after the spike every value is the same 45.
  const stamp = `tr[data-topic="${topic}"] td.age`;
  const first = await page.getAttribute(stamp, "data-ts");
  await page.waitForFunction(([s, v]) => document.querySelector(s)?.dataset.ts !== v, [stamp, first], { timeout: 20000 });
  if (!(await page.textContent(value)).trim()) throw new Error("no value shown");
  say("LIVE_OK");
  await page.waitForSelector(`[data-alert="${rule}"][data-room="${room}"]`, { timeout: 20000 });
  say("ALERT_OK");
  // The row the alert is about is marked too.
  await page.waitForSelector(`tr[data-topic="${topic}"][data-alert="${rule}"]`, { timeout: 20000 });
  say("ALERT_ROW_OK");
  say("STOP_NODE");
  // Killed: the Last Will says connection_lost, and its values are marked stale.
  await page.waitForSelector(`[data-room="${room}"] [data-node-status="offline"][data-reason="connection_lost"]`, { timeout: 20000 });
  await page.waitForSelector(`tr.stale[data-topic="${topic}"]`, { timeout: 20000 });
  say("OFFLINE_OK");
  await page.click(`tr[data-topic="${topic}"]`);
  // The history chart, drawn from /api/history (server-side downsampled).
  await page.waitForFunction(() => Number(document.querySelector("#chart")?.dataset.points) > 0, null, { timeout: 20000 });
  say("HISTORY_OK");
} catch (e) {
  failed = true;
  say("FAILED: " + e.message);
}
await page.screenshot({ path: screenshot, fullPage: true });
say("screenshot: " + screenshot);
await browser.close();
process.exit(failed ? 1 : 0);
