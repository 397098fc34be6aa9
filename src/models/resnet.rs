//! diffusers' `ResnetBlock2D`, `Downsample2D` and `Upsample2D`.

use burn::tensor::Tensor;

use crate::models::bands::Bands;
use crate::models::layers::{Conv2d, Conv2dConfig, GroupNorm, Linear};
use crate::weights::{LoadError, Weights};

pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f32,
}

/// A `ResnetBlock2D`'s settings besides its widths, which every resnet of a block shares; the
/// default is diffusers'.
#[derive(Clone, Copy, Debug)]
pub struct ResnetConfig {
    /// Groups of both GroupNorms; 32 by default.
    pub groups: usize,
    /// Both GroupNorms' epsilon; 1e-6 by default.
    pub eps: f64,
    /// Width of the timestep embedding, `None` for a resnet without one (the VAE's); 512 by
    /// default.
    pub temb_channels: Option<usize>,
    /// What the sum of the shortcut and the convolutions' output is divided by; 1 by default.
    pub output_scale_factor: f32,
}

impl Default for ResnetConfig {
    fn default() -> Self {
        Self { groups: 32, eps: 1e-6, temb_channels: Some(512), output_scale_factor: 1.0 }
    }
}

impl ResnetBlock2D {
    pub fn load(w: &Weights, inputs: usize, outputs: usize, config: ResnetConfig) -> Result<Self, LoadError> {
        let c = config;
        let mut conv1 = Conv2d::load_3x3(&w.pp("conv1"), inputs, outputs)?;
        let mut time_emb_proj = c.temb_channels.map(|t| Linear::load(&w.pp("time_emb_proj"), t, outputs, true)).transpose()?;
        // conv1's bias and the timestep projection's are both added per (batch, channel): kept
        // as one, the projection's output is conv1's whole bias and needs no add of its own.
        if let Some(proj) = &mut time_emb_proj
            && let Some(bias) = conv1.take_bias()
        {
            proj.add_to_bias(bias);
        }
        Ok(Self {
            norm1: GroupNorm::load(&w.pp("norm1"), c.groups, inputs, c.eps)?,
            conv1,
            time_emb_proj,
            norm2: GroupNorm::load(&w.pp("norm2"), c.groups, outputs, c.eps)?,
            conv2: Conv2d::load_3x3(&w.pp("conv2"), outputs, outputs)?,
            conv_shortcut: (inputs != outputs).then(|| Conv2d::load_1x1(&w.pp("conv_shortcut"), inputs, outputs)).transpose()?,
            output_scale_factor: c.output_scale_factor,
        })
    }

    /// `temb` is the already SiLU-activated timestep embedding `[B, temb_channels]`. Its
    /// projection is added through conv1's bias, and the shortcut and scaling happen in
    /// conv2's epilogue: no full-size element-wise pass of their own.
    pub fn forward(&self, x: Tensor<4>, temb: Option<&Tensor<2>>) -> Tensor<4> {
        let shift = self.time_emb_proj.as_ref().map(|proj| {
            let temb = temb.expect("a resnet with a timestep projection takes a timestep embedding");
            proj.forward(temb.clone())
        });
        let h = self.conv1.forward_fused(self.norm1.forward_silu(x.clone()), shift, None, 1.0);
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        self.conv2.forward_fused(self.norm2.forward_silu(h), None, Some(shortcut), self.output_scale_factor)
    }

    /// `forward` of an activation kept in bands of rows, for a resnet without a timestep
    /// embedding (the VAE's).
    pub fn forward_bands(&self, x: Bands) -> Bands {
        assert!(self.time_emb_proj.is_none(), "banded resnets take no timestep embedding");
        let h = self.norm1.forward_silu_bands(&x).convolve3x3(1, None, |band, _| self.conv1.forward_fused(band, None, None, 1.0));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => x.map(|band| conv.forward(band)),
            None => x,
        };
        let h = self.norm2.forward_silu_bands(&h);
        h.convolve3x3(1, Some(&shortcut), |band, residual| self.conv2.forward_fused(band, None, residual, self.output_scale_factor))
    }
}

/// A stride-2 3x3 convolution (`downsamplers.0.conv`).
pub struct Downsample2D {
    conv: Conv2d,
}

impl Downsample2D {
    pub fn load(w: &Weights, channels: usize, padding: usize) -> Result<Self, LoadError> {
        let config = Conv2dConfig { stride: 2, padding, ..Default::default() };
        Ok(Self { conv: Conv2d::load(&w.pp("conv"), channels, channels, 3, config)? })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv.forward(x)
    }
}

/// Nearest-neighbour x2, then a 3x3 convolution (`upsamplers.0.conv`), in one launch.
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn load(w: &Weights, channels: usize) -> Result<Self, LoadError> {
        Ok(Self { conv: Conv2d::load_3x3(&w.pp("conv"), channels, channels)? })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv.forward_upsampled(x)
    }

    /// `forward` of an activation kept in bands of rows: each band's rows doubled.
    pub fn forward_bands(&self, x: Bands) -> Bands {
        x.convolve3x3(2, None, |band, _| self.conv.forward_upsampled(band))
    }
}
