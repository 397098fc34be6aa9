//! diffusers' `UNet2DConditionModel` for SD1.x: every width, depth, head count and block type
//! from `unet/config.json`.

use burn::tensor::activation::silu;
use burn::tensor::{DType, Tensor};

use crate::config::UNetConfig;
use crate::models::embeddings::{TimestepEmbedding, timestep_features};
use crate::models::layers::{Conv2d, GroupNorm};
use crate::models::resnet::ResnetConfig;
use crate::models::unet_2d_blocks::{
    CrossAttentionConfig, DownBlock2D, DownBlockConfig, UNetMidBlock2DCrossAttn, UpBlock2D, UpBlockConfig,
};
use crate::weights::{LoadError, Weights};

pub struct UNet2DConditionModel {
    config: UNetConfig,
    time_embedding: TimestepEmbedding,
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock2D>,
    mid_block: UNetMidBlock2DCrossAttn,
    up_blocks: Vec<UpBlock2D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet2DConditionModel {
    pub fn load(w: &Weights, config: &UNetConfig) -> Result<Self, LoadError> {
        let c = config;
        let channels = &c.block_out_channels;
        let blocks = channels.len();
        let resnet = ResnetConfig {
            groups: c.norm_num_groups,
            eps: c.norm_eps,
            temb_channels: Some(c.time_embed_dim()),
            ..Default::default()
        };
        let cross = |heads: usize, kind: &str| {
            kind.starts_with("CrossAttn").then_some(CrossAttentionConfig { heads, context_dim: c.cross_attention_dim })
        };

        let mut down_blocks = Vec::new();
        for (i, kind) in c.down_block_types.iter().enumerate() {
            let inputs = if i == 0 { channels[0] } else { channels[i - 1] };
            let block = DownBlockConfig {
                num_layers: c.layers_per_block,
                resnet,
                attention: cross(c.heads(i), kind),
                add_downsample: i != blocks - 1,
                downsample_padding: c.downsample_padding,
            };
            down_blocks.push(DownBlock2D::load(&w.pp("down_blocks").pp(i), inputs, channels[i], block)?);
        }
        let mid_block = UNetMidBlock2DCrossAttn::load(
            &w.pp("mid_block"),
            channels[blocks - 1],
            ResnetConfig { output_scale_factor: c.mid_block_scale_factor, ..resnet },
            CrossAttentionConfig { heads: c.heads(blocks - 1), context_dim: c.cross_attention_dim },
        )?;
        let mut up_blocks = Vec::new();
        let reversed: Vec<usize> = channels.iter().rev().copied().collect();
        for (i, kind) in c.up_block_types.iter().enumerate() {
            let previous = reversed[i.saturating_sub(1)];
            let inputs = reversed[(i + 1).min(blocks - 1)];
            let block = UpBlockConfig {
                num_layers: c.layers_per_block + 1,
                resnet,
                attention: cross(c.heads(blocks - 1 - i), kind),
                add_upsample: i != blocks - 1,
            };
            up_blocks.push(UpBlock2D::load(&w.pp("up_blocks").pp(i), inputs, reversed[i], previous, block)?);
        }
        Ok(Self {
            config: c.clone(),
            time_embedding: TimestepEmbedding::load(&w.pp("time_embedding"), channels[0], c.time_embed_dim())?,
            conv_in: Conv2d::load_3x3(&w.pp("conv_in"), c.in_channels, channels[0])?,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(&w.pp("conv_norm_out"), c.norm_num_groups, channels[0], c.norm_eps)?,
            conv_out: Conv2d::load_3x3(&w.pp("conv_out"), channels[0], c.out_channels)?,
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// The noise prediction for `sample` `[B, C, H, W]` at `timestep` given `context`
    /// `[B, T, cross_attention_dim]` (both in the compute dtype).
    pub fn forward(&self, sample: Tensor<4>, timestep: f32, context: &Tensor<3>) -> Tensor<4> {
        self.forward_observed(sample, timestep, context, &mut |_, _| {})
    }

    /// `forward`, handing each block's output to `observe` under its checkpoint name
    /// (`down_blocks.0`, `mid_block`, `up_blocks.3`, ...), for tests and debugging.
    pub fn forward_observed(
        &self,
        sample: Tensor<4>,
        timestep: f32,
        context: &Tensor<3>,
        observe: &mut dyn FnMut(&str, &Tensor<4>),
    ) -> Tensor<4> {
        let batch = sample.dims()[0];
        let c = &self.config;
        let features: Vec<f32> = (0..batch)
            .flat_map(|_| timestep_features(timestep, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift))
            .collect();
        let dtype: DType = sample.dtype();
        let temb = silu(self.time_embedding.forward(features, batch, &sample.device(), dtype));

        let mut x = self.conv_in.forward(sample);
        observe("conv_in", &x);
        let mut skips = vec![x.clone()];
        for (i, block) in self.down_blocks.iter().enumerate() {
            let (out, block_skips) = block.forward(x, &temb, context);
            x = out;
            observe(&format!("down_blocks.{i}"), &x);
            skips.extend(block_skips);
        }
        x = self.mid_block.forward(x, &temb, context);
        observe("mid_block", &x);
        for (i, block) in self.up_blocks.iter().enumerate() {
            x = block.forward(x, &mut skips, &temb, context);
            observe(&format!("up_blocks.{i}"), &x);
        }
        self.conv_out.forward(self.conv_norm_out.forward_silu(x))
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use crate::config::UNetConfig;
    use crate::gpu::{ComputeDType, DTypeChoice};
    use crate::testing::{Golden, read, relative_error, shared_gpu, tiny_component, upload};

    #[test]
    fn first_call_block_outputs_and_noise_prediction_match_diffusers() {
        pollster::block_on(async {
            let gpu = shared_gpu(DTypeChoice::Exactly(ComputeDType::F32)).await;
            let (config, unet) = tiny_component(&gpu, "unet", |j| UNetConfig::from_json(j).unwrap(), super::UNet2DConditionModel::load).await;
            let golden = Golden::open("blocks.safetensors");
            let t = golden.f32("unet.call.timestep")[0];
            let mut blocks = Vec::new();
            let out = unet.forward_observed(
                upload(&golden, "unet.call.sample", &gpu),
                t,
                &upload(&golden, "unet.call.encoder_hidden_states", &gpu),
                &mut |name, x| blocks.push((name.to_string(), x.clone())),
            );
            assert_eq!(blocks.len(), 2 + 2 * config.block_out_channels.len());
            for (name, x) in blocks {
                let err = relative_error(&read(x).await, &golden.f32(&format!("unet.{name}.out")));
                assert!(err < 1e-5, "{name}: relative error {err}");
            }
            let err = relative_error(&read(out).await, &golden.f32("unet.call.out"));
            assert!(err < 1e-5, "relative error {err}");
        });
    }
}
