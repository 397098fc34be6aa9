// The demo page: picture input, settings, model download/cache panel, live generation with
// previews, and the results grid. The pipeline itself runs in worker.js.
// Query parameters `endpoint`, `model` and `revision` select another Hub or model.

const $ = (id) => document.getElementById(id);
const DEFAULT_ENDPOINT = "https://huggingface.co";

// Whoever wrote the link chose these parameters: the endpoint must parse as an http(s) URL, the
// model and revision must be plain names, or they are left out (and the page says so).
function modelFromLink(search) {
  const params = new URLSearchParams(search);
  const model = {};
  const refused = [];
  const endpoint = params.get("endpoint");
  if (endpoint) {
    let url = null;
    try { url = new URL(endpoint); } catch { /* refused below */ }
    if (url && (url.protocol === "https:" || url.protocol === "http:")) model.endpoint = url.href.replace(/\/$/, "");
    else refused.push("endpoint");
  }
  const NAME = /^[\w.-]+\/[\w.-]+$/;
  const REVISION = /^[\w.-]+(\/[\w.-]+)*$/;
  for (const [key, pattern] of [["model", NAME], ["revision", REVISION]]) {
    const value = params.get(key);
    if (value && pattern.test(value) && !value.split("/").some((part) => part === "." || part === "..")) model[key] = value;
    else if (value) refused.push(key);
  }
  return { model, refused };
}
const { model, refused: refusedParams } = modelFromLink(location.search);
const SCHEDULER_NAMES = { pndm: "PNDM", ddim: "DDIM", euler: "Euler", "euler-a": "Euler ancestral", "dpm++2m": "DPM-Solver++ 2M" };
const COMPONENTS = ["image_encoder", "unet", "vae"];

const state = { image: null, imageUrl: null, loaded: false, running: null, runs: 0, pending: null };

if ("serviceWorker" in navigator && location.protocol !== "file:") {
  navigator.serviceWorker.register("sw.js").catch(() => { /* offline shell is a bonus */ });
}

// The worker; replaced by a fresh one after a GPU failure or a crash (a trapped wasm instance
// cannot be trusted), which reloads the model from the cache on the next run.
let worker = null;
function startWorker() {
  worker?.terminate();
  state.loaded = false;
  worker = new Worker(new URL("worker.js", import.meta.url), { type: "module" });
  worker.onmessage = ({ data }) => handlers[data.type](data);
  worker.onerror = (event) => {
    event.preventDefault();
    handlers.error({ during: state.running ? "generate" : "load", id: state.running?.id, error: { name: "RuntimeError", message: event.message } });
  };
  worker.postMessage({ type: "init", model });
}
startWorker();
if (model.model) {
  $("model-link").textContent = model.model;
  $("model-link").href = new URL(model.model, `${model.endpoint ?? DEFAULT_ENDPOINT}/`).href;
}
if (refusedParams.length) {
  showError({ name: "OptionError", message: `The link's ${refusedParams.join(" and ")} ${refusedParams.length > 1 ? "were" : "was"} not usable and ${refusedParams.length > 1 ? "were" : "was"} left out.` });
}

// ---------- formatting ----------
function bytes(n) {
  if (n == null) return "unknown";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}
function duration(seconds) {
  if (seconds == null || !isFinite(seconds)) return "";
  if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

// ---------- errors in plain words ----------
// What happened comes first, in words; the raw message (which may hold a long URL) is the detail.
function explain(error) {
  const m = error.message;
  const said = (text) => ({ text, detail: m });
  switch (error.name) {
    case "NoWebGpu": return said("imvar cannot use a GPU in this browser: it needs WebGPU.");
    case "ImageError": return said("That file is not a picture imvar can read (JPEG, PNG, WebP, GIF or BMP).");
    // Already written for people, with the numbers that matter.
    case "QuotaError": return { text: m.charAt(0).toUpperCase() + m.slice(1), action: "Continue without caching", run: () => startLoad("stream") };
    case "OfflineError": return said("You are offline and the model is not fully downloaded yet. Connect once to finish the download.");
    case "NetworkError": return said("The model could not be downloaded. Check your connection and try again; what was downloaded is kept.");
    case "ModelError": return said("The model's files could not be fetched or read.");
    case "StorageError": return said("This browser's storage failed while keeping the model.");
    case "OptionError": return { text: m };
    case "CancelledError": return null;
    case "RuntimeError":
      return said("The GPU stopped working for this run: it may have run out of memory (try fewer variations) or been reset. Click Generate to try again; the model reloads from the cache.");
    case "GpuError":
      if (/memory|allocat/i.test(m)) return said("Not enough GPU memory for this run. Try fewer variations or a smaller size.");
      if (/lost|destroyed/i.test(m)) return said("The GPU device was lost (a driver reset or the machine sleeping). Click Generate to continue; the model reloads from the cache.");
      return said("The GPU failed. Click Generate to try again.");
    default: return said("Something went wrong.");
  }
}
function showError(error) {
  const explained = explain(error);
  if (!explained) return;
  $("alert-text").textContent = explained.text;
  $("alert-detail").textContent = explained.detail ?? "";
  $("alert-detail").hidden = !explained.detail;
  $("alert-action").hidden = !explained.action;
  if (explained.action) {
    $("alert-action").textContent = explained.action;
    $("alert-action").onclick = () => { hideError(); explained.run(); };
  }
  $("alert").hidden = false;
}
function hideError() { $("alert").hidden = true; }
$("alert-close").onclick = hideError;

// ---------- input picture ----------
async function choose(file) {
  hideError();
  if (!file) return;
  try {
    await createImageBitmap(file);
  } catch {
    // The picture chosen before (if any) stays.
    const kept = state.image ? ` The previous picture (${state.image.name}) is still selected.` : "";
    showError({ name: "ImageError", message: `"${file.name || "the pasted file"}" could not be decoded.${kept}` });
    return;
  }
  state.image = file;
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.imageUrl = URL.createObjectURL(file);
  $("input-preview").src = state.imageUrl;
  $("input-preview").hidden = false;
  $("drop-hint").hidden = true;
}
$("image-input").onchange = () => choose($("image-input").files[0]);
const zone = $("drop-zone");
zone.onclick = () => $("image-input").click();
zone.onkeydown = (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("image-input").click(); } };
zone.ondragover = (e) => { e.preventDefault(); zone.classList.add("dragging"); };
zone.ondragleave = () => zone.classList.remove("dragging");
zone.ondrop = (e) => { e.preventDefault(); zone.classList.remove("dragging"); choose(e.dataTransfer.files[0]); };
document.addEventListener("paste", (e) => {
  const file = [...e.clipboardData.files].find((f) => f.type.startsWith("image/"));
  if (file) choose(file);
});

// ---------- model panel ----------
function setModelStatus(text) { $("model-status").textContent = text; }
function showCached(bytesStored) {
  $("delete-model").hidden = !(bytesStored > 0);
  $("download").hidden = true;
}
function startLoad(kind = "load") {
  state.loading = true;
  $("download").hidden = true;
  $("delete-model").hidden = true;
  // Ask the browser to keep the cache under storage pressure (only a page can ask).
  if (kind === "load") navigator.storage?.persist?.().catch(() => {});
  $("model-progress").hidden = false;
  setModelStatus(state.pending?.downloadBytes > 0 && kind === "load" ? "Downloading the model…" : "Loading the model onto your GPU…");
  worker.postMessage({ type: kind });
}
$("download").onclick = () => startLoad();
$("delete-model").onclick = () => {
  if (state.running || state.loading) return;
  state.loaded = false;
  worker.postMessage({ type: "delete" });
};

const handlers = {
  capabilities({ capabilities }) {
    const rows = [["Adapter", capabilities.adapter], ["Backend", capabilities.backend],
      ["Precision", capabilities.compute_dtype === "f16" ? "f16 (half)" : "f32 (full)"],
      ["Largest buffer", bytes(capabilities.max_buffer_size)], ["shader-f16", capabilities.shader_f16 ? "yes" : "no"]];
    $("gpu-report").querySelector("tbody").replaceChildren(...rows.map(([k, v]) => {
      const tr = document.createElement("tr");
      tr.innerHTML = "<th scope=row></th><td></td>";
      tr.cells[0].textContent = k;
      tr.cells[1].textContent = v;
      return tr;
    }));
    setModelStatus("Reading the model's files…");
  },
  pending({ pending }) {
    state.pending = pending;
    if (pending.downloadBytes === 0) {
      setModelStatus(`The model is in this browser's cache (${bytes(pending.storedBytes)}). Loading it onto your GPU…`);
      showCached(pending.storedBytes);
      startLoad();
      return;
    }
    const room = pending.availableBytes == null ? "" : ` This browser lets the page store ${bytes(pending.availableBytes)}.`;
    const kept = pending.cachedBytes > 0 ? ` ${bytes(pending.cachedBytes)} are already here from an earlier visit.` : "";
    setModelStatus(`First use downloads the model once: ${bytes(pending.downloadBytes)}, kept in this browser ` +
      `(${bytes(pending.storedBytes)}) so later visits and offline use need no download.${kept}${room}`);
    $("download").hidden = false;
    $("delete-model").hidden = !(pending.cachedBytes > 0);
  },
  progress({ event }) {
    $("model-progress").hidden = false;
    const phase = event.phase === "download" ? "Downloading" : "Loading onto the GPU";
    const bar = $(`progress-${event.component}`);
    if (bar) { bar.max = Math.max(event.total, 1); bar.value = event.done; }
    $("progress-overall").max = Math.max(event.overallTotal, 1);
    $("progress-overall").value = event.overallDone;
    setModelStatus(`${phase}: ${bytes(event.overallDone)} of ${bytes(event.overallTotal)}`);
    const eta = event.etaSeconds == null ? "" : `, about ${duration(event.etaSeconds)} left`;
    $("model-speed").textContent = event.phase === "download" ? `${bytes(event.bytesPerSecond)}/s${eta}` : "";
  },
  loaded({ summary, defaultScheduler }) {
    state.loaded = true;
    state.loading = false;
    $("model-progress").hidden = true;
    const where = summary.cached ? `cached in this browser (${bytes(summary.storedBytes)})` : "streamed without caching";
    setModelStatus(`Ready: ${summary.model.repo}, ${where}, ${bytes(summary.weightBytes)} on the GPU.`);
    $("model-status").className = "ok";
    showCached(summary.cached ? summary.storedBytes : 0);
    if (!state.schedulerTouched) $("scheduler").value = defaultScheduler;
    [...$("scheduler").options].forEach((o) => { o.textContent = SCHEDULER_NAMES[o.value] + (o.value === defaultScheduler ? " (the model's)" : ""); });
  },
  step({ id, report }) {
    if (id !== state.running?.id) return;
    $("step-label").textContent = `Step ${report.step} of ${report.total}`;
    $("step-progress").max = report.total;
    $("step-progress").value = report.step;
    state.running.lastStep = report.step;
    $("step-eta").textContent = report.etaSeconds == null ? "" : `About ${duration(report.etaSeconds)} left`;
    report.previews.forEach((p, i) => drawPreview(report.first + i, p));
  },
  done({ id, results }) {
    if (id !== state.running?.id) return;
    addRun(state.running, results);
    $("previews").replaceChildren();
    finishRun(`Done: ${results.length} variation${results.length > 1 ? "s" : ""}, seed ${state.running.seed}.`);
  },
  deleted() {
    $("model-status").className = "";
    $("delete-model").hidden = true;
  },
  error({ error, during, id }) {
    if (error.name === "RuntimeError" || (error.name === "GpuError" && during === "generate")) {
      startWorker();
      setModelStatus("The GPU failed; the model will be reloaded from the cache on the next run.");
      $("model-status").className = "";
    }
    if (during === "generate" && id === state.running?.id) {
      finishRun(error.name === "CancelledError" ? `Cancelled after step ${state.running.lastStep ?? 0}.` : "Stopped by an error.");
    }
    if (during === "load" || during === "stream" || during === "generate") state.loading = false;
    if (during === "init" || during === "load" || during === "stream") {
      setModelStatus(during === "init" && error.name === "NoWebGpu" ? "WebGPU is not available." : "The model is not loaded.");
      $("model-progress").hidden = true;
      if (error.name !== "NoWebGpu" && during !== "init") $("download").hidden = false;
    }
    showError(error);
  },
};

// ---------- generation ----------
function drawPreview(index, preview) {
  const canvas = $("previews").children[index];
  if (!canvas) return;
  canvas.width = preview.width;
  canvas.height = preview.height;
  const rgba = new Uint8ClampedArray(preview.width * preview.height * 4);
  const rgb = new Uint8Array(preview.rgb.buffer ?? preview.rgb);
  for (let p = 0, q = 0; p < rgb.length; p += 3, q += 4) {
    rgba[q] = rgb[p]; rgba[q + 1] = rgb[p + 1]; rgba[q + 2] = rgb[p + 2]; rgba[q + 3] = 255;
  }
  canvas.getContext("2d").putImageData(new ImageData(rgba, preview.width, preview.height), 0, 0);
}

function readSettings() {
  const number = (id, min, max, integer) => {
    const input = $(id);
    const value = Number(input.value);
    if (input.value === "" || !isFinite(value) || value < min || value > max || (integer && !Number.isInteger(value))) {
      throw { name: "OptionError", message: `${input.closest("label").firstChild.textContent.trim()} must be ${integer ? "a whole number" : "a number"} from ${min} to ${max}.` };
    }
    return value;
  };
  const seedText = $("seed").value.trim();
  const seed = seedText === "" ? crypto.getRandomValues(new Uint32Array(1))[0] : number("seed", 0, 2 ** 53 - 1, true);
  return {
    n: number("count", 1, 8, true),
    steps: number("steps", 1, 200, true),
    guidance: number("guidance", 0, 20, false),
    seed,
    scheduler: $("scheduler").value,
  };
}

$("scheduler").onchange = () => { state.schedulerTouched = true; };
$("controls").onsubmit = async (e) => {
  e.preventDefault();
  if (state.running) return;
  hideError();
  if (!state.image) { showError({ name: "OptionError", message: "Choose a picture first: drop one on the box, paste one, or use the Image field." }); return; }
  let options;
  try { options = readSettings(); } catch (error) { showError(error); return; }
  if (!state.loaded) startLoad();
  const id = ++state.runs;
  state.running = { id, ...options, image: state.imageUrl };
  $("generate").disabled = true;
  $("cancel").disabled = false;
  $("generation").hidden = false;
  $("generation-title").textContent = `Generating ${options.n} variation${options.n > 1 ? "s" : ""} (seed ${options.seed})`;
  $("step-label").textContent = state.loaded ? "Starting…" : "Waiting for the model…";
  $("step-progress").value = 0;
  $("step-eta").textContent = "";
  $("previews").replaceChildren(...Array.from({ length: options.n }, () => document.createElement("canvas")));
  let image;
  try {
    image = await state.image.arrayBuffer();
  } catch (error) {
    finishRun("Stopped: the picture could not be read.");
    showError({ name: "ImageError", message: `${state.image.name} could not be read (${error.message})` });
    return;
  }
  worker.postMessage({ type: "generate", id, image, options }, [image]);
};
$("cancel").onclick = () => {
  if (!state.running) return;
  $("cancel").disabled = true;
  $("step-label").textContent = `Cancelling after step ${state.running.lastStep ?? 0}…`;
  worker.postMessage({ type: "cancel" });
};

function finishRun(message) {
  $("generate").disabled = false;
  $("cancel").disabled = true;
  $("generation-title").textContent = message;
  $("step-eta").textContent = "";
  state.running = null;
}

function addRun(run, results) {
  $("results-empty").hidden = true;
  const section = document.createElement("section");
  section.className = "run";
  const title = document.createElement("h3");
  title.append(`Run ${run.id} `);
  const details = document.createElement("span");
  details.textContent = `· seed ${run.seed} · ${run.steps} steps · ${SCHEDULER_NAMES[run.scheduler]} · guidance ${run.guidance}`;
  title.append(details);
  const grid = document.createElement("div");
  grid.className = "grid";
  for (const result of results) grid.append(figure(result, results.length));
  section.append(title, grid);
  $("results").querySelector("h2").after(section);
}

function figure(result, n) {
  const blob = new Blob([result.png], { type: "image/png" });
  const url = URL.createObjectURL(blob);
  const k = result.index + 1;
  const fig = document.createElement("figure");
  const img = document.createElement("img");
  img.src = url;
  img.alt = `Variation ${k} of ${n}, seed ${result.seed}`;
  img.onclick = () => { $("viewer-image").src = url; $("viewer-image").alt = img.alt; $("viewer").showModal(); };
  const caption = document.createElement("figcaption");
  const label = document.createElement("span");
  label.textContent = `#${k} · seed ${result.seed}`;
  const actions = document.createElement("span");
  actions.className = "actions";
  const download = document.createElement("a");
  download.href = url;
  download.download = `imvar-seed${result.seed}-${k}.png`;
  download.textContent = "Download";
  const vary = document.createElement("button");
  vary.type = "button";
  vary.textContent = "Vary this";
  vary.onclick = () => { choose(new File([blob], `variation-${k}.png`, { type: "image/png" })); window.scrollTo({ top: 0, behavior: "smooth" }); };
  actions.append(download, vary);
  caption.append(label, actions);
  fig.append(img, caption);
  return fig;
}
