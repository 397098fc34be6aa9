//! The JavaScript API's options and reports, parsed and shaped without a browser so they are
//! tested natively: `load` / `pending` / `deleteCachedModel` options, `generate` options, and the
//! camelCase keys of every report handed to JavaScript.

use serde::Deserialize;

use super::errors::OptionError;
use crate::gpu::{ComputeDType, DTypeChoice};
use crate::hub::{self, DownloadOptions, HubModel, Storage};
use crate::pipeline::GenerateOptions;
use crate::schedulers::SchedulerKind;

/// A JavaScript function option, kept as it is; natively (in tests) any value is accepted and
/// dropped.
#[cfg(target_arch = "wasm32")]
pub type Callback = wasm_bindgen::JsValue;
#[cfg(not(target_arch = "wasm32"))]
pub type Callback = serde::de::IgnoredAny;

/// `ImageVariations.load` options (camelCase in JavaScript). Every field is optional.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LoadOptions {
    /// Hub endpoint; `https://huggingface.co` by default. Only http(s) URLs.
    pub endpoint: Option<String>,
    /// Repo id; `lambdalabs/sd-image-variations-diffusers` by default.
    pub model: Option<String>,
    /// Branch, tag, commit or ref; `hub::default_revision` of the repo by default.
    pub revision: Option<String>,
    /// "auto" (default), "f16" or "f32".
    pub dtype: Option<String>,
    /// Keep the weights in IndexedDB (default true); false streams them to the GPU only.
    pub cache: Option<bool>,
    /// IndexedDB database name ("imvar").
    pub database: Option<String>,
    /// Bytes per Range request (16 MiB; at most 64 MiB).
    pub chunk_bytes: Option<u64>,
    /// Requests in flight (4; 1 to 16).
    pub parallel: Option<usize>,
    /// Called with each `CacheEvent`, keys in camelCase.
    #[cfg_attr(target_arch = "wasm32", serde(with = "serde_wasm_bindgen::preserve"))]
    pub on_progress: Callback,
}

/// The database weights are kept in unless the options name another.
pub const DEFAULT_DATABASE: &str = "imvar";

impl LoadOptions {
    pub fn hub_model(&self) -> Result<HubModel, OptionError> {
        let endpoint = self.endpoint.as_deref().unwrap_or(hub::DEFAULT_ENDPOINT);
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(OptionError(format!("endpoint `{endpoint}` is not an http(s) URL")));
        }
        let repo = self.model.as_deref().unwrap_or(hub::DEFAULT_REPO);
        let revision = self.revision.as_deref().unwrap_or(hub::default_revision(repo));
        HubModel::parse(&format!("{repo}@{revision}"), endpoint).map_err(|e| OptionError(e.to_string()))
    }

    pub fn download(&self) -> Result<DownloadOptions, OptionError> {
        let mut options = DownloadOptions::default();
        if let Some(bytes) = self.chunk_bytes {
            if !(1..=64 << 20).contains(&bytes) {
                return Err(OptionError(format!("chunkBytes must be between 1 and 64 MiB, not {bytes}")));
            }
            options.chunk_bytes = bytes;
        }
        if let Some(parallel) = self.parallel {
            options.parallel = parallel.clamp(1, 16);
        }
        Ok(options)
    }

    pub fn dtype(&self) -> Result<DTypeChoice, OptionError> {
        parse_dtype(self.dtype.as_deref())
    }

    pub fn database(&self) -> &str {
        self.database.as_deref().unwrap_or(DEFAULT_DATABASE)
    }
}

/// "auto" (also when absent), "f16" or "f32".
pub fn parse_dtype(dtype: Option<&str>) -> Result<DTypeChoice, OptionError> {
    dtype.map_or(Ok(DTypeChoice::Auto), |s| s.parse().map_err(|e: crate::gpu::GpuError| OptionError(e.to_string())))
}

/// How weights are kept for a device computing in `dtype`: fp16 for f16, else as the files have
/// them.
pub fn storage_for(dtype: ComputeDType) -> Storage {
    if dtype == ComputeDType::F16 { Storage::F16 } else { Storage::AsStored }
}

/// `generate` options (camelCase in JavaScript). Every field is optional.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GenerateRequest {
    pub n: Option<usize>,
    pub steps: Option<usize>,
    pub guidance: Option<f32>,
    /// A whole number in [0, 2^53); random when absent.
    pub seed: Option<f64>,
    pub scheduler: Option<String>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// Called after every UNet call with `{ step, total, elapsedSeconds, etaSeconds, first,
    /// previews: [{ width, height, rgb }] }`.
    #[cfg_attr(target_arch = "wasm32", serde(with = "serde_wasm_bindgen::preserve"))]
    pub on_step: Callback,
    /// An `AbortSignal`: the run stops after the step in progress.
    #[cfg_attr(target_arch = "wasm32", serde(with = "serde_wasm_bindgen::preserve"))]
    pub signal: Callback,
}

/// Seeds JavaScript numbers hold exactly: whole numbers below 2^53.
const MAX_SEED: f64 = 9_007_199_254_740_992.0;

impl GenerateRequest {
    /// The pipeline's options: absent fields take its defaults, an absent seed is
    /// `random_seed`, a missing width or height the model's `default_size`.
    pub fn options(&self, default_size: (usize, usize), random_seed: impl FnOnce() -> u64, previews: bool) -> Result<GenerateOptions, OptionError> {
        let seed = match self.seed {
            None => random_seed(),
            Some(s) if (0.0..MAX_SEED).contains(&s) && s.fract() == 0.0 => s as u64,
            Some(s) => return Err(OptionError(format!("seed must be a whole number from 0 to 2^53, not {s}"))),
        };
        let scheduler: Option<SchedulerKind> = self.scheduler.as_deref().map(str::parse).transpose().map_err(|e: String| OptionError(e))?;
        let size = match (self.width, self.height) {
            (None, None) => None,
            (w, h) => Some((w.unwrap_or(default_size.0), h.unwrap_or(default_size.1))),
        };
        let defaults = GenerateOptions::default();
        Ok(GenerateOptions {
            n: self.n.unwrap_or(defaults.n),
            steps: self.steps.unwrap_or(defaults.steps),
            guidance: self.guidance.unwrap_or(defaults.guidance),
            seed,
            scheduler,
            size,
            max_batch: None,
            previews,
        })
    }
}

/// A report's key as JavaScript spells it (`overall_done` → `overallDone`).
pub fn camel_case(key: &str) -> String {
    let mut parts = key.split('_');
    let first = parts.next().unwrap_or_default().to_string();
    parts.fold(first, |mut out, part| {
        let mut chars = part.chars();
        if let Some(c) = chars.next() {
            out.extend(c.to_uppercase());
            out.push_str(chars.as_str());
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> Result<LoadOptions, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn load_options_default_to_the_model_at_its_safetensors_ref() {
        let options = load("{}").unwrap();
        assert_eq!(options.hub_model().unwrap(), HubModel::default());
        assert_eq!(options.database(), "imvar");
        assert_eq!(options.dtype().unwrap(), DTypeChoice::Auto);
        let other = load(r#"{"model": "me/mine", "endpoint": "http://127.0.0.1:9/", "onProgress": 1}"#).unwrap();
        let model = other.hub_model().unwrap();
        assert_eq!((model.repo.as_str(), model.revision.as_str(), model.endpoint.as_str()), ("me/mine", "main", "http://127.0.0.1:9"));
    }

    #[test]
    fn bad_load_options_are_named() {
        let endpoint = load(r#"{"endpoint": "javascript:alert(1)"}"#).unwrap().hub_model().unwrap_err();
        assert!(endpoint.to_string().contains("endpoint `javascript:alert(1)` is not an http(s) URL"), "{endpoint}");
        let chunk = load(r#"{"chunkBytes": 0}"#).unwrap().download().unwrap_err();
        assert!(chunk.to_string().contains("chunkBytes must be between 1 and 64 MiB"), "{chunk}");
        assert!(load(r#"{"dtype": "bf16"}"#).unwrap().dtype().unwrap_err().to_string().contains("bf16"));
        assert!(load(r#"{"model": "not a repo"}"#).unwrap().hub_model().is_err());
        let unknown = load(r#"{"modle": "x/y"}"#).err().unwrap();
        assert!(unknown.to_string().contains("modle"), "{unknown}");
        assert_eq!(load(r#"{"parallel": 99}"#).unwrap().download().unwrap().parallel, 16);
    }

    fn generate(json: &str) -> Result<GenerateOptions, OptionError> {
        let request: GenerateRequest = serde_json::from_str(json).map_err(|e| OptionError(e.to_string()))?;
        request.options((512, 384), || 7, false)
    }

    #[test]
    fn generate_options_take_the_pipeline_defaults() {
        let options = generate("{}").unwrap();
        assert_eq!(options, GenerateOptions { seed: 7, ..Default::default() });
        let sized = generate(r#"{"width": 256, "seed": 42, "scheduler": "euler-a", "n": 3}"#).unwrap();
        assert_eq!((sized.size, sized.seed, sized.scheduler, sized.n), (Some((256, 384)), 42, Some(SchedulerKind::EulerAncestral), 3));
    }

    #[test]
    fn bad_generate_options_are_named() {
        for (json, words) in [
            (r#"{"seed": -1}"#, "seed must be a whole number"),
            (r#"{"seed": 1.5}"#, "seed must be a whole number"),
            (r#"{"seed": 9007199254740992}"#, "seed must be a whole number"),
            (r#"{"scheduler": "plms"}"#, "plms"),
            (r#"{"stpes": 3}"#, "stpes"),
        ] {
            let err = generate(json).unwrap_err();
            assert!(err.to_string().contains(words), "{json}: {err}");
        }
    }

    #[test]
    fn report_keys_reach_javascript_in_camel_case() {
        for (key, js) in [("overall_done", "overallDone"), ("eta_seconds", "etaSeconds"), ("max_storage_buffer_binding_size", "maxStorageBufferBindingSize"), ("seed", "seed"), ("n", "n")] {
            assert_eq!(camel_case(key), js);
        }
    }
}
