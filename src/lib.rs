//! imvar: Stable Diffusion image variations on WebGPU, in the browser and natively.
//!
//! The layers, each using only those listed before it:
//! - `config`, `torch_rng`, `units`, `js`: leaves (the repo's config files; PyTorch's generator;
//!   byte counts for people; JavaScript globals, in the browser only).
//! - `gpu`: opens the device and says what it can do.
//! - `kernels`: our WGSL kernels on burn's tensors.
//! - `weights`: tensors by checkpoint name from any source, and which files a model has.
//! - `models`: one file per diffusers / transformers class.
//! - `schedulers`: the five noise schedulers.
//! - `pipeline`: preprocessing, the generation loop, previews.
//! - `hub`: the Hugging Face Hub client, the download plan and the weight cache.
//! - `web`: the browser edge (its option parsing and error mapping compile natively too).
//!
//! The CLI (`src/cli/`) is the binary, on top of all of them.

pub mod config;
pub mod gpu;
pub mod hub;
#[cfg(target_arch = "wasm32")]
pub mod js;
pub mod kernels;
pub mod models;
pub mod pipeline;
pub mod schedulers;
pub mod torch_rng;
pub mod units;
pub mod web;
pub mod weights;

#[cfg(test)]
pub(crate) mod testing;

/// A boxed future that need not be `Send` (browser futures never are): what the platform
/// traits (`hub::Fetch`, `hub::cache::Store`, `weights::TensorSource`) return.
pub type LocalFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>>;
