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
    const MAX_HEADER: u64 = 8 << 20;
    /// The most bytes one tensor may take: no GPU storage binding holds more, and SD's largest
    /// weight is about 50 MB. Checked before anything is allocated for it.
    pub const MAX_TENSOR: u64 = 1 << 30;

    /// The header's length from the file's first 8 bytes; `file` names it in errors.
    pub fn header_len(first: [u8; 8], file: &str) -> Result<u64, LoadError> {
        let len = u64::from_le_bytes(first);
        if len > Self::MAX_HEADER {
            return Err(LoadError::Io(format!("{file}: not a safetensors file (its header would be {len} bytes)")));
        }
        Ok(len)
    }

    /// From the header's JSON (the `header_len` bytes after the first 8), checked against the
    /// file's size where it is known: every tensor must lie inside the file and within
    /// `MAX_TENSOR`.
    pub fn parse(header_json: &[u8], file: &str, file_size: Option<u64>) -> Result<Self, LoadError> {
        let metadata: Metadata = serde_json::from_slice(header_json)
            .map_err(|e| LoadError::Io(format!("{file}: invalid safetensors header: {e}")))?;
        let index = Self { metadata, data_start: 8 + header_json.len() as u64 };
        for info in index.tensors() {
            let (_, _, range) = index.locate(&info.name)?;
            let len = range.end - range.start;
            if len > Self::MAX_TENSOR {
                return Err(LoadError::Io(format!("{file}: tensor `{}` declares {len} bytes, more than one tensor may take ({})", info.name, Self::MAX_TENSOR)));
            }
            if let Some(size) = file_size.filter(|&size| range.end > size) {
                return Err(LoadError::Io(format!(
                    "{file}: tensor `{}` lies at bytes {}..{}, past the end of the {size}-byte file (a truncated download?)",
                    info.name, range.start, range.end
                )));
            }
        }
        Ok(index)
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
        let size = file.metadata().map_err(io)?.len();
        let index = SafetensorsIndex::parse(&header, &name, Some(size))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A header placing one f32 tensor of `shape` at the start of the data.
    fn header(shape: &[u64]) -> Vec<u8> {
        let bytes: u64 = shape.iter().product::<u64>() * 4;
        serde_json::json!({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, bytes]}}).to_string().into_bytes()
    }

    #[test]
    fn tensors_inside_the_file_are_located() {
        let json = header(&[2, 3]);
        let size = 8 + json.len() as u64 + 24;
        let index = SafetensorsIndex::parse(&json, "f", Some(size)).unwrap();
        let (shape, _, range) = index.locate("w").unwrap();
        assert_eq!((shape, range), (vec![2, 3], 8 + json.len() as u64..size));
    }

    #[test]
    fn a_tensor_past_the_end_of_the_file_is_named() {
        let json = header(&[2, 3]);
        let err = SafetensorsIndex::parse(&json, "unet/x.safetensors", Some(8 + json.len() as u64 + 23)).err().unwrap();
        assert!(err.to_string().contains("unet/x.safetensors: tensor `w` lies at bytes"), "{err}");
        assert!(err.to_string().contains("past the end of the"), "{err}");
    }

    #[test]
    fn a_tensor_larger_than_any_binding_is_refused_before_allocation() {
        // A consistent header declaring a terabyte: refused by its size, whatever the file says.
        let err = SafetensorsIndex::parse(&header(&[1 << 18, 1 << 20]), "vae/x.safetensors", None).err().unwrap();
        assert!(err.to_string().contains("tensor `w` declares 1099511627776 bytes"), "{err}");
        let huge = SafetensorsIndex::header_len((200u64 << 20).to_le_bytes(), "f").unwrap_err();
        assert!(huge.to_string().contains("not a safetensors file"), "{huge}");
    }

    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn a_truncated_file_is_an_error_when_opened() {
        let json = header(&[1 << 18, 1 << 8]);
        let mut file = (json.len() as u64).to_le_bytes().to_vec();
        file.extend(&json);
        file.extend(vec![0u8; 1000]);
        let path = std::env::temp_dir().join(format!("imvar-truncated-{}.safetensors", std::process::id()));
        std::fs::write(&path, &file).unwrap();
        let err = SafetensorsFile::open(&path).err().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(err.to_string().contains("past the end of the"), "{err}");
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod fuzz {
        use proptest::prelude::*;

        use super::super::*;

        /// The tiny VAE's real header, as found in its file.
        fn real_header() -> Vec<u8> {
            let file = std::fs::read(crate::testing::fixture_path("tiny-sd-image-variations/vae/diffusion_pytorch_model.safetensors")).unwrap();
            let len = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
            file[8..8 + len].to_vec()
        }

        fn real_file_size() -> u64 {
            std::fs::metadata(crate::testing::fixture_path("tiny-sd-image-variations/vae/diffusion_pytorch_model.safetensors")).unwrap().len()
        }

        /// The real header with a few bytes overwritten (mostly digits, so shapes and offsets
        /// change while the JSON still parses), now and then cut short.
        fn mutated_header() -> impl Strategy<Value = Vec<u8>> {
            let header = real_header();
            let len = header.len();
            let edits = proptest::collection::vec((0..len, prop_oneof![4 => b'0'..=b'9', 1 => any::<u8>()]), 0..4);
            (Just(header), edits, prop_oneof![4 => Just(len), 1 => 0..=len]).prop_map(|(mut header, edits, keep)| {
                for (at, byte) in edits {
                    header[at] = byte;
                }
                header.truncate(keep);
                header
            })
        }

        proptest! {
            #![proptest_config(crate::testing::fuzz_cases(1000))]

            /// Any header either fails to parse, with the file named, or places every tensor
            /// inside the file and within the per-tensor bound.
            #[test]
            fn any_header_locates_tensors_inside_the_file_or_is_refused(
                header in prop_oneof![mutated_header(), proptest::collection::vec(any::<u8>(), 0..256)],
                first in any::<[u8; 8]>(),
                file_size in prop_oneof![Just(None), (0u64..1 << 24).prop_map(Some), (0u64..128).prop_map(|d| Some(real_file_size() + 64 - d))],
            ) {
                match SafetensorsIndex::header_len(first, "f") {
                    Ok(len) => prop_assert!(len <= SafetensorsIndex::MAX_HEADER),
                    Err(e) => prop_assert!(e.to_string().starts_with("f: ")),
                }
                match SafetensorsIndex::parse(&header, "f", file_size) {
                    Ok(index) => {
                        for info in index.tensors() {
                            let (_, _, range) = index.locate(&info.name).unwrap();
                            prop_assert!(range.end - range.start <= SafetensorsIndex::MAX_TENSOR);
                            prop_assert!(file_size.is_none_or(|size| range.end <= size));
                            prop_assert_eq!(range.end - range.start, info.byte_len());
                        }
                    }
                    Err(e) => prop_assert!(e.to_string().starts_with("f: ")),
                }
            }
        }
    }
}
