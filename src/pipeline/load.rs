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
    use crate::testing::{shared_gpu, tiny_model, tiny_text};
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

    fn small(values: &'static [u32]) -> impl Strategy<Value = Value> {
        proptest::sample::select(values).prop_map(|v| json!(v))
    }

    /// `n` values of `item`, as a JSON list.
    fn list<T: serde::Serialize + std::fmt::Debug + Clone + 'static>(item: &'static [T], n: impl Into<proptest::collection::SizeRange>) -> BoxedStrategy<Value> {
        proptest::collection::vec(proptest::sample::select(item), n).prop_map(|v| json!(v)).boxed()
    }

    /// Channel counts in whole groups of the fixture's 8, and with 12 one that is not.
    const FITTING: &[u32] = &[8, 16, 24, 32];
    const CHANNELS: &[u32] = &[8, 12, 16, 24, 32];

    /// The fixture's `path` with `edits` applied.
    fn config(path: &'static str, edits: impl Strategy<Value = Vec<(&'static str, Value)>>) -> impl Strategy<Value = (&'static str, String)> {
        let base: Value = serde_json::from_str(&tiny_text(path)).unwrap();
        edits.prop_map(move |edits| {
            let mut config = base.clone();
            for (key, value) in edits {
                config[key] = value;
            }
            (path, config.to_string())
        })
    }

    /// The fixture's `path` with one to three of `keys` given a value of their strategy: single
    /// edits that may leave the block lists or the components no longer fitting together.
    fn edited(path: &'static str, keys: Vec<(&'static str, BoxedStrategy<Value>)>) -> impl Strategy<Value = (&'static str, String)> {
        let edits = proptest::sample::subsequence(keys, 1..4)
            .prop_flat_map(|keys| keys.into_iter().map(|(key, values)| values.prop_map(move |v| (key, v))).collect::<Vec<_>>());
        config(path, edits)
    }

    /// `n` UNet blocks: channels, block kinds and head counts of one length, so most drawn
    /// configs fit and reach the models.
    fn unet_blocks() -> impl Strategy<Value = (&'static str, String)> {
        (1usize..5).prop_flat_map(|n| {
            let heads = prop_oneof![small(&[1, 2, 4, 8]), list(&[1u32, 2, 3, 4], n)];
            let lists = (list(FITTING, n), list(&["CrossAttnDownBlock2D", "DownBlock2D"], n), list(&["CrossAttnUpBlock2D", "UpBlock2D"], n), heads);
            config(
                "unet/config.json",
                lists.prop_map(|(channels, down, up, heads)| {
                    vec![("block_out_channels", channels), ("down_block_types", down), ("up_block_types", up), ("attention_head_dim", heads)]
                }),
            )
        })
    }

    /// `n` VAE blocks of matching lists, with a GroupNorm group count that may not divide them.
    fn vae_blocks() -> impl Strategy<Value = (&'static str, String)> {
        (1usize..5).prop_flat_map(|n| {
            let lists = (list(FITTING, n), small(&[1, 2, 4, 8]));
            config(
                "vae/config.json",
                lists.prop_map(move |(channels, groups)| {
                    vec![
                        ("block_out_channels", channels),
                        ("up_block_types", json!(vec!["UpDecoderBlock2D"; n])),
                        ("down_block_types", json!(vec!["DownEncoderBlock2D"; n])),
                        ("norm_num_groups", groups),
                    ]
                }),
            )
        })
    }

    fn unet() -> impl Strategy<Value = (&'static str, String)> {
        edited("unet/config.json", vec![
            ("block_out_channels", list(CHANNELS, 1..5)),
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
            ("block_out_channels", list(CHANNELS, 1..5)),
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
                        // 64x64 is a whole number of latent pixels at every depth drawn (at most
                        // 8x for the VAE times 8x for the UNet): a loaded pipeline must make it.
                        let image = crate::pipeline::preprocess::RgbImage { width: 32, height: 24, pixels: vec![128; 32 * 24 * 3] };
                        let options = GenerateOptions { steps: 1, size: Some((64, 64)), ..Default::default() };
                        let out = pipeline.generate(&image, &options, &mut |_| true).await;
                        let sizes = out.map(|v| v.iter().map(|v| (v.image.width, v.image.height)).collect::<Vec<_>>());
                        prop_assert_eq!(sizes.map_err(|e| e.to_string()), Ok(vec![(64, 64)]));
                    }
                    Err(e) => prop_assert!(e.to_string().contains("/config.json: "), "{e}"),
                }
                Ok(())
            })?;
        }
    }
}
