//! imvar: Stable Diffusion image variations on WebGPU, in the browser and natively.
//!
//! The model core is platform-free; `web` (the browser API) and the CLI sit at the edges.

pub mod config;
pub mod gpu;
pub mod preprocess;
pub mod schedulers;
pub mod torch_rng;

#[cfg(target_arch = "wasm32")]
pub mod web;

#[cfg(test)]
pub(crate) mod testing;
