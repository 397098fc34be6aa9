//! The model's config files, with diffusers' / transformers' defaults for absent keys. Every
//! dimension of every module comes from here. Values we do not implement are rejected by name.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ConfigError {
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: `{key}` = {value} is not supported (imvar supports {supported})")]
    Unsupported {
        file: String,
        key: String,
        value: String,
        supported: String,
    },
    #[error("{file}: `{key}` = {value}: {reason}")]
    Invalid {
        file: String,
        key: String,
        value: String,
        reason: String,
    },
}

/// Parses a config file's text, then refuses values imvar does not implement.
pub fn parse<T: for<'de> Deserialize<'de>>(
    file: &str,
    text: &str,
    supported: &[(&str, Value)],
) -> Result<T, ConfigError> {
    let raw: Value = serde_json::from_str(text).map_err(|e| ConfigError::Parse {
        file: file.into(),
        message: e.to_string(),
    })?;
    for (key, allowed) in supported {
        if let Some(value) = raw.get(*key).filter(|v| !v.is_null() || !allowed.is_null())
            && value != allowed
        {
            return Err(ConfigError::Unsupported {
                file: file.into(),
                key: (*key).into(),
                value: value.to_string(),
                supported: allowed.to_string(),
            });
        }
    }
    serde_json::from_value(raw).map_err(|e| ConfigError::Parse {
        file: file.into(),
        message: e.to_string(),
    })
}

/// `attention_head_dim` (in SD1.x configs: the number of heads) is an int or one per block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    Same(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    pub fn get(&self, block: usize) -> usize {
        match self {
            Self::Same(n) => *n,
            Self::Each(v) => v[block.min(v.len() - 1)],
        }
    }
}

/// `unet/config.json` (UNet2DConditionModel).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct UNetConfig {
    /// Height and width of the latents the model was trained on (64 for SD1's 512 pixels);
    /// default `None` (the pipeline then takes 64).
    pub sample_size: Option<usize>,
    /// Channels of the noisy latents in; default 4.
    pub in_channels: usize,
    /// Channels of the predicted noise out; default 4.
    pub out_channels: usize,
    /// Whether the timestep features put the cosines before the sines; default true.
    pub flip_sin_to_cos: bool,
    /// Offset of the timestep features' frequency denominator (`downscale_freq_shift`);
    /// default 0.
    pub freq_shift: f32,
    /// Each down block's class, highest resolution first; default three
    /// `CrossAttnDownBlock2D` then a `DownBlock2D`.
    pub down_block_types: Vec<String>,
    /// Each up block's class, lowest resolution first; default an `UpBlock2D` then three
    /// `CrossAttnUpBlock2D`.
    pub up_block_types: Vec<String>,
    /// Each down block's output channels (the up blocks' in reverse); default
    /// `[320, 640, 1280, 1280]`.
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (an up block has one more); default 2.
    pub layers_per_block: usize,
    /// Padding of the down blocks' stride-2 convolutions; default 1.
    pub downsample_padding: usize,
    /// What the mid block's resnets divide their output by; default 1.
    pub mid_block_scale_factor: f32,
    /// Groups of every GroupNorm; default 32.
    pub norm_num_groups: usize,
    /// Epsilon of the resnets' and the output's GroupNorms; default 1e-5.
    pub norm_eps: f64,
    /// Width of the context tokens the cross-attentions attend to (the image embedding's);
    /// default 1280.
    pub cross_attention_dim: usize,
    /// Despite the name, the attention heads per block in SD1.x configs (see `heads`);
    /// default 8.
    pub attention_head_dim: PerBlock,
    /// Attention heads per block, where given, instead of `attention_head_dim`; default
    /// `None`.
    pub num_attention_heads: Option<PerBlock>,
}

impl Default for UNetConfig {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Self {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: s(&["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]),
            up_block_types: s(&["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: 2,
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim: 1280,
            attention_head_dim: PerBlock::Same(8),
            num_attention_heads: None,
        }
    }
}

impl UNetConfig {
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let file = "unet/config.json";
        let config: Self = parse(file, text, &[
            ("act_fn", "silu".into()),
            ("mid_block_type", "UNetMidBlock2DCrossAttn".into()),
            ("center_input_sample", false.into()),
            ("only_cross_attention", false.into()),
            ("dual_cross_attention", false.into()),
            ("use_linear_projection", false.into()),
            ("upcast_attention", false.into()),
            ("class_embed_type", Value::Null),
            ("addition_embed_type", Value::Null),
            ("num_class_embeds", Value::Null),
            ("encoder_hid_dim", Value::Null),
            ("time_embedding_type", "positional".into()),
            ("resnet_time_scale_shift", "default".into()),
            ("transformer_layers_per_block", 1.into()),
            ("conv_in_kernel", 3.into()),
            ("conv_out_kernel", 3.into()),
            ("time_cond_proj_dim", Value::Null),
            ("attention_type", "default".into()),
        ])?;
        let n = config.block_out_channels.len();
        let known = |t: &String, kinds: [&str; 2]| kinds.contains(&t.as_str());
        for (key, types, kinds) in [
            ("down_block_types", &config.down_block_types, ["CrossAttnDownBlock2D", "DownBlock2D"]),
            ("up_block_types", &config.up_block_types, ["CrossAttnUpBlock2D", "UpBlock2D"]),
        ] {
            if let Some(bad) = types.iter().find(|t| !known(t, kinds)) {
                return Err(unsupported(file, key, bad, &kinds.join(" or ")));
            }
            if types.len() != n {
                return Err(unsupported(file, key, &format!("{} blocks", types.len()),
                    &format!("one per block_out_channels entry ({n})")));
            }
        }
        config.check(&Rules { file })?;
        Ok(config)
    }

    fn check(&self, rules: &Rules) -> Result<(), ConfigError> {
        rules.block_channels(&self.block_out_channels, self.norm_num_groups)?;
        for (key, value) in [("in_channels", self.in_channels), ("out_channels", self.out_channels),
            ("layers_per_block", self.layers_per_block), ("cross_attention_dim", self.cross_attention_dim)] {
            rules.positive(key, value)?;
        }
        rules.positive_number("norm_eps", self.norm_eps)?;
        if let Some(size) = self.sample_size {
            rules.positive("sample_size", size)?;
        }
        let (key, heads) = match &self.num_attention_heads {
            Some(heads) => ("num_attention_heads", heads),
            None => ("attention_head_dim", &self.attention_head_dim),
        };
        let blocks = self.block_out_channels.len();
        if let PerBlock::Each(each) = heads {
            rules.require(each.len() == blocks, key, each, &format!("one per block_out_channels entry ({blocks})"))?;
        }
        // The blocks with attention, down and up (up block i has block n-1-i's heads and
        // width), and the mid block (the last block's heads and width).
        let with_attention = |types: &[String]| types.iter().enumerate().filter(|(_, t)| t.starts_with("CrossAttn")).map(|(i, _)| i).collect::<Vec<_>>();
        let up = with_attention(&self.up_block_types).into_iter().filter_map(|i| (blocks - 1).checked_sub(i));
        for block in with_attention(&self.down_block_types).into_iter().chain(up).chain([blocks - 1]) {
            let (heads, channels) = (self.heads(block), self.block_out_channels[block]);
            rules.require(heads > 0 && channels.is_multiple_of(heads), key, heads, &format!("block {block}'s {channels} channels must split evenly into its heads"))?;
        }
        Ok(())
    }

    /// Heads of the attention in down block `block` (diffusers: `num_attention_heads or
    /// attention_head_dim`; SD1.x stores the head count in the latter).
    pub fn heads(&self, block: usize) -> usize {
        self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim).get(block)
    }

    pub fn time_embed_dim(&self) -> usize {
        self.block_out_channels[0] * 4
    }
}

fn unsupported(file: &str, key: &str, value: &str, supported: &str) -> ConfigError {
    ConfigError::Unsupported {
        file: file.into(),
        key: key.into(),
        value: value.into(),
        supported: supported.into(),
    }
}

/// The largest width or count a config may give (SD's largest is 5120): every size derived
/// from these fits a `usize` without overflow.
const MAX_SIZE: usize = 1 << 16;
/// The most resolution levels a UNet or VAE may have (SD has 4; each halves the resolution).
const MAX_BLOCKS: usize = 8;
/// The most training timesteps a scheduler config may give (SD's have 1000).
const MAX_TRAIN_TIMESTEPS: usize = 100_000;

/// A parsed config's rules, each naming the key it is about, so a degenerate file is refused
/// where it is read instead of failing somewhere inside the model.
struct Rules<'a> {
    file: &'a str,
}

impl Rules<'_> {
    fn require(&self, holds: bool, key: &str, value: impl std::fmt::Debug, reason: &str) -> Result<(), ConfigError> {
        if holds {
            return Ok(());
        }
        Err(ConfigError::Invalid { file: self.file.into(), key: key.into(), value: format!("{value:?}"), reason: reason.into() })
    }

    /// A count or width: from 1 to `MAX_SIZE`, so every size computed from it fits.
    fn positive(&self, key: &str, value: usize) -> Result<(), ConfigError> {
        self.require((1..=MAX_SIZE).contains(&value), key, value, &format!("must be from 1 to {MAX_SIZE}"))
    }

    fn positive_number(&self, key: &str, value: f64) -> Result<(), ConfigError> {
        self.require(value.is_finite() && value > 0.0, key, value, "must be a number above 0")
    }

    /// Channel counts for each block: one to `MAX_BLOCKS` blocks, each a whole number of
    /// `groups`.
    fn block_channels(&self, channels: &[usize], groups: usize) -> Result<(), ConfigError> {
        self.positive("norm_num_groups", groups)?;
        self.require(!channels.is_empty(), "block_out_channels", channels, "at least one block is needed")?;
        self.require(channels.len() <= MAX_BLOCKS, "block_out_channels", channels, &format!("at most {MAX_BLOCKS} blocks"))?;
        let fits = channels.iter().all(|&c| (1..=MAX_SIZE).contains(&c) && c.is_multiple_of(groups));
        self.require(fits, "block_out_channels", channels, &format!("each must be a multiple of norm_num_groups ({groups})"))
    }
}

/// `vae/config.json` (AutoencoderKL); only the decoder side is used.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    /// Channels of the decoded image; default 3.
    pub out_channels: usize,
    /// Each decoder up block's class (only `UpDecoderBlock2D`); default `["UpDecoderBlock2D"]`.
    pub up_block_types: Vec<String>,
    /// Each encoder block's output channels (the decoder's up blocks' in reverse); default
    /// `[64]`.
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block (a decoder up block has one more); default 1.
    pub layers_per_block: usize,
    /// Channels of the latents; default 4.
    pub latent_channels: usize,
    /// Groups of every GroupNorm; default 32.
    pub norm_num_groups: usize,
    /// What the VAE's latents are multiplied by for the UNet (decoding divides by it);
    /// default 0.18215.
    pub scaling_factor: f32,
    /// Whether a 1x1 `post_quant_conv` comes before the decoder; default true.
    pub use_post_quant_conv: bool,
    /// Whether the decoder's mid block has its self-attention; default true.
    pub mid_block_add_attention: bool,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            out_channels: 3,
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl VaeConfig {
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let file = "vae/config.json";
        let config: Self = parse(file, text, &[
            ("act_fn", "silu".into()),
            ("shift_factor", Value::Null),
        ])?;
        if let Some(bad) = config.up_block_types.iter().find(|t| *t != "UpDecoderBlock2D") {
            return Err(unsupported(file, "up_block_types", bad, "UpDecoderBlock2D"));
        }
        let rules = Rules { file };
        rules.block_channels(&config.block_out_channels, config.norm_num_groups)?;
        let blocks = config.block_out_channels.len();
        rules.require(config.up_block_types.len() == blocks, "up_block_types", &config.up_block_types, &format!("one per block_out_channels entry ({blocks})"))?;
        for (key, value) in [("out_channels", config.out_channels), ("layers_per_block", config.layers_per_block), ("latent_channels", config.latent_channels)] {
            rules.positive(key, value)?;
        }
        rules.positive_number("scaling_factor", config.scaling_factor as f64)?;
        Ok(config)
    }

    /// Each up block but the last doubles the resolution.
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    /// Values per image in the decoder's largest activation, for an output of `pixels`
    /// pixels: each up block holds its input's and its output's channels at its resolution
    /// (the mid block's width comes in; the last block works at full resolution). For SD1 that
    /// is the last block's input, 256 channels at full resolution.
    pub fn largest_activation(&self, pixels: usize) -> usize {
        let widths: Vec<usize> = self.block_out_channels.iter().rev().copied().collect();
        let blocks = widths.len();
        (0..blocks)
            .map(|i| widths[i.saturating_sub(1)].max(widths[i]) * (pixels >> (2 * (blocks - 1 - i))))
            .max()
            .unwrap_or(0)
    }
}

/// `image_encoder/config.json` (transformers CLIPVisionConfig).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    /// Width of the tokens through the encoder; default 768.
    pub hidden_size: usize,
    /// Width inside each encoder layer's MLP; default 3072.
    pub intermediate_size: usize,
    /// Width of `image_embeds` (`visual_projection`'s output); default 512.
    pub projection_dim: usize,
    /// Encoder layers; default 12.
    pub num_hidden_layers: usize,
    /// Attention heads per encoder layer; default 12.
    pub num_attention_heads: usize,
    /// Channels of the input image; default 3.
    pub num_channels: usize,
    /// Height and width of the input image in pixels; default 224.
    pub image_size: usize,
    /// Height and width of one patch (one token) in pixels; default 32.
    pub patch_size: usize,
    /// Epsilon of every LayerNorm; default 1e-5.
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipVisionConfig {
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let file = "image_encoder/config.json";
        let config: Self = parse(file, text, &[("hidden_act", "quick_gelu".into())])?;
        let rules = Rules { file };
        for (key, value) in [("hidden_size", config.hidden_size), ("intermediate_size", config.intermediate_size),
            ("projection_dim", config.projection_dim), ("num_attention_heads", config.num_attention_heads),
            ("num_channels", config.num_channels), ("patch_size", config.patch_size), ("image_size", config.image_size),
            ("num_hidden_layers", config.num_hidden_layers)] {
            rules.positive(key, value)?;
        }
        let heads = config.num_attention_heads;
        rules.require(config.hidden_size.is_multiple_of(heads), "hidden_size", config.hidden_size, &format!("must split evenly into the {heads} heads"))?;
        let patch = config.patch_size;
        rules.require(config.image_size >= patch && config.image_size.is_multiple_of(patch), "image_size", config.image_size, &format!("must be a whole number of {patch}-pixel patches"))?;
        rules.positive_number("layer_norm_eps", config.layer_norm_eps)?;
        Ok(config)
    }

    pub fn num_positions(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }
}

/// `scheduler/scheduler_config.json`. Keys whose default differs between scheduler classes stay
/// `None` here; each scheduler applies its own class's default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// The scheduler class the model was saved with (`PNDMScheduler`); `None` when absent.
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    /// Diffusion steps in training; default 1000.
    pub num_train_timesteps: usize,
    /// The noise variance at the first training step; default 0.0001.
    pub beta_start: f64,
    /// The noise variance at the last training step; default 0.02.
    pub beta_end: f64,
    /// How the variances go from `beta_start` to `beta_end`: `linear` or `scaled_linear`
    /// (linear in their square roots); default `linear`.
    pub beta_schedule: String,
    /// Added to each inference timestep of the `leading` spacing; default 0.
    pub steps_offset: usize,
    /// PNDM: whether it skips the pseudo Runge-Kutta warm-up steps; default false.
    pub skip_prk_steps: bool,
    /// DDIM and PNDM: whether the final step's previous alpha product is 1 rather than the
    /// first training step's; class default true for DDIM, false for PNDM.
    pub set_alpha_to_one: Option<bool>,
    /// DDIM: whether the predicted clean sample is clipped to [-1, 1]; class default true.
    pub clip_sample: Option<bool>,
    /// How the inference timesteps are spread over the training ones (`leading`, `linspace`,
    /// `trailing`); class default `leading` for DDIM and PNDM, `linspace` for the Euler and
    /// DPM-Solver schedulers.
    pub timestep_spacing: Option<String>,
    /// What the UNet predicts (only `epsilon`, the noise); default `epsilon`.
    pub prediction_type: String,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            class_name: None,
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: "linear".into(),
            steps_offset: 0,
            skip_prk_steps: false,
            set_alpha_to_one: None,
            clip_sample: None,
            timestep_spacing: None,
            prediction_type: "epsilon".into(),
        }
    }
}

impl SchedulerConfig {
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let file = "scheduler/scheduler_config.json";
        let config: Self = parse(file, text, &[
            ("trained_betas", Value::Null),
            ("prediction_type", "epsilon".into()),
            ("thresholding", false.into()),
            ("rescale_betas_zero_snr", false.into()),
            ("use_karras_sigmas", false.into()),
        ])?;
        if !["linear", "scaled_linear"].contains(&config.beta_schedule.as_str()) {
            return Err(unsupported(file, "beta_schedule", &config.beta_schedule, "linear or scaled_linear"));
        }
        let rules = Rules { file };
        // The betas run from the first training step to the last: there must be two.
        let trained = config.num_train_timesteps;
        rules.require((2..=MAX_TRAIN_TIMESTEPS).contains(&trained), "num_train_timesteps", trained, &format!("must be from 2 to {MAX_TRAIN_TIMESTEPS}"))?;
        rules.require(config.steps_offset < trained, "steps_offset", config.steps_offset, &format!("must be below num_train_timesteps ({trained})"))?;
        let (start, end) = (config.beta_start, config.beta_end);
        rules.require(start > 0.0 && start < 1.0, "beta_start", start, "must be above 0 and below 1")?;
        rules.require(end >= start && end < 1.0, "beta_end", end, &format!("must be from beta_start ({start}) to below 1"))?;
        Ok(config)
    }
}

/// The components' configs fit together: the image embedding is the UNet's context, and the
/// UNet denoises the VAE's latents.
pub fn check_components_fit(clip: &ClipVisionConfig, unet: &UNetConfig, vae: &VaeConfig) -> Result<(), ConfigError> {
    let rules = Rules { file: "unet/config.json" };
    let (projection, latents) = (clip.projection_dim, vae.latent_channels);
    let context = format!("must equal image_encoder's projection_dim ({projection})");
    rules.require(unet.cross_attention_dim == projection, "cross_attention_dim", unet.cross_attention_dim, &context)?;
    let channels = format!("must equal vae's latent_channels ({latents})");
    rules.require(unet.in_channels == latents, "in_channels", unet.in_channels, &channels)?;
    rules.require(unet.out_channels == latents, "out_channels", unet.out_channels, &channels)
}

/// `model_index.json`: which component classes the pipeline has.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ModelIndex {
    /// The pipeline class (only `StableDiffusionImageVariationPipeline`); required, as every
    /// key here (diffusers has no defaults for them).
    #[serde(rename = "_class_name")]
    pub class_name: String,
    /// The UNet's library and class (`UNet2DConditionModel`).
    pub unet: (String, String),
    /// The VAE's library and class (`AutoencoderKL`).
    pub vae: (String, String),
    /// The image encoder's library and class (`CLIPVisionModelWithProjection`).
    pub image_encoder: (String, String),
    /// The scheduler's library and class.
    pub scheduler: (String, String),
}

impl ModelIndex {
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let file = "model_index.json";
        let index: Self = parse(file, text, &[])?;
        let expect = [
            ("_class_name", index.class_name.as_str(), "StableDiffusionImageVariationPipeline"),
            ("unet", index.unet.1.as_str(), "UNet2DConditionModel"),
            ("vae", index.vae.1.as_str(), "AutoencoderKL"),
            ("image_encoder", index.image_encoder.1.as_str(), "CLIPVisionModelWithProjection"),
        ];
        for (key, got, want) in expect {
            if got != want {
                return Err(unsupported(file, key, got, want));
            }
        }
        Ok(index)
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::testing::tiny_text as tiny;

    fn real(path: &str) -> String {
        std::fs::read_to_string(format!("{}/configs/sd-image-variations-diffusers/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn real_configs_parse_to_sd1_sizes() {
        let unet = UNetConfig::from_json(&real("unet/config.json")).unwrap();
        assert_eq!((unet.block_out_channels[3], unet.cross_attention_dim, unet.heads(0), unet.sample_size), (1280, 768, 8, Some(64)));
        let vae = VaeConfig::from_json(&real("vae/config.json")).unwrap();
        // The last up block's input: 256 channels at 512x512.
        assert_eq!(vae.largest_activation(512 * 512), 256 * 512 * 512);
        assert_eq!((vae.scaling_factor, vae.scale_factor(), vae.use_post_quant_conv), (0.18215, 8, true));
        let clip = ClipVisionConfig::from_json(&real("image_encoder/config.json")).unwrap();
        assert_eq!((clip.hidden_size, clip.num_positions(), clip.projection_dim), (1024, 257, 768));
        let scheduler = SchedulerConfig::from_json(&real("scheduler/scheduler_config.json")).unwrap();
        assert_eq!((scheduler.steps_offset, scheduler.skip_prk_steps, scheduler.timestep_spacing), (1, true, None));
        ModelIndex::from_json(&real("model_index.json")).unwrap();
    }

    #[test]
    fn tiny_configs_take_library_defaults_for_absent_keys() {
        let clip = ClipVisionConfig::from_json(&tiny("image_encoder/config.json")).unwrap();
        assert_eq!((clip.hidden_size, clip.num_positions()), (32, 257));
        let unet = UNetConfig::from_json(&tiny("unet/config.json")).unwrap();
        assert_eq!((unet.block_out_channels.clone(), unet.heads(2), unet.num_attention_heads.clone()), (vec![16, 32, 64, 64], 4, None));
        let vae = VaeConfig::from_json(&tiny("vae/config.json")).unwrap();
        assert_eq!(vae.scaling_factor, 0.18215); // absent from the file
    }

    #[test]
    fn unsupported_values_are_named() {
        let text = real("unet/config.json").replace("\"act_fn\"", "\"use_linear_projection\": true, \"act_fn\"");
        let err = UNetConfig::from_json(&text).unwrap_err();
        assert!(err.to_string().contains("use_linear_projection") && err.to_string().contains("true"), "{err}");
        let text = real("unet/config.json").replace("\"DownBlock2D\"", "\"KDownBlock2D\"");
        assert!(UNetConfig::from_json(&text).unwrap_err().to_string().contains("KDownBlock2D"));
        assert!(matches!(UNetConfig::from_json("{ not json"), Err(ConfigError::Parse { .. })));
        let per_block = real("unet/config.json").replace("\"attention_head_dim\": 8", "\"attention_head_dim\": [5, 10, 20, 20]");
        assert_eq!(UNetConfig::from_json(&per_block).unwrap().heads(1), 10);
    }

    /// The real `path` with `key` set to `value`.
    fn with(path: &str, key: &str, value: Value) -> String {
        let mut config: Value = serde_json::from_str(&real(path)).unwrap();
        config[key] = value;
        config.to_string()
    }

    /// Up blocks take their heads from the down block of the same width: a block without
    /// attention going down may still have it coming up.
    #[test]
    fn heads_of_an_up_block_with_attention_must_split_its_width() {
        let mut config: Value = serde_json::from_str(&real("unet/config.json")).unwrap();
        config["down_block_types"] = serde_json::json!(["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]);
        config["attention_head_dim"] = serde_json::json!([7, 8, 8, 8]);
        let err = UNetConfig::from_json(&config.to_string()).unwrap_err().to_string();
        assert!(err.contains("`attention_head_dim` = 7: block 0's 320 channels must split evenly into its heads"), "{err}");
    }

    #[test]
    fn components_that_do_not_fit_together_are_named() {
        let clip = ClipVisionConfig::from_json(&real("image_encoder/config.json")).unwrap();
        let unet = UNetConfig::from_json(&real("unet/config.json")).unwrap();
        let vae = VaeConfig::from_json(&real("vae/config.json")).unwrap();
        check_components_fit(&clip, &unet, &vae).unwrap();
        let wide = UNetConfig { cross_attention_dim: 1024, ..unet.clone() };
        let err = check_components_fit(&clip, &wide, &vae).unwrap_err().to_string();
        assert!(err.contains("`cross_attention_dim` = 1024: must equal image_encoder's projection_dim (768)"), "{err}");
        let eight = VaeConfig { latent_channels: 8, ..vae };
        let err = check_components_fit(&clip, &unet, &eight).unwrap_err().to_string();
        assert!(err.contains("`in_channels` = 4: must equal vae's latent_channels (8)"), "{err}");
    }

    #[test]
    fn degenerate_values_are_refused_by_key() {
        use serde_json::json;
        let unet = |key, value| UNetConfig::from_json(&with("unet/config.json", key, value)).map(drop);
        let vae = |key, value| VaeConfig::from_json(&with("vae/config.json", key, value)).map(drop);
        let clip = |key, value| ClipVisionConfig::from_json(&with("image_encoder/config.json", key, value)).map(drop);
        for (result, words) in [
            (unet("norm_num_groups", json!(0)), "`norm_num_groups` = 0: must be from 1 to 65536"),
            (unet("block_out_channels", json!([320, 640, 1280, 1000])), "each must be a multiple of norm_num_groups (32)"),
            (unet("attention_head_dim", json!([])), "`attention_head_dim` = []: one per block_out_channels entry (4)"),
            (unet("attention_head_dim", json!(0)), "`attention_head_dim` = 0: block 0's 320 channels must split evenly"),
            (unet("attention_head_dim", json!(7)), "`attention_head_dim` = 7: block 0's 320 channels must split evenly"),
            (unet("layers_per_block", json!(0)), "`layers_per_block` = 0"),
            (unet("sample_size", json!(0)), "`sample_size` = 0"),
            (unet("norm_eps", json!(-1.0)), "`norm_eps` = -1.0: must be a number above 0"),
            (vae("block_out_channels", json!([])), "`block_out_channels` = []: at least one block is needed"),
            (vae("norm_num_groups", json!(48)), "each must be a multiple of norm_num_groups (48)"),
            (vae("up_block_types", json!(["UpDecoderBlock2D"])), "`up_block_types`"),
            (vae("latent_channels", json!(0)), "`latent_channels` = 0"),
            (vae("scaling_factor", json!(0.0)), "`scaling_factor` = 0.0"),
            (clip("patch_size", json!(0)), "`patch_size` = 0: must be from 1 to 65536"),
            (clip("num_attention_heads", json!(0)), "`num_attention_heads` = 0"),
            (clip("num_attention_heads", json!(7)), "`hidden_size` = 1024: must split evenly into the 7 heads"),
            (clip("image_size", json!(200)), "`image_size` = 200: must be a whole number of 14-pixel patches"),
            (vae("block_out_channels", json!(vec![128; 9])), "`block_out_channels` = [128, 128, 128, 128, 128, 128, 128, 128, 128]: at most 8 blocks"),
            (unet("cross_attention_dim", json!(1u64 << 40)), "`cross_attention_dim` = 1099511627776: must be from 1 to 65536"),
        ] {
            let err = result.expect_err(words).to_string();
            assert!(err.contains(words), "{err}\nshould say: {words}");
        }
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        /// A JSON value of the kinds a config holds, edge numbers included.
        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                prop_oneof![Just(0i64), Just(1), Just(-1), Just(3), Just(7), Just(1 << 40), any::<i64>()].prop_map(Value::from),
                prop_oneof![Just(0.0f64), Just(-1.0), Just(1e300), any::<f64>()].prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
                "[a-zA-Z0-9]{0,12}".prop_map(Value::from),
            ];
            leaf.prop_recursive(2, 8, 4, |inner| proptest::collection::vec(inner, 0..5).prop_map(Value::Array))
        }

        /// A real or tiny config file with some of its keys given other values.
        fn mutated(path: &'static str) -> impl Strategy<Value = String> {
            let base: Value = serde_json::from_str(&path.strip_prefix("tiny:").map_or_else(|| real(path), tiny)).unwrap();
            let keys: Vec<String> = base.as_object().unwrap().keys().cloned().collect();
            let edits = proptest::collection::vec((proptest::sample::select(keys), value()), 1..4);
            (Just(base), edits).prop_map(|(mut config, edits)| {
                for (key, value) in edits {
                    config[key] = value;
                }
                config.to_string()
            })
        }

        proptest! {
            #![proptest_config(crate::testing::fuzz_cases(500))]

            /// Any config is a value whose derived sizes the models use without a panic, or an
            /// error naming its file.
            #[test]
            fn any_unet_config_is_usable_or_refused(text in prop_oneof![mutated("unet/config.json"), mutated("tiny:unet/config.json")]) {
                match UNetConfig::from_json(&text) {
                    Ok(config) => {
                        for block in 0..config.block_out_channels.len() {
                            prop_assert!(config.heads(block) > 0);
                        }
                        prop_assert!(config.time_embed_dim() > 0);
                    }
                    Err(e) => prop_assert!(e.to_string().starts_with("unet/config.json: ")),
                }
            }

            #[test]
            fn any_vae_config_is_usable_or_refused(text in prop_oneof![mutated("vae/config.json"), mutated("tiny:vae/config.json")]) {
                match VaeConfig::from_json(&text) {
                    Ok(config) => {
                        prop_assert!(config.scale_factor() >= 1);
                        let _ = config.largest_activation(512 * 512);
                    }
                    Err(e) => prop_assert!(e.to_string().starts_with("vae/config.json: ")),
                }
            }

            #[test]
            fn any_clip_config_is_usable_or_refused(text in prop_oneof![mutated("image_encoder/config.json"), mutated("tiny:image_encoder/config.json")]) {
                match ClipVisionConfig::from_json(&text) {
                    Ok(config) => prop_assert!(config.num_positions() >= 2),
                    Err(e) => prop_assert!(e.to_string().starts_with("image_encoder/config.json: ")),
                }
            }

            #[test]
            fn any_scheduler_config_builds_or_is_refused(text in prop_oneof![mutated("scheduler/scheduler_config.json")], steps in 0usize..1100) {
                match SchedulerConfig::from_json(&text) {
                    Ok(config) => {
                        for kind in crate::schedulers::SchedulerKind::ALL {
                            if let Ok(scheduler) = kind.build(&config, steps) {
                                let trained = config.num_train_timesteps as f32;
                                prop_assert!(scheduler.timesteps().iter().all(|t| (0.0..trained).contains(t)));
                            }
                        }
                    }
                    Err(e) => prop_assert!(e.to_string().starts_with("scheduler/scheduler_config.json: ")),
                }
            }
        }
    }
}
