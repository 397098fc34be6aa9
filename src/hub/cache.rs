//! The model from the Hub, downloaded once: a plan read from the repo itself (model index,
//! configs, safetensors headers by Range), then only the tensors the pipeline needs, in bounded
//! single-range chunks, a few at a time, converted to the storage dtype and kept in a `Store`
//! one checksummed record per tensor plus a manifest per model. A reload resumes with what is
//! missing; a changed ETag invalidates a file; a damaged record is fetched again when read.
//! Without a store the tensors stream from the network to the device.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use super::cached_model::CachedModel;
use super::manifest::{FileEntry, Manifest, Storage, TensorEntry, cache_id, convert, manifest_key, tensor_prefix, text_key, MANIFEST, TENSOR, TEXT};
use super::progress::{CacheEvent, Phase, Tracker};
use super::store::{Store, StoreError, seal, unseal};
use super::{Fetch, HubError, HubModel, Retry};
use crate::units::human_bytes;
use crate::weights::source::{text_paths, weights_file_candidates, PREFERRED_VARIANT};
use crate::weights::{COMPONENTS, LoadError, SafetensorsIndex, is_unused, unused_prefixes};

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum CacheError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(transparent)]
    Load(#[from] LoadError),
    /// `available`: what the storage estimate allowed; `None` when a write was refused anyway.
    #[error(
        "not enough storage to keep the model: {} more are needed, {}; the {} already cached \
         are kept. Free some space, or load without caching.",
        human_bytes(*needed),
        available.map_or("and the storage refused to take more".into(), |a| format!("{} are available", human_bytes(a))),
        human_bytes(*stored)
    )]
    Quota { needed: u64, available: Option<u64>, stored: u64 },
    #[error(transparent)]
    Store(StoreError),
    #[error("offline, and {0} is not fully cached")]
    Offline(String),
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
pub(super) struct Chunk {
    file: usize,
    tensors: Vec<TensorEntry>,
}

impl Chunk {
    pub(super) fn range(&self) -> Range<u64> {
        self.tensors[0].start..self.tensors.last().unwrap().end
    }
}

/// Groups `tensors` (file order) into runs that are contiguous in the file and at most
/// `limit` bytes long (a larger tensor alone).
pub(super) fn chunks(file: usize, tensors: Vec<TensorEntry>, limit: u64) -> Vec<Chunk> {
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
        Ok(CachedModel::new(self.clone_ref(), manifest, texts))
    }

    /// What loading would download: the plan is read (headers only), nothing else.
    pub async fn pending(&self) -> Result<Pending, CacheError> {
        let (manifest, _) = self.current_manifest().await?;
        let missing = match self.store {
            Some(store) => self.missing(store, &manifest).await?,
            None => manifest.files.iter().cloned().enumerate().map(|(i, f)| (i, f.tensors)).collect(),
        };
        let tensors = || missing.iter().flat_map(|(_, t)| t);
        let to_store = manifest.stored_sum(tensors());
        Ok(Pending {
            download_bytes: tensors().map(|t| t.end - t.start).sum(),
            cached_bytes: manifest.stored_bytes() - to_store,
            stored_bytes: manifest.stored_bytes(),
        })
    }

    pub(super) fn clone_ref(&self) -> HubCache<'a> {
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
        let download = super::download(self.fetch, url, None, retry).await?;
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
        let (path, first) = weights_file_of(self.fetch, &self.model, component, Some(PREFERRED_VARIANT), self.options.retry).await?;
        let len = SafetensorsIndex::header_len(first.bytes.as_slice().try_into().map_err(|_| truncated(&path))?, &path)?;
        let header = self.range(&path, 8..8 + len).await?;
        let index = SafetensorsIndex::parse(&header.bytes, &path, first.file_size)?;
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

    pub(super) async fn range(&self, path: &str, range: Range<u64>) -> Result<super::Download, HubError> {
        super::download(self.fetch, &self.model.url(path), Some(range), self.options.retry).await
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
        let needed = manifest.stored_sum(missing.iter().flat_map(|(_, t)| t));
        if needed == 0 {
            return Ok(());
        }
        if let Some(available) = store.available().await
            && available < needed
        {
            return Err(CacheError::Quota { needed, available: Some(available), stored: manifest.stored_bytes() - needed });
        }
        let totals = missing.iter().map(|(i, t)| (manifest.files[*i].component.clone(), manifest.stored_sum(t)));
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
                let needed = manifest.stored_sum(left.iter().flat_map(|(_, t)| t));
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
pub struct Pending {
    /// Bytes to fetch from the Hub (file bytes: fp32 tensors count 4 bytes per value).
    pub download_bytes: u64,
    /// Bytes already in the cache.
    pub cached_bytes: u64,
    /// Bytes the whole model takes in the cache.
    pub stored_bytes: u64,
}

/// A component's weight file in the repo, the first of `weights_file_candidates` the repo has
/// (the preferred variant where there is one), with its first 8 bytes (the safetensors header
/// length) and what the answer said about the file.
pub async fn weights_file_of(
    fetch: &dyn Fetch,
    model: &HubModel,
    component: &str,
    variant: Option<&str>,
    retry: Retry,
) -> Result<(String, super::Download), HubError> {
    let mut candidates = weights_file_candidates(component, variant).into_iter().peekable();
    loop {
        let path = candidates.next().expect("the plain file is always a candidate");
        match super::download(fetch, &model.url(&path), Some(0..8), retry).await {
            Err(HubError::NotFound { .. }) if candidates.peek().is_some() => continue,
            answer => return answer.map(|first| (path, first)),
        }
    }
}

struct Text {
    body: String,
    commit: Option<String>,
}

fn truncated(path: &str) -> LoadError {
    LoadError::Io(format!("{path}: the file is truncated"))
}

/// A model's cache entry, for listings.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::TensorInfo;
    use safetensors::Dtype;

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

    #[cfg(not(target_arch = "wasm32"))]
    mod fuzz {
        use proptest::prelude::*;

        use super::*;
        use crate::testing::MemoryHub;
        use crate::weights::ModelSource;

        const VAE: &str = "vae/diffusion_pytorch_model.safetensors";

        proptest! {
            #![proptest_config(crate::testing::fuzz_cases(100))]

            /// A weight file whose header or size lies: planning and streaming every tensor give
            /// each tensor's exact bytes or an error naming the file, never a panic.
            #[test]
            fn a_lying_weight_file_is_planned_and_streamed_or_refused(
                edits in proptest::collection::vec((0usize..4096, any::<u8>()), 0..6),
                keep in prop_oneof![Just(None), (0usize..1 << 20).prop_map(Some)],
            ) {
                let mut hub = MemoryHub::tiny_model();
                let file = hub.files.get_mut(VAE).unwrap();
                let header_end = 8 + u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
                for (at, byte) in edits {
                    let at = at % header_end;
                    file[at] = byte;
                }
                if let Some(keep) = keep {
                    file.truncate(keep.min(file.len()));
                }
                let model = HubModel::parse("owner/model@main", "http://127.0.0.1:9").unwrap();
                let retry = Retry { attempts: 1, first_wait: web_time::Duration::ZERO };
                let cache = HubCache { fetch: &hub, store: None, model, storage: Storage::AsStored, options: DownloadOptions { retry, ..Default::default() } };
                let Ok(prepared) = pollster::block_on(cache.prepare(&|_| {})) else { return Ok(()) };
                let mut vae = pollster::block_on(prepared.tensors("vae")).unwrap();
                for info in vae.tensors() {
                    if let Ok(raw) = pollster::block_on(vae.read(&info.name)) {
                        prop_assert_eq!(raw.bytes.len() as u64, info.byte_len());
                    }
                }
            }
        }
    }
}
