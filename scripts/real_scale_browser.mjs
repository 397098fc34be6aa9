#!/usr/bin/env node
// The browser half of scripts/check_real_scale: the JS API in headless Chromium (WebGPU on
// SwiftShader) against the Hub stand-in serving the real-scale model. A first visit downloads
// everything and generates the given runs; a reload loads from IndexedDB and generates the first
// run again, then once more with one step (the first step with the shaders compiled). Writes
// OUT/browser.json (timings, load summaries, requests, memory) and the PNGs.
//
//   node scripts/real_scale_browser.mjs --model DIR --pkg DIR --runs RUNS.json --out DIR [--cpu-profile]
//
// RUNS.json: [{ name, scheduler, n, size, steps, guidance, seed }], possibly empty (loading is
// measured alone). Besides the runs it measures
// the bounds the figures are held against, in the same session: `curl` fetching the same weight
// files from the same stand-in, the page fetching them and dropping the bytes, and a raw read
// and a raw write of the same IndexedDB records in the same page.
// --cpu-profile records the page's JavaScript and wasm CPU profile of each visit (DevTools'
// sampling profiler, which slows the page: its times are not the figures) as OUT/*.cpuprofile,
// and puts the functions with the most self time in the report. Names need a wasm built with
// them (the demo's wasm-opt drops them).
import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { createInterface } from "node:readline";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const flag = (name) => process.argv.includes(`--${name}`);
const arg = (name) => {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) throw new Error(`--${name} is required`);
  return process.argv[i + 1];
};
const [model, pkg, runs, out] = [arg("model"), arg("pkg"), JSON.parse(readFileSync(arg("runs"), "utf8")), arg("out")];
mkdirSync(out, { recursive: true });
const children = [];

/** Starts a Python server and resolves with the URL it prints. */
function serve(args, prefix) {
  const child = spawn("python3", [...args, "--port", "0"], { cwd: root, stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, IMVAR_SERVE_QUIET: "1" } });
  children.push(child);
  return new Promise((resolve, reject) => {
    createInterface({ input: child.stdout }).once("line", (line) => {
      line.startsWith(prefix) ? resolve(line.trim().split(" ").pop().replace(/\/$/, "")) : reject(new Error(`unexpected: ${line}`));
    });
    child.once("exit", (code) => reject(new Error(`${args[0]} exited with ${code}`)));
  });
}

const blank = mkdtempSync(join(tmpdir(), "imvar-real-scale-page-"));
writeFileSync(join(blank, "index.html"), "<!doctype html><title>imvar real-scale check</title>\n");
const app = await serve(["scripts/serve.py", "--mount", `/=${blank}`, "--mount", `/pkg=${pkg}`], "serving on");
const repo = "imvar-real/sd-image-variations";
const hub = await serve(["scripts/hub_standin.py", "--repo", `${repo}=${model}`], "hub-standin");
const hubLog = async () => (await fetch(`${hub}/_log`)).json();
const hubReset = () => fetch(`${hub}/_reset`, { method: "POST", body: "" });

/** Peak resident memory of Chromium's renderer and GPU processes, sampled every 250 ms. */
class MemorySampler {
  constructor() { this.reset(); this.timer = setInterval(() => this.sample(), 250); }
  reset() { this.peak = { renderer: 0, gpu: 0 }; }
  sample() {
    const lines = execFileSync("ps", ["-eo", "rss=,args="], { encoding: "utf8" }).split("\n");
    const sum = { renderer: 0, gpu: 0 };
    for (const line of lines) {
      const kb = Number(line.trim().split(" ")[0]);
      if (line.includes("--type=renderer")) sum.renderer += kb * 1024;
      if (line.includes("--type=gpu-process")) sum.gpu += kb * 1024;
    }
    for (const k of Object.keys(sum)) this.peak[k] = Math.max(this.peak[k], sum[k]);
  }
  take() { this.sample(); const p = this.peak; this.reset(); return p; }
  stop() { clearInterval(this.timer); }
}

/** CPU seconds used by each kind of process (Chromium's renderer, GPU, network and storage
 * services, the rest of the browser, the Hub stand-in), sampled every 250 ms with the time. */
class CpuSampler {
  constructor() { this.series = []; this.timer = setInterval(() => this.sample(), 250); this.sample(); }
  static kind(args) {
    if (args.includes("hub_standin")) return "standin";
    if (!args.includes("chromium")) return null;
    if (args.includes("--type=renderer")) return "renderer";
    if (args.includes("--type=gpu-process")) return "gpu";
    if (args.includes("network.mojom.NetworkService")) return "network";
    if (args.includes("storage.mojom.StorageService")) return "storage";
    return args.includes("--type=") ? "other" : "browser";
  }
  sample() {
    const seconds = {};
    for (const pid of readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
      try {
        const kind = CpuSampler.kind(readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " "));
        if (!kind) continue;
        const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
        seconds[kind] = (seconds[kind] ?? 0) + (Number(fields[11]) + Number(fields[12])) / 100;
      } catch { /* the process ended */ }
    }
    this.series.push({ at: Date.now(), seconds });
  }
  /** CPU seconds per kind between two times (ms since the epoch), from the nearest samples. */
  between(from, to) {
    const near = (at) => this.series.reduce((a, b) => (Math.abs(b.at - at) < Math.abs(a.at - at) ? b : a));
    const [a, b] = [near(from), near(to)];
    return Object.fromEntries(Object.keys(b.seconds).map((k) => [k, Math.round((b.seconds[k] - (a.seconds[k] ?? 0)) * 10) / 10]));
  }
  stop() { clearInterval(this.timer); }
}

// A profile on disk, as a person's browser has (an ephemeral context keeps IndexedDB in memory,
// with a quota far below the model's size), made fresh beside the output and removed at the end.
const profile = join(out, "profile");
rmSync(profile, { recursive: true, force: true });
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  args: ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--no-sandbox", "--use-angle=swiftshader", "--enable-webgpu-developer-features"],
});
const page = context.pages()[0] ?? await context.newPage();
page.on("console", (m) => { if (m.type() === "error") console.error(`[page] ${m.text()}`); });
const memory = new MemorySampler();
const cpu = new CpuSampler();
/** CPU seconds per process kind in each phase of a visit (download, load onto the GPU). */
const cpuByPhase = (visit) => Object.fromEntries(Object.entries(visit.phases).map(([name, p]) =>
  [name, cpu.between(visit.t.origin + (name === "download" ? visit.t.wasmReady : p.first), visit.t.origin + p.last)]));
const image = readFileSync(join(root, "tests/fixtures/input.png")).toString("base64");
const revision = `real-scale-${Date.now()}`;

/** DevTools' sampling profiler over the page, when asked for: `stop(name)` writes
 * OUT/name.cpuprofile and returns the functions with the most self time, in ms. */
class CpuProfiler {
  static async start() {
    if (!flag("cpu-profile")) return null;
    const cdp = await context.newCDPSession(page);
    await cdp.send("Profiler.enable");
    await cdp.send("Profiler.setSamplingInterval", { interval: 500 });
    await cdp.send("Profiler.start");
    return Object.assign(new CpuProfiler(), { cdp });
  }
  async stop(name) {
    const { profile } = await this.cdp.send("Profiler.stop");
    await this.cdp.detach();
    writeFileSync(join(out, `${name}.cpuprofile`), JSON.stringify(profile));
    return CpuProfiler.top(profile, 25);
  }
  /** Self time per function (name and script), largest first. */
  static top(profile, count) {
    const label = new Map(profile.nodes.map((n) => [n.id, `${n.callFrame.functionName || "(anonymous)"} ${n.callFrame.url.split("/").pop()}`.trim()]));
    const self = new Map();
    // A sample stands for the time until the next one (timeDeltas[i] is the gap before sample i).
    profile.samples.forEach((id, i) => self.set(label.get(id), (self.get(label.get(id)) ?? 0) + (profile.timeDeltas[i + 1] ?? 0) / 1000));
    return [...self].sort((a, b) => b[1] - a[1]).slice(0, count).map(([fn, ms]) => ({ fn, ms: Math.round(ms) }));
  }
}

/** In the page: import the package, load the model, generate `runs`; every time is in ms from
 * the page's time origin. */
async function visit(runs) {
  return page.evaluate(async ({ hub, repo, revision, runs, image }) => {
    const t = { origin: performance.timeOrigin, start: performance.now() };
    const api = await import("/pkg/imvar.js");
    await api.default();
    t.wasmReady = performance.now();
    const phases = {};
    const pipe = await api.ImageVariations.load({
      endpoint: hub, model: repo, revision,
      onProgress: (e) => {
        phases[e.phase] ??= { first: performance.now() };
        phases[e.phase].last = performance.now();
      },
    });
    t.loaded = performance.now();
    const bytes = Uint8Array.from(atob(image), (c) => c.charCodeAt(0));
    const results = [];
    for (const run of runs) {
      const r = { name: run.name, start: performance.now(), steps: [] };
      const variations = await pipe.generate(bytes, {
        n: run.n, steps: run.steps, guidance: run.guidance, seed: run.seed, scheduler: run.scheduler,
        width: run.size, height: run.size, onStep: () => r.steps.push(performance.now()),
      });
      r.end = performance.now();
      r.pngs = variations.map((v) => btoa(Array.from(v.png, (b) => String.fromCharCode(b)).join("")));
      results.push(r);
    }
    return { t, phases, results, summary: pipe.summary };
  }, { hub, repo, revision, runs, image });
}

/** In the page: every record of the cache read back one at a time, as loading reads them. */
async function rawRecordRead() {
  return page.evaluate(async () => {
    const request = (r) => new Promise((ok, no) => { r.onsuccess = () => ok(r.result); r.onerror = () => no(r.error); });
    const start = performance.now();
    const db = await request(indexedDB.open("imvar"));
    const store = () => db.transaction("records").objectStore("records");
    const keys = await request(store().getAllKeys());
    let bytes = 0;
    for (const key of keys) bytes += (await request(store().get(key))).byteLength;
    db.close();
    return { records: keys.length, bytes, ms: performance.now() - start };
  });
}

/** In the page: every record of the cache written again in transactions of about 16 MiB of
 * records, as the download's chunks are (one at a time, where the download has up to four in
 * flight), into a scratch database removed afterwards; only the writes are timed, not the reads
 * that give them their bytes. It needs room for a second copy of the records on disk. */
async function rawRecordWrite() {
  return page.evaluate(async () => {
    const request = (r) => new Promise((ok, no) => { r.onsuccess = () => ok(r.result); r.onerror = () => no(r.error); });
    const committed = (t) => new Promise((ok, no) => { t.oncomplete = ok; t.onerror = t.onabort = () => no(t.error); });
    const db = await request(indexedDB.open("imvar"));
    const opening = indexedDB.open("imvar-write-bound");
    opening.onupgradeneeded = () => opening.result.createObjectStore("records");
    const scratch = await request(opening);
    const keys = await request(db.transaction("records").objectStore("records").getAllKeys());
    let ms = 0, bytes = 0, batch = [], batchBytes = 0;
    const flush = async () => {
      const start = performance.now();
      const transaction = scratch.transaction("records", "readwrite");
      for (const [key, value] of batch) transaction.objectStore("records").put(value, key);
      await committed(transaction);
      ms += performance.now() - start;
      [batch, batchBytes] = [[], 0];
    };
    for (const key of keys) {
      const value = await request(db.transaction("records").objectStore("records").get(key));
      batch.push([key, value]);
      batchBytes += value.byteLength;
      bytes += value.byteLength;
      if (batchBytes >= 16 << 20) await flush();
    }
    if (batch.length) await flush();
    db.close();
    scratch.close();
    await request(indexedDB.deleteDatabase("imvar-write-bound"));
    return { records: keys.length, bytes, ms };
  });
}

/** In the page: the same weight files, whole (the download fetches only the tensors it needs:
 * compare rates), fetched with `fetch` in 16 MiB Range requests, four at once as the download
 * makes them, each body read through and dropped: what the browser's own network path costs
 * before anything is checked or stored. */
async function rawFetch(paths) {
  return page.evaluate(async ({ hub, repo, revision, paths }) => {
    const chunk = 16 << 20;
    const ranges = [];
    for (const path of paths) {
      const url = `${hub}/${repo}/resolve/${revision}/${path}`;
      const head = await fetch(url, { method: "HEAD", cache: "no-store" });
      if (!head.ok) continue; // a variant the repo does not have (the download asked and got a 404)
      const size = Number(head.headers.get("content-length"));
      for (let start = 0; start < size; start += chunk) ranges.push([url, start, Math.min(start + chunk, size) - 1]);
    }
    let bytes = 0;
    const expected = ranges.reduce((sum, [, start, end]) => sum + end - start + 1, 0);
    const worker = async () => {
      for (let next = ranges.shift(); next; next = ranges.shift()) {
        const [url, start, end] = next;
        const answer = await fetch(url, { headers: { Range: `bytes=${start}-${end}` }, cache: "no-store", referrerPolicy: "no-referrer" });
        if (answer.status !== 206) throw new Error(`${url} ${start}-${end}: status ${answer.status}`);
        const reader = answer.body.getReader();
        for (let read = await reader.read(); !read.done; read = await reader.read()) bytes += read.value.byteLength;
      }
    };
    const start = performance.now();
    await Promise.all([worker(), worker(), worker(), worker()]);
    if (bytes !== expected) throw new Error(`fetched ${bytes} bytes of ${expected}`);
    return { files: paths.length, bytes, ms: performance.now() - start };
  }, { hub, repo, revision, paths });
}

/** curl fetching each weight file the page asked for, whole, from the same stand-in. */
function curlBound(paths) {
  let bytes = 0, seconds = 0;
  for (const path of paths) {
    const url = `${hub}/${repo}/resolve/${revision}/${path}`;
    const [size, time] = execFileSync("curl", ["-sL", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url], { encoding: "utf8" }).split(" ");
    bytes += Number(size);
    seconds += Number(time);
  }
  return { files: paths.length, bytes, ms: seconds * 1000 };
}

const requestsOf = (log) => ({
  total: log.length,
  weights: log.filter((e) => e.path.endsWith(".safetensors")).length,
  weightBytes: log.filter((e) => e.path.endsWith(".safetensors")).reduce((s, e) => s + (e.bytes ?? 0), 0),
});
const savePngs = (visitName, result) => {
  result.results.forEach((r, i) => {
    r.files = r.pngs.map((png, k) => {
      const file = join(out, `${visitName}-${i}-${r.name}-${k}.png`);
      writeFileSync(file, Buffer.from(png, "base64"));
      return file;
    });
    delete r.pngs;
  });
};

try {
  // The stand-in hashes every file for its ETags and commit on the first request: done before
  // the clock starts, as the Hub has its hashes at hand.
  await fetch(`${hub}/${repo}/resolve/${revision}/model_index.json`);
  await hubReset();
  await page.goto(`${app}/`);
  let profiler = await CpuProfiler.start();
  const first = await visit(runs);
  if (profiler) first.profile = await profiler.stop("first");
  first.memory = memory.take();
  first.cpu = cpuByPhase(first);
  const firstLog = await hubLog();
  first.requests = requestsOf(firstLog);
  savePngs("first", first);
  const weightFiles = [...new Set(firstLog.filter((e) => e.path.endsWith(".safetensors")).map((e) => e.path))];

  await hubReset();
  await page.reload();
  profiler = await CpuProfiler.start();
  const second = await visit(runs.length ? [runs[0], { ...runs[0], name: "warm-shaders", steps: 1 }] : []);
  if (profiler) second.profile = await profiler.stop("reload");
  second.memory = memory.take();
  second.cpu = cpuByPhase(second);
  second.requests = requestsOf(await hubLog());
  savePngs("reload", second);
  const raw = await rawRecordRead();
  const rawWrite = await rawRecordWrite();
  const fetched = await rawFetch(weightFiles);
  const curl = curlBound(weightFiles);
  const report = { first, second, raw, rawWrite, fetched, curl, chromium: execFileSync(executablePath, ["--version"], { encoding: "utf8" }).trim() };
  writeFileSync(join(out, "browser.json"), JSON.stringify(report, null, 2) + "\n");
  console.log(`browser report in ${join(out, "browser.json")}`);
} finally {
  memory.stop();
  cpu.stop();
  await context.close();
  rmSync(profile, { recursive: true, force: true });
  for (const c of children) c.kill();
}
