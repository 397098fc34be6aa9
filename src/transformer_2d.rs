//! diffusers' `Transformer2DModel` as SD1.x uses it: GroupNorm, a 1x1 `proj_in`, transformer
//! blocks over the H*W tokens, a 1x1 `proj_out`, and a residual.

use burn::tensor::Tensor;

use crate::attention::BasicTransformerBlock;
use crate::layers::{Conv2d, GroupNorm};
use crate::weights::{LoadError, Weights};

pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Conv2d,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Conv2d,
}

impl Transformer2DModel {
    pub fn load(
        w: &mut Weights,
        name: &str,
        channels: usize,
        heads: usize,
        context_dim: usize,
        groups: usize,
    ) -> Result<Self, LoadError> {
        let n = |part: &str| format!("{name}.{part}");
        Ok(Self {
            norm: GroupNorm::load(w, &n("norm"), groups, channels, 1e-6)?,
            proj_in: Conv2d::load_1x1(w, &n("proj_in"), channels, channels)?,
            blocks: vec![BasicTransformerBlock::load(w, &n("transformer_blocks.0"), channels, heads, context_dim)?],
            proj_out: Conv2d::load_1x1(w, &n("proj_out"), channels, channels)?,
        })
    }

    pub fn forward(&self, x: Tensor<4>, context: &Tensor<3>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let tokens = self.proj_in.forward_to_tokens(self.norm.forward(x.clone()));
        let tokens = self.blocks.iter().fold(tokens, |t, block| block.forward(t, context.clone()));
        self.proj_out.forward_from_tokens(tokens, [h, w], x)
    }
}
