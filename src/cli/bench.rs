//! `imvar bench`: times each pipeline stage on the device (after a warm-up, median of several
//! runs, the device synchronised around each) and prints one JSON line per stage.

use std::time::Instant;

use burn::tensor::{DType, Distribution, Tensor};
use serde_json::json;

use imvar::gpu::Gpu;
use imvar::kernels::GemmForcing;
use imvar::pipeline::{GenerateOptions, ImageVariationPipeline, PipelineError};
use imvar::pipeline::preprocess::RgbImage;
use imvar::torch_rng::BatchNoise;

pub struct BenchOptions {
    pub n: usize,
    pub steps: usize,
    pub runs: usize,
    pub size: Option<(usize, usize)>,
    /// What to force on the GEMMs instead of their choice by shape.
    pub gemm: GemmForcing,
}

/// Median wall time in milliseconds of `runs` calls of `stage` after one warm-up call; `stage`
/// must leave the device idle when it returns.
pub fn time_stage(runs: usize, mut stage: impl FnMut() -> Result<(), PipelineError>) -> Result<f64, PipelineError> {
    stage()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        stage()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

pub fn sync(gpu: &Gpu) -> Result<(), PipelineError> {
    gpu.device.sync().map_err(|e| PipelineError::Gpu(format!("{e:?}")))
}

/// Runs every stage and prints its JSON line; returns the lines.
pub fn run(pipeline: &ImageVariationPipeline, gpu: &Gpu, options: &BenchOptions) -> Result<Vec<serde_json::Value>, PipelineError> {
    let caps = &gpu.capabilities;
    let dtype = caps.compute_dtype.tensor();
    imvar::kernels::force_gemm(options.gemm);
    let (width, height) = options.size.unwrap_or(pipeline.default_size());
    let unet = pipeline.unet().config();
    let scale = pipeline.vae().config().scale_factor();
    let latent_shape = [options.n, unet.in_channels, height / scale, width / scale];
    let device = &gpu.device;
    let image = RgbImage { width: 640, height: 480, pixels: vec![128; 640 * 480 * 3] };
    let mut lines = Vec::new();
    let mut report = |stage: &str, batch: usize, ms: f64| {
        let line = json!({
            "stage": stage, "median_ms": (ms * 1000.0).round() / 1000.0, "runs": options.runs, "batch": batch,
            "width": width, "height": height, "steps": options.steps, "dtype": caps.compute_dtype,
            "gemm_block": options.gemm.block, "gemm_splits": options.gemm.splits, "adapter": caps.adapter, "backend": caps.backend,
        });
        println!("{line}");
        lines.push(line);
    };

    let ms = time_stage(options.runs, || {
        drop(pipeline.encode_image(&image));
        sync(gpu)
    })?;
    report("clip_encode", 1, ms);

    let batch = 2 * options.n;
    let unet_input = Tensor::<4>::random([batch, latent_shape[1], latent_shape[2], latent_shape[3]], Distribution::Default, (device, dtype));
    let context = Tensor::<3>::random([batch, 1, unet.cross_attention_dim], Distribution::Default, (device, dtype));
    let ms = time_stage(options.runs, || {
        drop(pipeline.unet().forward(unet_input.clone(), 500.0, &context));
        sync(gpu)
    })?;
    report("unet_call", batch, ms);

    let latents = Tensor::<4>::random(latent_shape, Distribution::Default, (device, DType::F32));
    let kind = pipeline.default_scheduler();
    let ms = time_stage(options.runs, || {
        let mut scheduler = kind.build(pipeline.scheduler_config(), options.steps)?;
        let mut noise = BatchNoise::new(0, options.n, 0..options.n);
        drop(scheduler.step(0, latents.clone(), latents.clone(), &mut noise));
        sync(gpu)
    })?;
    report("scheduler_step", options.n, ms);

    let bands = pipeline.decode_bands(options.n, width, height).unwrap_or(1);
    let ms = time_stage(options.runs, || {
        drop(pipeline.vae().decode(latents.clone().cast(dtype), bands));
        sync(gpu)
    })?;
    report("vae_decode", options.n, ms);

    let generate = GenerateOptions { n: options.n, steps: options.steps, size: Some((width, height)), ..Default::default() };
    let ms = time_stage(options.runs.min(3), || {
        pollster::block_on(pipeline.generate(&image, &generate, &mut |_| true)).map(drop)
    })?;
    report("generation", options.n, ms);

    if let Some(usage) = device.memory_pool_usage() {
        let line = json!({
            "stage": "gpu_memory", "bytes_in_use": usage.bytes_in_use, "bytes_reserved": usage.bytes_reserved,
            "note": "burn's pool after the runs; peak usage is not tracked by the backend",
        });
        println!("{line}");
        lines.push(line);
    }
    Ok(lines)
}
