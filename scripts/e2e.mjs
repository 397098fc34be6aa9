#!/usr/bin/env node
// End-to-end tests of the demo page in headless Chromium (playwright-core driving the system's
// Chromium, WebGPU on SwiftShader), against the local Hub stand-in serving the tiny fixture
// model. Drives the page by its accessible names, compares the generated PNGs with diffusers'
// golden ones, and saves a screenshot of each state.
//
//   node scripts/e2e.mjs [--out DIR]      (pkg/ must be built: scripts/test does it)
//
// Ends with a `test result:` line in cargo's format, so scripts/test counts these checks.
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const out = process.argv.includes("--out") ? process.argv[process.argv.indexOf("--out") + 1] : join(root, "test-artifacts");
mkdirSync(out, { recursive: true });
const fixtures = join(root, "tests/fixtures");
const children = [];

/** Starts a Python server on `port` (0: any) and resolves with the URL it prints. */
function serve(args, port, prefix) {
  const child = spawn("python3", [...args, "--port", String(port)], { cwd: root, stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, IMVAR_SERVE_QUIET: "1" } });
  children.push(child);
  return new Promise((resolve, reject) => {
    createInterface({ input: child.stdout }).once("line", (line) => {
      const url = line.trim().split(" ").pop().replace(/\/$/, "");
      line.startsWith(prefix) ? resolve(url) : reject(new Error(`unexpected: ${line}`));
    });
    child.once("exit", (code) => reject(new Error(`${args[0]} exited with ${code}`)));
  });
}

const APP = [["scripts/serve.py", "--mount", "/=www", "--mount", "/pkg=pkg"], "serving on"];
const HUB = [["scripts/hub_standin.py", "--repo", `imvar-tests/tiny=${join(fixtures, "tiny-sd-image-variations")}`], "hub-standin"];
const app = await serve(APP[0], 0, APP[1]);
const hub = await serve(HUB[0], 0, HUB[1]);
/** Stops both servers: the page must then live on its service worker and IndexedDB. */
async function stopServers() {
  await Promise.all(children.splice(0).map((c) => new Promise((r) => { c.once("exit", r); c.kill(); })));
}
/** Starts them again on the same ports. */
async function startServers() {
  const port = (u) => new URL(u).port;
  await serve(APP[0], port(app), APP[1]);
  await serve(HUB[0], port(hub), HUB[1]);
}
const hubPost = (path, body) => fetch(`${hub}${path}`, { method: "POST", body: body ? JSON.stringify(body) : "" });
const hubLog = async (revision) => (await (await fetch(`${hub}/_log`)).json()).filter((e) => e.revision === revision);
const weightRequests = async (revision) => (await hubLog(revision)).filter((e) => e.path.endsWith(".safetensors"));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--no-sandbox", "--use-angle=swiftshader", "--enable-webgpu-developer-features"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
let page = await context.newPage();
const seen = new Set();
const once = (text) => { if (!seen.has(text)) { seen.add(text); console.log(text); } };
page.on("console", (m) => { if (m.type() === "error") once(`  [page] ${m.text()}`); });
page.on("pageerror", (e) => once(`  [page error] ${e.message}`));

const revision = `e2e-${Date.now()}`;
const url = `${app}/?endpoint=${encodeURIComponent(hub)}&model=imvar-tests/tiny&revision=${revision}`;
const results = { passed: 0, failed: 0 };
const shot = (name) => page.screenshot({ path: join(out, `${name}.png`), fullPage: true });

async function check(name, body) {
  const started = Date.now();
  try {
    await body();
    results.passed++;
    console.log(`test e2e::${name} ... ok (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  } catch (error) {
    results.failed++;
    console.log(`test e2e::${name} ... FAILED\n  ${error.stack ?? error}`);
    await shot(`failed-${name}`).catch(() => {});
    throw error;
  }
}

const base64 = (path) => readFileSync(path).toString("base64");
const GOLDEN = (n, k) => base64(join(fixtures, `golden/images/pndm-n${n}-g3-fp16-${k}.png`));

/** Largest per-channel difference between a result image on the page and a golden PNG. */
async function worstDifference(alt, goldenBase64) {
  return page.evaluate(async ({ alt, goldenBase64 }) => {
    const pixels = async (src) => {
      const image = new Image();
      image.src = src;
      await image.decode();
      const canvas = new OffscreenCanvas(image.naturalWidth, image.naturalHeight);
      const context = canvas.getContext("2d");
      context.drawImage(image, 0, 0);
      return context.getImageData(0, 0, canvas.width, canvas.height).data;
    };
    const ours = await pixels(document.querySelector(`img[alt="${alt}"]`).src);
    const theirs = await pixels(`data:image/png;base64,${goldenBase64}`);
    if (ours.length !== theirs.length) return 255;
    let worst = 0;
    for (let i = 0; i < ours.length; i++) worst = Math.max(worst, Math.abs(ours[i] - theirs[i]));
    return worst;
  }, { alt, goldenBase64 });
}

async function setSettings({ n, steps, seed }) {
  await page.getByLabel("Image", { exact: true }).setInputFiles(join(fixtures, "input.png"));
  await page.getByLabel("Number of variations", { exact: true }).fill(String(n));
  await page.getByLabel("Steps", { exact: true }).fill(String(steps));
  await page.getByLabel("Seed", { exact: true }).fill(String(seed));
  await page.getByLabel("Scheduler", { exact: true }).selectOption("pndm");
}

async function generateAndCompare(n, label) {
  await setSettings({ n, steps: 5, seed: 2026 });
  await page.getByRole("button", { name: "Generate" }).click();
  const results = page.getByRole("region", { name: "Results" });
  for (let k = 1; k <= n; k++) {
    const alt = `Variation ${k} of ${n}, seed 2026`;
    await results.getByAltText(alt).first().waitFor({ timeout: 300_000 });
    const worst = await worstDifference(alt, GOLDEN(n, k - 1));
    console.log(`  ${label}: ${alt}: ${worst} levels from the golden PNG`);
    if (worst > 2) throw new Error(`${label}: ${alt} differs by ${worst} levels`);
  }
}

const ready = () => page.getByText(/^Ready:/).waitFor({ timeout: 300_000 });

/** Throws unless the page is no wider than its viewport and `locator` lies wholly inside it. */
async function expectInsideViewport(locator) {
  const { scrollWidth, innerWidth, innerHeight } = await page.evaluate(() => ({
    scrollWidth: document.scrollingElement.scrollWidth, innerWidth: window.innerWidth, innerHeight: window.innerHeight,
  }));
  // A page wider than the screen may be shown zoomed out, which widens innerWidth too.
  const width = Math.min(innerWidth, page.viewportSize().width);
  if (scrollWidth > width) throw new Error(`the page is ${scrollWidth} px wide on a ${width} px screen`);
  const box = await locator.boundingBox();
  if (!box || box.x < 0 || box.y < 0 || box.x + box.width > width || box.y + box.height > innerHeight) {
    throw new Error(`${locator} at ${JSON.stringify(box)} is not inside the ${width}x${innerHeight} viewport`);
  }
}

try {
  await check("first_visit_states_the_download_size", async () => {
    await page.goto(url);
    await page.getByText(/First use downloads the model once/).waitFor({ timeout: 120_000 });
    await shot("1-first-visit");
  });

  await check("download_shows_progress_and_generation_matches_the_golden_pngs", async () => {
    // Only the UNet file answers slowly (its header reads and its chunk): the other files'
    // chunks are done first, so the download is seen, and photographed, part-way.
    await hubPost("/_faults", { revision, path: "unet/diffusion_pytorch_model", kind: "slow", delay_ms: 1500, times: 10 });
    // Every status the page shows is recorded, so a download quicker than a poll still counts.
    await page.evaluate(() => {
      const status = document.getElementById("model-status");
      window.seenDownload = [];
      new MutationObserver(() => {
        const overall = document.getElementById("progress-overall").value;
        if (status.textContent.startsWith("Downloading: ")) window.seenDownload.push(overall);
      }).observe(status, { childList: true, characterData: true, subtree: true });
    });
    await page.getByRole("button", { name: "Download model" }).click();
    await page.waitForFunction(() => window.seenDownload.length > 0, null, { timeout: 60_000 });
    if (await page.getByText(/^Downloading: /).isVisible()) await shot("2-downloading");
    await ready();
    const overall = await page.evaluate(() => window.seenDownload);
    if (!overall.some((done) => done > 0)) throw new Error(`the download's progress never moved: ${overall}`);
    // The page answers while the worker generates: a timer set now fires promptly.
    await setSettings({ n: 2, steps: 5, seed: 2026 });
    await page.getByRole("button", { name: "Generate" }).click();
    await page.getByText(/^Step [1-9]\d* of /).waitFor({ timeout: 300_000 });
    const delay = await page.evaluate(() => new Promise((r) => { const t = performance.now(); setTimeout(() => r(performance.now() - t), 0); }));
    if (delay > 250) throw new Error(`the page was unresponsive for ${delay} ms during generation`);
    await shot("3-generating");
    const results = page.getByRole("region", { name: "Results" });
    for (let k = 1; k <= 2; k++) {
      const alt = `Variation ${k} of 2, seed 2026`;
      await results.getByAltText(alt).waitFor({ timeout: 300_000 });
      const worst = await worstDifference(alt, GOLDEN(2, k - 1));
      console.log(`  first visit: ${alt}: ${worst} levels from the golden PNG`);
      if (worst > 2) throw new Error(`${alt} differs by ${worst} levels`);
    }
    if (await page.getByAltText(/^Variation/).count() !== 2) throw new Error("previews must not use the results' alt text");
    await shot("4-results");
  });

  await check("a_reload_asks_the_hub_once_and_generates_again", async () => {
    await hubPost("/_reset");
    await page.reload();
    await page.getByText(/in this browser's cache/).or(page.getByText(/^Ready:/)).first().waitFor({ timeout: 120_000 });
    await ready();
    await generateAndCompare(1, "reload");
    // The page asks what loading would download, then loads: the model index, once.
    const asked = (await hubLog(revision)).map((e) => e.path);
    if (asked.join() !== "model_index.json") throw new Error(`a reload asked for ${JSON.stringify(asked)}`);
  });

  await check("offline_the_page_loads_and_generates", async () => {
    // Both servers stopped (Playwright's offline switch does not reach service workers).
    await stopServers();
    await context.setOffline(true);
    try {
      await page.reload();
      await ready();
      await generateAndCompare(1, "offline");
      await shot("5-offline");
    } finally {
      await context.setOffline(false);
      await startServers();
    }
  });

  await check("a_file_that_is_not_a_picture_is_reported_in_plain_words", async () => {
    await page.getByLabel("Image", { exact: true }).setInputFiles(join(fixtures, "README.md"));
    await page.getByRole("alert").getByText(/not a picture imvar can read/).waitFor({ timeout: 30_000 });
    await shot("6-error");
    await page.getByRole("button", { name: "Dismiss" }).click();
  });

  await check("cancel_stops_the_run_within_one_step", async () => {
    await setSettings({ n: 1, steps: 25, seed: 7 });
    await page.getByRole("button", { name: "Generate" }).click();
    await page.getByText(/^Step [2-9] of 2\d$/).waitFor({ timeout: 300_000 });
    const atClick = Number((await page.locator("#step-label").textContent()).match(/Step (\d+)/)[1]);
    await page.getByRole("button", { name: "Cancel" }).click();
    const title = page.getByText(/^Cancelled after step \d+\.$/);
    await title.waitFor({ timeout: 120_000 });
    const stopped = Number((await title.textContent()).match(/step (\d+)/)[1]);
    console.log(`  cancel clicked at step ${atClick}, stopped after step ${stopped}`);
    if (stopped > atClick + 1) throw new Error(`stopped after step ${stopped}, clicked at ${atClick}`);
    if (await page.getByAltText("Variation 1 of 1, seed 7").count() !== 0) throw new Error("a cancelled run left results");
  });

  await check("a_lost_gpu_device_is_said_and_the_next_click_generates_from_the_cache", async () => {
    // The worker's WebGPU device is the one making command encoders: it is caught there and
    // destroyed mid-run, as a driver reset would.
    const worker = page.workers().find((w) => w.url().endsWith("/worker.js"));
    if (!worker) throw new Error(`no pipeline worker among ${page.workers().map((w) => w.url())}`);
    await worker.evaluate(() => {
      const create = GPUDevice.prototype.createCommandEncoder;
      GPUDevice.prototype.createCommandEncoder = function (...args) { self.pipelineDevice = this; return create.apply(this, args); };
    });
    await setSettings({ n: 1, steps: 25, seed: 7 });
    await page.getByRole("button", { name: "Generate" }).click();
    await page.getByText(/^Step [1-9] of 2\d$/).waitFor({ timeout: 300_000 });
    await worker.evaluate(() => self.pipelineDevice.destroy());
    await page.getByText("Stopped by an error.").waitFor({ timeout: 120_000 });
    const said = await page.locator("#alert-text").textContent();
    if (!/GPU/.test(said)) throw new Error(`a lost device was reported as: ${said}`);
    await shot("6-device-lost");
    await page.getByRole("button", { name: "Dismiss" }).click();
    await hubPost("/_reset");
    await generateAndCompare(1, "after a lost device");
    const requests = await weightRequests(revision);
    if (requests.length !== 0) throw new Error(`${requests.length} weight requests after a lost device`);
  });

  await check("two_tabs_never_download_the_same_bytes_twice", async () => {
    // Web Locks: the second tab waits for the first, then finds everything cached.
    const twoTabs = `${revision}-tabs`;
    const tabUrl = url.replace(`revision=${revision}`, `revision=${twoTabs}`);
    const tabs = [await context.newPage(), await context.newPage()];
    await Promise.all(tabs.map((tab) => tab.goto(tabUrl)));
    await Promise.all(tabs.map((tab) => tab.getByRole("button", { name: "Download model" }).waitFor({ timeout: 120_000 })));
    await Promise.all(tabs.map((tab) => tab.getByRole("button", { name: "Download model" }).click()));
    await Promise.all(tabs.map((tab) => tab.getByText(/^Ready:/).waitFor({ timeout: 300_000 })));
    const chunks = (await weightRequests(twoTabs)).filter((e) => e.cdn && e.range && !/^bytes=(0|8)-/.test(e.range));
    const keys = chunks.map((e) => `${e.path} ${e.range}`);
    const twice = keys.filter((k, i) => keys.indexOf(k) !== i);
    console.log(`  two tabs: ${chunks.length} tensor-chunk requests, ${twice.length} repeated`);
    if (chunks.length === 0 || twice.length) throw new Error(`fetched twice: ${twice.join(", ")}`);
    await Promise.all(tabs.map((tab) => tab.close()));
  });

  await check("a_full_quota_is_explained_and_the_model_streams_without_caching", async () => {
    // A fresh profile (nothing stored yet) with a 1 MB quota: the plan's records fit, the
    // weights do not. (On a profile that already holds models Chrome applies the override
    // unreliably.)
    const small = `${revision}-quota`;
    const fresh = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
    page = await fresh.newPage();
    const cdp = await fresh.newCDPSession(page);
    await cdp.send("Storage.overrideQuotaForOrigin", { origin: app, quotaSize: 1_000_000 });
    try {
      await page.goto(url.replace(`revision=${revision}`, `revision=${small}`));
      await page.getByRole("button", { name: "Download model" }).click({ timeout: 120_000 });
      await page.getByRole("alert").getByText(/not enough storage to keep the model/i).waitFor({ timeout: 120_000 });
      await shot("7-quota");
      await page.getByRole("button", { name: "Continue without caching" }).click();
      await page.getByText(/^Ready: .*streamed without caching/).waitFor({ timeout: 300_000 });
      await generateAndCompare(1, "streamed");
    } finally {
      await cdp.send("Storage.overrideQuotaForOrigin", { origin: app });
    }
  });
} catch {
  // Reported above; the remaining checks depend on the failed one.
}

try {
  // Needs nothing from the checks above, so it runs whatever became of them.
  await check("on_a_phone_an_error_with_a_long_url_stays_inside_the_screen", async () => {
    // A Hub that drops every connection: the page reports a network error naming the URL. The
    // revision is a pinned commit, 40 characters with nowhere to break a line.
    const down = createHash("sha1").update(`${revision}-phone`).digest("hex");
    await hubPost("/_faults", { revision: down, kind: "drop", times: 1000 });
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    page = await phone.newPage();
    await page.goto(url.replace(`revision=${revision}`, `revision=${down}`));
    const alert = page.getByRole("alert");
    await alert.waitFor({ timeout: 120_000 });
    if (!/\/resolve\//.test(await alert.textContent())) throw new Error("the error names no URL, so it tests no long word");
    await shot("8-phone-error");
    await expectInsideViewport(page.getByRole("button", { name: "Dismiss" }));
    await page.getByRole("button", { name: "Dismiss" }).click();
    await alert.waitFor({ state: "hidden", timeout: 10_000 });
  });

  await check("a_link_cannot_run_script_in_the_page", async () => {
    const hostile = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
    page = await hostile.newPage();
    await page.goto(`${app}/?endpoint=${encodeURIComponent("javascript:alert(document.domain)//")}&model=imvar-tests/tiny`);
    await page.getByText(/endpoint was not usable/).waitFor({ timeout: 60_000 });
    const href = await page.locator("#model-link").getAttribute("href");
    if (!/^https?:\/\//.test(href)) throw new Error(`the model link goes to ${href}`);
    // The page's Content-Security-Policy refuses inline script, however it gets in.
    const ran = await page.evaluate(() => {
      const script = document.createElement("script");
      script.textContent = "window.injected = true";
      document.head.append(script);
      return window.injected === true;
    });
    if (ran) throw new Error("an injected inline script ran");
    await shot("9-hostile-link");
  });
} catch {
  // Reported above.
} finally {
  await browser.close();
  children.forEach((c) => c.kill());
  console.log(`screenshots in ${out}`);
  console.log(`test result: ${results.failed ? "FAILED" : "ok"}. ${results.passed} passed; ${results.failed} failed; 0 ignored`);
  process.exitCode = results.failed ? 1 : 0;
}
