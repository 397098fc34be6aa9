//! Loading the pipeline: configs read and checked against each other, then each component's
//! weights streamed to the device one tensor at a time.

use super::{ImageVariationPipeline, PipelineError};
use crate::config::{ClipVisionConfig, ModelIndex, SchedulerConfig, UNetConfig, VaeConfig, check_components_fit};
use crate::gpu::Gpu;
use crate::models::clip_vision::ClipVisionModelWithProjection;
use crate::models::unet_2d::UNet2DConditionModel;
use crate::models::vae::AutoencoderKLDecoder;
use crate::weights::{self, LoadError, ModelSource, Weights, unused_prefixes};

/// Where the weights come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightsFrom {
    /// The model's weight files.
    Files,
    /// Random weights in the shapes the configs imply (benchmarks without the files).
    Random,
}

/// Weights reaching the device: bytes of `component` done out of its total (stored sizes).
#[derive(Clone, Debug, PartialEq)]
pub struct LoadProgress {
    pub component: String,
    pub done: u64,
    pub total: u64,
}

/// What loading put on the device.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct LoadReport {
    /// Sum of the weight tensors' sizes in the compute dtype.
    pub weight_bytes: u64,
    /// How much the device's memory pools grew while loading (`None` where burn cannot tell).
    pub device_bytes_allocated: Option<u64>,
}

/// Loads one component's weights through `load`: streams its tensors to the device, then hands
/// them to the model code by name and checks nothing was left over.
pub async fn load_component<T>(
    source: &dyn ModelSource,
    gpu: &Gpu,
    from: WeightsFrom,
    component: &str,
    on_progress: &mut dyn FnMut(&LoadProgress),
    load: impl FnOnce(&Weights) -> Result<T, LoadError>,
) -> Result<(T, u64), LoadError> {
    let dtype = gpu.capabilities.compute_dtype.tensor();
    match from {
        WeightsFrom::Random => Ok((load(&Weights::random(component, &gpu.device, dtype))?, 0)),
        WeightsFrom::Files => {
            let unused = unused_prefixes(component);
            let mut source = source.tensors(component).await?;
            let total = source.tensors().iter().filter(|t| !weights::is_unused(&t.name, unused)).map(|t| t.byte_len()).sum();
            let mut progress = LoadProgress { component: component.into(), done: 0, total };
            on_progress(&progress);
            let mut on_tensor = |bytes| {
                progress.done += bytes;
                on_progress(&progress);
            };
            let tensors = weights::upload(source.as_mut(), component, unused, &gpu.device, dtype, &mut on_tensor).await?;
            let bytes = tensors.device_bytes;
            let weights = Weights::new(tensors, component, &gpu.device, dtype);
            let model = load(&weights)?;
            weights.finish()?;
            Ok((model, bytes))
        }
    }
}

impl ImageVariationPipeline {
    pub async fn load(source: &dyn ModelSource, gpu: &Gpu) -> Result<Self, PipelineError> {
        Ok(Self::load_with(source, gpu, WeightsFrom::Files, &mut |_| {}).await?.0)
    }

    pub async fn load_with(
        source: &dyn ModelSource,
        gpu: &Gpu,
        from: WeightsFrom,
        on_progress: &mut dyn FnMut(&LoadProgress),
    ) -> Result<(Self, LoadReport), PipelineError> {
        ModelIndex::from_json(&source.text("model_index.json").await?)?;
        let clip_config = ClipVisionConfig::from_json(&source.text("image_encoder/config.json").await?)?;
        let unet_config = UNetConfig::from_json(&source.text("unet/config.json").await?)?;
        let vae_config = VaeConfig::from_json(&source.text("vae/config.json").await?)?;
        let scheduler_config = SchedulerConfig::from_json(&source.text("scheduler/scheduler_config.json").await?)?;
        check_components_fit(&clip_config, &unet_config, &vae_config)?;
        let reserved = || gpu.device.memory_pool_usage().map(|u| u.bytes_reserved);
        let before = reserved();
        // Boxed: the futures hold whole models, too large for a thread's stack in debug builds.
        let (image_encoder, clip_bytes) = Box::pin(load_component(source, gpu, from, "image_encoder", on_progress, |w| {
            ClipVisionModelWithProjection::load(w, &clip_config)
        }))
        .await?;
        let (unet, unet_bytes) =
            Box::pin(load_component(source, gpu, from, "unet", on_progress, |w| UNet2DConditionModel::load(w, &unet_config))).await?;
        let (vae, vae_bytes) =
            Box::pin(load_component(source, gpu, from, "vae", on_progress, |w| AutoencoderKLDecoder::load(w, &vae_config))).await?;
        let report = LoadReport {
            weight_bytes: clip_bytes + unet_bytes + vae_bytes,
            device_bytes_allocated: before.zip(reserved()).map(|(b, a)| a.saturating_sub(b)),
        };
        Ok((Self { image_encoder, unet, vae, scheduler_config, gpu: gpu.clone() }, report))
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::LocalFuture;
    use crate::gpu::{ComputeDType, DTypeChoice};
    use crate::pipeline::GenerateOptions;
    use crate::testing::{shared_gpu, tiny_model};
    use crate::weights::TensorSource;

    /// The tiny fixture model with some config files replaced.
    struct EditedConfigs {
        model: crate::weights::source::ModelDir,
        configs: BTreeMap<&'static str, String>,
    }

    impl ModelSource for EditedConfigs {
        fn text<'a>(&'a self, path: &'a str) -> LocalFuture<'a, Result<String, LoadError>> {
            match self.configs.get(path) {
                Some(text) => Box::pin(std::future::ready(Ok(text.clone()))),
                None => self.model.text(path),
            }
        }

        fn tensors<'a>(&'a self, component: &'a str) -> LocalFuture<'a, Result<Box<dyn TensorSource + 'a>, LoadError>> {
            self.model.tensors(component)
        }
    }

    /// Small channel counts, block lists and head counts, fitting or not: the sizes a config
    /// can get wrong while every number on its own is plausible.
    fn channels() -> impl Strategy<Value = Value> {
        proptest::collection::vec(prop_oneof![Just(8u32), Just(12), Just(16), Just(24), Just(32)], 1..5).prop_map(|c| json!(c))
    }

    fn small(values: &'static [u32]) -> impl Strategy<Value = Value> {
        proptest::sample::select(values).prop_map(|v| json!(v))
    }

    /// The fixture's `path` with one to three of `keys` given a value of their strategy.
    fn edited(path: &'static str, keys: Vec<(&'static str, BoxedStrategy<Value>)>) -> impl Strategy<Value = (&'static str, String)> {
        let file = crate::testing::fixture_path("tiny-sd-image-variations").join(path);
        let base: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let edits = proptest::sample::subsequence(keys, 1..4)
            .prop_flat_map(|keys| keys.into_iter().map(|(key, values)| values.prop_map(move |v| (key, v))).collect::<Vec<_>>());
        (Just(base), edits).prop_map(move |(mut config, edits)| {
            for (key, value) in edits {
                config[key] = value;
            }
            (path, config.to_string())
        })
    }

    /// `n` blocks: channels, block kinds and head counts of one length, so most drawn configs
    /// fit and reach the models; the single-key edits below break that now and then.
    fn unet_blocks() -> impl Strategy<Value = (&'static str, String)> {
        (1usize..5).prop_flat_map(|n| {
            let kinds = |names: &'static [&'static str]| proptest::collection::vec(proptest::sample::select(names), n).prop_map(|b| json!(b)).boxed();
            edited("unet/config.json", vec![
                ("block_out_channels", proptest::collection::vec(proptest::sample::select(&[8u32, 16, 24, 32][..]), n).prop_map(|c| json!(c)).boxed()),
                ("down_block_types", kinds(&["CrossAttnDownBlock2D", "DownBlock2D"])),
                ("up_block_types", kinds(&["CrossAttnUpBlock2D", "UpBlock2D"])),
                ("attention_head_dim", prop_oneof![small(&[1, 2, 4, 8]), proptest::collection::vec(1u32..5, n).prop_map(|h| json!(h))].boxed()),
            ])
            .prop_filter("all four lists", |(_, text)| {
                let config: Value = serde_json::from_str(text).unwrap();
                config["block_out_channels"].as_array().unwrap().len() == config["down_block_types"].as_array().unwrap().len()
                    && config["down_block_types"].as_array().unwrap().len() == config["up_block_types"].as_array().unwrap().len()
            })
        })
    }

    fn vae_blocks() -> impl Strategy<Value = (&'static str, String)> {
        proptest::collection::vec(proptest::sample::select(&[8u32, 16, 24, 32][..]), 1..5).prop_flat_map(|channels| {
            let n = channels.len();
            edited("vae/config.json", vec![
                ("block_out_channels", Just(json!(channels)).boxed()),
                ("up_block_types", Just(json!(vec!["UpDecoderBlock2D"; n])).boxed()),
                ("down_block_types", Just(json!(vec!["DownEncoderBlock2D"; n])).boxed()),
                ("norm_num_groups", small(&[1, 2, 4, 8]).boxed()),
            ])
        })
    }

    fn unet() -> impl Strategy<Value = (&'static str, String)> {
        edited("unet/config.json", vec![
            ("block_out_channels", channels().boxed()),
            ("attention_head_dim", small(&[1, 2, 4, 8]).boxed()),
            ("norm_num_groups", small(&[1, 2, 4, 8]).boxed()),
            ("layers_per_block", small(&[1, 2]).boxed()),
            ("cross_attention_dim", small(&[16, 24]).boxed()),
            ("in_channels", small(&[3, 4]).boxed()),
            ("sample_size", small(&[8, 16]).boxed()),
        ])
    }

    fn vae() -> impl Strategy<Value = (&'static str, String)> {
        edited("vae/config.json", vec![
            ("block_out_channels", channels().boxed()),
            ("norm_num_groups", small(&[1, 2, 4, 8]).boxed()),
            ("layers_per_block", small(&[1, 2]).boxed()),
            ("latent_channels", small(&[3, 4]).boxed()),
        ])
    }

    fn clip() -> impl Strategy<Value = (&'static str, String)> {
        edited("image_encoder/config.json", vec![
            ("hidden_size", small(&[16, 24, 32]).boxed()),
            ("num_attention_heads", small(&[1, 3, 4]).boxed()),
            ("intermediate_size", small(&[8, 48]).boxed()),
            ("num_hidden_layers", small(&[1, 2]).boxed()),
            ("patch_size", small(&[14, 16, 32]).boxed()),
            ("image_size", small(&[112, 224]).boxed()),
            ("projection_dim", small(&[16, 24]).boxed()),
        ])
    }

    proptest! {
        #![proptest_config(crate::testing::fuzz_cases(8))]

        /// Configs whose sizes fit or do not fit together: the pipeline built from them (random
        /// weights) generates an image of the size asked for, or loading refuses them naming a
        /// config file, never a panic inside a model or a kernel.
        #[test]
        fn configs_that_load_generate_and_the_rest_are_refused_by_file(edits in proptest::collection::vec(prop_oneof![3 => unet_blocks(), 3 => vae_blocks(), 1 => unet(), 1 => vae(), 2 => clip()], 1..3)) {
            let source = EditedConfigs { model: tiny_model(None), configs: edits.iter().cloned().collect() };
            pollster::block_on(async {
                let gpu = shared_gpu(DTypeChoice::Exactly(ComputeDType::F32)).await;
                match ImageVariationPipeline::load_with(&source, &gpu, WeightsFrom::Random, &mut |_| {}).await {
                    Ok((pipeline, _)) => {
                        let image = crate::pipeline::preprocess::RgbImage { width: 32, height: 24, pixels: vec![128; 32 * 24 * 3] };
                        let options = GenerateOptions { steps: 1, size: Some((64, 64)), ..Default::default() };
                        match pipeline.generate(&image, &options, &mut |_| true).await {
                            Ok(out) => prop_assert_eq!((out.len(), out[0].image.width, out[0].image.height), (1, 64, 64)),
                            // A size the model cannot make is refused before any work.
                            Err(e) => prop_assert!(e.to_string().contains("size"), "{e}"),
                        }
                    }
                    Err(e) => prop_assert!(e.to_string().contains("/config.json: "), "{e}"),
                }
                Ok(())
            })?;
        }
    }
}
