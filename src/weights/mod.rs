//! Weights by checkpoint name. A `TensorSource` hands out one tensor at a time (a local
//! safetensors file read by offset in `safetensors`; the Hub cache or Range requests in
//! `hub::cache`), `upload` streams them to the device in the compute dtype, so a component is
//! never held whole in host memory, and `Weights` hands them to the model code by name,
//! checking shapes. `source` says where a whole model comes from and which of its parts the
//! pipeline loads.

mod safetensors;
pub mod source;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Display;
use std::rc::Rc;

use ::safetensors::Dtype;
use burn::tensor::{DType, Device, Tensor, TensorData};

pub use self::safetensors::SafetensorsIndex;
#[cfg(not(target_arch = "wasm32"))]
pub use self::safetensors::SafetensorsFile;
pub use source::{COMPONENTS, ModelSource, unused_prefixes};
use crate::LocalFuture;

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
    /// A tensor or file could not be read where it is kept (a local file, the browser's store),
    /// or its bytes do not fit what its header says.
    #[error("{0}")]
    Io(String),
    /// A tensor's bytes had to come over the network and could not.
    #[error("{0}")]
    Network(String),
    /// The store that keeps a tensor failed; `full` when its quota refused a write.
    #[error("{message}")]
    Storage { message: String, full: bool },
}

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
    dtype: DType,
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
        let tensor = device.memory_persistent_allocations(data, |data| Tensor::<1>::from_data(data, (device, dtype)));
        device_bytes += (numel * dtype.size()) as u64;
        tensors.insert(info.name, (raw.shape, tensor));
        on_tensor(stored_len);
    }
    Ok(DeviceTensors { tensors, device_bytes })
}

/// Hands a component's tensors to the model code by name, checking shapes, and recording
/// which were taken. A cheap handle: every view `pp` makes shares the one component, so
/// each loader names only its own parts (`weight`, `conv1`) and the checkpoint name is the
/// path of prefixes down to it.
#[derive(Clone)]
pub struct Weights {
    component: Rc<Component>,
    /// The checkpoint name of the module this view is of (`down_blocks.0.resnets.1`); empty
    /// for the whole component.
    prefix: String,
}

/// What every view of a component's weights shares.
struct Component {
    name: String,
    /// The tensors not yet taken. `None`: random weights of whatever shape the config implies
    /// (benchmarks of the real model's size without its files).
    tensors: Option<RefCell<DeviceTensors>>,
    device: Device,
    dtype: DType,
}

impl Weights {
    pub fn new(tensors: DeviceTensors, component: &str, device: &Device, dtype: DType) -> Self {
        Self::of(Component { name: component.into(), tensors: Some(RefCell::new(tensors)), device: device.clone(), dtype })
    }

    /// Small uniform random weights, generated on the device, for every tensor asked for.
    pub fn random(component: &str, device: &Device, dtype: DType) -> Self {
        Self::of(Component { name: component.into(), tensors: None, device: device.clone(), dtype })
    }

    fn of(component: Component) -> Self {
        Self { component: Rc::new(component), prefix: String::new() }
    }

    /// The view of the submodule `part` (push prefix): `w.pp("mid_block").pp("resnets").pp(0)`
    /// or `w.pp("mid_block.resnets.0")`.
    pub fn pp(&self, part: impl Display) -> Self {
        Self { component: self.component.clone(), prefix: self.name(part) }
    }

    /// Whether the tensor `name` of this view is there to take (never, for random weights).
    pub fn contains(&self, name: &str) -> bool {
        self.component.tensors.as_ref().is_some_and(|t| t.borrow().tensors.contains_key(&self.name(name)))
    }

    /// The tensor `name` of this view, which must have exactly `shape`.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>, LoadError> {
        let component = &*self.component;
        let Some(tensors) = &component.tensors else {
            let options = (&component.device, component.dtype);
            return Ok(Tensor::random(shape, burn::tensor::Distribution::Uniform(-0.02, 0.02), options));
        };
        let name = self.name(name);
        let Some((found, tensor)) = tensors.borrow_mut().tensors.remove(&name) else {
            return Err(LoadError::Missing { component: component.name.clone(), name });
        };
        if found != shape {
            return Err(LoadError::Shape { component: component.name.clone(), name, found, expected: shape.to_vec() });
        }
        Ok(tensor.reshape(shape))
    }

    /// Fails on the component's tensors no view took (the source's tensors under the unused
    /// prefixes were never uploaded).
    pub fn finish(self) -> Result<(), LoadError> {
        let Some(tensors) = &self.component.tensors else { return Ok(()) };
        let tensors = tensors.borrow();
        let extra: Vec<&String> = tensors.tensors.keys().collect();
        if extra.is_empty() {
            return Ok(());
        }
        let mut names = extra.iter().take(5).map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        if extra.len() > 5 {
            names += &format!(" and {} more", extra.len() - 5);
        }
        Err(LoadError::Extra { component: self.component.name.clone(), names })
    }

    /// The checkpoint name of `part` of this view.
    fn name(&self, part: impl Display) -> String {
        if self.prefix.is_empty() { part.to_string() } else { format!("{}.{part}", self.prefix) }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::config::VaeConfig;
    use crate::gpu::{ComputeDType, DTypeChoice};
    use crate::testing::{fixture_path, shared_gpu};
    use crate::models::vae::AutoencoderKLDecoder;

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
            let tensors = upload(&mut source, "vae", unused_prefixes("vae"), &gpu.device, DType::F32, &mut |_| {}).await.unwrap();
            let w = Weights::new(tensors, "vae", &gpu.device, DType::F32);
            match AutoencoderKLDecoder::load(&w, &config) {
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
