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
