//! Safetensors files read tensor by tensor: the header parsed once (`SafetensorsIndex`, shared
//! by every source whatever holds the bytes), then each tensor's byte range read on demand.

use safetensors::tensor::{Dtype, Metadata};

use super::{LoadError, TensorInfo};
#[cfg(not(target_arch = "wasm32"))]
use super::{RawTensor, TensorSource};
#[cfg(not(target_arch = "wasm32"))]
use crate::LocalFuture;

/// A parsed safetensors header (8-byte little-endian length, then JSON): where each tensor's
/// bytes lie in the file. Every safetensors source reads through one, whatever holds the bytes.
pub struct SafetensorsIndex {
    metadata: Metadata,
    data_start: u64,
}

impl SafetensorsIndex {
    /// Headers are a few hundred KiB even for SD's UNet; anything this large is not one.
    const MAX_HEADER: u64 = 100 << 20;

    /// The header's length from the file's first 8 bytes; `file` names it in errors.
    pub fn header_len(first: [u8; 8], file: &str) -> Result<u64, LoadError> {
        let len = u64::from_le_bytes(first);
        if len > Self::MAX_HEADER {
            return Err(LoadError::Io(format!("{file}: not a safetensors file")));
        }
        Ok(len)
    }

    /// From the header's JSON (the `header_len` bytes after the first 8).
    pub fn parse(header_json: &[u8], file: &str) -> Result<Self, LoadError> {
        let metadata = serde_json::from_slice(header_json)
            .map_err(|e| LoadError::Io(format!("{file}: invalid safetensors header: {e}")))?;
        Ok(Self { metadata, data_start: 8 + header_json.len() as u64 })
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> Vec<TensorInfo> {
        self.metadata
            .offset_keys()
            .into_iter()
            .map(|name| {
                let info = self.metadata.info(&name).expect("listed by the metadata");
                TensorInfo { shape: info.shape.clone(), dtype: info.dtype, name }
            })
            .collect()
    }

    /// The tensor's shape, dtype and absolute byte range in the file.
    pub fn locate(&self, name: &str) -> Result<(Vec<usize>, Dtype, std::ops::Range<u64>), LoadError> {
        let info = self.metadata.info(name).ok_or_else(|| LoadError::Io(format!("{name}: not in the file")))?;
        let (start, end) = info.data_offsets;
        Ok((info.shape.clone(), info.dtype, self.data_start + start as u64..self.data_start + end as u64))
    }
}

/// A safetensors file on local disk, read tensor by tensor.
#[cfg(not(target_arch = "wasm32"))]
pub struct SafetensorsFile {
    file: std::fs::File,
    index: SafetensorsIndex,
    path: std::path::PathBuf,
}

#[cfg(not(target_arch = "wasm32"))]
impl SafetensorsFile {
    pub fn open(path: &std::path::Path) -> Result<Self, LoadError> {
        use std::io::Read;
        let name = path.display().to_string();
        let io = |e: std::io::Error| LoadError::Io(format!("{name}: {e}"));
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut first = [0u8; 8];
        file.read_exact(&mut first).map_err(io)?;
        let mut header = vec![0u8; SafetensorsIndex::header_len(first, &name)? as usize];
        file.read_exact(&mut header).map_err(io)?;
        let index = SafetensorsIndex::parse(&header, &name)?;
        Ok(Self { file, index, path: path.into() })
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl TensorSource for SafetensorsFile {
    fn tensors(&self) -> Vec<TensorInfo> {
        self.index.tensors()
    }

    fn read<'a>(&'a mut self, name: &'a str) -> LocalFuture<'a, Result<RawTensor, LoadError>> {
        use std::io::{Read, Seek, SeekFrom};
        let result = (|| {
            let (shape, dtype, range) = self.index.locate(name)?;
            let io = |e: std::io::Error| LoadError::Io(format!("{}: {name}: {e}", self.path.display()));
            let mut bytes = vec![0u8; (range.end - range.start) as usize];
            self.file.seek(SeekFrom::Start(range.start)).map_err(io)?;
            self.file.read_exact(&mut bytes).map_err(io)?;
            Ok(RawTensor { shape, dtype, bytes })
        })();
        Box::pin(std::future::ready(result))
    }
}
