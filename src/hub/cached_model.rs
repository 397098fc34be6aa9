//! A prepared model as a `ModelSource`: configs in memory, tensors read one at a time from the
//! store (a damaged record fetched again and repaired) or, without a store, streamed from the
//! network a chunk at a time. A record is taken only if its checksum holds for its file's
//! version, so a record written by another tab for another version is never read as this one.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Range;

use super::HubError;
use super::cache::{HubCache, chunks};
use super::manifest::{Manifest, TensorEntry, convert, tensor_prefix};
use super::store::{StoreError, holds, seal_for};
use crate::LocalFuture;
use crate::weights::{LoadError, ModelSource, RawTensor, TensorInfo, TensorSource};

/// A prepared model: configs in memory, tensors read one at a time from the store (damaged
/// records fetched again) or, without a store, from the network in chunks.
pub struct CachedModel<'a> {
    cache: HubCache<'a>,
    pub manifest: Manifest,
    texts: BTreeMap<String, String>,
    /// Without a store: the last chunk fetched (file index, range, bytes).
    chunk: RefCell<Option<(usize, Range<u64>, Vec<u8>)>>,
    /// With a store: the record of the tensor after the one last read, asked for ahead (its key
    /// and the read), so that the store reads it while the caller uploads the current one.
    ahead: RefCell<Option<(String, Read<'a>)>>,
}

type Read<'a> = LocalFuture<'a, Result<Option<Vec<u8>>, StoreError>>;

/// A tensor's bytes could not be fetched: `Network` where no answer came (so a page can say
/// the connection failed), else the Hub's answer named.
fn fetch_failed(name: &str, error: HubError) -> LoadError {
    let message = format!("{name} could not be fetched: {error}");
    if error.is_offline() { LoadError::Network(message) } else { LoadError::Io(message) }
}

fn store_failed(error: StoreError) -> LoadError {
    LoadError::Storage { full: error == StoreError::Quota, message: error.to_string() }
}

impl<'a> CachedModel<'a> {
    pub(super) fn new(cache: HubCache<'a>, manifest: Manifest, texts: BTreeMap<String, String>) -> Self {
        Self { cache, manifest, texts, chunk: RefCell::new(None), ahead: RefCell::new(None) }
    }
}

impl<'a> CachedModel<'a> {
    async fn tensor(&self, file: usize, name: &str) -> Result<RawTensor, LoadError> {
        let entry = &self.manifest.files[file];
        let position = entry.tensors.iter().position(|t| t.info.name == name).ok_or_else(|| LoadError::Io(format!("{name}: not in the plan")))?;
        let tensor = &entry.tensors[position];
        let dtype = self.manifest.storage.dtype_of(tensor.info.dtype);
        let shape = tensor.info.shape.clone();
        let Some(store) = self.cache.store else {
            let bytes = self.streamed(file, tensor).await?;
            return Ok(RawTensor { shape, dtype, bytes: convert(self.manifest.storage, tensor.info.dtype, bytes) });
        };
        let key = self.record_key(file, name);
        let read = match self.ahead.borrow_mut().take() {
            Some((ahead, read)) if ahead == key => read,
            _ => store.get(&key),
        };
        // Loading reads a file's tensors in order: the next one is asked for now.
        if let Some(next) = entry.tensors.get(position + 1) {
            let next = self.record_key(file, &next.info.name);
            let read = store.get(&next);
            *self.ahead.borrow_mut() = Some((next, read));
        }
        let identity = entry.identity();
        let record = read.await.map_err(store_failed)?;
        let expected = self.manifest.stored_len(tensor) as usize;
        if let Some(bytes) = record.and_then(|r| payload(&identity, r)).filter(|b| b.len() == expected) {
            return Ok(RawTensor { shape, dtype, bytes });
        }
        // Damaged or missing: fetch it again and repair the record.
        let fetched = self.cache.planned_range(&self.manifest, entry, tensor.start..tensor.end).await.map_err(|e| fetch_failed(name, e))?;
        let bytes = convert(self.manifest.storage, tensor.info.dtype, fetched.bytes);
        store.put(vec![(key, seal_for(&identity, bytes.clone()))]).await.map_err(store_failed)?;
        Ok(RawTensor { shape, dtype, bytes })
    }

    fn record_key(&self, file: usize, name: &str) -> String {
        format!("{}{name}", tensor_prefix(&self.manifest.id(), &self.manifest.files[file].path))
    }

    /// A tensor's file bytes through a one-chunk buffer: the chunk holding it and the tensors
    /// after it, so reading in file order makes one request per chunk.
    async fn streamed(&self, file: usize, tensor: &TensorEntry) -> Result<Vec<u8>, LoadError> {
        let within = |(f, r, _): &(usize, Range<u64>, Vec<u8>)| *f == file && r.start <= tensor.start && tensor.end <= r.end;
        if !self.chunk.borrow().as_ref().is_some_and(within) {
            self.chunk.borrow_mut().take();
            let tensors = self.manifest.files[file].tensors.iter().filter(|t| t.start >= tensor.start).cloned().collect();
            let range = chunks(file, tensors, self.cache.options.chunk_bytes)[0].range();
            let entry = &self.manifest.files[file];
            let bytes = self.cache.planned_range(&self.manifest, entry, range.clone()).await.map_err(|e| fetch_failed(&tensor.info.name, e))?.bytes;
            *self.chunk.borrow_mut() = Some((file, range, bytes));
        }
        let chunk = self.chunk.borrow();
        let (_, range, bytes) = chunk.as_ref().unwrap();
        Ok(bytes[(tensor.start - range.start) as usize..(tensor.end - range.start) as usize].to_vec())
    }
}

/// A tensor record's payload: sealed for its file's `identity`, or for none (records written
/// before records named their file; the manifest that lists them vouches for the version).
fn payload(identity: &[u8], mut record: Vec<u8>) -> Option<Vec<u8>> {
    (holds(identity, &record) || holds(b"", &record)).then(|| {
        record.truncate(record.len() - 4);
        record
    })
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
