//! diffusers' `ResnetBlock2D`, `Downsample2D` and `Upsample2D`.

use burn::tensor::Tensor;

use crate::layers::{Conv2d, GroupNorm, Linear};
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

/// What every resnet of a block shares.
#[derive(Clone, Copy)]
pub struct ResnetSettings {
    pub groups: usize,
    pub eps: f64,
    /// Width of the timestep embedding; `None` in the VAE.
    pub temb_channels: Option<usize>,
    pub output_scale_factor: f32,
}

impl ResnetBlock2D {
    pub fn load(w: &mut Weights, name: &str, inputs: usize, outputs: usize, s: ResnetSettings) -> Result<Self, LoadError> {
        let n = |part: &str| format!("{name}.{part}");
        let mut conv1 = Conv2d::load_3x3(w, &n("conv1"), inputs, outputs)?;
        let mut time_emb_proj = s.temb_channels.map(|t| Linear::load(w, &n("time_emb_proj"), t, outputs, true)).transpose()?;
        // conv1's bias and the timestep projection's are both added per (batch, channel): kept
        // as one, the projection's output is conv1's whole bias and needs no add of its own.
        if let Some(proj) = &mut time_emb_proj
            && let Some(bias) = conv1.take_bias()
        {
            proj.add_to_bias(bias);
        }
        Ok(Self {
            norm1: GroupNorm::load(w, &n("norm1"), s.groups, inputs, s.eps)?,
            conv1,
            time_emb_proj,
            norm2: GroupNorm::load(w, &n("norm2"), s.groups, outputs, s.eps)?,
            conv2: Conv2d::load_3x3(w, &n("conv2"), outputs, outputs)?,
            conv_shortcut: (inputs != outputs).then(|| Conv2d::load_1x1(w, &n("conv_shortcut"), inputs, outputs)).transpose()?,
            output_scale_factor: s.output_scale_factor,
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
}

/// A stride-2 3x3 convolution (`downsamplers.0.conv`).
pub struct Downsample2D {
    conv: Conv2d,
}

impl Downsample2D {
    pub fn load(w: &mut Weights, name: &str, channels: usize, padding: usize) -> Result<Self, LoadError> {
        Ok(Self { conv: Conv2d::load(w, &format!("{name}.conv"), channels, channels, 3, 2, padding, true)? })
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
    pub fn load(w: &mut Weights, name: &str, channels: usize) -> Result<Self, LoadError> {
        Ok(Self { conv: Conv2d::load_3x3(w, &format!("{name}.conv"), channels, channels)? })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv.forward_upsampled(x)
    }
}
