// The pipeline runs here, in a dedicated worker with its own WebGPU device, so the page stays
// responsive while the model downloads and images denoise. Messages in:
//   { type: "init", model }          model: { endpoint, model, revision } (undefined = defaults)
//   { type: "load" }                 download if needed, then load to the GPU
//   { type: "generate", id, image, options }   image: ArrayBuffer; options as pipe.generate
//   { type: "cancel" }               stops the running generation after its current step
//   { type: "delete" }               deletes the cached model
//   { type: "stream" }               loads without caching (after a quota error)
// Messages out: capabilities, pending, progress, loaded, step, done, deleted, error. After a GPU
// failure the page replaces this worker with a fresh one.
import init, { ImageVariations, capabilities, deleteCachedModel } from "./pkg/imvar.js";

let model = {};
let cache = true;
let pipe = null;
let loading = null;
let controller = null;
let ready = null;

const post = (message, transfer = []) => self.postMessage(message, transfer);
const plainError = (error) => ({ name: error?.name ?? "Error", message: error?.message ?? String(error) });

async function pending() {
  post({ type: "pending", pending: await ImageVariations.pending({ ...model, cache }) });
}

function load() {
  loading ??= ImageVariations.load({ ...model, cache, onProgress: (event) => post({ type: "progress", event }) })
    .then((loaded) => {
      pipe = loaded;
      post({ type: "loaded", summary: loaded.summary, defaultScheduler: loaded.defaultScheduler });
      return loaded;
    })
    .finally(() => { loading = null; });
  return loading;
}

async function generate({ id, image, options }) {
  // Created first, so a Cancel while the model is still loading stops the run too.
  controller = new AbortController();
  try {
    const current = pipe ?? await load();
    if (controller.signal.aborted) throw Object.assign(new Error("cancelled"), { name: "CancelledError" });
    const results = await current.generate(new Uint8Array(image), {
      ...options,
      signal: controller.signal,
      onStep: (report) => {
        const buffers = report.previews.map((p) => p.rgb.buffer);
        post({ type: "step", id, report }, buffers);
      },
    });
    const out = results.map((r) => ({ png: r.png.buffer, seed: r.seed, index: r.index }));
    post({ type: "done", id, results: out }, out.map((r) => r.png));
  } finally {
    controller = null;
  }
}

const handlers = {
  async init(message) {
    model = message.model ?? {};
    ready = init();
    await ready;
    post({ type: "capabilities", capabilities: await capabilities() });
    await pending();
  },
  load: () => load(),
  stream: () => { cache = false; return load(); },
  generate,
  cancel: () => controller?.abort(),
  async delete() {
    pipe = null;
    await deleteCachedModel(model);
    post({ type: "deleted" });
    await pending();
  },
};

self.onmessage = async ({ data }) => {
  try {
    // Messages can arrive while the wasm module is still starting: every handler waits for it.
    if (data.type !== "init") await ready;
    await handlers[data.type](data);
  } catch (error) {
    post({ type: "error", id: data.id, during: data.type, error: plainError(error) });
  }
};
