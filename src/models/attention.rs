//! diffusers' `Attention` (self and cross), `FeedForward` with GEGLU, and `BasicTransformerBlock`.

use burn::tensor::Tensor;

use crate::kernels;
use crate::models::layers::{LayerNorm, Linear};
use crate::weights::{LoadError, Weights};

/// Multi-head attention over `[B, L, C]` tokens.
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl Attention {
    /// `context_dim` is the key/value input width (the query's for self-attention). `qkv_bias`:
    /// the UNet's projections have none, the VAE's do. Accepts the names diffusers 0.9 saved
    /// (`query/key/value/proj_attn`) as well as today's (`to_q/to_k/to_v/to_out.0`).
    pub fn load(w: &Weights, dim: usize, context_dim: usize, heads: usize, qkv_bias: bool) -> Result<Self, LoadError> {
        let legacy = w.contains("query.weight");
        let names = if legacy { ["query", "key", "value", "proj_attn"] } else { ["to_q", "to_k", "to_v", "to_out.0"] };
        Self::load_named(w, names, dim, context_dim, heads, qkv_bias)
    }

    /// CLIP's self-attention: `q_proj/k_proj/v_proj/out_proj`, all with bias.
    pub fn load_clip(w: &Weights, dim: usize, heads: usize) -> Result<Self, LoadError> {
        Self::load_named(w, ["q_proj", "k_proj", "v_proj", "out_proj"], dim, dim, heads, true)
    }

    fn load_named(
        w: &Weights,
        [q, k, v, out]: [&str; 4],
        dim: usize,
        context_dim: usize,
        heads: usize,
        qkv_bias: bool,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            to_q: Linear::load(&w.pp(q), dim, dim, qkv_bias)?,
            to_k: Linear::load(&w.pp(k), context_dim, dim, qkv_bias)?,
            to_v: Linear::load(&w.pp(v), context_dim, dim, qkv_bias)?,
            to_out: Linear::load(&w.pp(out), dim, dim, true)?,
            heads,
        })
    }

    /// Self-attention of `x`, plus `residual` (added in the output projection).
    pub fn forward_self(&self, x: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        let (q, k, v) = (self.to_q.forward(x.clone()), self.to_k.forward(x.clone()), self.to_v.forward(x));
        self.to_out.forward_residual(self.attend(q, k, v), residual)
    }

    /// Self-attention over the pixels of `x` `[B, C, H, W]`, plus `residual` of that shape (the
    /// VAE's mid-block attention), with no transposes to tokens and back.
    pub fn forward_self_pixels(&self, x: Tensor<4>, residual: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let project = |linear: &Linear| linear.forward_pixels_to_tokens(x.clone());
        let (q, k, v) = (project(&self.to_q), project(&self.to_k), project(&self.to_v));
        self.to_out.forward_tokens_to_pixels(self.attend(q, k, v), [h, w], residual)
    }

    /// Cross-attention of `x` over `context` `[B, T, context_dim]`, plus `residual`.
    pub fn forward_cross(&self, x: Tensor<3>, context: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        let [b, l, _] = x.dims();
        if context.dims()[1] == 1 {
            // One context token: its softmax weight is exactly 1 for every query, so the output
            // is the projected value, the same at every position. Exact, and no score matrix.
            let c = self.to_out.forward(self.to_v.forward(context));
            let width = c.dims()[2];
            return c.expand([b, l, width]) + residual;
        }
        let (q, k, v) = (self.to_q.forward(x), self.to_k.forward(context.clone()), self.to_v.forward(context));
        self.to_out.forward_residual(self.attend(q, k, v), residual)
    }

    /// Scaled dot-product attention (scale 1/sqrt(head_dim)), heads read from the channels.
    fn attend(&self, q: Tensor<3>, k: Tensor<3>, v: Tensor<3>) -> Tensor<3> {
        kernels::attention(q, k, v, self.heads)
    }
}

/// `FeedForward` with GEGLU: `proj` to twice the inner width, `hidden * gelu(gate)`, back.
pub struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    pub fn load(w: &Weights, dim: usize) -> Result<Self, LoadError> {
        let inner = dim * 4;
        Ok(Self {
            proj: Linear::load(&w.pp("net.0.proj"), dim, inner * 2, true)?,
            out: Linear::load(&w.pp("net.2"), inner, dim, true)?,
        })
    }

    /// `FeedForward(x) + residual`.
    pub fn forward(&self, x: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        self.out.forward_residual(kernels::geglu(self.proj.forward(x)), residual)
    }
}

/// Self-attention, cross-attention and feed-forward, each pre-normed with a residual.
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn load(w: &Weights, dim: usize, heads: usize, context_dim: usize) -> Result<Self, LoadError> {
        Ok(Self {
            norm1: LayerNorm::load(&w.pp("norm1"), dim, 1e-5)?,
            attn1: Attention::load(&w.pp("attn1"), dim, dim, heads, false)?,
            norm2: LayerNorm::load(&w.pp("norm2"), dim, 1e-5)?,
            attn2: Attention::load(&w.pp("attn2"), dim, context_dim, heads, false)?,
            norm3: LayerNorm::load(&w.pp("norm3"), dim, 1e-5)?,
            ff: FeedForward::load(&w.pp("ff"), dim)?,
        })
    }

    pub fn forward(&self, x: Tensor<3>, context: Tensor<3>) -> Tensor<3> {
        let x = self.attn1.forward_self(self.norm1.forward(x.clone()), x);
        let x = self.attn2.forward_cross(self.norm2.forward(x.clone()), context, x);
        self.ff.forward(self.norm3.forward(x.clone()), x)
    }
}
