//! The decoder half of diffusers' `AutoencoderKL`: `post_quant_conv`, then `Decoder` (conv_in,
//! mid block with attention, up blocks, norm, SiLU, conv_out). The encoder is never loaded.

use burn::tensor::Tensor;

use crate::config::VaeConfig;
use crate::models::bands::Bands;
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
    /// `scaling_factor`). The up blocks work in `bands` bands of rows (`bands_for`), each one
    /// storage binding at most; the result is the same for any number of them.
    pub fn decode(&self, latents: Tensor<4>, bands: usize) -> Tensor<4> {
        let mut z = latents.div_scalar(self.config.scaling_factor);
        if let Some(conv) = &self.post_quant_conv {
            z = conv.forward(z);
        }
        let x = self.mid_block.forward(self.conv_in.forward(z));
        let x = self.up_blocks.iter().fold(Bands::split(x, bands), |x, block| block.forward_bands(x));
        let x = self.conv_norm_out.forward_silu_bands(&x);
        x.convolve3x3(1, None, |band, _| self.conv_out.forward(band)).join()
    }

    /// The fewest bands of latent rows that keep every activation of a decode of `batch`
    /// latents `[latent_height, latent_width]` (with the neighbouring rows each band reads)
    /// within `max_bytes` at `element_bytes` per value; `None` where one latent row is too wide
    /// or it would take more than 255 bands.
    pub fn bands_for(&self, batch: usize, [latent_height, latent_width]: [usize; 2], element_bytes: usize, max_bytes: u64) -> Option<usize> {
        let factor = self.config.scale_factor();
        let per_row = (self.config.largest_activation(latent_width * factor * factor) * batch * element_bytes) as u64;
        // A band reads at most one latent row's worth above and below it.
        let rows = (max_bytes / per_row.max(1)).checked_sub(2).filter(|r| *r > 0)? as usize;
        // GroupNorm combines at most 255 bands' statistics.
        Some(latent_height.div_ceil(rows)).filter(|bands| *bands < 256)
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
            let err = relative_error(&read(vae.decode(latents, 1)).await, &Golden::open("blocks.safetensors").f32("vae.decoder.out"));
            assert!(err < 1e-5, "relative error {err}");
        });
    }

    /// The real model's decoder (random weights) on this adapter: at 256x256 in f32 and
    /// 512x512 in f16, where a whole decode fits a 128 MiB binding, bands give the whole
    /// decode's result; 512x512 in f32 and 1024x1024 in both run in bands. Minutes on
    /// lavapipe: `cargo test --release --lib -- --ignored real_size`.
    #[test]
    #[ignore]
    fn real_size_decodes_in_bands_equal_the_whole() {
        use burn::tensor::{Distribution, Tensor};
        pollster::block_on(async {
            let config_file = format!("{}/configs/sd-image-variations-diffusers/vae/config.json", env!("CARGO_MANIFEST_DIR"));
            let config = VaeConfig::from_json(&std::fs::read_to_string(config_file).unwrap()).unwrap();
            for (dtype, sizes) in [(ComputeDType::F32, [256, 512, 1024]), (ComputeDType::F16, [256, 512, 1024])] {
                let gpu = shared_gpu(DTypeChoice::Exactly(dtype)).await;
                let limit = gpu.capabilities.max_storage_buffer_binding_size;
                let device_dtype = gpu.capabilities.compute_dtype.tensor();
                let weights = crate::weights::Weights::random("vae", &gpu.device, device_dtype);
                let vae = super::AutoencoderKLDecoder::load(&weights, &config).unwrap();
                for size in sizes {
                    let latent = size / 8;
                    let latents = Tensor::<4>::random([1, 4, latent, latent], Distribution::Normal(0.0, 1.0), (&gpu.device, device_dtype));
                    let bands = vae.bands_for(1, [latent, latent], device_dtype.size(), limit).unwrap();
                    let started = std::time::Instant::now();
                    let banded = read(vae.decode(latents.clone(), bands.max(2))).await;
                    let seconds = started.elapsed().as_secs_f32();
                    assert!(banded.iter().all(|v| v.is_finite()), "{size} {dtype:?}: not finite");
                    let line = format!("{size}x{size} {dtype:?}: {} bands in {seconds:.1} s", bands.max(2));
                    if bands == 1 {
                        let whole = read(vae.decode(latents, 1)).await;
                        let err = relative_error(&banded, &whole);
                        crate::testing::log(&format!("{line}; against the whole decode: relative error {err:e}"));
                        assert!(err < if dtype == ComputeDType::F32 { 1e-5 } else { 1e-2 }, "{line}: relative error {err}");
                    } else {
                        crate::testing::log(&format!("{line} (a whole decode would not fit {limit} bytes)"));
                    }
                }
            }
        });
    }
}
