//! Weights by checkpoint name. A `TensorSource` hands out one tensor at a time (a local
//! safetensors file read by offset here; the browser cache or Range requests in
//! `weight_cache`), `upload` streams them to the device in the compute dtype, so a component is
//! never held whole in host memory, and `Weights` hands them to the model code by name,
//! checking shapes.

use std::collections::BTreeMap;

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

/// A boxed future that need not be `Send` (browser futures never are).
pub type LocalFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>>;

/// One tensor as stored: little-endian F32 or F16 bytes.
pub struct RawTensor {
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub bytes: Vec<u8>,
}

/// A tensor's name, shape and storage dtype.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: Dtype,
}

impl TensorInfo {
    pub fn byte_len(&self) -> u64 {
        (self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8) as u64
    }
}

/// Where a component's tensors come from. Reading is async: in the browser a tensor comes from
/// IndexedDB or the network.
pub trait TensorSource {
    /// Every tensor the source holds, in storage order (reading in this order is sequential).
    fn tensors(&self) -> Vec<TensorInfo>;
    /// Reads one tensor.
    fn read<'a>(&'a mut self, name: &'a str) -> LocalFuture<'a, Result<RawTensor, LoadError>>;
}

/// Whether `name` lies under one of `prefixes` (parts of a checkpoint imvar never loads).
pub fn is_unused(name: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| name.starts_with(p))
}

/// A component's tensors on the device, by checkpoint name, flat (reshaped when taken).
pub struct DeviceTensors {
    tensors: BTreeMap<String, (Vec<usize>, Tensor<1>)>,
    /// Sum of the tensors' sizes on the device, in the compute dtype.
    pub device_bytes: u64,
}

/// Streams every tensor of `source` except those under `unused` to the device, one at a time,
/// so host memory holds one tensor however large the component. Each upload is a persistent
/// allocation: burn places it at its exact size instead of rounding it up to a pool bucket.
/// `on_tensor` gets each tensor's stored byte length once it is on the device.
pub async fn upload(
    source: &mut dyn TensorSource,
    component: &str,
    unused: &[&str],
    device: &Device,
    dtype: ComputeDType,
    on_tensor: &mut dyn FnMut(u64),
) -> Result<DeviceTensors, LoadError> {
    let mut tensors = BTreeMap::new();
    let mut device_bytes = 0;
    for info in source.tensors().into_iter().filter(|t| !is_unused(&t.name, unused)) {
        let raw = source.read(&info.name).await?;
        let stored = match raw.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            other => {
                return Err(LoadError::DType { component: component.into(), name: info.name, dtype: format!("{other:?}") });
            }
        };
        let numel: usize = raw.shape.iter().product();
        if raw.bytes.len() != numel * stored.size() {
            return Err(LoadError::Io(format!("{component}: tensor `{}` has {} bytes for shape {:?}", info.name, raw.bytes.len(), raw.shape)));
        }
        let stored_len = raw.bytes.len() as u64;
        let data = TensorData::from_bytes_vec(raw.bytes, [numel], stored);
        let target = DType::from(dtype.burn());
        let tensor = device.memory_persistent_allocations(data, |data| Tensor::<1>::from_data(data, (device, target)));
        device_bytes += (numel * target.size()) as u64;
        tensors.insert(info.name, (raw.shape, tensor));
        on_tensor(stored_len);
    }
    Ok(DeviceTensors { tensors, device_bytes })
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

/// Hands a component's tensors to the model code by name, checking shapes, and recording
/// which were used.
pub struct Weights {
    /// `None`: random weights of whatever shape the config implies (benchmarks of the real
    /// model's size without its files).
    tensors: Option<DeviceTensors>,
    component: String,
    device: Device,
    dtype: ComputeDType,
}

impl Weights {
    pub fn new(tensors: DeviceTensors, component: &str, device: &Device, dtype: ComputeDType) -> Self {
        Self { tensors: Some(tensors), component: component.into(), device: device.clone(), dtype }
    }

    /// Small uniform random weights, generated on the device, for every tensor asked for.
    pub fn random(component: &str, device: &Device, dtype: ComputeDType) -> Self {
        Self { tensors: None, component: component.into(), device: device.clone(), dtype }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.as_ref().is_some_and(|t| t.tensors.contains_key(name))
    }

    /// The tensor `name`, which must have exactly `shape`.
    pub fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Tensor<D>, LoadError> {
        let Some(tensors) = self.tensors.as_mut() else {
            let options = (&self.device, DType::from(self.dtype.burn()));
            return Ok(Tensor::random(shape, burn::tensor::Distribution::Uniform(-0.02, 0.02), options));
        };
        let (found, tensor) = tensors.tensors.remove(name).ok_or_else(|| LoadError::Missing {
            component: self.component.clone(),
            name: name.into(),
        })?;
        if found != shape {
            return Err(LoadError::Shape {
                component: self.component.clone(),
                name: name.into(),
                found,
                expected: shape.to_vec(),
            });
        }
        Ok(tensor.reshape(shape))
    }

    /// Fails on tensors the model did not use (the source's tensors under the unused prefixes
    /// were never uploaded).
    pub fn finish(self) -> Result<(), LoadError> {
        let Some(tensors) = self.tensors else { return Ok(()) };
        let extra: Vec<&String> = tensors.tensors.keys().collect();
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

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::config::VaeConfig;
    use crate::gpu::{ComputeDType, DTypeChoice};
    use crate::testing::{fixture_path, shared_gpu};
    use crate::vae::{AutoencoderKLDecoder, UNUSED};

    /// The tiny VAE's file with one tensor hidden, reshaped or invented (zeros where the
    /// file has no such data).
    struct Tampered {
        inner: SafetensorsFile,
        edit: fn(&mut BTreeMap<String, Vec<usize>>),
    }

    impl TensorSource for Tampered {
        fn tensors(&self) -> Vec<TensorInfo> {
            let mut shapes = self.inner.tensors().into_iter().map(|t| (t.name, t.shape)).collect();
            (self.edit)(&mut shapes);
            shapes.into_iter().map(|(name, shape)| TensorInfo { name, shape, dtype: Dtype::F32 }).collect()
        }

        fn read<'a>(&'a mut self, name: &'a str) -> LocalFuture<'a, Result<RawTensor, LoadError>> {
            let info = self.tensors().into_iter().find(|t| t.name == name).unwrap();
            if self.inner.tensors().contains(&info) {
                return self.inner.read(name);
            }
            let bytes = vec![0; info.byte_len() as usize];
            Box::pin(std::future::ready(Ok(RawTensor { shape: info.shape, dtype: Dtype::F32, bytes })))
        }
    }

    fn load_tampered(edit: fn(&mut BTreeMap<String, Vec<usize>>)) -> LoadError {
        pollster::block_on(async {
            let gpu = shared_gpu(DTypeChoice::Exactly(ComputeDType::F32)).await;
            let dir = fixture_path("tiny-sd-image-variations/vae");
            let config = VaeConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
            let inner = SafetensorsFile::open(&dir.join("diffusion_pytorch_model.safetensors")).unwrap();
            let mut source = Tampered { inner, edit };
            let tensors = upload(&mut source, "vae", UNUSED, &gpu.device, ComputeDType::F32, &mut |_| {}).await.unwrap();
            let mut w = Weights::new(tensors, "vae", &gpu.device, ComputeDType::F32);
            match AutoencoderKLDecoder::load(&mut w, &config) {
                Ok(_) => w.finish().unwrap_err(),
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
