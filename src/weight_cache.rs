//! The model from the Hub, downloaded once: a plan read from the repo itself (model index,
//! configs, safetensors headers by Range), then only the tensors the pipeline needs, in bounded
//! single-range chunks, a few at a time, converted to the storage dtype and kept in a `Store`
//! (IndexedDB in the browser) one checksummed record per tensor plus a manifest per model.
//! A reload resumes with what is missing; a changed ETag invalidates a file; a damaged record is
//! fetched again when read. Without a store the tensors stream from the network to the device.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use half::slice::HalfFloatSliceExt;
use safetensors::Dtype;
use web_time::Instant;

use crate::hub::{self, Fetch, HubError, HubModel, Retry};
use crate::model_files::{ModelSource, weights_file};
use crate::pipeline::{COMPONENTS, unused_prefixes};
use crate::weights::{LoadError, LocalFuture, RawTensor, SafetensorsIndex, TensorInfo, TensorSource, is_unused};

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum StoreError {
    #[error("this site's storage quota in the browser is full")]
    Quota,
    #[error("storage error: {0}")]
    Other(String),
}

/// Durable key → bytes records (IndexedDB in the browser, memory in tests).
pub trait Store {
    fn get<'a>(&'a self, key: &'a str) -> LocalFuture<'a, Result<Option<Vec<u8>>, StoreError>>;
    /// Writes all `records` in one transaction: every record lands whole, or none does.
    fn put(&self, records: Vec<(String, Vec<u8>)>) -> LocalFuture<'_, Result<(), StoreError>>;
    /// Keys starting with `prefix`.
    fn keys<'a>(&'a self, prefix: &'a str) -> LocalFuture<'a, Result<Vec<String>, StoreError>>;
    /// Deletes every record whose key starts with `prefix`.
    fn delete<'a>(&'a self, prefix: &'a str) -> LocalFuture<'a, Result<(), StoreError>>;
    /// Bytes that may still be stored, where the platform tells.
    fn available(&self) -> LocalFuture<'_, Option<u64>>;
    /// Holds `name` exclusively (across tabs in the browser) until the guard is dropped.
    fn exclusive<'a>(&'a self, name: &'a str) -> LocalFuture<'a, Box<dyn std::any::Any>>;
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum CacheError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(transparent)]
    Load(#[from] LoadError),
    /// `available`: what the storage estimate allowed; `None` when a write was refused anyway.
    #[error(
        "not enough storage to keep the model in this browser: {} more are needed, {}; the {} \
         already cached are kept. Free some space, or load without caching.",
        human_bytes(*needed),
        available.map_or("and the browser refused to store more".into(), |a| format!("{} are available", human_bytes(a))),
        human_bytes(*stored)
    )]
    Quota { needed: u64, available: Option<u64>, stored: u64 },
    #[error(transparent)]
    Store(StoreError),
    #[error("offline, and {0} is not fully cached")]
    Offline(String),
}

/// Bytes for people: "4.3 MB", "2.4 GB" (decimal units, as browsers and disks count).
pub fn human_bytes(bytes: u64) -> String {
    let units = ["bytes", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < units.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} bytes") } else { format!("{value:.1} {}", units[unit]) }
}

/// How weights are kept: fp16 for an f16 device (fp32 tensors rounded), else as the file has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    F16,
    AsStored,
}

impl Storage {
    fn dtype_of(self, stored: Dtype) -> Dtype {
        match (self, stored) {
            (Storage::F16, Dtype::F32) => Dtype::F16,
            _ => stored,
        }
    }
}

/// fp32 little-endian bytes to fp16 ones, rounding to nearest even (the `half` crate's
/// conversion, in bulk).
pub fn f32_to_f16_bytes(bytes: &[u8]) -> Vec<u8> {
    let values: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let mut halves = vec![half::f16::ZERO; values.len()];
    halves.convert_from_f32_slice(&values);
    halves.iter().flat_map(|h| h.to_le_bytes()).collect()
}

fn convert(storage: Storage, dtype: Dtype, bytes: Vec<u8>) -> Vec<u8> {
    if storage.dtype_of(dtype) == dtype { bytes } else { f32_to_f16_bytes(&bytes) }
}

/// A record is its payload followed by the payload's CRC-32, so a damaged or cut record is
/// recognised on read.
fn seal(mut payload: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&payload);
    payload.extend_from_slice(&crc.to_le_bytes());
    payload
}

/// Whether a stored record is complete and undamaged (its checksum holds).
pub fn is_whole(record: &[u8]) -> bool {
    unseal(record.to_vec()).is_some()
}

fn unseal(mut record: Vec<u8>) -> Option<Vec<u8>> {
    let split = record.len().checked_sub(4)?;
    let crc = u32::from_le_bytes(record[split..].try_into().unwrap());
    record.truncate(split);
    (crc32fast::hash(&record) == crc).then_some(record)
}

/// One tensor of a weight file: where it lies and how it is kept.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TensorEntry {
    /// Name, shape and dtype in the file.
    pub info: TensorInfo,
    /// Byte range in the file.
    pub start: u64,
    pub end: u64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FileEntry {
    pub component: String,
    pub path: String,
    pub etag: Option<String>,
    pub size: u64,
    /// CRC-32 of the safetensors header: with the size, tells a changed file where the ETag is
    /// hidden (CORS) or absent.
    pub header_crc: u32,
    /// The tensors imvar needs, in file order.
    pub tensors: Vec<TensorEntry>,
}

/// What is (to be) cached of one model.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub model: HubModel,
    pub commit: Option<String>,
    pub storage: Storage,
    /// Text files (model index, configs), cached whole.
    pub texts: Vec<String>,
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// Bytes the cached tensors take.
    pub fn stored_bytes(&self) -> u64 {
        self.files.iter().flat_map(|f| &f.tensors).map(|t| self.stored_len(t)).sum()
    }

    /// Bytes one tensor takes in the cache.
    pub fn stored_len(&self, tensor: &TensorEntry) -> u64 {
        let info = TensorInfo { dtype: self.storage.dtype_of(tensor.info.dtype), ..tensor.info.clone() };
        info.byte_len()
    }

    fn id(&self) -> String {
        cache_id(&self.model, self.storage)
    }
}

fn cache_id(model: &HubModel, storage: Storage) -> String {
    format!("{}#{}", model.key(), serde_json::to_value(storage).unwrap().as_str().unwrap())
}

const MANIFEST: &str = "manifest\n";

fn manifest_key(id: &str) -> String {
    format!("{MANIFEST}{id}")
}

const TEXT: &str = "text\n";
const TENSOR: &str = "tensor\n";

fn text_key(id: &str, path: &str) -> String {
    format!("{TEXT}{id}\n{path}")
}

fn tensor_prefix(id: &str, path: &str) -> String {
    format!("{TENSOR}{id}\n{path}\n")
}

/// The text files the pipeline reads.
pub fn text_paths() -> Vec<String> {
    let mut paths = vec!["model_index.json".to_string(), "scheduler/scheduler_config.json".to_string()];
    paths.extend(COMPONENTS.iter().map(|(c, _)| format!("{c}/config.json")));
    paths
}

/// Which phase progress reports are about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Fetching tensors (and converting them) into the cache.
    Download,
    /// Moving tensors from the cache (or the network) to the GPU.
    Load,
}

/// A progress report: bytes of one component and of all, with speed and ETA for the phase.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEvent {
    pub phase: Phase,
    pub component: String,
    pub done: u64,
    pub total: u64,
    pub overall_done: u64,
    pub overall_total: u64,
    pub bytes_per_second: f64,
    pub eta_seconds: Option<f64>,
}

/// Counts bytes per component for one phase and turns them into `CacheEvent`s.
pub struct Tracker {
    phase: Phase,
    components: BTreeMap<String, (u64, u64)>,
    started: Instant,
}

impl Tracker {
    pub fn new(phase: Phase, totals: impl IntoIterator<Item = (String, u64)>) -> Self {
        Self { phase, components: totals.into_iter().map(|(c, t)| (c, (0, t))).collect(), started: Instant::now() }
    }

    /// Records `bytes` more done for `component`.
    pub fn advance(&mut self, component: &str, bytes: u64) -> CacheEvent {
        let entry = self.components.entry(component.into()).or_default();
        entry.0 += bytes;
        let (done, total) = *entry;
        let (overall_done, overall_total) = self.components.values().fold((0, 0), |(d, t), (a, b)| (d + a, t + b));
        let seconds = self.started.elapsed().as_secs_f64();
        let bytes_per_second = if seconds > 0.0 { overall_done as f64 / seconds } else { 0.0 };
        let eta_seconds = (bytes_per_second > 0.0).then(|| (overall_total - overall_done) as f64 / bytes_per_second);
        CacheEvent {
            phase: self.phase,
            component: component.into(),
            done,
            total,
            overall_done,
            overall_total,
            bytes_per_second,
            eta_seconds,
        }
    }
}

/// Tuning of the downloads.
#[derive(Clone, Copy, Debug)]
pub struct DownloadOptions {
    /// Target bytes per request; one tensor larger than this goes alone.
    pub chunk_bytes: u64,
    /// Requests in flight at once.
    pub parallel: usize,
    pub retry: Retry,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        Self { chunk_bytes: 16 << 20, parallel: 4, retry: Retry::default() }
    }
}

/// Consecutive needed tensors of one file fetched with one Range request.
struct Chunk {
    file: usize,
    tensors: Vec<TensorEntry>,
}

impl Chunk {
    fn range(&self) -> Range<u64> {
        self.tensors[0].start..self.tensors.last().unwrap().end
    }
}

/// Groups `tensors` (file order) into runs that are contiguous in the file and at most
/// `limit` bytes long (a larger tensor alone).
fn chunks(file: usize, tensors: Vec<TensorEntry>, limit: u64) -> Vec<Chunk> {
    let mut out: Vec<Chunk> = Vec::new();
    for tensor in tensors {
        match out.last_mut() {
            Some(chunk) if chunk.file == file && chunk.range().end == tensor.start && tensor.end - chunk.range().start <= limit => {
                chunk.tensors.push(tensor)
            }
            _ => out.push(Chunk { file, tensors: vec![tensor] }),
        }
    }
    out
}

/// A model from a Hub endpoint, kept in `store` (or streamed when `store` is `None`).
pub struct HubCache<'a> {
    pub fetch: &'a dyn Fetch,
    pub store: Option<&'a dyn Store>,
    pub model: HubModel,
    pub storage: Storage,
    pub options: DownloadOptions,
}

impl<'a> HubCache<'a> {
    /// Makes sure everything the pipeline needs is cached (downloading what is missing, under an
    /// exclusive lock per model so two tabs never fetch the same bytes) and returns the model
    /// as a `ModelSource`. Offline, a complete cache is used as it is.
    pub async fn prepare(&self, on_event: &dyn Fn(&CacheEvent)) -> Result<CachedModel<'a>, CacheError> {
        let _lock = match self.store {
            Some(store) => Some(store.exclusive(&format!("imvar download {}", cache_id(&self.model, self.storage))).await),
            None => None,
        };
        let (manifest, online) = self.current_manifest().await?;
        if let Some(store) = self.store {
            if online {
                self.download_missing(store, &manifest, on_event).await?;
            } else if !self.missing(store, &manifest).await?.is_empty() {
                return Err(CacheError::Offline(self.model.key()));
            }
        }
        let texts = self.read_texts(&manifest).await.map_err(|e| if online { e } else { CacheError::Offline(self.model.key()) })?;
        Ok(CachedModel { cache: self.clone_ref(), manifest, texts, chunk: RefCell::new(None) })
    }

    /// What loading would download: the plan is read (headers only), nothing else.
    pub async fn pending(&self) -> Result<Pending, CacheError> {
        let (manifest, _) = self.current_manifest().await?;
        let missing = match self.store {
            Some(store) => self.missing(store, &manifest).await?,
            None => manifest.files.iter().cloned().enumerate().map(|(i, f)| (i, f.tensors)).collect(),
        };
        let tensors = || missing.iter().flat_map(|(_, t)| t);
        let to_store: u64 = tensors().map(|t| manifest.stored_len(t)).sum();
        Ok(Pending {
            download_bytes: tensors().map(|t| t.end - t.start).sum(),
            cached_bytes: manifest.stored_bytes() - to_store,
            stored_bytes: manifest.stored_bytes(),
        })
    }

    fn clone_ref(&self) -> HubCache<'a> {
        HubCache { fetch: self.fetch, store: self.store, model: self.model.clone(), storage: self.storage, options: self.options }
    }

    async fn cached_manifest(&self) -> Result<Option<Manifest>, CacheError> {
        let Some(store) = self.store else { return Ok(None) };
        let record = store.get(&manifest_key(&cache_id(&self.model, self.storage))).await.map_err(CacheError::Store)?;
        Ok(record.and_then(unseal).and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// The manifest, re-planned when the repo's commit moved (`true`: the Hub answered), or
    /// the cached one when the Hub is unreachable (`false`).
    async fn current_manifest(&self) -> Result<(Manifest, bool), CacheError> {
        let cached = self.cached_manifest().await?;
        // Few retries here: when this fails the network is down, and a complete cache will do.
        let retry = Retry { attempts: 3, ..self.options.retry };
        match self.text(&self.model.url("model_index.json"), retry).await {
            Ok(index) => match cached {
                Some(m) if m.commit.is_some() && m.commit == index.commit => Ok((m, true)),
                old => Ok((self.plan(old, index).await?, true)),
            },
            Err(e) if e.is_offline() => cached.map(|m| (m, false)).ok_or(e.into()),
            Err(e) => Err(e.into()),
        }
    }

    async fn text(&self, url: &str, retry: Retry) -> Result<Text, HubError> {
        let download = hub::download(self.fetch, url, None, retry).await?;
        let body = String::from_utf8(download.bytes).map_err(|_| HubError::Invalid(format!("{url}: not UTF-8")))?;
        Ok(Text { body, commit: download.commit })
    }

    /// Reads the repo: configs, each component's weight file (the fp16 variant where there is
    /// one) and its header. Files whose ETag changed since `old` lose their cached records.
    async fn plan(&self, old: Option<Manifest>, index: Text) -> Result<Manifest, CacheError> {
        let mut texts = vec![("model_index.json".to_string(), index.body)];
        for path in text_paths().into_iter().skip(1) {
            texts.push((path.clone(), self.text(&self.model.url(&path), self.options.retry).await?.body));
        }
        let mut files = Vec::new();
        for (component, _) in COMPONENTS {
            files.push(self.plan_file(component).await?);
        }
        let manifest = Manifest { model: self.model.clone(), commit: index.commit, storage: self.storage, texts: text_paths(), files };
        if let Some(store) = self.store {
            let id = manifest.id();
            for file in &manifest.files {
                let previous = old.as_ref().and_then(|m| m.files.iter().find(|f| f.path == file.path));
                let same = |p: &&FileEntry| p.etag == file.etag && p.size == file.size && p.header_crc == file.header_crc;
                if !previous.is_some_and(|p| same(&p)) {
                    store.delete(&tensor_prefix(&id, &file.path)).await.map_err(CacheError::Store)?;
                }
            }
            // Files the repo no longer uses (say, an fp16 variant appeared): free their space.
            for gone in old.iter().flat_map(|m| &m.files).filter(|f| !manifest.files.iter().any(|n| n.path == f.path)) {
                store.delete(&tensor_prefix(&id, &gone.path)).await.map_err(CacheError::Store)?;
            }
            let mut records: Vec<_> = texts.into_iter().map(|(p, t)| (text_key(&id, &p), seal(t.into_bytes()))).collect();
            records.push((manifest_key(&id), seal(serde_json::to_vec(&manifest).unwrap())));
            match store.put(records).await {
                // No room even for the plan: the download that follows says how much is needed.
                Ok(()) | Err(StoreError::Quota) => {}
                Err(e) => return Err(CacheError::Store(e)),
            }
        }
        Ok(manifest)
    }

    async fn plan_file(&self, component: &str) -> Result<FileEntry, CacheError> {
        let (path, first) = weights_file_of(self.fetch, &self.model, component, self.options.retry).await?;
        let len = SafetensorsIndex::header_len(first.bytes.as_slice().try_into().map_err(|_| truncated(&path))?, &path)?;
        let header = self.range(&path, 8..8 + len).await?;
        let index = SafetensorsIndex::parse(&header.bytes, &path)?;
        let unused = unused_prefixes(component);
        let mut tensors = Vec::new();
        for info in index.tensors().into_iter().filter(|t| !is_unused(&t.name, unused)) {
            let (_, _, range) = index.locate(&info.name)?;
            tensors.push(TensorEntry { info, start: range.start, end: range.end });
        }
        let size = first.file_size.unwrap_or(0);
        let header_crc = crc32fast::hash(&header.bytes);
        Ok(FileEntry { component: component.into(), path, etag: first.etag, size, header_crc, tensors })
    }

    async fn range(&self, path: &str, range: Range<u64>) -> Result<hub::Download, HubError> {
        hub::download(self.fetch, &self.model.url(path), Some(range), self.options.retry).await
    }

    async fn read_texts(&self, manifest: &Manifest) -> Result<BTreeMap<String, String>, CacheError> {
        let mut texts = BTreeMap::new();
        for path in &manifest.texts {
            let cached = match self.store {
                Some(store) => store.get(&text_key(&manifest.id(), path)).await.map_err(CacheError::Store)?.and_then(unseal),
                None => None,
            };
            let text = match cached.and_then(|b| String::from_utf8(b).ok()) {
                Some(text) => text,
                None => self.text(&self.model.url(path), self.options.retry).await?.body,
            };
            texts.insert(path.clone(), text);
        }
        Ok(texts)
    }

    /// Tensors of `manifest` without a record, per file index.
    async fn missing(&self, store: &dyn Store, manifest: &Manifest) -> Result<Vec<(usize, Vec<TensorEntry>)>, CacheError> {
        let mut missing = Vec::new();
        for (i, file) in manifest.files.iter().enumerate() {
            let prefix = tensor_prefix(&manifest.id(), &file.path);
            let have: BTreeSet<String> = store.keys(&prefix).await.map_err(CacheError::Store)?.into_iter().collect();
            let absent: Vec<TensorEntry> =
                file.tensors.iter().filter(|t| !have.contains(&format!("{prefix}{}", t.info.name))).cloned().collect();
            if !absent.is_empty() {
                missing.push((i, absent));
            }
        }
        Ok(missing)
    }

    async fn download_missing(&self, store: &dyn Store, manifest: &Manifest, on_event: &dyn Fn(&CacheEvent)) -> Result<(), CacheError> {
        let missing = self.missing(store, manifest).await?;
        let needed: u64 = missing.iter().flat_map(|(_, t)| t).map(|t| manifest.stored_len(t)).sum();
        if needed == 0 {
            return Ok(());
        }
        if let Some(available) = store.available().await
            && available < needed
        {
            return Err(CacheError::Quota { needed, available: Some(available), stored: manifest.stored_bytes() - needed });
        }
        let totals = missing.iter().map(|(i, t)| (manifest.files[*i].component.clone(), t.iter().map(|t| manifest.stored_len(t)).sum()));
        let tracker = RefCell::new(Tracker::new(Phase::Download, totals));
        let queue: RefCell<Vec<Chunk>> =
            RefCell::new(missing.into_iter().flat_map(|(i, t)| chunks(i, t, self.options.chunk_bytes)).rev().collect());
        let failure = RefCell::new(None);
        let worker = || async {
            loop {
                if failure.borrow().is_some() {
                    return;
                }
                let Some(chunk) = queue.borrow_mut().pop() else { return };
                match self.download_chunk(store, manifest, &chunk).await {
                    Ok(bytes) => on_event(&tracker.borrow_mut().advance(&manifest.files[chunk.file].component, bytes)),
                    Err(e) => {
                        failure.borrow_mut().get_or_insert(e);
                    }
                }
            }
        };
        futures_util::future::join_all((0..self.options.parallel.max(1)).map(|_| worker())).await;
        match failure.into_inner() {
            None => Ok(()),
            Some(CacheError::Store(StoreError::Quota)) => {
                let left = self.missing(store, manifest).await?;
                let needed = left.iter().flat_map(|(_, t)| t).map(|t| manifest.stored_len(t)).sum();
                Err(CacheError::Quota { needed, available: None, stored: manifest.stored_bytes() - needed })
            }
            Some(e) => Err(e),
        }
    }

    /// Fetches one chunk, converts its tensors and stores them in one transaction; returns
    /// the bytes stored.
    async fn download_chunk(&self, store: &dyn Store, manifest: &Manifest, chunk: &Chunk) -> Result<u64, CacheError> {
        let file = &manifest.files[chunk.file];
        let range = chunk.range();
        let bytes = self.range(&file.path, range.clone()).await?.bytes;
        let prefix = tensor_prefix(&manifest.id(), &file.path);
        let mut stored = 0;
        let records = chunk
            .tensors
            .iter()
            .map(|t| {
                let raw = bytes[(t.start - range.start) as usize..(t.end - range.start) as usize].to_vec();
                let payload = convert(self.storage, t.info.dtype, raw);
                stored += payload.len() as u64;
                (format!("{prefix}{}", t.info.name), seal(payload))
            })
            .collect();
        drop(bytes);
        store.put(records).await.map_err(CacheError::Store)?;
        Ok(stored)
    }
}

/// Sizes before loading: what is left to download, what is cached, what all takes.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    /// Bytes to fetch from the Hub (file bytes: fp32 tensors count 4 bytes per value).
    pub download_bytes: u64,
    /// Bytes already in the cache.
    pub cached_bytes: u64,
    /// Bytes the whole model takes in the cache.
    pub stored_bytes: u64,
}

/// A component's weight file in the repo, the `fp16` variant where there is one, with its
/// first 8 bytes (the safetensors header length) and what the answer said about the file.
pub async fn weights_file_of(fetch: &dyn Fetch, model: &HubModel, component: &str, retry: Retry) -> Result<(String, hub::Download), HubError> {
    let variant = weights_file(component, Some("fp16"));
    match hub::download(fetch, &model.url(&variant), Some(0..8), retry).await {
        Ok(first) => Ok((variant, first)),
        Err(HubError::NotFound { .. }) => {
            let plain = weights_file(component, None);
            let first = hub::download(fetch, &model.url(&plain), Some(0..8), retry).await?;
            Ok((plain, first))
        }
        Err(e) => Err(e),
    }
}

struct Text {
    body: String,
    commit: Option<String>,
}

fn truncated(path: &str) -> LoadError {
    LoadError::Io(format!("{path}: the file is truncated"))
}

/// A prepared model: configs in memory, tensors read one at a time from the store (damaged
/// records fetched again) or, without a store, from the network in chunks.
pub struct CachedModel<'a> {
    cache: HubCache<'a>,
    pub manifest: Manifest,
    texts: BTreeMap<String, String>,
    /// Without a store: the last chunk fetched (file index, range, bytes).
    chunk: RefCell<Option<(usize, Range<u64>, Vec<u8>)>>,
}

impl CachedModel<'_> {
    async fn tensor(&self, file: usize, name: &str) -> Result<RawTensor, LoadError> {
        let entry = &self.manifest.files[file];
        let tensor = entry.tensors.iter().find(|t| t.info.name == name).ok_or_else(|| LoadError::Io(format!("{name}: not in the plan")))?;
        let dtype = self.manifest.storage.dtype_of(tensor.info.dtype);
        let shape = tensor.info.shape.clone();
        let Some(store) = self.cache.store else {
            let bytes = self.streamed(file, tensor).await?;
            return Ok(RawTensor { shape, dtype, bytes: convert(self.manifest.storage, tensor.info.dtype, bytes) });
        };
        let key = format!("{}{name}", tensor_prefix(&self.manifest.id(), &entry.path));
        let record = store.get(&key).await.map_err(|e| LoadError::Io(e.to_string()))?;
        let expected = self.manifest.stored_len(tensor) as usize;
        if let Some(bytes) = record.and_then(unseal).filter(|b| b.len() == expected) {
            return Ok(RawTensor { shape, dtype, bytes });
        }
        // Damaged or missing: fetch it again and repair the record.
        let url = self.cache.model.url(&entry.path);
        let fetched = hub::download(self.cache.fetch, &url, Some(tensor.start..tensor.end), self.cache.options.retry)
            .await
            .map_err(|e| LoadError::Io(format!("{name} needs to be fetched again: {e}")))?;
        let bytes = convert(self.manifest.storage, tensor.info.dtype, fetched.bytes);
        store.put(vec![(key, seal(bytes.clone()))]).await.map_err(|e| LoadError::Io(e.to_string()))?;
        Ok(RawTensor { shape, dtype, bytes })
    }

    /// A tensor's file bytes through a one-chunk buffer: the chunk holding it and the tensors
    /// after it, so reading in file order makes one request per chunk.
    async fn streamed(&self, file: usize, tensor: &TensorEntry) -> Result<Vec<u8>, LoadError> {
        let within = |(f, r, _): &(usize, Range<u64>, Vec<u8>)| *f == file && r.start <= tensor.start && tensor.end <= r.end;
        if !self.chunk.borrow().as_ref().is_some_and(within) {
            self.chunk.borrow_mut().take();
            let tensors = self.manifest.files[file].tensors.iter().filter(|t| t.start >= tensor.start).cloned().collect();
            let range = chunks(file, tensors, self.cache.options.chunk_bytes)[0].range();
            let bytes = self.cache.range(&self.manifest.files[file].path, range.clone()).await.map_err(|e| LoadError::Io(e.to_string()))?.bytes;
            *self.chunk.borrow_mut() = Some((file, range, bytes));
        }
        let chunk = self.chunk.borrow();
        let (_, range, bytes) = chunk.as_ref().unwrap();
        Ok(bytes[(tensor.start - range.start) as usize..(tensor.end - range.start) as usize].to_vec())
    }
}

impl ModelSource for CachedModel<'_> {
    fn text<'a>(&'a self, path: &'a str) -> LocalFuture<'a, Result<String, LoadError>> {
        let text = self.texts.get(path).cloned().ok_or_else(|| LoadError::Io(format!("{path}: not in the model")));
        Box::pin(std::future::ready(text))
    }

    fn tensors<'a>(&'a self, component: &'a str) -> LocalFuture<'a, Result<Box<dyn TensorSource + 'a>, LoadError>> {
        let file = self.manifest.files.iter().position(|f| f.component == component);
        let source = file
            .map(|file| Box::new(CachedTensors { model: self, file }) as Box<dyn TensorSource>)
            .ok_or_else(|| LoadError::Io(format!("{component}: not in the model")));
        Box::pin(std::future::ready(source))
    }
}

struct CachedTensors<'m, 'a> {
    model: &'m CachedModel<'a>,
    file: usize,
}

impl TensorSource for CachedTensors<'_, '_> {
    /// Only the tensors the pipeline needs were planned, in file order, in the storage dtype.
    fn tensors(&self) -> Vec<TensorInfo> {
        let storage = self.model.manifest.storage;
        self.model.manifest.files[self.file]
            .tensors
            .iter()
            .map(|t| TensorInfo { dtype: storage.dtype_of(t.info.dtype), ..t.info.clone() })
            .collect()
    }

    fn read<'a>(&'a mut self, name: &'a str) -> LocalFuture<'a, Result<RawTensor, LoadError>> {
        Box::pin(self.model.tensor(self.file, name))
    }
}

/// A model's cache entry, for listings.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedEntry {
    pub model: HubModel,
    pub storage: Storage,
    pub commit: Option<String>,
    pub bytes: u64,
}

/// Every model with a manifest in `store`.
pub async fn list(store: &dyn Store) -> Result<Vec<CachedEntry>, StoreError> {
    let mut entries = Vec::new();
    for key in store.keys(MANIFEST).await? {
        let Some(manifest) = store.get(&key).await?.and_then(unseal).and_then(|b| serde_json::from_slice::<Manifest>(&b).ok()) else {
            continue;
        };
        entries.push(CachedEntry { bytes: manifest.stored_bytes(), model: manifest.model, storage: manifest.storage, commit: manifest.commit });
    }
    Ok(entries)
}

/// Deletes everything cached of `model` (every storage dtype).
pub async fn delete(store: &dyn Store, model: &HubModel) -> Result<(), StoreError> {
    for storage in [Storage::F16, Storage::AsStored] {
        let id = cache_id(model, storage);
        for prefix in [format!("{TENSOR}{id}\n"), format!("{TEXT}{id}\n"), manifest_key(&id)] {
            store.delete(&prefix).await?;
        }
    }
    Ok(())
}

/// Records in memory, with an optional byte limit that answers writes like a full quota, and
/// what it reports as available (`None`: unknown, as where there is no storage estimate).
#[derive(Default)]
pub struct MemoryStore {
    pub records: RefCell<BTreeMap<String, Vec<u8>>>,
    pub limit: Option<u64>,
    pub estimate: Option<u64>,
}

impl MemoryStore {
    fn used(&self) -> u64 {
        self.records.borrow().values().map(|v| v.len() as u64).sum()
    }
}

impl Store for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> LocalFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(std::future::ready(Ok(self.records.borrow().get(key).cloned())))
    }

    fn put(&self, records: Vec<(String, Vec<u8>)>) -> LocalFuture<'_, Result<(), StoreError>> {
        let size: u64 = records.iter().map(|(_, v)| v.len() as u64).sum();
        let result = if self.limit.is_some_and(|limit| self.used() + size > limit) {
            Err(StoreError::Quota)
        } else {
            self.records.borrow_mut().extend(records);
            Ok(())
        };
        Box::pin(std::future::ready(result))
    }

    fn keys<'a>(&'a self, prefix: &'a str) -> LocalFuture<'a, Result<Vec<String>, StoreError>> {
        let keys = self.records.borrow().keys().filter(|k| k.starts_with(prefix)).cloned().collect();
        Box::pin(std::future::ready(Ok(keys)))
    }

    fn delete<'a>(&'a self, prefix: &'a str) -> LocalFuture<'a, Result<(), StoreError>> {
        self.records.borrow_mut().retain(|k, _| !k.starts_with(prefix));
        Box::pin(std::future::ready(Ok(())))
    }

    fn available(&self) -> LocalFuture<'_, Option<u64>> {
        Box::pin(std::future::ready(self.estimate))
    }

    fn exclusive<'a>(&'a self, _: &'a str) -> LocalFuture<'a, Box<dyn std::any::Any>> {
        Box::pin(std::future::ready(Box::new(()) as Box<dyn std::any::Any>))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::gpu_test;

    // Also in the browser, where `half` has no hardware conversion to lean on.
    gpu_test! {
        async fn f16_conversion_is_bit_exact_with_half_on_edge_values() {
            let mut values = vec![
                0.0f32, -0.0, 1.0, -1.0, 65504.0, 65520.0, 65519.99, -65520.0, 1e-8, 5.96e-8, 2.98e-8, 2.99e-8,
                6.1035156e-5, 6.1e-5, f32::MIN_POSITIVE, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1.0009765625,
                1.00048828125, 1.00146484375, 0.1, 3.14159, f32::MAX, f32::MIN,
            ];
            // Every f16 and the midpoints between neighbours (ties go to even).
            for bits in 0..=u16::MAX {
                let h = half::f16::from_bits(bits).to_f32();
                let next = half::f16::from_bits(bits.wrapping_add(1)).to_f32();
                values.extend([h, (h + next) / 2.0, f32::from_bits(h.to_bits() + 1)]);
            }
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let ours = f32_to_f16_bytes(&bytes);
            for (i, v) in values.iter().enumerate() {
                let expected = half::f16::from_f32(*v).to_bits();
                let got = u16::from_le_bytes([ours[2 * i], ours[2 * i + 1]]);
                let both_nan = half::f16::from_bits(got).is_nan() && half::f16::from_bits(expected).is_nan();
                assert!(got == expected || both_nan, "{v:e}: {got:#06x} != {expected:#06x}");
            }
            // Round to nearest even, checked by hand: 1 + 2^-11 lies halfway between 1 and 1 + 2^-10.
            assert_eq!(half::f16::from_bits(u16::from_le_bytes(f32_to_f16_bytes(&1.00048828125f32.to_le_bytes())[..].try_into().unwrap())).to_f32(), 1.0);
        }
    }

    #[test]
    fn records_detect_damage() {
        let record = seal(vec![1, 2, 3, 4, 5]);
        assert_eq!(unseal(record.clone()), Some(vec![1, 2, 3, 4, 5]));
        let mut flipped = record.clone();
        flipped[2] ^= 1;
        assert_eq!(unseal(flipped), None);
        assert_eq!(unseal(record[..record.len() - 1].to_vec()), None);
        assert_eq!(unseal(vec![1]), None);
    }

    #[test]
    fn chunks_are_contiguous_and_bounded() {
        let entry = |name: &str, start, end| TensorEntry {
            info: TensorInfo { name: name.into(), shape: vec![], dtype: Dtype::F32 },
            start,
            end,
        };
        let tensors = vec![entry("a", 0, 10), entry("b", 10, 20), entry("c", 20, 60), entry("d", 70, 80), entry("e", 80, 85)];
        let ranges: Vec<_> = chunks(0, tensors, 25).iter().map(Chunk::range).collect();
        assert_eq!(ranges, vec![0..20, 20..60, 70..85]);
    }
}
