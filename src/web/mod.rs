//! The browser edge: what JavaScript calls. `options` (parsing and report shapes) and `errors`
//! (which `Error` name each failure gets) compile natively, where they are tested; `api` is the
//! thin wasm-bindgen shell over them and the core, with the Fetch API (`fetch`), IndexedDB
//! (`idb`) and the wasm heap counter (`heap`) beside it.

pub mod errors;
pub mod options;

#[cfg(target_arch = "wasm32")]
mod api;
#[cfg(target_arch = "wasm32")]
pub mod fetch;
#[cfg(target_arch = "wasm32")]
pub mod heap;
#[cfg(target_arch = "wasm32")]
pub mod idb;

#[cfg(target_arch = "wasm32")]
pub use api::{ImageVariations, LoadSummary, cached_models, capabilities, delete_cached_model, load_pipeline, pending_download, storage_estimate};
pub use options::LoadOptions;
