//! The wasm-bindgen shell: what JavaScript calls (`ImageVariations`, `capabilities`, the cache
//! listing). Options are parsed by `options`, failures named by `errors`; this file only turns
//! them into JavaScript values.

use std::rc::Rc;

use js_sys::{Array, Function, Object, Reflect, Uint8Array};
use serde::Serialize;
use wasm_bindgen::prelude::*;

use super::errors::{Classified, OptionError};
use super::fetch::BrowserFetch;
use super::idb::{self, IdbStore};
use super::options::{GenerateRequest, LoadOptions, camel_case, parse_dtype, storage_for};
use crate::gpu::{self, GpuOptions};
use crate::hub::{self, CacheEvent, DownloadOptions, Fetch, HubCache, HubModel, Phase, Remembered, Storage, Store, Tracker};
use crate::pipeline::{ImageVariationPipeline, LoadReport, PipelineError, WeightsFrom, preprocess};

#[wasm_bindgen(start)]
fn start() {
    crate::js::run_constructors_once();
    console_error_panic_hook::set_once();
}

/// A JavaScript `Error` whose `name` says what kind of failure it is (`errors::ErrorKind`).
fn js_error(failure: impl Classified) -> JsValue {
    let error = js_sys::Error::new(&failure.to_string());
    error.set_name(failure.kind().name());
    error.into()
}

/// A report as JavaScript sees it: camelCase keys, `keep` objects as they are.
fn to_js(value: &impl Serialize, keep: &[&str]) -> Result<JsValue, JsValue> {
    let plain = value.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(|e| js_error(OptionError(e.to_string())))?;
    Ok(camel_case_keys(plain, keep))
}

/// A plain object's keys in camelCase (`options::camel_case`), at every depth but under `keep`.
fn camel_case_keys(value: JsValue, keep: &[&str]) -> JsValue {
    if Array::is_array(&value) {
        return Array::from(&value).iter().map(|item| camel_case_keys(item, keep)).collect::<Array>().into();
    }
    let Some(object) = value.dyn_ref::<Object>().filter(|_| value.is_object()) else { return value };
    let renamed = Object::new();
    for entry in Object::entries(object).iter() {
        let (key, item) = (Reflect::get_u32(&entry, 0).unwrap_or_default(), Reflect::get_u32(&entry, 1).unwrap_or_default());
        let key = key.as_string().unwrap_or_default();
        let item = if keep.contains(&key.as_str()) { item } else { camel_case_keys(item, keep) };
        let _ = Reflect::set(&renamed, &camel_case(&key).into(), &item);
    }
    renamed.into()
}

/// Options from JavaScript: absent or null is every default.
fn parse<T: Default + for<'de> serde::Deserialize<'de>>(options: JsValue) -> Result<T, JsValue> {
    if options.is_undefined() || options.is_null() {
        return Ok(T::default());
    }
    serde_wasm_bindgen::from_value(options).map_err(|e| js_error(OptionError(e.to_string())))
}

/// Opens the GPU and describes it: `{ adapter, vendor, device_type, backend, driver, shader_f16,
/// timestamp_query, subgroups, max_buffer_size, max_storage_buffer_binding_size, ...,
/// compute_dtype }`. `dtype` is "auto" (default), "f16" or "f32". Rejects with a readable
/// message when WebGPU or a needed feature is missing.
#[wasm_bindgen]
pub async fn capabilities(dtype: Option<String>) -> Result<JsValue, JsValue> {
    let dtype = parse_dtype(dtype.as_deref()).map_err(js_error)?;
    let gpu = gpu::init(&GpuOptions { dtype, ..Default::default() }).await.map_err(js_error)?;
    serde_wasm_bindgen::to_value(&gpu.capabilities).map_err(|e| js_error(OptionError(e.to_string())))
}

/// What `load_pipeline` with these options would download through `fetch`.
pub async fn pending_download(options: &LoadOptions, fetch: &dyn Fetch) -> Result<hub::Pending, JsValue> {
    let session = Session::open(options).await?;
    session.cache(fetch).pending().await.map_err(js_error)
}

/// What loading did, for reports: the model, where the weights came from, sizes and memory.
#[derive(Serialize)]
pub struct LoadSummary {
    pub model: HubModel,
    pub commit: Option<String>,
    /// Whether the weights are kept in IndexedDB (`cache` option), or only streamed to the GPU.
    pub cached: bool,
    /// Bytes of weights kept (in the storage dtype).
    pub stored_bytes: u64,
    #[serde(flatten)]
    pub device: LoadReport,
    /// Most wasm heap bytes allocated at once while the weights went to the GPU.
    pub heap_peak_bytes: u64,
    /// The wasm memory's size afterwards (it never shrinks).
    pub wasm_memory_bytes: u64,
    pub capabilities: gpu::Capabilities,
}

/// Calls `onProgress` with `{ phase, component, done, total, overallDone, overallTotal,
/// bytesPerSecond, etaSeconds }`, ignoring what it returns. Built field by field: there is one
/// report per tensor, and a serde round trip per report took about 30% of a real-size load.
fn notify_progress(callback: &JsValue, event: &CacheEvent) {
    let Some(callback) = callback.dyn_ref::<Function>() else { return };
    let report = js_sys::Object::new();
    set(&report, "phase", event.phase.name());
    set(&report, "component", event.component.as_str());
    set(&report, "done", event.done as f64);
    set(&report, "total", event.total as f64);
    set(&report, "overallDone", event.overall_done as f64);
    set(&report, "overallTotal", event.overall_total as f64);
    set(&report, "bytesPerSecond", event.bytes_per_second);
    set(&report, "etaSeconds", event.eta_seconds.map_or(JsValue::NULL, JsValue::from));
    let _ = callback.call1(&JsValue::NULL, &report);
}

/// What loading works with: the GPU (its dtype decides how weights are kept), the cache (or
/// none) and the model on its Hub.
struct Session {
    gpu: gpu::Gpu,
    store: Option<IdbStore>,
    model: HubModel,
    storage: Storage,
    download: DownloadOptions,
}

impl Session {
    async fn open(options: &LoadOptions) -> Result<Self, JsValue> {
        let model = options.hub_model().map_err(js_error)?;
        let download = options.download().map_err(js_error)?;
        let dtype = options.dtype().map_err(js_error)?;
        let gpu = gpu::init(&GpuOptions { dtype, ..Default::default() }).await.map_err(js_error)?;
        let storage = storage_for(gpu.capabilities.compute_dtype);
        let store = match options.cache.unwrap_or(true) {
            true => Some(open_store(options.database()).await?),
            false => None,
        };
        Ok(Self { gpu, store, model, storage, download })
    }

    fn cache<'a>(&'a self, fetch: &'a dyn Fetch) -> HubCache<'a> {
        HubCache {
            fetch,
            store: self.store.as_ref().map(|s| s as &dyn Store),
            model: self.model.clone(),
            storage: self.storage,
            options: self.download,
        }
    }
}

/// How long the Hub's model index and configs are taken as they were: `pending()` at page start
/// and the `load()` right after it ask the Hub once.
const REMEMBER_FOR: web_time::Duration = web_time::Duration::from_secs(60);

/// The `Fetch` of every call from JavaScript (the page's worker runs one module, so `pending()`
/// and `load()` share what it remembers).
fn hub_fetch() -> &'static dyn Fetch {
    thread_local! {
        static FETCH: &'static Remembered<BrowserFetch> = Box::leak(Box::new(Remembered::new(BrowserFetch, REMEMBER_FOR)));
    }
    FETCH.with(|fetch| *fetch)
}

async fn open_store(database: &str) -> Result<IdbStore, JsValue> {
    IdbStore::open(database).await.map_err(js_error)
}

fn wasm_memory_bytes() -> u64 {
    let memory: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
    memory.buffer().unchecked_into::<js_sys::ArrayBuffer>().byte_length() as u64
}

/// Downloads (or finds cached) and loads the model through `fetch`, reporting progress through
/// `on_event`.
pub async fn load_pipeline(
    options: &LoadOptions,
    fetch: &dyn Fetch,
    on_event: &dyn Fn(&CacheEvent),
) -> Result<(ImageVariationPipeline, LoadSummary), JsValue> {
    let session = Session::open(options).await?;
    let prepared = session.cache(fetch).prepare(on_event).await.map_err(js_error)?;
    let manifest = &prepared.manifest;
    let totals = manifest.files.iter().map(|f| (f.component.clone(), manifest.stored_sum(&f.tensors)));
    let mut tracker = Tracker::new(Phase::Load, totals);
    let mut last = std::collections::BTreeMap::<String, u64>::new();
    let base = super::heap::current();
    super::heap::reset_peak();
    let mut on_load = |p: &crate::pipeline::LoadProgress| {
        let before = last.insert(p.component.clone(), p.done).unwrap_or(0);
        on_event(&tracker.advance(&p.component, p.done - before));
    };
    let (pipeline, device) =
        ImageVariationPipeline::load_with(&prepared, &session.gpu, WeightsFrom::Files, &mut on_load).await.map_err(js_error)?;
    let summary = LoadSummary {
        model: manifest.model.clone(),
        commit: manifest.commit.clone(),
        cached: session.store.is_some(),
        stored_bytes: manifest.stored_bytes(),
        device,
        heap_peak_bytes: (super::heap::peak() - base) as u64,
        wasm_memory_bytes: wasm_memory_bytes(),
        capabilities: session.gpu.capabilities.clone(),
    };
    Ok((pipeline, summary))
}

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &str = r#"
/** Which model to use, and how. Every field is optional. */
export interface LoadOptions {
  /** Hub endpoint, "https://huggingface.co" by default. */
  endpoint?: string;
  /** Repo id, "lambdalabs/sd-image-variations-diffusers" by default. */
  model?: string;
  /** Branch, tag, commit or ref ("refs/pr/20" for the default model, else "main"). */
  revision?: string;
  /** "auto" (f16 where the GPU has shader-f16), "f16" or "f32". */
  dtype?: "auto" | "f16" | "f32";
  /** Keep the weights in IndexedDB (true); false streams them straight to the GPU. */
  cache?: boolean;
  /** IndexedDB database name ("imvar"). */
  database?: string;
  /** Bytes per Range request (16 MiB, at most 64 MiB). */
  chunkBytes?: number;
  /** Requests in flight (4). */
  parallel?: number;
  onProgress?: (event: LoadProgress) => void;
}

export interface LoadProgress {
  phase: "download" | "load";
  component: "image_encoder" | "unet" | "vae";
  done: number;
  total: number;
  overallDone: number;
  overallTotal: number;
  bytesPerSecond: number;
  etaSeconds: number | null;
}

export interface PendingDownload {
  downloadBytes: number;
  cachedBytes: number;
  storedBytes: number;
  availableBytes: number | null;
}

export interface GenerateOptions {
  /** Number of variations (1). */
  n?: number;
  /** Denoising steps (50). */
  steps?: number;
  /** Classifier-free guidance scale (3). */
  guidance?: number;
  /** A whole number below 2^53; random when absent. Variation k of a seed is reproducible. */
  seed?: number;
  scheduler?: "pndm" | "ddim" | "euler" | "euler-a" | "dpm++2m";
  width?: number;
  height?: number;
  onStep?: (step: StepReport) => void;
  /** Aborting stops the run after the step in progress; generate then rejects with CancelledError. */
  signal?: AbortSignal;
}

export interface StepReport {
  step: number;
  total: number;
  elapsedSeconds: number;
  etaSeconds: number | null;
  first: number;
  /** Latent-resolution RGB previews of variations first, first + 1, ... */
  previews: { width: number; height: number; rgb: Uint8Array }[];
}

export interface Variation {
  png: Uint8Array;
  seed: number;
  index: number;
}
"#;

/// Image variations in the browser: `await ImageVariations.load({...})`, then
/// `await pipe.generate(imageBytes, {...})`.
#[wasm_bindgen]
pub struct ImageVariations {
    pipeline: Rc<ImageVariationPipeline>,
    summary: JsValue,
}

/// Sets `key` on a JavaScript object (which cannot fail on a plain object).
fn set(object: &js_sys::Object, key: &str, value: impl Into<JsValue>) {
    let _ = Reflect::set(object, &key.into(), &value.into());
}

/// `{ step, total, elapsedSeconds, etaSeconds, first, previews: [{ width, height, rgb }] }`.
fn step_report(p: &crate::pipeline::Progress) -> JsValue {
    let report = js_sys::Object::new();
    let elapsed = p.elapsed.as_secs_f64();
    set(&report, "step", p.step as u32);
    set(&report, "total", p.total as u32);
    set(&report, "elapsedSeconds", elapsed);
    let eta = if p.step > 0 { JsValue::from(elapsed / p.step as f64 * (p.total - p.step) as f64) } else { JsValue::NULL };
    set(&report, "etaSeconds", eta);
    set(&report, "first", p.first as u32);
    let previews = js_sys::Array::new();
    for image in &p.previews {
        let preview = js_sys::Object::new();
        set(&preview, "width", image.width as u32);
        set(&preview, "height", image.height as u32);
        set(&preview, "rgb", Uint8Array::from(image.pixels.as_slice()));
        previews.push(&preview);
    }
    set(&report, "previews", previews);
    report.into()
}

fn aborted(signal: &JsValue) -> bool {
    !signal.is_undefined() && !signal.is_null() && Reflect::get(signal, &"aborted".into()).ok().and_then(|v| v.as_bool()).unwrap_or(false)
}

/// A seed below 2^32 (torch uses a seed's low 32 bits; this keeps shown seeds short).
fn random_seed() -> u64 {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).expect("the browser's crypto.getRandomValues");
    u32::from_le_bytes(bytes) as u64
}

#[wasm_bindgen]
impl ImageVariations {
    /// Downloads the model once (then loads it from IndexedDB), streaming its weights to the
    /// GPU. Options: `{ endpoint, model, revision, dtype, cache, database, chunkBytes,
    /// parallel, onProgress }`.
    pub async fn load(#[wasm_bindgen(unchecked_param_type = "LoadOptions | undefined")] options: JsValue) -> Result<ImageVariations, JsValue> {
        let options: LoadOptions = parse(options)?;
        let on_progress = options.on_progress.clone();
        let (pipeline, summary) = load_pipeline(&options, hub_fetch(), &|event| {
            notify_progress(&on_progress, event);
        })
        .await?;
        Ok(ImageVariations { pipeline: Rc::new(pipeline), summary: to_js(&summary, &["capabilities"])? })
    }

    /// What `load` with these options would download, without downloading it: `{
    /// downloadBytes, cachedBytes, storedBytes, availableBytes }` (available: the storage
    /// estimate's room, or null). Reads the repo's index, configs and weight headers.
    #[wasm_bindgen(unchecked_return_type = "PendingDownload")]
    pub async fn pending(#[wasm_bindgen(unchecked_param_type = "LoadOptions | undefined")] options: JsValue) -> Result<JsValue, JsValue> {
        let report = to_js(&pending_download(&parse(options)?, hub_fetch()).await?, &[])?;
        let available = idb::estimate().await.map(|(usage, quota)| quota.saturating_sub(usage) as f64);
        set(report.unchecked_ref(), "availableBytes", available.map_or(JsValue::NULL, JsValue::from));
        Ok(report)
    }

    /// What loading did: `{ model, commit, cached, storedBytes, weightBytes,
    /// deviceBytesAllocated, heapPeakBytes, wasmMemoryBytes, capabilities }`.
    #[wasm_bindgen(getter)]
    pub fn summary(&self) -> JsValue {
        self.summary.clone()
    }

    /// The model's own scheduler: `pndm`, `ddim`, `euler`, `euler-a` or `dpm++2m`.
    #[wasm_bindgen(getter, js_name = defaultScheduler)]
    pub fn default_scheduler(&self) -> String {
        self.pipeline.default_scheduler().name().into()
    }

    /// Variations of a picture (JPEG, PNG, WebP, GIF or BMP bytes): resolves to
    /// `[{ png: Uint8Array, seed, index }]`. Options: `{ n, steps, guidance, seed, scheduler,
    /// width, height, onStep, signal }`.
    #[wasm_bindgen(unchecked_return_type = "Promise<Variation[]>")]
    pub fn generate(&self, image: Vec<u8>, #[wasm_bindgen(unchecked_param_type = "GenerateOptions | undefined")] options: JsValue) -> js_sys::Promise {
        let pipeline = self.pipeline.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let options: GenerateRequest = parse(options)?;
            let generate = options.options(pipeline.default_size(), random_seed, options.on_step.is_function()).map_err(js_error)?;
            let picture = preprocess::decode(&image).map_err(|e| js_error(PipelineError::from(e)))?;
            let mut on_step = |p: crate::pipeline::Progress| {
                if let Some(callback) = options.on_step.dyn_ref::<Function>() {
                    let _ = callback.call1(&JsValue::NULL, &step_report(&p));
                }
                !aborted(&options.signal)
            };
            let variations = pipeline.generate(&picture, &generate, &mut on_step).await.map_err(js_error)?;
            let results = js_sys::Array::new();
            for v in variations {
                let result = js_sys::Object::new();
                set(&result, "png", Uint8Array::from(preprocess::encode_png(&v.image).as_slice()));
                set(&result, "seed", v.seed as f64);
                set(&result, "index", v.index as u32);
                results.push(&result);
            }
            Ok(results.into())
        })
    }
}

/// Models in the cache: `[{ model: { endpoint, repo, revision }, storage, commit, bytes }]`.
#[wasm_bindgen(js_name = cachedModels)]
pub async fn cached_models(database: Option<String>) -> Result<JsValue, JsValue> {
    let store = open_store(database.as_deref().unwrap_or(super::options::DEFAULT_DATABASE)).await?;
    let list = hub::cache::list(&store).await.map_err(js_error)?;
    to_js(&list, &[])
}

/// Deletes a cached model: `{ endpoint, model, revision, database }` as for `load`.
#[wasm_bindgen(js_name = deleteCachedModel)]
pub async fn delete_cached_model(options: JsValue) -> Result<(), JsValue> {
    let options: LoadOptions = parse(options)?;
    let store = open_store(options.database()).await?;
    hub::cache::delete(&store, &options.hub_model().map_err(js_error)?).await.map_err(js_error)
}

/// Storage use of this origin: `{ usage, quota }` in bytes, or null where unknown.
#[wasm_bindgen(js_name = storageEstimate)]
pub async fn storage_estimate() -> JsValue {
    match idb::estimate().await {
        Some((usage, quota)) => {
            let object = js_sys::Object::new();
            set(&object, "usage", usage as f64);
            set(&object, "quota", quota as f64);
            object.into()
        }
        None => JsValue::NULL,
    }
}
