//! diffusers' UNet blocks: `CrossAttnDownBlock2D` / `DownBlock2D`, `UNetMidBlock2DCrossAttn`,
//! `CrossAttnUpBlock2D` / `UpBlock2D` (the UNet), and `UNetMidBlock2D` / `UpDecoderBlock2D` (the
//! VAE decoder). A block with attentions is the cross-attention variant.

use burn::tensor::Tensor;

use crate::attention::Attention;
use crate::layers::GroupNorm;
use crate::resnet::{Downsample2D, ResnetBlock2D, ResnetSettings, Upsample2D};
use crate::transformer_2d::Transformer2DModel;
use crate::weights::{LoadError, Weights};

/// Attention settings of a cross-attention block; `None` for a plain block.
#[derive(Clone, Copy)]
pub struct CrossAttention {
    pub heads: usize,
    pub context_dim: usize,
}

fn load_attentions(
    w: &mut Weights,
    name: &str,
    count: usize,
    channels: usize,
    attention: Option<CrossAttention>,
    groups: usize,
) -> Result<Vec<Transformer2DModel>, LoadError> {
    let Some(a) = attention else { return Ok(Vec::new()) };
    (0..count)
        .map(|i| Transformer2DModel::load(w, &format!("{name}.attentions.{i}"), channels, a.heads, a.context_dim, groups))
        .collect()
}

/// `layers` resnets in a row: the first from `inputs` channels, the rest `outputs` to `outputs`.
fn load_resnets(
    w: &mut Weights,
    name: &str,
    layers: usize,
    inputs: usize,
    outputs: usize,
    resnet: ResnetSettings,
) -> Result<Vec<ResnetBlock2D>, LoadError> {
    (0..layers)
        .map(|i| {
            let ins = if i == 0 { inputs } else { outputs };
            ResnetBlock2D::load(w, &format!("{name}.resnets.{i}"), ins, outputs, resnet)
        })
        .collect()
}

fn load_upsampler(w: &mut Weights, name: &str, channels: usize, upsample: bool) -> Result<Option<Upsample2D>, LoadError> {
    upsample.then(|| Upsample2D::load(w, &format!("{name}.upsamplers.0"), channels)).transpose()
}

fn upsample(upsampler: &Option<Upsample2D>, x: Tensor<4>) -> Tensor<4> {
    match upsampler {
        Some(up) => up.forward(x),
        None => x,
    }
}

/// Resnets (each followed by its transformer, if any), then an optional downsampler. Returns
/// the output and every intermediate the up path concatenates back.
pub struct DownBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock2D {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        w: &mut Weights,
        name: &str,
        layers: usize,
        inputs: usize,
        outputs: usize,
        resnet: ResnetSettings,
        attention: Option<CrossAttention>,
        downsample_padding: Option<usize>,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            resnets: load_resnets(w, name, layers, inputs, outputs, resnet)?,
            attentions: load_attentions(w, name, layers, outputs, attention, resnet.groups)?,
            downsampler: downsample_padding
                .map(|p| Downsample2D::load(w, &format!("{name}.downsamplers.0"), outputs, p))
                .transpose()?,
        })
    }

    pub fn forward(&self, mut x: Tensor<4>, temb: &Tensor<2>, context: &Tensor<3>) -> (Tensor<4>, Vec<Tensor<4>>) {
        let mut skips = Vec::new();
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, Some(temb));
            if let Some(attention) = self.attentions.get(i) {
                x = attention.forward(x, context);
            }
            skips.push(x.clone());
        }
        if let Some(down) = &self.downsampler {
            x = down.forward(x);
            skips.push(x.clone());
        }
        (x, skips)
    }
}

/// Resnet, transformer, resnet at the lowest resolution.
pub struct UNetMidBlock2DCrossAttn {
    resnets: [ResnetBlock2D; 2],
    attention: Transformer2DModel,
}

impl UNetMidBlock2DCrossAttn {
    pub fn load(w: &mut Weights, name: &str, channels: usize, resnet: ResnetSettings, attention: CrossAttention) -> Result<Self, LoadError> {
        Ok(Self {
            resnets: [
                ResnetBlock2D::load(w, &format!("{name}.resnets.0"), channels, channels, resnet)?,
                ResnetBlock2D::load(w, &format!("{name}.resnets.1"), channels, channels, resnet)?,
            ],
            attention: Transformer2DModel::load(
                w, &format!("{name}.attentions.0"), channels, attention.heads, attention.context_dim, resnet.groups,
            )?,
        })
    }

    pub fn forward(&self, x: Tensor<4>, temb: &Tensor<2>, context: &Tensor<3>) -> Tensor<4> {
        let x = self.resnets[0].forward(x, Some(temb));
        let x = self.attention.forward(x, context);
        self.resnets[1].forward(x, Some(temb))
    }
}

/// Resnets over the input concatenated with the down path's intermediates (last first), each
/// followed by its transformer if any, then an optional upsampler.
pub struct UpBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock2D {
    /// `inputs`: channels of the skip from the block below in the down path; `previous`: of
    /// the previous up block's output.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        w: &mut Weights,
        name: &str,
        layers: usize,
        inputs: usize,
        outputs: usize,
        previous: usize,
        resnet: ResnetSettings,
        attention: Option<CrossAttention>,
        upsample: bool,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            resnets: (0..layers)
                .map(|i| {
                    let skip = if i == layers - 1 { inputs } else { outputs };
                    let ins = if i == 0 { previous } else { outputs };
                    ResnetBlock2D::load(w, &format!("{name}.resnets.{i}"), ins + skip, outputs, resnet)
                })
                .collect::<Result<_, _>>()?,
            attentions: load_attentions(w, name, layers, outputs, attention, resnet.groups)?,
            upsampler: load_upsampler(w, name, outputs, upsample)?,
        })
    }

    pub fn forward(&self, mut x: Tensor<4>, skips: &mut Vec<Tensor<4>>, temb: &Tensor<2>, context: &Tensor<3>) -> Tensor<4> {
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().expect("one skip per up resnet");
            x = resnet.forward(Tensor::cat(vec![x, skip], 1), Some(temb));
            if let Some(attention) = self.attentions.get(i) {
                x = attention.forward(x, context);
            }
        }
        upsample(&self.upsampler, x)
    }
}

/// The VAE's middle: resnet, single-head self-attention over all pixels, resnet.
pub struct UNetMidBlock2D {
    resnets: [ResnetBlock2D; 2],
    attention: Option<(GroupNorm, Attention)>,
}

impl UNetMidBlock2D {
    pub fn load(w: &mut Weights, name: &str, channels: usize, resnet: ResnetSettings, add_attention: bool) -> Result<Self, LoadError> {
        let attention = add_attention
            .then(|| -> Result<_, LoadError> {
                let n = format!("{name}.attentions.0");
                Ok((
                    GroupNorm::load(w, &format!("{n}.group_norm"), resnet.groups, channels, resnet.eps)?,
                    Attention::load(w, &n, channels, channels, 1, true)?,
                ))
            })
            .transpose()?;
        Ok(Self {
            resnets: [
                ResnetBlock2D::load(w, &format!("{name}.resnets.0"), channels, channels, resnet)?,
                ResnetBlock2D::load(w, &format!("{name}.resnets.1"), channels, channels, resnet)?,
            ],
            attention,
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, None);
        if let Some((norm, attention)) = &self.attention {
            x = attention.forward_self_pixels(norm.forward(x.clone()), x);
        }
        self.resnets[1].forward(x, None)
    }
}

/// The VAE decoder's up blocks: resnets, then an optional upsampler.
pub struct UpDecoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    pub fn load(
        w: &mut Weights,
        name: &str,
        layers: usize,
        inputs: usize,
        outputs: usize,
        resnet: ResnetSettings,
        upsample: bool,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            resnets: load_resnets(w, name, layers, inputs, outputs, resnet)?,
            upsampler: load_upsampler(w, name, outputs, upsample)?,
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        upsample(&self.upsampler, self.resnets.iter().fold(x, |x, r| r.forward(x, None)))
    }
}
