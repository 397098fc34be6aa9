//! Where a model's configs and weights come from, behind one small trait, so the pipeline loads
//! the same way from a local folder (CLI, native tests) and from the Hub or the browser cache
//! (`weight_cache`).

use crate::weights::{LoadError, LocalFuture, TensorSource};

/// A model in the Hub layout (`model_index.json`, `unet/`, `vae/`, `image_encoder/`, ...).
/// Async, because in the browser files come from IndexedDB or the network.
pub trait ModelSource {
    /// A text file by its path in the repo, e.g. `unet/config.json`.
    fn text<'a>(&'a self, path: &'a str) -> LocalFuture<'a, Result<String, LoadError>>;
    /// The weights of a component folder.
    fn tensors<'a>(&'a self, component: &'a str) -> LocalFuture<'a, Result<Box<dyn TensorSource + 'a>, LoadError>>;
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

/// The weight file a local folder in the Hub layout holds for `component`: `variant`'s where
/// there is one, else the plain file (a repo may ship a variant for some components only);
/// `None` when it holds neither.
#[cfg(not(target_arch = "wasm32"))]
pub fn local_weights_file(root: &std::path::Path, component: &str, variant: Option<&str>) -> Option<String> {
    let preferred = variant.map(|v| weights_file(component, Some(v)));
    preferred.into_iter().chain([weights_file(component, None)]).find(|file| root.join(file).is_file())
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
    fn text<'a>(&'a self, path: &'a str) -> LocalFuture<'a, Result<String, LoadError>> {
        let full = self.root.join(path);
        let text = std::fs::read_to_string(&full).map_err(|e| LoadError::Io(format!("{}: {e}", full.display())));
        Box::pin(std::future::ready(text))
    }

    /// The variant's file where the component has one, else the plain file (whose absence is
    /// then the error).
    fn tensors<'a>(&'a self, component: &'a str) -> LocalFuture<'a, Result<Box<dyn TensorSource + 'a>, LoadError>> {
        let file = local_weights_file(&self.root, component, self.variant.as_deref()).unwrap_or_else(|| weights_file(component, None));
        let path = self.root.join(file);
        let source = crate::weights::SafetensorsFile::open(&path).map(|s| Box::new(s) as Box<dyn TensorSource>);
        Box::pin(std::future::ready(source))
    }
}
