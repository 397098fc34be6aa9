//! The Hugging Face Hub: model ids and resolve URLs here; retrying single-range downloads over
//! a small `Fetch` trait in `client` (the browser's Fetch API in `web::fetch`, a blocking HTTP
//! client natively in `native_fetch`); the download plan and the weight cache behind a `Store`
//! trait in `cache` (with `manifest`, `store`, `progress` and `cached_model`); natively, the
//! standard Hugging Face cache folder in `hf_cache`.

pub mod cache;
mod cached_model;
mod client;
#[cfg(not(target_arch = "wasm32"))]
pub mod hf_cache;
mod manifest;
#[cfg(not(target_arch = "wasm32"))]
mod native_fetch;
mod progress;
mod store;

pub use cache::{CacheError, CachedEntry, DownloadOptions, HubCache, Pending};
pub use cached_model::CachedModel;
pub use client::{Download, Fetch, Headers, MAX_WHOLE_FILE, Remembered, Response, Retry, body_window, download};
pub use manifest::{FileEntry, Manifest, Storage, TensorEntry, f32_to_f16_bytes};
#[cfg(not(target_arch = "wasm32"))]
pub use native_fetch::NativeFetch;
pub use progress::{CacheEvent, Phase, Tracker};
pub use store::{Store, StoreError, is_whole};

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
pub const DEFAULT_REPO: &str = "lambdalabs/sd-image-variations-diffusers";
/// The model's `main` holds pickle files only; this pull-request ref has its safetensors.
pub const DEFAULT_REVISION: &str = "refs/pr/20";

/// A model repository at a revision on a Hub endpoint.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HubModel {
    pub endpoint: String,
    pub repo: String,
    pub revision: String,
}

impl Default for HubModel {
    fn default() -> Self {
        Self { endpoint: DEFAULT_ENDPOINT.into(), repo: DEFAULT_REPO.into(), revision: DEFAULT_REVISION.into() }
    }
}

/// The revision to use where none is asked for: the default model's safetensors ref, else `main`.
pub fn default_revision(repo: &str) -> &'static str {
    if repo == DEFAULT_REPO { DEFAULT_REVISION } else { "main" }
}

impl HubModel {
    /// `owner/name` or `owner/name@revision` (`default_revision` when absent) on `endpoint`.
    /// Each part is letters, digits, `-`, `_` and `.` (a revision's parts joined by `/`),
    /// never `.` or `..`.
    pub fn parse(spec: &str, endpoint: &str) -> Result<Self, HubError> {
        let (repo, revision) = spec.split_once('@').unwrap_or((spec, default_revision(spec)));
        // Names become URL segments and, natively, cache folders: no empty, `.` or `..` part.
        let valid = |s: &str| !s.is_empty() && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        match repo.split_once('/') {
            Some((owner, name)) if valid(owner) && valid(name) && revision.split('/').all(valid) => Ok(Self {
                endpoint: endpoint.trim_end_matches('/').into(),
                repo: repo.into(),
                revision: revision.into(),
            }),
            _ => Err(HubError::Invalid(format!("`{spec}` is not a model id (owner/name or owner/name@revision)"))),
        }
    }

    /// `{endpoint}/{repo}/resolve/{revision}/{path}`, the revision one URL-encoded segment.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}/resolve/{}/{}", self.endpoint, self.repo, encode_segment(&self.revision), path)
    }

    /// One string naming this model in caches and logs.
    pub fn key(&self) -> String {
        format!("{} {}@{}", self.endpoint, self.repo, self.revision)
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum HubError {
    #[error("{url}: not found on the Hub (404)")]
    NotFound { url: String },
    #[error("{url}: the Hub answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: network error after {attempts} attempts: {message}")]
    Network { url: String, attempts: u32, message: String },
    #[error("{url}: the file changed on the Hub while it was downloaded (its ETag is not the planned one); load again")]
    Changed { url: String },
    #[error("{0}")]
    Invalid(String),
}

impl HubError {
    /// The network was unreachable (as opposed to the Hub answering no).
    pub fn is_offline(&self) -> bool {
        matches!(self, HubError::Network { .. })
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_the_revision_as_one_segment() {
        let model = HubModel::default();
        assert_eq!(
            model.url("unet/diffusion_pytorch_model.safetensors"),
            "https://huggingface.co/lambdalabs/sd-image-variations-diffusers/resolve/refs%2Fpr%2F20/unet/diffusion_pytorch_model.safetensors"
        );
        let parsed = HubModel::parse("a-b/c.d_e@v1.0", "http://127.0.0.1:9/").unwrap();
        assert_eq!(parsed.url("x.json"), "http://127.0.0.1:9/a-b/c.d_e/resolve/v1.0/x.json");
        assert_eq!(HubModel::parse("owner/name", DEFAULT_ENDPOINT).unwrap().revision, "main");
        assert_eq!(HubModel::parse(DEFAULT_REPO, DEFAULT_ENDPOINT).unwrap(), HubModel::default());
        assert_eq!(HubModel::parse(&format!("{DEFAULT_REPO}@main"), DEFAULT_ENDPOINT).unwrap().revision, "main");
        assert_eq!(HubModel::parse("a/b@refs/pr/20", DEFAULT_ENDPOINT).unwrap().revision, "refs/pr/20");
        for bad in ["name", "a/b/c", "/b", "a/b@", "a b/c", "../b", "a/..", "a/b@..", "a/b@refs/../../x", "a/b@/abs", "a/b@x//y"] {
            assert!(HubModel::parse(bad, DEFAULT_ENDPOINT).is_err(), "{bad}");
        }
    }
}
