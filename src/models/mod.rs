//! The model core: one file per diffusers / transformers class, named after it, its weights
//! taken by their checkpoint names (`weights::Weights`), every dimension from `config`. Knows
//! nothing of where the weights come from.

pub mod attention;
pub mod bands;
pub mod clip_vision;
pub mod embeddings;
pub mod layers;
pub mod resnet;
pub mod transformer_2d;
pub mod unet_2d;
pub mod unet_2d_blocks;
pub mod vae;
