//! The decoder half of diffusers' `AutoencoderKL`: `post_quant_conv`, then `Decoder` (conv_in,
//! mid block with attention, up blocks, norm, SiLU, conv_out). The encoder is never loaded.

use burn::tensor::Tensor;

use crate::config::VaeConfig;
use crate::models::layers::{Conv2d, GroupNorm};
use crate::models::resnet::ResnetConfig;
use crate::models::unet_2d_blocks::{UNetMidBlock2D, UpDecoderBlock2D, UpDecoderBlockConfig};
use crate::weights::{LoadError, Weights};

pub struct AutoencoderKLDecoder {
    config: VaeConfig,
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid_block: UNetMidBlock2D,
    up_blocks: Vec<UpDecoderBlock2D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl AutoencoderKLDecoder {
    pub fn load(w: &Weights, config: &VaeConfig) -> Result<Self, LoadError> {
        let c = config;
        let latent = c.latent_channels;
        let top = *c.block_out_channels.last().expect("at least one block");
        let resnet = ResnetConfig { groups: c.norm_num_groups, eps: 1e-6, temb_channels: None, output_scale_factor: 1.0 };
        let decoder = w.pp("decoder");
        let reversed: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let up_blocks = (0..reversed.len())
            .map(|i| {
                let inputs = reversed[i.saturating_sub(1)];
                let block = UpDecoderBlockConfig { num_layers: c.layers_per_block + 1, resnet, add_upsample: i != reversed.len() - 1 };
                UpDecoderBlock2D::load(&decoder.pp("up_blocks").pp(i), inputs, reversed[i], block)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            config: c.clone(),
            post_quant_conv: c.use_post_quant_conv.then(|| Conv2d::load_1x1(&w.pp("post_quant_conv"), latent, latent)).transpose()?,
            conv_in: Conv2d::load_3x3(&decoder.pp("conv_in"), latent, top)?,
            mid_block: UNetMidBlock2D::load(&decoder.pp("mid_block"), top, resnet, c.mid_block_add_attention)?,
            up_blocks,
            conv_norm_out: GroupNorm::load(&decoder.pp("conv_norm_out"), c.norm_num_groups, reversed[reversed.len() - 1], 1e-6)?,
            conv_out: Conv2d::load_3x3(&decoder.pp("conv_out"), reversed[reversed.len() - 1], c.out_channels)?,
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// The image in [-1, 1] (roughly) from denoised latents (unscaled: this divides by
    /// `scaling_factor`).
    pub fn decode(&self, latents: Tensor<4>) -> Tensor<4> {
        let mut z = latents.div_scalar(self.config.scaling_factor);
        if let Some(conv) = &self.post_quant_conv {
            z = conv.forward(z);
        }
        let x = self.mid_block.forward(self.conv_in.forward(z));
        let x = self.up_blocks.iter().fold(x, |x, block| block.forward(x));
        self.conv_out.forward(self.conv_norm_out.forward_silu(x))
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use crate::config::VaeConfig;
    use crate::gpu::{ComputeDType, DTypeChoice};
    use crate::testing::{Golden, read, relative_error, shared_gpu, tiny_component, upload};

    #[test]
    fn decoder_output_matches_diffusers_with_legacy_attention_names() {
        pollster::block_on(async {
            let gpu = shared_gpu(DTypeChoice::Exactly(ComputeDType::F32)).await;
            let (_, vae) = tiny_component(&gpu, "vae", |j| VaeConfig::from_json(j).unwrap(), super::AutoencoderKLDecoder::load).await;
            let latents = upload(&Golden::open("run-pndm.safetensors"), "step5.latents", &gpu);
            let err = relative_error(&read(vae.decode(latents)).await, &Golden::open("blocks.safetensors").f32("vae.decoder.out"));
            assert!(err < 1e-5, "relative error {err}");
        });
    }
}
