//! imvar: Stable Diffusion image variations on WebGPU, in the browser and natively.
//!
//! The model core is platform-free; `web` (the browser API) and the CLI sit at the edges.

pub mod attention;
#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod clip_vision;
pub mod config;
pub mod embeddings;
pub mod gpu;
pub mod heap;
#[cfg(not(target_arch = "wasm32"))]
pub mod hf_cache;
pub mod hub;
pub mod kernels;
pub mod layers;
pub mod model_files;
pub mod pipeline;
pub mod preprocess;
pub mod resnet;
pub mod schedulers;
pub mod torch_rng;
pub mod transformer_2d;
pub mod unet_2d;
pub mod unet_2d_blocks;
pub mod vae;
pub mod weight_cache;
pub mod weights;

#[cfg(target_arch = "wasm32")]
pub mod idb_store;
#[cfg(target_arch = "wasm32")]
pub mod web;
#[cfg(target_arch = "wasm32")]
pub mod web_fetch;

#[cfg(test)]
pub(crate) mod testing;
