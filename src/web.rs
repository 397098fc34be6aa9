//! The browser edge: what JavaScript calls (`ImageVariations`, `capabilities`, the cache
//! listing), and what the core needs from the page.

use std::rc::Rc;

use serde::Serialize;

use js_sys::{Function, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;

use crate::gpu::{self, ComputeDType, DTypeChoice, GpuOptions};
use crate::hub::{self, HubModel};
use crate::idb_store::{self, IdbStore};
use crate::pipeline::{GenerateOptions, ImageVariationPipeline, LoadReport, PipelineError, WeightsFrom};
use crate::weight_cache::{self, CacheError, CacheEvent, DownloadOptions, HubCache, Phase, Storage, Store, Tracker};
use crate::web_fetch::BrowserFetch;

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// Whether this global (window or worker) exposes `navigator.gpu`.
pub(crate) fn has_webgpu() -> bool {
    let navigator = js_sys::Reflect::get(&js_sys::global(), &"navigator".into());
    navigator
        .and_then(|n| js_sys::Reflect::get(&n, &"gpu".into()))
        .is_ok_and(|gpu| !gpu.is_undefined() && !gpu.is_null())
}

/// wgpu leaves a WebGPU adapter's name and vendor empty where the browser gives no description
/// (Chrome gives vendor and architecture strings instead): fill them from `GPUAdapter.info`.
pub(crate) async fn name_adapter(capabilities: &mut crate::gpu::Capabilities) {
    let Some(info) = browser_adapter_info().await else { return };
    let field = |name: &str| {
        js_sys::Reflect::get(&info, &name.into())
            .ok()
            .and_then(|v| v.as_string())
            .unwrap_or_default()
    };
    if capabilities.adapter.is_empty() {
        let name = [field("vendor"), field("architecture"), field("device")]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        capabilities.adapter = if name.is_empty() { "unnamed WebGPU adapter".into() } else { name };
    }
    if capabilities.vendor == "unknown" && !field("vendor").is_empty() {
        capabilities.vendor = field("vendor");
    }
}

async fn browser_adapter_info() -> Option<JsValue> {
    let global = js_sys::global();
    let navigator = js_sys::Reflect::get(&global, &"navigator".into()).ok()?;
    let gpu = js_sys::Reflect::get(&navigator, &"gpu".into()).ok()?;
    let request: js_sys::Function = js_sys::Reflect::get(&gpu, &"requestAdapter".into()).ok()?.dyn_into().ok()?;
    let options = js_sys::Object::new();
    js_sys::Reflect::set(&options, &"powerPreference".into(), &"high-performance".into()).ok()?;
    let promise: js_sys::Promise = request.call1(&gpu, &options).ok()?.dyn_into().ok()?;
    let adapter = wasm_bindgen_futures::JsFuture::from(promise).await.ok()?;
    js_sys::Reflect::get(&adapter, &"info".into()).ok().filter(|i| !i.is_undefined())
}

/// Opens the GPU and describes it: `{ adapter, vendor, device_type, backend, driver, shader_f16,
/// timestamp_query, subgroups, max_buffer_size, max_storage_buffer_binding_size, ...,
/// compute_dtype }`. `dtype` is "auto" (default), "f16" or "f32". Rejects with a readable
/// message when WebGPU or a needed feature is missing.
#[wasm_bindgen]
pub async fn capabilities(dtype: Option<String>) -> Result<JsValue, JsError> {
    let dtype = match dtype.as_deref() {
        None => DTypeChoice::Auto,
        Some(s) => s.parse()?,
    };
    let gpu = gpu::init(&GpuOptions { dtype, ..Default::default() }).await?;
    Ok(serde_wasm_bindgen::to_value(&gpu.capabilities)?)
}

/// A JavaScript `Error` whose `name` says what kind of failure it is, so a page can word it:
/// `NoWebGpu`, `GpuError`, `QuotaError`, `OfflineError`, `NetworkError`, `ModelError`,
/// `ImageError`, `OptionError`, `CancelledError`, `StorageError`.
fn error(kind: &str, message: impl std::fmt::Display) -> JsValue {
    let error = js_sys::Error::new(&message.to_string());
    error.set_name(kind);
    error.into()
}

fn gpu_error(e: gpu::GpuError) -> JsValue {
    let kind = if matches!(e, gpu::GpuError::NoWebGpu | gpu::GpuError::NoAdapter(_)) { "NoWebGpu" } else { "GpuError" };
    error(kind, e)
}

fn cache_error(e: CacheError) -> JsValue {
    let kind = match &e {
        CacheError::Quota { .. } | CacheError::Store(weight_cache::StoreError::Quota) => "QuotaError",
        CacheError::Offline(_) => "OfflineError",
        CacheError::Hub(h) if h.is_offline() => "NetworkError",
        CacheError::Hub(_) | CacheError::Load(_) => "ModelError",
        CacheError::Store(_) => "StorageError",
    };
    error(kind, e)
}

fn pipeline_error(e: PipelineError) -> JsValue {
    let kind = match &e {
        PipelineError::Image(_) => "ImageError",
        PipelineError::InvalidOption(_) => "OptionError",
        PipelineError::Cancelled => "CancelledError",
        PipelineError::Gpu(_) => "GpuError",
        PipelineError::Config(_) | PipelineError::Load(_) => "ModelError",
    };
    error(kind, e)
}

fn option_error(e: impl std::fmt::Display) -> JsValue {
    error("OptionError", format!("invalid options: {e}"))
}

/// `ImageVariations.load` options (camelCase in JavaScript).
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LoadOptions {
    /// Hub endpoint; `https://huggingface.co` by default.
    pub endpoint: Option<String>,
    /// Repo id; `lambdalabs/sd-image-variations-diffusers` by default.
    pub model: Option<String>,
    /// Branch, tag, commit or ref; for the default model the ref holding its safetensors.
    pub revision: Option<String>,
    /// "auto" (default), "f16" or "f32".
    pub dtype: Option<String>,
    /// Keep the weights in IndexedDB (default true); false streams them to the GPU only.
    pub cache: Option<bool>,
    /// IndexedDB database name ("imvar").
    pub database: Option<String>,
    /// Bytes per Range request (16 MiB; at most 64 MiB).
    pub chunk_bytes: Option<u64>,
    /// Requests in flight (4).
    pub parallel: Option<usize>,
    /// Called with `{ phase, component, done, total, overallDone, overallTotal, bytesPerSecond,
    /// etaSeconds }`.
    #[serde(with = "serde_wasm_bindgen::preserve")]
    pub on_progress: JsValue,
}

impl LoadOptions {
    pub fn hub_model(&self) -> Result<HubModel, JsValue> {
        let endpoint = self.endpoint.clone().unwrap_or_else(|| hub::DEFAULT_ENDPOINT.into());
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(option_error(format!("endpoint `{endpoint}` is not an http(s) URL")));
        }
        let repo = self.model.clone().unwrap_or_else(|| hub::DEFAULT_REPO.into());
        let revision = self.revision.clone().unwrap_or_else(|| {
            if repo == hub::DEFAULT_REPO { hub::DEFAULT_REVISION.into() } else { "main".into() }
        });
        HubModel::parse(&format!("{repo}@{revision}"), &endpoint).map_err(option_error)
    }

    fn download(&self) -> Result<DownloadOptions, JsValue> {
        let mut options = DownloadOptions::default();
        if let Some(bytes) = self.chunk_bytes {
            if !(1..=64 << 20).contains(&bytes) {
                return Err(option_error(format!("chunkBytes must be between 1 and 64 MiB, not {bytes}")));
            }
            options.chunk_bytes = bytes;
        }
        if let Some(parallel) = self.parallel {
            options.parallel = parallel.clamp(1, 16);
        }
        Ok(options)
    }
}

/// What loading did, for reports: the model, where the weights came from, sizes and memory.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadSummary {
    pub model: HubModel,
    pub commit: Option<String>,
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

/// Calls a JavaScript callback with a serialisable value, ignoring what it returns.
fn notify(callback: &JsValue, value: &impl serde::Serialize) -> Option<JsValue> {
    let callback: &Function = callback.dyn_ref()?;
    let serializer = serde_wasm_bindgen::Serializer::json_compatible();
    let value = value.serialize(&serializer).ok()?;
    callback.call1(&JsValue::NULL, &value).ok()
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
        let model = options.hub_model()?;
        let download = options.download()?;
        let dtype = match options.dtype.as_deref() {
            None => DTypeChoice::Auto,
            Some(s) => s.parse().map_err(option_error)?,
        };
        let gpu = gpu::init(&GpuOptions { dtype, ..Default::default() }).await.map_err(gpu_error)?;
        let storage = if gpu.capabilities.compute_dtype == ComputeDType::F16 { Storage::F16 } else { Storage::AsStored };
        let store = match options.cache.unwrap_or(true) {
            true => Some(open_store(options.database.as_deref()).await?),
            false => None,
        };
        Ok(Self { gpu, store, model, storage, download })
    }

    fn cache<'a>(&'a self, fetch: &'a BrowserFetch) -> HubCache<'a> {
        HubCache {
            fetch,
            store: self.store.as_ref().map(|s| s as &dyn Store),
            model: self.model.clone(),
            storage: self.storage,
            options: self.download,
        }
    }
}

async fn open_store(database: Option<&str>) -> Result<IdbStore, JsValue> {
    IdbStore::open(database.unwrap_or("imvar")).await.map_err(|e| error("StorageError", e))
}

/// Downloads (or finds cached) and loads the model, reporting progress through `on_event`.
pub async fn load_pipeline(options: &LoadOptions, on_event: &dyn Fn(&CacheEvent)) -> Result<(ImageVariationPipeline, LoadSummary), JsValue> {
    let session = Session::open(options).await?;
    let fetch = BrowserFetch;
    let prepared = session.cache(&fetch).prepare(on_event).await.map_err(cache_error)?;
    let totals = prepared.manifest.files.iter().map(|f| {
        let bytes = f.tensors.iter().map(|t| prepared.manifest.stored_len(t)).sum();
        (f.component.clone(), bytes)
    });
    let mut tracker = Tracker::new(Phase::Load, totals);
    let mut last = std::collections::BTreeMap::<String, u64>::new();
    let base = crate::heap::current();
    crate::heap::reset_peak();
    let mut on_load = |p: &crate::pipeline::LoadProgress| {
        let before = last.insert(p.component.clone(), p.done).unwrap_or(0);
        on_event(&tracker.advance(&p.component, p.done - before));
    };
    let (pipeline, device) = ImageVariationPipeline::load_with(&prepared, &session.gpu, WeightsFrom::Files, &mut on_load)
        .await
        .map_err(pipeline_error)?;
    let summary = LoadSummary {
        model: prepared.manifest.model.clone(),
        commit: prepared.manifest.commit.clone(),
        cached: session.store.is_some(),
        stored_bytes: prepared.manifest.stored_bytes(),
        device,
        heap_peak_bytes: (crate::heap::peak() - base) as u64,
        wasm_memory_bytes: wasm_bindgen::memory().unchecked_into::<js_sys::WebAssembly::Memory>().buffer().unchecked_into::<js_sys::ArrayBuffer>().byte_length() as u64,
        capabilities: session.gpu.capabilities.clone(),
    };
    Ok((pipeline, summary))
}

fn parse_load_options(options: JsValue) -> Result<LoadOptions, JsValue> {
    if options.is_undefined() || options.is_null() { Ok(LoadOptions::default()) } else { serde_wasm_bindgen::from_value(options).map_err(option_error) }
}

fn to_js(value: &impl Serialize) -> Result<JsValue, JsValue> {
    value.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(option_error)
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

/// `generate` options (camelCase in JavaScript).
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct GenerateOptionsJs {
    n: Option<usize>,
    steps: Option<usize>,
    guidance: Option<f32>,
    /// An integer in [0, 2^53); random when absent.
    seed: Option<f64>,
    scheduler: Option<String>,
    width: Option<usize>,
    height: Option<usize>,
    /// Called after every step with `{ step, total, elapsedSeconds, etaSeconds, first,
    /// previews: [{ width, height, rgb }] }`.
    #[serde(with = "serde_wasm_bindgen::preserve")]
    on_step: JsValue,
    /// An `AbortSignal`: the run stops after the step in progress.
    #[serde(with = "serde_wasm_bindgen::preserve")]
    signal: JsValue,
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

impl GenerateOptionsJs {
    fn options(&self, pipeline: &ImageVariationPipeline) -> Result<GenerateOptions, JsValue> {
        let seed = match self.seed {
            None => random_seed(),
            Some(s) if s >= 0.0 && s.fract() == 0.0 && s < 9007199254740992.0 => s as u64,
            Some(s) => return Err(option_error(format!("seed must be a whole number from 0 to 2^53, not {s}"))),
        };
        let scheduler = self.scheduler.as_deref().map(str::parse).transpose().map_err(option_error)?;
        let size = match (self.width, self.height) {
            (None, None) => None,
            (w, h) => {
                let (dw, dh) = pipeline.default_size();
                Some((w.unwrap_or(dw), h.unwrap_or(dh)))
            }
        };
        let defaults = GenerateOptions::default();
        Ok(GenerateOptions {
            n: self.n.unwrap_or(1),
            steps: self.steps.unwrap_or(defaults.steps),
            guidance: self.guidance.unwrap_or(defaults.guidance),
            seed,
            scheduler,
            size,
            max_batch: None,
            previews: self.on_step.is_function(),
        })
    }
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
        let options = parse_load_options(options)?;
        let on_progress = options.on_progress.clone();
        let (pipeline, summary) = load_pipeline(&options, &|event| {
            notify(&on_progress, event);
        })
        .await?;
        Ok(ImageVariations { pipeline: Rc::new(pipeline), summary: to_js(&summary)? })
    }

    /// What `load` with these options would download, without downloading it: `{
    /// downloadBytes, cachedBytes, storedBytes, availableBytes }` (available: the storage
    /// estimate's room, or null). Reads the repo's index, configs and weight headers.
    #[wasm_bindgen(unchecked_return_type = "PendingDownload")]
    pub async fn pending(#[wasm_bindgen(unchecked_param_type = "LoadOptions | undefined")] options: JsValue) -> Result<JsValue, JsValue> {
        let session = Session::open(&parse_load_options(options)?).await?;
        let fetch = BrowserFetch;
        let pending = session.cache(&fetch).pending().await.map_err(cache_error)?;
        let report = to_js(&pending)?;
        let available = idb_store::estimate().await.map(|(usage, quota)| quota.saturating_sub(usage) as f64);
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
            let options: GenerateOptionsJs =
                if options.is_undefined() { GenerateOptionsJs::default() } else { serde_wasm_bindgen::from_value(options).map_err(option_error)? };
            let generate = options.options(&pipeline)?;
            let picture = crate::preprocess::decode(&image).map_err(|e| pipeline_error(e.into()))?;
            let mut on_step = |p: crate::pipeline::Progress| {
                if let Some(callback) = options.on_step.dyn_ref::<Function>() {
                    let _ = callback.call1(&JsValue::NULL, &step_report(&p));
                }
                !aborted(&options.signal)
            };
            let variations = pipeline.generate(&picture, &generate, &mut on_step).await.map_err(pipeline_error)?;
            let results = js_sys::Array::new();
            for v in variations {
                let result = js_sys::Object::new();
                set(&result, "png", Uint8Array::from(crate::preprocess::encode_png(&v.image).as_slice()));
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
    let store = open_store(database.as_deref()).await?;
    let list = weight_cache::list(&store).await.map_err(|e| error("StorageError", e))?;
    to_js(&list)
}

/// Deletes a cached model: `{ endpoint, model, revision, database }` as for `load`.
#[wasm_bindgen(js_name = deleteCachedModel)]
pub async fn delete_cached_model(options: JsValue) -> Result<(), JsValue> {
    let options = parse_load_options(options)?;
    let store = open_store(options.database.as_deref()).await?;
    weight_cache::delete(&store, &options.hub_model()?).await.map_err(|e| error("StorageError", e))
}

/// Storage use of this origin: `{ usage, quota }` in bytes, or null where unknown.
#[wasm_bindgen(js_name = storageEstimate)]
pub async fn storage_estimate() -> JsValue {
    match idb_store::estimate().await {
        Some((usage, quota)) => {
            let object = js_sys::Object::new();
            set(&object, "usage", usage as f64);
            set(&object, "quota", quota as f64);
            object.into()
        }
        None => JsValue::NULL,
    }
}
