//! The PyTorch layers the models are built from (`nn.Linear`, `nn.Conv2d`, `nn.GroupNorm`,
//! `nn.LayerNorm`), loaded by checkpoint name. Norm statistics are computed in f32 whatever the
//! compute dtype, as PyTorch's autocast does. All of them run on our own kernels (`kernels`).

use burn::tensor::Tensor;

use crate::kernels::{self, Epilogue};
use crate::models::bands::Bands;
use crate::weights::{LoadError, Weights};

pub struct Linear {
    /// `[out, in]`, as the checkpoint has it.
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
}

impl Linear {
    pub fn load(w: &Weights, inputs: usize, outputs: usize, bias: bool) -> Result<Self, LoadError> {
        Ok(Self {
            weight: w.tensor("weight", [outputs, inputs])?,
            bias: bias.then(|| w.tensor("bias", [outputs])).transpose()?,
        })
    }

    /// A 1x1 `nn.Conv2d` (weight `[out, in, 1, 1]`, with bias) as the Linear over channels it
    /// is, to run on pixels or tokens alike (`forward_pixels_to_tokens` and back).
    pub fn load_pointwise(w: &Weights, inputs: usize, outputs: usize) -> Result<Self, LoadError> {
        Ok(Self {
            weight: w.tensor("weight", [outputs, inputs, 1, 1])?.reshape([outputs, inputs]),
            bias: Some(w.tensor("bias", [outputs])?),
        })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        kernels::linear(x, self.weight.clone(), self.bias.clone(), None)
    }

    /// `quick_gelu(forward(x))` in one launch (CLIP's MLP).
    pub fn forward_quick_gelu<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        kernels::linear_quick_gelu(x, self.weight.clone(), self.bias.clone())
    }

    /// `forward(x) + residual` in one launch.
    pub fn forward_residual<const D: usize>(&self, x: Tensor<D>, residual: Tensor<D>) -> Tensor<D> {
        kernels::linear(x, self.weight.clone(), self.bias.clone(), Some(residual))
    }

    /// The layer at every pixel of `[B, C, H, W]`, written as tokens `[B, H * W, O]`: a Linear
    /// over channels is a 1x1 convolution, so no transpose to tokens comes first.
    pub fn forward_pixels_to_tokens(&self, x: Tensor<4>) -> Tensor<3> {
        kernels::conv1x1_to_tokens(x, self.pointwise_weight(), self.bias.clone())
    }

    /// The layer on tokens `[B, H * W, C]`, written as `[B, O, H, W]` plus `residual`.
    pub fn forward_tokens_to_pixels(&self, tokens: Tensor<3>, size: [usize; 2], residual: Tensor<4>) -> Tensor<4> {
        kernels::conv1x1_from_tokens(tokens, size, self.pointwise_weight(), self.bias.clone(), Some(residual))
    }

    /// Adds `extra` to the bias (see `ResnetBlock2D::load`).
    pub fn add_to_bias(&mut self, extra: Tensor<1>) {
        self.bias = Some(match self.bias.take() {
            Some(bias) => bias + extra,
            None => extra,
        });
    }

    fn pointwise_weight(&self) -> Tensor<4> {
        let [outputs, inputs] = self.weight.dims();
        self.weight.clone().reshape([outputs, inputs, 1, 1])
    }
}

/// An `nn.Conv2d`'s settings besides its widths and kernel size; the default is PyTorch's.
#[derive(Clone, Copy, Debug)]
pub struct Conv2dConfig {
    /// Step between output pixels, in input pixels; 1 by default.
    pub stride: usize,
    /// Zeros added on every side of the input; 0 by default.
    pub padding: usize,
    /// Whether the layer has a bias; true by default.
    pub bias: bool,
}

impl Default for Conv2dConfig {
    fn default() -> Self {
        Self { stride: 1, padding: 0, bias: true }
    }
}

pub struct Conv2d {
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// A square `kernel` x `kernel` convolution.
    pub fn load(w: &Weights, inputs: usize, outputs: usize, kernel: usize, config: Conv2dConfig) -> Result<Self, LoadError> {
        Ok(Self {
            weight: w.tensor("weight", [outputs, inputs, kernel, kernel])?,
            bias: config.bias.then(|| w.tensor("bias", [outputs])).transpose()?,
            stride: config.stride,
            padding: config.padding,
        })
    }

    /// The common 3x3, stride 1, same-size convolution with bias.
    pub fn load_3x3(w: &Weights, inputs: usize, outputs: usize) -> Result<Self, LoadError> {
        Self::load(w, inputs, outputs, 3, Conv2dConfig { padding: 1, ..Default::default() })
    }

    /// A 1x1 convolution with bias.
    pub fn load_1x1(w: &Weights, inputs: usize, outputs: usize) -> Result<Self, LoadError> {
        Self::load(w, inputs, outputs, 1, Conv2dConfig::default())
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.convolve(x, Epilogue::bias(self.bias.clone()))
    }

    /// `(conv(x) + bias + residual) / divisor` in one launch: a resnet's convs. `shift`
    /// `[B, O]` replaces the layer's own bias, which must then have been taken out into it
    /// (`take_bias`): the resnet's conv1 adds its projected timestep embedding this way.
    pub fn forward_fused(&self, x: Tensor<4>, shift: Option<Tensor<2>>, residual: Option<Tensor<4>>, divisor: f32) -> Tensor<4> {
        assert!(shift.is_none() || self.bias.is_none(), "a shifted convolution's bias belongs in the shift");
        let bias = shift.or_else(|| self.bias.clone().map(|b| b.unsqueeze()));
        self.convolve(x, Epilogue { bias, residual, divisor })
    }

    /// The convolution of `x` upsampled x2 by nearest neighbour, without storing the upsampled
    /// input.
    pub fn forward_upsampled(&self, x: Tensor<4>) -> Tensor<4> {
        kernels::conv2d_upsampled(x, self.weight.clone(), self.stride, self.padding, Epilogue::bias(self.bias.clone()))
    }

    /// Removes the bias and returns it, to be added through a shift (`forward_fused`).
    pub fn take_bias(&mut self) -> Option<Tensor<1>> {
        self.bias.take()
    }

    fn convolve(&self, x: Tensor<4>, epilogue: Epilogue) -> Tensor<4> {
        kernels::conv2d(x, self.weight.clone(), self.stride, self.padding, epilogue)
    }
}

pub struct GroupNorm {
    groups: usize,
    eps: f64,
    weight: Tensor<1>,
    bias: Tensor<1>,
}

impl GroupNorm {
    pub fn load(w: &Weights, groups: usize, channels: usize, eps: f64) -> Result<Self, LoadError> {
        Ok(Self {
            groups,
            eps,
            weight: w.tensor("weight", [channels])?,
            bias: w.tensor("bias", [channels])?,
        })
    }

    /// `[B, C, H, W]` normalised per (batch, group) over channels-in-group × H × W.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        kernels::group_norm(x, self.weight.clone(), self.bias.clone(), self.groups, self.eps, false)
    }

    /// GroupNorm then SiLU, the resnets' usual pair, in one launch.
    pub fn forward_silu(&self, x: Tensor<4>) -> Tensor<4> {
        kernels::group_norm(x, self.weight.clone(), self.bias.clone(), self.groups, self.eps, true)
    }

    /// `forward_silu` of an activation kept in bands of rows.
    pub fn forward_silu_bands(&self, x: &Bands) -> Bands {
        Bands(kernels::group_norm_bands(x.0.clone(), self.weight.clone(), self.bias.clone(), self.groups, self.eps, true))
    }
}

pub struct LayerNorm {
    eps: f64,
    weight: Tensor<1>,
    bias: Tensor<1>,
}

impl LayerNorm {
    pub fn load(w: &Weights, dim: usize, eps: f64) -> Result<Self, LoadError> {
        Ok(Self {
            eps,
            weight: w.tensor("weight", [dim])?,
            bias: w.tensor("bias", [dim])?,
        })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        kernels::layer_norm(x, self.weight.clone(), self.bias.clone(), self.eps)
    }
}
