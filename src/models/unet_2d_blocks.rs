//! diffusers' UNet blocks: `CrossAttnDownBlock2D` / `DownBlock2D`, `UNetMidBlock2DCrossAttn`,
//! `CrossAttnUpBlock2D` / `UpBlock2D` (the UNet), and `UNetMidBlock2D` / `UpDecoderBlock2D` (the
//! VAE decoder). A block with attentions is the cross-attention variant.

use burn::tensor::Tensor;

use crate::models::attention::Attention;
use crate::models::layers::GroupNorm;
use crate::models::bands::Bands;
use crate::models::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};
use crate::models::transformer_2d::Transformer2DModel;
use crate::weights::{LoadError, Weights};

/// The settings of a cross-attention block's `Transformer2DModel`s.
#[derive(Clone, Copy, Debug)]
pub struct CrossAttentionConfig {
    /// Attention heads (diffusers' `num_attention_heads`).
    pub heads: usize,
    /// Width of the context tokens (diffusers' `cross_attention_dim`).
    pub context_dim: usize,
}

/// A `DownBlock2D` / `CrossAttnDownBlock2D`'s settings besides its widths; the default is
/// diffusers' `DownBlock2D`.
#[derive(Clone, Copy, Debug)]
pub struct DownBlockConfig {
    /// Resnets in the block (`num_layers`); 1 by default.
    pub num_layers: usize,
    /// Every resnet's settings; by default `ResnetConfig::default()`.
    pub resnet: ResnetConfig,
    /// `Some` for a `CrossAttnDownBlock2D` (a transformer after each resnet); `None` by default.
    pub attention: Option<CrossAttentionConfig>,
    /// Whether a downsampler ends the block (every block but the last); true by default.
    pub add_downsample: bool,
    /// The downsampler's padding; 1 by default.
    pub downsample_padding: usize,
}

impl Default for DownBlockConfig {
    fn default() -> Self {
        Self { num_layers: 1, resnet: ResnetConfig::default(), attention: None, add_downsample: true, downsample_padding: 1 }
    }
}

/// An `UpBlock2D` / `CrossAttnUpBlock2D`'s settings besides its widths; the default is
/// diffusers' `UpBlock2D`.
#[derive(Clone, Copy, Debug)]
pub struct UpBlockConfig {
    /// Resnets in the block (`num_layers`); 1 by default.
    pub num_layers: usize,
    /// Every resnet's settings; by default `ResnetConfig::default()`.
    pub resnet: ResnetConfig,
    /// `Some` for a `CrossAttnUpBlock2D` (a transformer after each resnet); `None` by default.
    pub attention: Option<CrossAttentionConfig>,
    /// Whether an upsampler ends the block (every block but the last); true by default.
    pub add_upsample: bool,
}

impl Default for UpBlockConfig {
    fn default() -> Self {
        Self { num_layers: 1, resnet: ResnetConfig::default(), attention: None, add_upsample: true }
    }
}

/// An `UpDecoderBlock2D`'s settings besides its widths; the default is diffusers'.
#[derive(Clone, Copy, Debug)]
pub struct UpDecoderBlockConfig {
    /// Resnets in the block (`num_layers`); 1 by default.
    pub num_layers: usize,
    /// Every resnet's settings; by default `ResnetConfig`'s without a timestep embedding.
    pub resnet: ResnetConfig,
    /// Whether an upsampler ends the block (every block but the last); true by default.
    pub add_upsample: bool,
}

impl Default for UpDecoderBlockConfig {
    fn default() -> Self {
        Self { num_layers: 1, resnet: ResnetConfig { temb_channels: None, ..Default::default() }, add_upsample: true }
    }
}

fn load_attentions(
    w: &Weights,
    count: usize,
    channels: usize,
    attention: Option<CrossAttentionConfig>,
    groups: usize,
) -> Result<Vec<Transformer2DModel>, LoadError> {
    let Some(a) = attention else { return Ok(Vec::new()) };
    let attentions = w.pp("attentions");
    (0..count).map(|i| Transformer2DModel::load(&attentions.pp(i), channels, a.heads, a.context_dim, groups)).collect()
}

/// `layers` resnets in a row: the first from `inputs` channels, the rest `outputs` to `outputs`.
fn load_resnets(w: &Weights, layers: usize, inputs: usize, outputs: usize, resnet: ResnetConfig) -> Result<Vec<ResnetBlock2D>, LoadError> {
    let resnets = w.pp("resnets");
    (0..layers)
        .map(|i| {
            let ins = if i == 0 { inputs } else { outputs };
            ResnetBlock2D::load(&resnets.pp(i), ins, outputs, resnet)
        })
        .collect()
}

fn load_upsampler(w: &Weights, channels: usize, add_upsample: bool) -> Result<Option<Upsample2D>, LoadError> {
    add_upsample.then(|| Upsample2D::load(&w.pp("upsamplers.0"), channels)).transpose()
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
    pub fn load(w: &Weights, inputs: usize, outputs: usize, config: DownBlockConfig) -> Result<Self, LoadError> {
        let c = config;
        Ok(Self {
            resnets: load_resnets(w, c.num_layers, inputs, outputs, c.resnet)?,
            attentions: load_attentions(w, c.num_layers, outputs, c.attention, c.resnet.groups)?,
            downsampler: c
                .add_downsample
                .then(|| Downsample2D::load(&w.pp("downsamplers.0"), outputs, c.downsample_padding))
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
    pub fn load(w: &Weights, channels: usize, resnet: ResnetConfig, attention: CrossAttentionConfig) -> Result<Self, LoadError> {
        Ok(Self {
            resnets: [
                ResnetBlock2D::load(&w.pp("resnets.0"), channels, channels, resnet)?,
                ResnetBlock2D::load(&w.pp("resnets.1"), channels, channels, resnet)?,
            ],
            attention: Transformer2DModel::load(&w.pp("attentions.0"), channels, attention.heads, attention.context_dim, resnet.groups)?,
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
    pub fn load(w: &Weights, inputs: usize, outputs: usize, previous: usize, config: UpBlockConfig) -> Result<Self, LoadError> {
        let c = config;
        let resnets = w.pp("resnets");
        Ok(Self {
            resnets: (0..c.num_layers)
                .map(|i| {
                    let skip = if i == c.num_layers - 1 { inputs } else { outputs };
                    let ins = if i == 0 { previous } else { outputs };
                    ResnetBlock2D::load(&resnets.pp(i), ins + skip, outputs, c.resnet)
                })
                .collect::<Result<_, _>>()?,
            attentions: load_attentions(w, c.num_layers, outputs, c.attention, c.resnet.groups)?,
            upsampler: load_upsampler(w, outputs, c.add_upsample)?,
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
    pub fn load(w: &Weights, channels: usize, resnet: ResnetConfig, add_attention: bool) -> Result<Self, LoadError> {
        let attention = add_attention
            .then(|| -> Result<_, LoadError> {
                let attention = w.pp("attentions.0");
                Ok((
                    GroupNorm::load(&attention.pp("group_norm"), resnet.groups, channels, resnet.eps)?,
                    Attention::load(&attention, channels, channels, 1, true)?,
                ))
            })
            .transpose()?;
        Ok(Self {
            resnets: [
                ResnetBlock2D::load(&w.pp("resnets.0"), channels, channels, resnet)?,
                ResnetBlock2D::load(&w.pp("resnets.1"), channels, channels, resnet)?,
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
    pub fn load(w: &Weights, inputs: usize, outputs: usize, config: UpDecoderBlockConfig) -> Result<Self, LoadError> {
        let c = config;
        Ok(Self {
            resnets: load_resnets(w, c.num_layers, inputs, outputs, c.resnet)?,
            upsampler: load_upsampler(w, outputs, c.add_upsample)?,
        })
    }

    /// The block on an activation kept in bands of rows (the decoder's are the largest).
    pub fn forward_bands(&self, x: Bands) -> Bands {
        let x = self.resnets.iter().fold(x, |x, r| r.forward_bands(x));
        match &self.upsampler {
            Some(up) => up.forward_bands(x),
            None => x,
        }
    }
}
