//! Where a model's configs and weights come from, behind one small trait, so the pipeline loads
//! the same way from a local folder (CLI, native tests), from bytes in memory (browser tests)
//! and from the Hub or the browser cache.

use crate::weights::{LoadError, TensorSource};

/// A model in the Hub layout (`model_index.json`, `unet/`, `vae/`, `image_encoder/`, ...).
pub trait ModelSource {
    /// A text file by its path in the repo, e.g. `unet/config.json`.
    fn text(&self, path: &str) -> Result<String, LoadError>;
    /// The weights of a component folder.
    fn tensors(&self, component: &str) -> Result<Box<dyn TensorSource>, LoadError>;
}

/// The weight file of a component: diffusers' name for diffusers models, transformers' for
/// CLIP; `variant` (e.g. "fp16") inserted before the extension.
pub fn weights_file(component: &str, variant: Option<&str>) -> String {
    let stem = if component == "image_encoder" { "model" } else { "diffusion_pytorch_model" };
    match variant {
        Some(v) => format!("{component}/{stem}.{v}.safetensors"),
        None => format!("{component}/{stem}.safetensors"),
    }
}

/// A model held in memory: repo paths to file bytes.
#[derive(Default)]
pub struct MemoryModel {
    files: std::collections::BTreeMap<String, std::sync::Arc<[u8]>>,
}

impl MemoryModel {
    pub fn insert(&mut self, path: &str, bytes: impl Into<std::sync::Arc<[u8]>>) {
        self.files.insert(path.into(), bytes.into());
    }

    fn file(&self, path: &str) -> Result<&std::sync::Arc<[u8]>, LoadError> {
        self.files.get(path).ok_or_else(|| LoadError::Io(format!("{path}: not in the model")))
    }
}

impl ModelSource for MemoryModel {
    fn text(&self, path: &str) -> Result<String, LoadError> {
        String::from_utf8(self.file(path)?.to_vec()).map_err(|_| LoadError::Io(format!("{path}: not UTF-8")))
    }

    fn tensors(&self, component: &str) -> Result<Box<dyn TensorSource>, LoadError> {
        let path = weights_file(component, None);
        Ok(Box::new(crate::weights::SafetensorsBytes::new(&path, self.file(&path)?.clone())?))
    }
}

/// A local folder in the Hub layout.
#[cfg(not(target_arch = "wasm32"))]
pub struct ModelDir {
    root: std::path::PathBuf,
    variant: Option<String>,
}

#[cfg(not(target_arch = "wasm32"))]
impl ModelDir {
    pub fn open(root: &std::path::Path, variant: Option<&str>) -> Result<Self, LoadError> {
        if !root.join("model_index.json").is_file() {
            return Err(LoadError::Io(format!(
                "{}: not a model folder (no model_index.json)",
                root.display()
            )));
        }
        Ok(Self { root: root.into(), variant: variant.map(String::from) })
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl ModelSource for ModelDir {
    fn text(&self, path: &str) -> Result<String, LoadError> {
        let full = self.root.join(path);
        std::fs::read_to_string(&full).map_err(|e| LoadError::Io(format!("{}: {e}", full.display())))
    }

    fn tensors(&self, component: &str) -> Result<Box<dyn TensorSource>, LoadError> {
        let path = self.root.join(weights_file(component, self.variant.as_deref()));
        Ok(Box::new(crate::weights::SafetensorsFile::open(&path)?))
    }
}
