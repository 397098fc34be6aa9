//! Where a model's configs and weights come from, behind one small trait, so the pipeline loads
//! the same way from a local folder (CLI, native tests) and from the Hub or the browser cache
//! (`hub::cache`); and which parts of a model the pipeline needs.

use crate::LocalFuture;
use crate::weights::{LoadError, TensorSource};

/// The components imvar loads, with the checkpoint prefixes it never needs from each (so they
/// are neither downloaded nor uploaded): generation decodes latents, so the VAE's encoder half
/// is left out; CLIP's `position_ids` is an int64 buffer (0, 1, 2, ...) that transformers
/// before 4.31 saved with the weights, as the real repo's image encoder has it.
pub const COMPONENTS: [(&str, &[&str]); 3] =
    [("image_encoder", &["vision_model.embeddings.position_ids"]), ("unet", &[]), ("vae", &["encoder.", "quant_conv."])];

/// The checkpoint prefixes `component` does not need.
pub fn unused_prefixes(component: &str) -> &'static [&'static str] {
    COMPONENTS.iter().find(|(name, _)| *name == component).map_or(&[], |(_, unused)| unused)
}

/// The text files the pipeline reads: the model index, the scheduler's and each component's
/// config.
pub fn text_paths() -> Vec<String> {
    let mut paths = vec!["model_index.json".to_string(), "scheduler/scheduler_config.json".to_string()];
    paths.extend(COMPONENTS.iter().map(|(c, _)| format!("{c}/config.json")));
    paths
}

/// The weights variant imvar prefers where a repo ships it: half the bytes of the fp32 files.
pub const PREFERRED_VARIANT: &str = "fp16";

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

/// The weight files to look for, best first: `variant`'s, then the plain file (a repo may ship
/// a variant for some components only).
pub fn weights_file_candidates(component: &str, variant: Option<&str>) -> Vec<String> {
    variant.map(|v| weights_file(component, Some(v))).into_iter().chain([weights_file(component, None)]).collect()
}

/// The weight file a local folder in the Hub layout holds for `component`, by
/// `weights_file_candidates`; `None` when it holds none.
#[cfg(not(target_arch = "wasm32"))]
pub fn local_weights_file(root: &std::path::Path, component: &str, variant: Option<&str>) -> Option<String> {
    weights_file_candidates(component, variant).into_iter().find(|file| root.join(file).is_file())
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
