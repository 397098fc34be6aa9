//! diffusers' `StableDiffusionImageVariationPipeline`: CLIP image embedding → classifier-free
//! guidance with a zero unconditional embedding → denoising loop → VAE decode → 8-bit RGB.
//! `load` builds it from any `ModelSource`; `preprocess` is the model card's exact input
//! preparation; `previews` shows the latents while they denoise.

mod load;
pub mod preprocess;
mod previews;

use burn::tensor::{DType, Tensor, TensorData};
use web_time::{Duration, Instant};

pub use load::{LoadProgress, LoadReport, WeightsFrom, load_component};
use preprocess::RgbImage;
pub use previews::latent_previews;

use crate::config::{ConfigError, SchedulerConfig};
use crate::gpu::Gpu;
use crate::models::clip_vision::ClipVisionModelWithProjection;
use crate::models::unet_2d::UNet2DConditionModel;
use crate::models::vae::AutoencoderKLDecoder;
use crate::schedulers::{SchedulerError, SchedulerKind};
use crate::torch_rng::BatchNoise;
use crate::units::human_bytes;
use crate::weights::LoadError;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum PipelineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Image(#[from] preprocess::ImageError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error("{0}")]
    InvalidOption(String),
    #[error("cancelled")]
    Cancelled,
    #[error("the GPU failed: {0}")]
    Gpu(String),
}

/// What a generation asks for. `None` fields take the model's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    pub n: usize,
    pub steps: usize,
    pub guidance: f32,
    pub seed: u64,
    pub scheduler: Option<SchedulerKind>,
    /// Output (width, height) in pixels.
    pub size: Option<(usize, usize)>,
    /// Variations per UNet batch; `None` for as many as the device's limits allow.
    pub max_batch: Option<usize>,
    /// Hand a cheap RGB preview of every variation's latents to each progress report (costs a
    /// small GPU read per step).
    pub previews: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { n: 1, steps: 50, guidance: 3.0, seed: 0, scheduler: None, size: None, max_batch: None, previews: false }
    }
}

/// Reported after every UNet call; returning `false` from the callback cancels. `step` and
/// `total` count the denoising steps the person asked for, over all batches: PNDM calls the
/// UNet once more than its steps, so a call does not always complete a step.
pub struct Progress {
    pub step: usize,
    pub total: usize,
    /// Since `generate` was called (web-time's clock: `performance.now()` in the browser).
    pub elapsed: Duration,
    /// Index of the first variation of the batch being denoised.
    pub first: usize,
    /// One per variation of that batch, at latent resolution, when `GenerateOptions::previews`
    /// is set.
    pub previews: Vec<RgbImage>,
}

/// What `generate` settled before denoising: scheduler, output size, and when it started.
#[derive(Clone, Copy)]
struct Plan {
    kind: SchedulerKind,
    width: usize,
    height: usize,
    started: Instant,
}

/// One generated picture, identified by (seed, index).
pub struct Variation {
    pub seed: u64,
    pub index: usize,
    pub image: RgbImage,
}

pub struct ImageVariationPipeline {
    gpu: Gpu,
    image_encoder: ClipVisionModelWithProjection,
    unet: UNet2DConditionModel,
    vae: AutoencoderKLDecoder,
    scheduler_config: SchedulerConfig,
}

impl ImageVariationPipeline {
    pub fn unet(&self) -> &UNet2DConditionModel {
        &self.unet
    }

    pub fn vae(&self) -> &AutoencoderKLDecoder {
        &self.vae
    }

    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler_config
    }

    /// The model's own scheduler (from its config's class name), PNDM if unknown.
    pub fn default_scheduler(&self) -> SchedulerKind {
        SchedulerKind::of_config(&self.scheduler_config).unwrap_or(SchedulerKind::Pndm)
    }

    /// Output size in pixels when none is asked for: `sample_size * vae scale`.
    pub fn default_size(&self) -> (usize, usize) {
        let side = self.unet.config().sample_size.unwrap_or(64) * self.vae_scale();
        (side, side)
    }

    /// Pixels per latent: diffusers' `vae_scale_factor`.
    fn vae_scale(&self) -> usize {
        self.vae.config().scale_factor()
    }

    fn dtype(&self) -> DType {
        self.gpu.capabilities.compute_dtype.tensor()
    }

    /// `image_embeds` `[1, projection_dim]` of a decoded picture.
    pub fn encode_image(&self, image: &RgbImage) -> Tensor<2> {
        let size = self.image_encoder.config().image_size;
        let pixels = preprocess::clip_input(image, size);
        let pixels = Tensor::<4>::from_data(TensorData::new(pixels, [1, 3, size, size]), (&self.gpu.device, self.dtype()));
        self.image_encoder.forward(pixels).image_embeds
    }

    fn validate(&self, options: &GenerateOptions) -> Result<(usize, usize), PipelineError> {
        let bad = |m: String| Err(PipelineError::InvalidOption(m));
        if !(1..=64).contains(&options.n) {
            return bad(format!("n must be between 1 and 64, not {}", options.n));
        }
        if !(1..=1000).contains(&options.steps) {
            return bad(format!("steps must be between 1 and 1000, not {}", options.steps));
        }
        if !options.guidance.is_finite() || options.guidance < 0.0 {
            return bad(format!("guidance must be a number >= 0, not {}", options.guidance));
        }
        let (w, h) = options.size.unwrap_or(self.default_size());
        // The latents are downsampled once per UNet block but the last.
        let multiple = self.vae_scale() * (1 << (self.unet.config().block_out_channels.len() - 1));
        if w == 0 || h == 0 || w % multiple != 0 || h % multiple != 0 || w > 2048 || h > 2048 {
            return bad(format!("size {w}x{h} must be multiples of {multiple}, at most 2048"));
        }
        if self.decode_bands(1, w, h).is_none() {
            // A band of one latent row and the rows it reads from its neighbours.
            let needed = 3 * self.largest_activation_bytes(w, self.vae_scale());
            let allowed = self.gpu.capabilities.max_storage_buffer_binding_size;
            return bad(format!(
                "size {w}x{h} needs {} in one GPU buffer even decoded in bands of rows, and this GPU allows {}: choose a smaller size",
                human_bytes(needed),
                human_bytes(allowed)
            ));
        }
        Ok((w, h))
    }

    /// How many variations one batch can hold: every activation must fit one storage binding.
    /// The largest is the VAE decoder's (`VaeConfig::largest_activation`); attention keeps no
    /// score matrix (`kernels::attention`).
    pub fn max_batch(&self, width: usize, height: usize) -> usize {
        let allowed = self.gpu.capabilities.max_storage_buffer_binding_size;
        (allowed / self.largest_activation_bytes(width, height).max(1)).max(1) as usize
    }

    fn largest_activation_bytes(&self, width: usize, height: usize) -> u64 {
        (self.vae.config().largest_activation(width * height) * self.dtype().size()) as u64
    }

    /// Bands of rows the VAE decodes `batch` images of `width` x `height` in, so that each of its
    /// activations fits one storage binding (`AutoencoderKLDecoder::bands_for`).
    pub fn decode_bands(&self, batch: usize, width: usize, height: usize) -> Option<usize> {
        let latent = [height / self.vae_scale(), width / self.vae_scale()];
        self.vae.bands_for(batch, latent, self.dtype().size(), self.gpu.capabilities.max_storage_buffer_binding_size)
    }

    /// Generates `options.n` variations of `image`, in as few batches as the device allows.
    /// `on_step` hears after every step and cancels by returning `false`.
    pub async fn generate(
        &self,
        image: &RgbImage,
        options: &GenerateOptions,
        on_step: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<Vec<Variation>, PipelineError> {
        let started = Instant::now();
        let (width, height) = self.validate(options)?;
        let kind = options.scheduler.unwrap_or(self.default_scheduler());
        // Refused before any GPU work when the steps do not fit the scheduler's config.
        kind.build(&self.scheduler_config, options.steps)?;
        let embeds = self.encode_image(image);
        let plan = Plan { kind, width, height, started };
        let chunk = options.max_batch.unwrap_or_else(|| self.max_batch(width, height)).clamp(1, options.n);
        let total = options.n.div_ceil(chunk) * options.steps;
        let mut variations = Vec::with_capacity(options.n);
        for start in (0..options.n).step_by(chunk) {
            let rows = start..(start + chunk).min(options.n);
            let done = (start / chunk) * options.steps;
            let mut report = |p: Progress| on_step(Progress { step: done + p.step, total, ..p });
            let latents = self.denoise(&embeds, rows.clone(), options, &plan, &mut report).await?;
            for (i, image) in self.decode(latents).await?.into_iter().enumerate() {
                variations.push(Variation { seed: options.seed, index: rows.start + i, image });
            }
        }
        Ok(variations)
    }

    /// The denoising loop for variations `rows` of a batch of `options.n`; progress counts
    /// this loop's steps and the time since the plan started.
    async fn denoise(
        &self,
        embeds: &Tensor<2>,
        rows: std::ops::Range<usize>,
        options: &GenerateOptions,
        plan: &Plan,
        on_step: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<Tensor<4>, PipelineError> {
        let Plan { kind, width, height, started } = *plan;
        let n = rows.len();
        let guided = options.guidance > 1.0;
        let [_, dim] = embeds.dims();
        let cond = embeds.clone().reshape([1, 1, dim]).repeat_dim(0, n);
        let context = if guided { Tensor::cat(vec![cond.clone().zeros_like(), cond], 0) } else { cond };

        let mut scheduler = kind.build(&self.scheduler_config, options.steps)?;
        let mut noise = BatchNoise::new(options.seed, options.n, rows.clone());
        let scale = self.vae_scale();
        let shape = [n, self.unet.config().in_channels, height / scale, width / scale];
        let initial = noise.draw(shape[1..].iter().product());
        let mut latents = Tensor::<4>::from_data(TensorData::new(initial, shape), (&self.gpu.device, DType::F32))
            .mul_scalar(scheduler.init_noise_sigma());

        let timesteps = scheduler.timesteps().to_vec();
        for (index, &t) in timesteps.iter().enumerate() {
            let input = scheduler.scale_model_input(latents.clone(), index).cast(self.dtype());
            let input = if guided { Tensor::cat(vec![input.clone(), input], 0) } else { input };
            let prediction = self.unet.forward(input, t, &context).cast(DType::F32);
            let prediction = if guided {
                let mut halves = prediction.chunk(2, 0);
                let cond = halves.pop().unwrap();
                let uncond = halves.pop().unwrap();
                uncond.clone() + (cond - uncond).mul_scalar(options.guidance)
            } else {
                prediction
            };
            latents = scheduler.step(index, prediction, latents, &mut noise);
            let previews = if options.previews {
                let data = latents.to_data_async().await.map_err(|e| PipelineError::Gpu(format!("{e:?}")))?;
                latent_previews(&data.iter::<f32>().collect::<Vec<_>>(), shape)
            } else {
                Vec::new()
            };
            let elapsed = started.elapsed();
            let step = ((index + 1) * options.steps).div_ceil(timesteps.len());
            if !on_step(Progress { step, total: options.steps, elapsed, first: rows.start, previews }) {
                return Err(PipelineError::Cancelled);
            }
        }
        Ok(latents)
    }

    /// Decodes latents to 8-bit RGB: `(x / 2 + 0.5).clamp(0, 1)`, then `round(x * 255)` with
    /// ties to even, as numpy does in diffusers' postprocessing.
    pub async fn decode(&self, latents: Tensor<4>) -> Result<Vec<RgbImage>, PipelineError> {
        let [batch, _, latent_height, latent_width] = latents.dims();
        let scale = self.vae_scale();
        let bands = self.decode_bands(batch, latent_width * scale, latent_height * scale).unwrap_or(latent_height);
        let decoded = self.vae.decode(latents.cast(self.dtype()), bands).cast(DType::F32);
        let [n, c, h, w] = decoded.dims();
        let pixels = decoded.div_scalar(2.0).add_scalar(0.5).clamp(0.0, 1.0).mul_scalar(255.0).permute([0, 2, 3, 1]);
        let data = pixels.into_data_async().await.map_err(|e| PipelineError::Gpu(format!("{e:?}")))?;
        let values: Vec<f32> = data.iter::<f32>().collect();
        Ok(values
            .chunks_exact(h * w * c)
            .take(n)
            .map(|chunk| RgbImage {
                width: w,
                height: h,
                pixels: chunk.iter().map(|v| v.round_ties_even() as u8).collect(),
            })
            .collect())
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::gpu::{ComputeDType, DTypeChoice};
    use crate::testing::{fixture_path, shared_gpu, tiny_model};

    fn manifest() -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(fixture_path("golden/manifest.json")).unwrap()).unwrap()
    }

    fn input() -> RgbImage {
        preprocess::decode(&std::fs::read(fixture_path("input.png")).unwrap()).unwrap()
    }

    /// (max, mean) absolute difference in 8-bit levels.
    fn level_difference(a: &RgbImage, b: &RgbImage) -> (u8, f64) {
        assert_eq!((a.width, a.height), (b.width, b.height));
        let diffs = a.pixels.iter().zip(&b.pixels).map(|(x, y)| x.abs_diff(*y));
        let (max, sum) = diffs.fold((0u8, 0u64), |(m, s), d| (m.max(d), s + d as u64));
        (max, sum as f64 / a.pixels.len() as f64)
    }

    #[test]
    fn every_golden_run_is_reproduced_from_fp32_and_fp16_files() {
        pollster::block_on(async {
            let gpu = shared_gpu(DTypeChoice::Exactly(ComputeDType::F32)).await;
            let image = input();
            for variant in ["fp32", "fp16"] {
                let source = tiny_model((variant == "fp16").then_some("fp16"));
                let pipeline = ImageVariationPipeline::load(&source, &gpu).await.unwrap();
                for run in manifest()["runs"].as_array().unwrap().iter().filter(|r| r["variant"] == variant) {
                    let options = GenerateOptions {
                        n: run["n"].as_u64().unwrap() as usize,
                        steps: run["steps"].as_u64().unwrap() as usize,
                        guidance: run["guidance"].as_f64().unwrap() as f32,
                        seed: run["seed"].as_u64().unwrap(),
                        scheduler: Some(run["scheduler"].as_str().unwrap().parse().unwrap()),
                        size: None,
                        // One variation per batch for the fp16 files: the same images must come out.
                        max_batch: (variant == "fp16").then_some(1),
                        previews: false,
                    };
                    let (mut calls, mut last) = (0, None);
                    let out = pipeline.generate(&image, &options, &mut |p| { calls += 1; last = Some((p.step, p.total)); true }).await.unwrap();
                    let batches = if variant == "fp16" { options.n } else { 1 };
                    assert_eq!(calls, run["unet_calls"].as_u64().unwrap() as usize * batches);
                    // Progress ends at the steps asked for, however many UNet calls they took.
                    assert_eq!(last, Some((options.steps * batches, options.steps * batches)));
                    let pngs = run["pngs"].as_array().unwrap();
                    assert_eq!(out.len(), pngs.len(), "{}: one image per golden", run["name"]);
                    for (variation, png) in out.iter().zip(pngs) {
                        let golden = preprocess::decode(&std::fs::read(fixture_path(&format!("golden/{}", png.as_str().unwrap()))).unwrap()).unwrap();
                        let (max, mean) = level_difference(&variation.image, &golden);
                        crate::testing::log(&format!("{}: max {max} mean {mean:.4} levels", run["name"]));
                        assert!(max <= 2 && mean < 0.01, "{}: max {max}, mean {mean} levels", run["name"]);
                    }
                }
            }
        });
    }

    #[test]
    fn f16_compute_stays_within_a_few_levels_of_the_fp32_reference() {
        pollster::block_on(async {
            let gpu = shared_gpu(DTypeChoice::Exactly(ComputeDType::F16)).await;
            let pipeline = ImageVariationPipeline::load(&tiny_model(Some("fp16")), &gpu).await.unwrap();
            for (scheduler, golden) in [(SchedulerKind::Pndm, "pndm-n1-g3-fp16-0"), (SchedulerKind::EulerAncestral, "euler-a-n1-g3-fp16-0")] {
                let options = GenerateOptions { steps: 5, seed: 2026, scheduler: Some(scheduler), ..Default::default() };
                let out = pipeline.generate(&input(), &options, &mut |_| true).await.unwrap();
                let reference = preprocess::decode(&std::fs::read(fixture_path(&format!("golden/images/{golden}.png"))).unwrap()).unwrap();
                let (max, mean) = level_difference(&out[0].image, &reference);
                crate::testing::log(&format!("f16 {golden}: max {max} mean {mean:.3} levels"));
                assert!(max <= 10 && mean < 1.0, "{golden}: max {max}, mean {mean}");
            }
        });
    }

    #[test]
    fn cancelling_stops_between_steps() {
        pollster::block_on(async {
            let gpu = shared_gpu(DTypeChoice::Exactly(ComputeDType::F32)).await;
            let pipeline = ImageVariationPipeline::load(&tiny_model(None), &gpu).await.unwrap();
            let mut seen = Vec::new();
            let options = GenerateOptions { steps: 5, n: 2, previews: true, ..Default::default() };
            let mut last_elapsed = Duration::ZERO;
            let result = pipeline.generate(&input(), &options, &mut |p| {
                assert!(p.elapsed > last_elapsed, "elapsed grows step by step");
                last_elapsed = p.elapsed;
                // Latent-resolution previews, one per variation.
                assert_eq!(p.previews.len(), 2);
                assert_eq!((p.previews[0].width, p.previews[0].pixels.len()), (16, 16 * 16 * 3));
                seen.push(p.step);
                p.step < 2
            }).await;
            assert!(matches!(result, Err(PipelineError::Cancelled)));
            assert_eq!(seen, [1, 2]);
        });
    }

    #[test]
    fn invalid_options_are_refused_by_name() {
        pollster::block_on(async {
            let gpu = shared_gpu(DTypeChoice::Exactly(ComputeDType::F32)).await;
            let pipeline = ImageVariationPipeline::load(&tiny_model(None), &gpu).await.unwrap();
            for (options, words) in [
                (GenerateOptions { n: 0, ..Default::default() }, "n must be"),
                (GenerateOptions { steps: 0, ..Default::default() }, "steps must be"),
                (GenerateOptions { guidance: f32::NAN, ..Default::default() }, "guidance"),
                (GenerateOptions { size: Some((100, 128)), ..Default::default() }, "multiples of 64"),
            ] {
                let err = pipeline.generate(&input(), &options, &mut |_| true).await.err().unwrap();
                assert!(err.to_string().contains(words), "{err}");
            }
        });
    }

    /// The VAE's widest activation sizes the batches; where one image's does not fit a storage
    /// binding, the decoder works in bands of rows; a size whose every band would be too wide
    /// is refused with both figures.
    #[test]
    fn sizes_and_batches_respect_the_storage_binding_limit() {
        pollster::block_on(async {
            let mut gpu = shared_gpu(DTypeChoice::Exactly(ComputeDType::F32)).await;
            gpu.capabilities.max_storage_buffer_binding_size = 8 << 20;
            let pipeline = ImageVariationPipeline::load(&tiny_model(None), &gpu).await.unwrap();
            // The tiny VAE's last block takes 32 channels at full resolution: 2 MiB in f32 at
            // 128x128, so 4 images per batch, decoded in 2 bands (a band keeps room for the two
            // latent rows it may read from its neighbours).
            assert_eq!((pipeline.max_batch(128, 128), pipeline.decode_bands(4, 128, 128)), (4, Some(2)));
            // 512 MiB at 2048x2048: bands of 2 latent rows (2 MiB each, with 4 MiB of neighbours).
            assert_eq!(pipeline.decode_bands(1, 2048, 2048), Some(128));
            gpu.capabilities.max_storage_buffer_binding_size = 4 << 20;
            let narrow = ImageVariationPipeline::load(&tiny_model(None), &gpu).await.unwrap();
            let options = GenerateOptions { size: Some((2048, 2048)), ..Default::default() };
            let err = narrow.generate(&input(), &options, &mut |_| true).await.err().unwrap();
            assert!(err.to_string().contains("needs 6.3 MB in one GPU buffer even decoded in bands of rows, and this GPU allows 4.2 MB"), "{err}");
        });
    }

    /// Decoding in bands of rows (where one image's activation exceeds a storage binding) gives
    /// the image the whole decode gives.
    #[test]
    fn a_decode_in_bands_equals_the_whole() {
        pollster::block_on(async {
            let gpu = shared_gpu(DTypeChoice::Exactly(ComputeDType::F32)).await;
            let pipeline = ImageVariationPipeline::load(&tiny_model(None), &gpu).await.unwrap();
            let latents = crate::testing::upload(&crate::testing::Golden::open("run-pndm.safetensors"), "step5.latents", &gpu);
            let whole = pipeline.decode(latents.clone()).await.unwrap();
            let mut narrow = gpu.clone();
            // 128x128 in f32: 128 kB per latent row at the widest: bands of 2 latent rows.
            narrow.capabilities.max_storage_buffer_binding_size = 4 * 131_072;
            let banded = ImageVariationPipeline::load(&tiny_model(None), &narrow).await.unwrap();
            assert_eq!(banded.decode_bands(1, 128, 128), Some(8));
            let bands = banded.decode(latents).await.unwrap();
            assert_eq!(bands.len(), whole.len());
            for (b, w) in bands.iter().zip(&whole) {
                let worst = b.pixels.iter().zip(&w.pixels).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
                assert!(worst <= 1, "banded decode differs by {worst} levels");
            }
        });
    }
}
