//! Weights by checkpoint name. A `TensorSource` hands out one tensor at a time (a local
//! safetensors file read by offset here; Range requests or the browser cache elsewhere), and
//! `Weights` uploads each to the device in the compute dtype, checking names and shapes, so a
//! component is never held whole in memory besides its GPU copy.

use std::collections::{BTreeMap, BTreeSet};

use burn::tensor::{DType, Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, Metadata};

use crate::gpu::ComputeDType;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum LoadError {
    #[error("{component}: tensor `{name}` is missing from the weights")]
    Missing { component: String, name: String },
    #[error("{component}: tensor `{name}` has shape {found:?}, the config implies {expected:?}")]
    Shape {
        component: String,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{component}: unexpected tensors in the weights (a different model?): {names}")]
    Extra { component: String, names: String },
    #[error("{component}: tensor `{name}` has dtype {dtype}; only F32 and F16 weights are supported")]
    DType {
        component: String,
        name: String,
        dtype: String,
    },
    #[error("{0}")]
    Io(String),
}

/// One tensor as stored: little-endian F32 or F16 bytes.
pub struct RawTensor {
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub bytes: Vec<u8>,
}

/// Where a component's tensors come from.
pub trait TensorSource {
    /// Names and shapes of every tensor the source holds.
    fn shapes(&self) -> BTreeMap<String, Vec<usize>>;
    /// Reads one tensor.
    fn read(&mut self, name: &str) -> Result<RawTensor, LoadError>;
    /// The distinct storage dtypes, for reports ("F32", "F16").
    fn dtypes(&self) -> BTreeSet<String>;
}

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

    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.metadata.tensors().into_iter().map(|(name, info)| (name, info.shape.clone())).collect()
    }

    pub fn dtypes(&self) -> BTreeSet<String> {
        self.metadata.tensors().values().map(|info| format!("{:?}", info.dtype)).collect()
    }

    /// The tensor's shape, dtype and absolute byte range in the file.
    pub fn locate(&self, name: &str) -> Result<(Vec<usize>, Dtype, std::ops::Range<u64>), LoadError> {
        let info = self.metadata.info(name).ok_or_else(|| LoadError::Io(format!("{name}: not in the file")))?;
        let (start, end) = info.data_offsets;
        Ok((info.shape.clone(), info.dtype, self.data_start + start as u64..self.data_start + end as u64))
    }
}

/// Loads a component's tensors by name onto the device, recording which were used.
pub struct Weights<'a> {
    /// `None`: random weights of whatever shape the config implies (benchmarks of the real
    /// model's size without its files).
    source: Option<&'a mut dyn TensorSource>,
    component: String,
    device: Device,
    dtype: ComputeDType,
    shapes: BTreeMap<String, Vec<usize>>,
    used: BTreeSet<String>,
}

impl<'a> Weights<'a> {
    pub fn new(source: &'a mut dyn TensorSource, component: &str, device: &Device, dtype: ComputeDType) -> Self {
        Self {
            shapes: source.shapes(),
            source: Some(source),
            component: component.into(),
            device: device.clone(),
            dtype,
            used: BTreeSet::new(),
        }
    }

    /// Small uniform random weights, generated on the device, for every tensor asked for.
    pub fn random(component: &str, device: &Device, dtype: ComputeDType) -> Self {
        Self {
            shapes: BTreeMap::new(),
            source: None,
            component: component.into(),
            device: device.clone(),
            dtype,
            used: BTreeSet::new(),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    fn random_tensor<const D: usize>(&self, shape: [usize; D]) -> Tensor<D> {
        let options = (&self.device, DType::from(self.dtype.burn()));
        Tensor::random(shape, burn::tensor::Distribution::Uniform(-0.02, 0.02), options)
    }

    /// The tensor `name`, which must have exactly `shape`.
    pub fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Tensor<D>, LoadError> {
        if self.source.is_none() {
            return Ok(self.random_tensor(shape));
        }
        let raw = self.read(name, &shape)?;
        Ok(Tensor::from_data(raw, (&self.device, DType::from(self.dtype.burn()))))
    }

    /// A PyTorch Linear weight `[out, in]`, transposed to the `[in, out]` that `linear` takes.
    pub fn linear_weight(&mut self, name: &str, inputs: usize, outputs: usize) -> Result<Tensor<2>, LoadError> {
        if self.source.is_none() {
            return Ok(self.random_tensor([inputs, outputs]));
        }
        let data = self.read(name, &[outputs, inputs])?;
        let values: Vec<f32> = data.iter::<f32>().collect();
        let mut transposed = vec![0.0f32; values.len()];
        for o in 0..outputs {
            for i in 0..inputs {
                transposed[i * outputs + o] = values[o * inputs + i];
            }
        }
        Ok(Tensor::from_data(
            TensorData::new(transposed, [inputs, outputs]),
            (&self.device, DType::from(self.dtype.burn())),
        ))
    }

    fn read(&mut self, name: &str, shape: &[usize]) -> Result<TensorData, LoadError> {
        let found = self.shapes.get(name).ok_or_else(|| LoadError::Missing {
            component: self.component.clone(),
            name: name.into(),
        })?;
        if found != shape {
            return Err(LoadError::Shape {
                component: self.component.clone(),
                name: name.into(),
                found: found.clone(),
                expected: shape.to_vec(),
            });
        }
        let raw = self.source.as_mut().expect("random weights never read").read(name)?;
        self.used.insert(name.into());
        let dtype = match raw.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            other => {
                return Err(LoadError::DType {
                    component: self.component.clone(),
                    name: name.into(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        Ok(TensorData::from_bytes_vec(raw.bytes, raw.shape, dtype))
    }

    /// Fails on tensors the model did not use, except those under `unused_prefixes` (parts of
    /// the checkpoint imvar does not need, such as the VAE encoder).
    pub fn finish(self, unused_prefixes: &[&str]) -> Result<(), LoadError> {
        let extra: Vec<&String> = self
            .shapes
            .keys()
            .filter(|name| !self.used.contains(*name) && !unused_prefixes.iter().any(|p| name.starts_with(p)))
            .collect();
        if extra.is_empty() {
            return Ok(());
        }
        let mut names = extra.iter().take(5).map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        if extra.len() > 5 {
            names += &format!(" and {} more", extra.len() - 5);
        }
        Err(LoadError::Extra { component: self.component, names })
    }
}

/// A whole safetensors file in memory (small models, tests, a file fetched in one piece).
pub struct SafetensorsBytes {
    bytes: std::sync::Arc<[u8]>,
    index: SafetensorsIndex,
}

impl SafetensorsBytes {
    pub fn new(file: &str, bytes: std::sync::Arc<[u8]>) -> Result<Self, LoadError> {
        let truncated = || LoadError::Io(format!("{file}: the file is truncated"));
        let first = bytes.get(..8).ok_or_else(truncated)?.try_into().unwrap();
        let len = SafetensorsIndex::header_len(first, file)? as usize;
        let index = SafetensorsIndex::parse(bytes.get(8..8 + len).ok_or_else(truncated)?, file)?;
        Ok(Self { bytes, index })
    }
}

impl TensorSource for SafetensorsBytes {
    fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.index.shapes()
    }

    fn dtypes(&self) -> BTreeSet<String> {
        self.index.dtypes()
    }

    fn read(&mut self, name: &str) -> Result<RawTensor, LoadError> {
        let (shape, dtype, range) = self.index.locate(name)?;
        let bytes = self
            .bytes
            .get(range.start as usize..range.end as usize)
            .ok_or_else(|| LoadError::Io(format!("{name}: the file is truncated")))?;
        Ok(RawTensor { shape, dtype, bytes: bytes.to_vec() })
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
    fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.index.shapes()
    }

    fn dtypes(&self) -> BTreeSet<String> {
        self.index.dtypes()
    }

    fn read(&mut self, name: &str) -> Result<RawTensor, LoadError> {
        use std::io::{Read, Seek, SeekFrom};
        let (shape, dtype, range) = self.index.locate(name)?;
        let io = |e: std::io::Error| LoadError::Io(format!("{}: {name}: {e}", self.path.display()));
        let mut bytes = vec![0u8; (range.end - range.start) as usize];
        self.file.seek(SeekFrom::Start(range.start)).map_err(io)?;
        self.file.read_exact(&mut bytes).map_err(io)?;
        Ok(RawTensor { shape, dtype, bytes })
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::config::VaeConfig;
    use crate::gpu::{ComputeDType, DTypeChoice};
    use crate::testing::{fixture_path, shared_gpu};
    use crate::vae::{AutoencoderKLDecoder, UNUSED};

    /// The tiny VAE's file with one tensor hidden, reshaped or invented.
    struct Tampered {
        inner: SafetensorsFile,
        edit: fn(&mut BTreeMap<String, Vec<usize>>),
    }

    impl TensorSource for Tampered {
        fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
            let mut shapes = self.inner.shapes();
            (self.edit)(&mut shapes);
            shapes
        }

        fn read(&mut self, name: &str) -> Result<RawTensor, LoadError> {
            self.inner.read(name)
        }

        fn dtypes(&self) -> BTreeSet<String> {
            self.inner.dtypes()
        }
    }

    fn load_tampered(edit: fn(&mut BTreeMap<String, Vec<usize>>)) -> LoadError {
        pollster::block_on(async {
            let gpu = shared_gpu(DTypeChoice::Exactly(ComputeDType::F32)).await;
            let dir = fixture_path("tiny-sd-image-variations/vae");
            let config = VaeConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
            let inner = SafetensorsFile::open(&dir.join("diffusion_pytorch_model.safetensors")).unwrap();
            let mut source = Tampered { inner, edit };
            let mut w = Weights::new(&mut source, "vae", &gpu.device, ComputeDType::F32);
            match AutoencoderKLDecoder::load(&mut w, &config) {
                Ok(_) => w.finish(UNUSED).unwrap_err(),
                Err(e) => e,
            }
        })
    }

    #[test]
    fn missing_misshaped_and_extra_tensors_are_named() {
        let missing = load_tampered(|s| { s.remove("decoder.conv_in.weight"); });
        assert!(missing.to_string().contains("`decoder.conv_in.weight` is missing"), "{missing}");
        let misshaped = load_tampered(|s| { s.insert("decoder.conv_out.bias".into(), vec![4]); });
        assert!(misshaped.to_string().contains("`decoder.conv_out.bias` has shape [4], the config implies [3]"), "{misshaped}");
        let extra = load_tampered(|s| { s.insert("decoder.extra.weight".into(), vec![1]); });
        assert!(extra.to_string().contains("decoder.extra.weight"), "{extra}");
    }

    #[test]
    fn in_memory_bytes_read_like_the_file_and_truncation_is_caught() {
        let path = fixture_path("tiny-sd-image-variations/vae/diffusion_pytorch_model.safetensors");
        let bytes: std::sync::Arc<[u8]> = std::fs::read(&path).unwrap().into();
        let mut file = SafetensorsFile::open(&path).unwrap();
        let mut memory = SafetensorsBytes::new("vae", bytes.clone()).unwrap();
        assert_eq!(memory.shapes(), file.shapes());
        let name = "decoder.conv_out.weight";
        assert_eq!(memory.read(name).unwrap().bytes, file.read(name).unwrap().bytes);
        let mut cut = SafetensorsBytes::new("vae", bytes[..bytes.len() - 4].into()).unwrap();
        let last = cut.shapes().into_keys().max_by_key(|n| cut.index.locate(n).unwrap().2.end).unwrap();
        assert!(cut.read(&last).err().unwrap().to_string().contains("truncated"));
        assert!(SafetensorsBytes::new("vae", bytes[..100].into()).err().unwrap().to_string().contains("truncated"));
    }

    #[test]
    fn a_file_that_is_not_safetensors_is_an_error() {
        let err = SafetensorsFile::open(&fixture_path("input.png")).err().unwrap();
        assert!(err.to_string().contains("input.png"), "{err}");
    }
}
