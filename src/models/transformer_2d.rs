//! diffusers' `Transformer2DModel` as SD1.x uses it: GroupNorm, a 1x1 `proj_in`, transformer
//! blocks over the H*W tokens, a 1x1 `proj_out`, and a residual.

use burn::tensor::Tensor;

use crate::models::attention::BasicTransformerBlock;
use crate::models::layers::{GroupNorm, Linear};
use crate::weights::{LoadError, Weights};

pub struct Transformer2DModel {
    norm: GroupNorm,
    /// The checkpoint's 1x1 convolutions, run as Linears between pixels and tokens.
    proj_in: Linear,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Linear,
}

impl Transformer2DModel {
    pub fn load(w: &Weights, channels: usize, heads: usize, context_dim: usize, groups: usize) -> Result<Self, LoadError> {
        Ok(Self {
            norm: GroupNorm::load(&w.pp("norm"), groups, channels, 1e-6)?,
            proj_in: Linear::load_pointwise(&w.pp("proj_in"), channels, channels)?,
            blocks: vec![BasicTransformerBlock::load(&w.pp("transformer_blocks.0"), channels, heads, context_dim)?],
            proj_out: Linear::load_pointwise(&w.pp("proj_out"), channels, channels)?,
        })
    }

    pub fn forward(&self, x: Tensor<4>, context: &Tensor<3>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let tokens = self.proj_in.forward_pixels_to_tokens(self.norm.forward(x.clone()));
        let tokens = self.blocks.iter().fold(tokens, |t, block| block.forward(t, context.clone()));
        self.proj_out.forward_tokens_to_pixels(tokens, [h, w], x)
    }
}
