//! The model from the Hub, downloaded once: a plan read from the repo itself (model index,
//! configs, safetensors headers by Range), then only the tensors the pipeline needs, in bounded
//! single-range chunks, a few at a time, converted to the storage dtype and kept in a `Store`
//! one checksummed record per tensor plus a manifest per model. Everything is read from the commit
//! the model index named, and every answer's ETag must be the plan's. A reload resumes with what
//! is missing; a changed file loses its records; a damaged record is fetched again when read; a
//! damaged manifest loses only the records that cannot prove they belong to the planned files.
//! Without a store the tensors stream from the network to the device.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use super::cached_model::CachedModel;
use super::manifest::{
    FileEntry, MANIFEST, MANIFEST_VERSION, Manifest, Storage, Stored, TENSOR, TEXT, TensorEntry, cache_id, convert, manifest_key, tensor_prefix,
    text_key,
};
use super::progress::{CacheEvent, Phase, Tracker};
use super::store::{Store, StoreError, seal, seal_for, unseal, unseal_for};
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
    #[error(
        "the cache of {model} was written by a newer imvar (manifest format {version}, this one reads \
         {MANIFEST_VERSION}) and is left as it is: reload the page for the newer version, or load without caching"
    )]
    Newer { model: String, version: u32 },
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

/// The manifest a load works from.
struct Current {
    manifest: Manifest,
    /// The Hub answered (else the cached manifest is used as it is).
    online: bool,
    /// A new plan, not yet in the store.
    new: Option<NewPlan>,
}

/// A plan read from the Hub: its configs, and the manifest the store held before (`None`: none
/// it could read).
struct NewPlan {
    texts: BTreeMap<String, String>,
    before: Option<Manifest>,
}

/// What becomes of a file's tensor records when a new plan is adopted.
#[derive(Debug, PartialEq)]
enum Fate {
    /// The manifest before listed the same version of the file.
    Keep,
    /// The file changed (or is new): no record can be this version's.
    Drop,
    /// No readable manifest said which version they are from: each record is kept only if its
    /// checksum proves it sealed for this version.
    Prove,
}

impl NewPlan {
    fn fate(&self, file: &FileEntry) -> Fate {
        match &self.before {
            None => Fate::Prove,
            Some(before) if before.files.iter().any(|f| f.same_file(file)) => Fate::Keep,
            Some(_) => Fate::Drop,
        }
    }
}

impl<'a> HubCache<'a> {
    /// Makes sure everything the pipeline needs is cached (downloading what is missing, under an
    /// exclusive lock per model so two tabs never fetch the same bytes) and returns the model
    /// as a `ModelSource`. Offline, a complete cache is used as it is.
    pub async fn prepare(&self, on_event: &dyn Fn(&CacheEvent)) -> Result<CachedModel<'a>, CacheError> {
        let _lock = match self.store {
            Some(store) => Some(store.exclusive(&lock_name(&cache_id(&self.model, self.storage))).await),
            None => None,
        };
        let Current { manifest, online, new } = self.current_manifest().await?;
        if let (Some(store), Some(new)) = (self.store, &new) {
            self.adopt(store, &manifest, new).await?;
        }
        if let Some(store) = self.store {
            if online {
                self.download_missing(store, &manifest, on_event).await?;
            } else if !self.missing(store, &manifest, None).await?.is_empty() {
                return Err(CacheError::Offline(self.model.key()));
            }
        }
        let texts = match new {
            Some(new) => new.texts,
            None => self.read_texts(&manifest).await.map_err(|e| if online { e } else { CacheError::Offline(self.model.key()) })?,
        };
        Ok(CachedModel::new(self.clone_ref(), manifest, texts))
    }

    /// What loading would download: the plan is read (configs and headers only) and nothing
    /// is written. Where no readable manifest says which file versions the records are from,
    /// every record counts as cached (loading keeps only those that prove it).
    pub async fn pending(&self) -> Result<Pending, CacheError> {
        let Current { manifest, new, .. } = self.current_manifest().await?;
        let missing = match self.store {
            Some(store) => self.missing(store, &manifest, new.as_ref()).await?,
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

    /// The manifest in the store, if there is one this build can read; one written by a newer
    /// imvar stops the load so that nothing of it is changed.
    async fn cached_manifest(&self) -> Result<Option<Manifest>, CacheError> {
        let Some(store) = self.store else { return Ok(None) };
        let record = store.get(&manifest_key(&cache_id(&self.model, self.storage))).await.map_err(CacheError::Store)?;
        match record.map(Stored::read) {
            None | Some(Stored::Unreadable) => Ok(None),
            Some(Stored::Readable(manifest)) => Ok(Some(manifest)),
            Some(Stored::Newer(version)) => Err(CacheError::Newer { model: self.model.key(), version }),
        }
    }

    /// The manifest, re-planned when the repo's commit moved (`online`: the Hub answered), or
    /// the cached one when the Hub is unreachable or the platform says it is offline.
    async fn current_manifest(&self) -> Result<Current, CacheError> {
        let before = self.cached_manifest().await?;
        if self.fetch.offline()
            && let Some(complete) = self.complete(before.as_ref()).await?
        {
            return Ok(Current { manifest: complete.clone(), online: false, new: None });
        }
        // Few retries here: when this fails the network is down, and a complete cache will do.
        let retry = Retry { attempts: 3, ..self.options.retry };
        match self.text(&self.model.url("model_index.json"), retry).await {
            Ok(index) => match before {
                Some(manifest) if manifest.commit.is_some() && manifest.commit == index.commit => Ok(Current { manifest, online: true, new: None }),
                before => {
                    let (manifest, texts) = self.plan(index).await?;
                    Ok(Current { manifest, online: true, new: Some(NewPlan { texts, before }) })
                }
            },
            Err(e) if e.is_offline() => before.map(|manifest| Current { manifest, online: false, new: None }).ok_or(e.into()),
            Err(e) => Err(e.into()),
        }
    }

    /// `manifest`, where every tensor it lists has a record.
    async fn complete<'m>(&self, manifest: Option<&'m Manifest>) -> Result<Option<&'m Manifest>, CacheError> {
        let (Some(store), Some(manifest)) = (self.store, manifest) else { return Ok(None) };
        Ok(self.missing(store, manifest, None).await?.is_empty().then_some(manifest))
    }

    async fn text(&self, url: &str, retry: Retry) -> Result<Text, HubError> {
        let download = super::download(self.fetch, url, None, retry).await?;
        let body = String::from_utf8(download.bytes).map_err(|_| HubError::Invalid(format!("{url}: not UTF-8")))?;
        Ok(Text { body, commit: download.commit })
    }

    /// Reads the repo at the commit the model index named: configs, each component's weight
    /// file (the fp16 variant where there is one) and its header. Writes nothing.
    async fn plan(&self, index: Text) -> Result<(Manifest, BTreeMap<String, String>), CacheError> {
        let pinned = HubModel { revision: index.commit.clone().unwrap_or_else(|| self.model.revision.clone()), ..self.model.clone() };
        let mut texts = BTreeMap::from([("model_index.json".to_string(), index.body)]);
        for path in text_paths().into_iter().skip(1) {
            let text = self.text(&pinned.url(&path), self.options.retry).await?.body;
            texts.insert(path, text);
        }
        let mut files = Vec::new();
        for (component, _) in COMPONENTS {
            files.push(self.plan_file(&pinned, component).await?);
        }
        let manifest =
            Manifest { version: MANIFEST_VERSION, model: self.model.clone(), commit: index.commit, storage: self.storage, texts: text_paths(), files };
        Ok((manifest, texts))
    }

    /// Puts a new plan in the store: each file's records kept, dropped or proven (`Fate`), the
    /// records of files the repo no longer uses deleted, then the configs and the manifest.
    async fn adopt(&self, store: &dyn Store, manifest: &Manifest, new: &NewPlan) -> Result<(), CacheError> {
        let id = manifest.id();
        for file in &manifest.files {
            match new.fate(file) {
                Fate::Keep => {}
                Fate::Drop => store.delete(&tensor_prefix(&id, &file.path)).await.map_err(CacheError::Store)?,
                Fate::Prove => self.prune(store, manifest, file).await?,
            }
        }
        // Files the repo no longer uses (say, an fp16 variant appeared): free their space.
        for gone in new.before.iter().flat_map(|m| &m.files).filter(|f| !manifest.files.iter().any(|n| n.path == f.path)) {
            store.delete(&tensor_prefix(&id, &gone.path)).await.map_err(CacheError::Store)?;
        }
        let mut records: Vec<_> = new.texts.iter().map(|(p, t)| (text_key(&id, p), seal(t.clone().into_bytes()))).collect();
        records.push((manifest_key(&id), seal(serde_json::to_vec(manifest).unwrap())));
        match store.put(records).await {
            // No room even for the plan: the download that follows says how much is needed.
            Ok(()) | Err(StoreError::Quota) => Ok(()),
            Err(e) => Err(CacheError::Store(e)),
        }
    }

    /// Deletes the records under `file` that are not whole tensors of this version of it.
    /// (Deletion is by key prefix: a record whose name extends a deleted one's goes too, and is
    /// fetched again.)
    async fn prune(&self, store: &dyn Store, manifest: &Manifest, file: &FileEntry) -> Result<(), CacheError> {
        let prefix = tensor_prefix(&manifest.id(), &file.path);
        let identity = file.identity();
        for key in store.keys(&prefix).await.map_err(CacheError::Store)? {
            let tensor = file.tensors.iter().find(|t| key.strip_prefix(&prefix) == Some(t.info.name.as_str()));
            let record = store.get(&key).await.map_err(CacheError::Store)?;
            let proven = tensor.zip(record).is_some_and(|(t, r)| unseal_for(&identity, r).is_some_and(|b| b.len() as u64 == manifest.stored_len(t)));
            if !proven {
                store.delete(&key).await.map_err(CacheError::Store)?;
            }
        }
        Ok(())
    }

    async fn plan_file(&self, pinned: &HubModel, component: &str) -> Result<FileEntry, CacheError> {
        let (path, first) = weights_file_of(self.fetch, pinned, component, Some(PREFERRED_VARIANT), self.options.retry).await?;
        let url = pinned.url(&path);
        let size = first.stated_size(&url)?;
        let len = SafetensorsIndex::header_len(first.bytes.as_slice().try_into().map_err(|_| truncated(&path))?, &path)?;
        let header = super::download(self.fetch, &url, Some(8..8 + len), self.options.retry).await?;
        if header.etag != first.etag {
            return Err(HubError::Changed { url }.into());
        }
        let index = SafetensorsIndex::parse(&header.bytes, &path, Some(size))?;
        let unused = unused_prefixes(component);
        let mut tensors = Vec::new();
        for info in index.tensors().into_iter().filter(|t| !is_unused(&t.name, unused)) {
            let (_, _, range) = index.locate(&info.name)?;
            tensors.push(TensorEntry { info, start: range.start, end: range.end });
        }
        let header_crc = crc32fast::hash(&header.bytes);
        Ok(FileEntry { component: component.into(), path, etag: first.etag, size, header_crc, tensors })
    }

    /// `range` of a planned file, from the commit the plan was read from. An answer with another
    /// ETag than the plan's is another version of the file, and refused.
    pub(super) async fn planned_range(&self, manifest: &Manifest, file: &FileEntry, range: Range<u64>) -> Result<super::Download, HubError> {
        let url = manifest.pinned().url(&file.path);
        let answer = super::download(self.fetch, &url, Some(range), self.options.retry).await?;
        match (&file.etag, &answer.etag) {
            (Some(planned), Some(answered)) if planned != answered => Err(HubError::Changed { url }),
            _ => Ok(answer),
        }
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

    /// Tensors of `manifest` without a record, per file index; with a `new` plan not yet
    /// adopted, every tensor of a file whose records it would drop.
    async fn missing(&self, store: &dyn Store, manifest: &Manifest, new: Option<&NewPlan>) -> Result<Vec<(usize, Vec<TensorEntry>)>, CacheError> {
        let mut missing = Vec::new();
        for (i, file) in manifest.files.iter().enumerate() {
            if new.is_some_and(|n| n.fate(file) == Fate::Drop) {
                missing.push((i, file.tensors.clone()));
                continue;
            }
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
        let missing = self.missing(store, manifest, None).await?;
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
                let left = self.missing(store, manifest, None).await?;
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
        let bytes = self.planned_range(manifest, file, range.clone()).await?.bytes;
        let prefix = tensor_prefix(&manifest.id(), &file.path);
        let identity = file.identity();
        let mut stored = 0;
        let records = chunk
            .tensors
            .iter()
            .map(|t| {
                let raw = bytes[(t.start - range.start) as usize..(t.end - range.start) as usize].to_vec();
                let payload = convert(self.storage, t.info.dtype, raw);
                stored += payload.len() as u64;
                (format!("{prefix}{}", t.info.name), seal_for(&identity, payload))
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

/// The lock a model's cache is changed under (across tabs in the browser).
fn lock_name(id: &str) -> String {
    format!("imvar download {id}")
}

/// Every model with a manifest in `store` that this build can read.
pub async fn list(store: &dyn Store) -> Result<Vec<CachedEntry>, StoreError> {
    let mut entries = Vec::new();
    for key in store.keys(MANIFEST).await? {
        let Some(Stored::Readable(manifest)) = store.get(&key).await?.map(Stored::read) else {
            continue;
        };
        entries.push(CachedEntry { bytes: manifest.stored_bytes(), model: manifest.model, storage: manifest.storage, commit: manifest.commit });
    }
    Ok(entries)
}

/// Deletes everything cached of `model` (every storage dtype), under each cache's lock so that
/// no download in another tab writes records after them.
pub async fn delete(store: &dyn Store, model: &HubModel) -> Result<(), StoreError> {
    for storage in [Storage::F16, Storage::AsStored] {
        let id = cache_id(model, storage);
        let _lock = store.exclusive(&lock_name(&id)).await;
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

    /// Without a stated size, tensors could not be checked to lie inside the file, nor a stored
    /// file be told whole: such a file is refused by name before anything is stored.
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn a_weight_file_whose_size_the_answer_does_not_state_is_refused() {
        let hub = crate::testing::MemoryHub { ignores_range: true, ..crate::testing::MemoryHub::tiny_model() };
        let model = HubModel::parse("owner/model@main", "http://127.0.0.1:9").unwrap();
        let cache = HubCache { fetch: &hub, store: None, model, storage: Storage::AsStored, options: DownloadOptions::default() };
        let error = pollster::block_on(cache.prepare(&|_| {})).err().expect("a plan without file sizes");
        assert!(error.to_string().contains(".safetensors: the answer does not say the file's size"), "{error}");
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
