//! The PyTorch layers the models are built from (`nn.Linear`, `nn.Conv2d`, `nn.GroupNorm`,
//! `nn.LayerNorm`), loaded by checkpoint name. Norm statistics are computed in f32 whatever the
//! compute dtype, as PyTorch's autocast does. Convolution and GroupNorm run on our own kernels.

use burn::tensor::module::{layer_norm, linear};
use burn::tensor::{FloatDType, Tensor};

use crate::kernels;
use crate::weights::{LoadError, Weights};

pub struct Linear {
    /// `[in, out]`.
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
}

impl Linear {
    pub fn load(w: &mut Weights, name: &str, inputs: usize, outputs: usize, bias: bool) -> Result<Self, LoadError> {
        Ok(Self {
            weight: w.linear_weight(&format!("{name}.weight"), inputs, outputs)?,
            bias: bias.then(|| w.tensor(&format!("{name}.bias"), [outputs])).transpose()?,
        })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        linear(x, self.weight.clone(), self.bias.clone())
    }
}

pub struct Conv2d {
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// A square `kernel` convolution; `padding` on every side.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        w: &mut Weights,
        name: &str,
        inputs: usize,
        outputs: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            weight: w.tensor(&format!("{name}.weight"), [outputs, inputs, kernel, kernel])?,
            bias: bias.then(|| w.tensor(&format!("{name}.bias"), [outputs])).transpose()?,
            stride,
            padding,
        })
    }

    /// The common 3x3, stride 1, same-size convolution with bias.
    pub fn load_3x3(w: &mut Weights, name: &str, inputs: usize, outputs: usize) -> Result<Self, LoadError> {
        Self::load(w, name, inputs, outputs, 3, 1, 1, true)
    }

    /// A 1x1 convolution with bias.
    pub fn load_1x1(w: &mut Weights, name: &str, inputs: usize, outputs: usize) -> Result<Self, LoadError> {
        Self::load(w, name, inputs, outputs, 1, 1, 0, true)
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        kernels::conv2d(x, self.weight.clone(), self.bias.clone(), self.stride, self.padding)
    }
}

pub struct GroupNorm {
    groups: usize,
    eps: f64,
    weight: Tensor<1>,
    bias: Tensor<1>,
}

impl GroupNorm {
    pub fn load(w: &mut Weights, name: &str, groups: usize, channels: usize, eps: f64) -> Result<Self, LoadError> {
        Ok(Self {
            groups,
            eps,
            weight: w.tensor(&format!("{name}.weight"), [channels])?,
            bias: w.tensor(&format!("{name}.bias"), [channels])?,
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
}

pub struct LayerNorm {
    eps: f64,
    weight: Tensor<1>,
    bias: Tensor<1>,
}

impl LayerNorm {
    pub fn load(w: &mut Weights, name: &str, dim: usize, eps: f64) -> Result<Self, LoadError> {
        Ok(Self {
            eps,
            weight: w.tensor(&format!("{name}.weight"), [dim])?,
            bias: w.tensor(&format!("{name}.bias"), [dim])?,
        })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        layer_norm(
            x.cast(FloatDType::F32),
            self.weight.clone().cast(FloatDType::F32),
            Some(self.bias.clone().cast(FloatDType::F32)),
            self.eps,
        )
        .cast(dtype)
    }
}
