//! The whole pipeline in headless Chrome on its WebGPU adapter: the tiny fixture model (compiled
//! into the test) reproduces diffusers' golden PNG.
#![cfg(target_arch = "wasm32")]

use imvar::gpu::{self, GpuOptions};
use imvar::model_files::MemoryModel;
use imvar::pipeline::{GenerateOptions, ImageVariationPipeline};
use imvar::preprocess::decode;
use imvar::schedulers::SchedulerKind;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

macro_rules! fixture {
    ($model:expr, $path:literal) => {
        $model.insert($path, &include_bytes!(concat!("fixtures/tiny-sd-image-variations/", $path))[..])
    };
}

#[wasm_bindgen_test]
async fn pndm_run_matches_the_golden_png_in_the_browser() {
    let gpu = gpu::init(&GpuOptions::default()).await.expect("WebGPU adapter");
    let mut model = MemoryModel::default();
    fixture!(model, "model_index.json");
    fixture!(model, "scheduler/scheduler_config.json");
    fixture!(model, "image_encoder/config.json");
    fixture!(model, "image_encoder/model.safetensors");
    fixture!(model, "unet/config.json");
    fixture!(model, "unet/diffusion_pytorch_model.safetensors");
    fixture!(model, "vae/config.json");
    fixture!(model, "vae/diffusion_pytorch_model.safetensors");
    let pipeline = ImageVariationPipeline::load(&model, &gpu).expect("model loads");
    let input = decode(include_bytes!("fixtures/input.png")).unwrap();
    let options = GenerateOptions { steps: 5, seed: 2026, scheduler: Some(SchedulerKind::Pndm), ..Default::default() };
    let mut steps = 0;
    let out = pipeline.generate(&input, &options, &mut |p| { steps = p.step; true }).await.expect("generates");
    assert_eq!(steps, 6);
    let golden = decode(include_bytes!("fixtures/golden/images/pndm-n1-g3-fp32-0.png")).unwrap();
    let diffs: Vec<u8> = out[0].image.pixels.iter().zip(&golden.pixels).map(|(a, b)| a.abs_diff(*b)).collect();
    let max = *diffs.iter().max().unwrap();
    let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
    web_sys::console::log_1(&format!("browser pndm: max {max} mean {mean:.4} levels on {}", gpu.capabilities.summary()).into());
    assert!(max <= 2 && mean < 0.01, "max {max}, mean {mean}");
}
