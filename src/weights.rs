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

/// The safetensors header: 8-byte little-endian length, then JSON. Shared by every source.
pub fn parse_header(header_json: &[u8]) -> Result<Metadata, String> {
    serde_json::from_slice(header_json).map_err(|e| format!("invalid safetensors header: {e}"))
}

fn shapes_of(metadata: &Metadata) -> BTreeMap<String, Vec<usize>> {
    metadata.tensors().into_iter().map(|(name, info)| (name, info.shape.clone())).collect()
}

fn dtypes_of(metadata: &Metadata) -> BTreeSet<String> {
    metadata.tensors().values().map(|info| format!("{:?}", info.dtype)).collect()
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
    metadata: Metadata,
    data_start: usize,
}

impl SafetensorsBytes {
    pub fn new(name: &str, bytes: std::sync::Arc<[u8]>) -> Result<Self, LoadError> {
        let bad = || LoadError::Io(format!("{name}: not a safetensors file"));
        let len = u64::from_le_bytes(bytes.get(..8).ok_or_else(bad)?.try_into().unwrap()) as usize;
        let header = bytes.get(8..8usize.checked_add(len).ok_or_else(bad)?).ok_or_else(bad)?;
        let metadata = parse_header(header).map_err(|e| LoadError::Io(format!("{name}: {e}")))?;
        Ok(Self { metadata, data_start: 8 + len, bytes })
    }
}

impl TensorSource for SafetensorsBytes {
    fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        shapes_of(&self.metadata)
    }

    fn dtypes(&self) -> BTreeSet<String> {
        dtypes_of(&self.metadata)
    }

    fn read(&mut self, name: &str) -> Result<RawTensor, LoadError> {
        let info = self.metadata.info(name).ok_or_else(|| LoadError::Io(format!("{name} vanished")))?;
        let (start, end) = info.data_offsets;
        let bytes = self
            .bytes
            .get(self.data_start + start..self.data_start + end)
            .ok_or_else(|| LoadError::Io(format!("{name}: the file is truncated")))?;
        Ok(RawTensor { shape: info.shape.clone(), dtype: info.dtype, bytes: bytes.to_vec() })
    }
}

/// A safetensors file on local disk, read tensor by tensor.
#[cfg(not(target_arch = "wasm32"))]
pub struct SafetensorsFile {
    file: std::fs::File,
    metadata: Metadata,
    data_start: u64,
    path: std::path::PathBuf,
}

#[cfg(not(target_arch = "wasm32"))]
impl SafetensorsFile {
    pub fn open(path: &std::path::Path) -> Result<Self, LoadError> {
        use std::io::Read;
        let io = |e: std::io::Error| LoadError::Io(format!("{}: {e}", path.display()));
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(io)?;
        let len = u64::from_le_bytes(len);
        if len > 100 << 20 {
            return Err(LoadError::Io(format!("{}: not a safetensors file", path.display())));
        }
        let mut header = vec![0u8; len as usize];
        file.read_exact(&mut header).map_err(io)?;
        let metadata = parse_header(&header).map_err(|e| LoadError::Io(format!("{}: {e}", path.display())))?;
        Ok(Self { file, metadata, data_start: 8 + len, path: path.into() })
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl TensorSource for SafetensorsFile {
    fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        shapes_of(&self.metadata)
    }

    fn dtypes(&self) -> BTreeSet<String> {
        dtypes_of(&self.metadata)
    }

    fn read(&mut self, name: &str) -> Result<RawTensor, LoadError> {
        use std::io::{Read, Seek, SeekFrom};
        let info = self.metadata.info(name).ok_or_else(|| LoadError::Io(format!("{name} vanished")))?;
        let (start, end) = info.data_offsets;
        let io = |e: std::io::Error| LoadError::Io(format!("{}: {name}: {e}", self.path.display()));
        let mut bytes = vec![0u8; end - start];
        self.file.seek(SeekFrom::Start(self.data_start + start as u64)).map_err(io)?;
        self.file.read_exact(&mut bytes).map_err(io)?;
        Ok(RawTensor { shape: info.shape.clone(), dtype: info.dtype, bytes })
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
    fn a_file_that_is_not_safetensors_is_an_error() {
        let err = SafetensorsFile::open(&fixture_path("input.png")).err().unwrap();
        assert!(err.to_string().contains("input.png"), "{err}");
    }
}
