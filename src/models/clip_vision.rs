//! transformers' `CLIPVisionModelWithProjection`: patch + class + position embeddings,
//! `pre_layrnorm`, pre-norm encoder layers (quick-GELU MLP), `post_layernorm` of the class token,
//! and the bias-free `visual_projection` to `image_embeds`.

use burn::tensor::{Tensor, s};

use crate::config::ClipVisionConfig;
use crate::models::attention::Attention;
use crate::models::layers::{Conv2d, Conv2dConfig, LayerNorm, Linear};
use crate::weights::{LoadError, Weights};

struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl EncoderLayer {
    fn load(w: &Weights, c: &ClipVisionConfig) -> Result<Self, LoadError> {
        let (d, eps) = (c.hidden_size, c.layer_norm_eps);
        Ok(Self {
            layer_norm1: LayerNorm::load(&w.pp("layer_norm1"), d, eps)?,
            self_attn: Attention::load_clip(&w.pp("self_attn"), d, c.num_attention_heads)?,
            layer_norm2: LayerNorm::load(&w.pp("layer_norm2"), d, eps)?,
            fc1: Linear::load(&w.pp("mlp.fc1"), d, c.intermediate_size, true)?,
            fc2: Linear::load(&w.pp("mlp.fc2"), c.intermediate_size, d, true)?,
        })
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.self_attn.forward_self(self.layer_norm1.forward(x.clone()), x);
        let h = self.fc1.forward_quick_gelu(self.layer_norm2.forward(x.clone()));
        self.fc2.forward_residual(h, x)
    }
}

pub struct ClipVisionModelWithProjection {
    config: ClipVisionConfig,
    patch_embedding: Conv2d,
    class_embedding: Tensor<1>,
    position_embedding: Tensor<2>,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    visual_projection: Linear,
}

/// Outputs of one forward pass: hidden states after `pre_layrnorm` and after each layer, and
/// the projected class token.
pub struct ClipVisionOutput {
    pub hidden_states: Vec<Tensor<3>>,
    pub image_embeds: Tensor<2>,
}

impl ClipVisionModelWithProjection {
    pub fn load(w: &Weights, config: &ClipVisionConfig) -> Result<Self, LoadError> {
        let c = config;
        let (d, eps) = (c.hidden_size, c.layer_norm_eps);
        let vision = w.pp("vision_model");
        let embeddings = vision.pp("embeddings");
        let layers = vision.pp("encoder.layers");
        // One output pixel per non-overlapping patch; transformers gives the layer no bias.
        let patches = Conv2dConfig { stride: c.patch_size, bias: false, ..Default::default() };
        Ok(Self {
            config: c.clone(),
            patch_embedding: Conv2d::load(&embeddings.pp("patch_embedding"), c.num_channels, d, c.patch_size, patches)?,
            class_embedding: embeddings.tensor("class_embedding", [d])?,
            position_embedding: embeddings.tensor("position_embedding.weight", [c.num_positions(), d])?,
            pre_layrnorm: LayerNorm::load(&vision.pp("pre_layrnorm"), d, eps)?,
            layers: (0..c.num_hidden_layers).map(|i| EncoderLayer::load(&layers.pp(i), c)).collect::<Result<_, _>>()?,
            post_layernorm: LayerNorm::load(&vision.pp("post_layernorm"), d, eps)?,
            visual_projection: Linear::load(&w.pp("visual_projection"), d, c.projection_dim, false)?,
        })
    }

    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// `pixels` `[B, 3, S, S]` preprocessed as the model card says.
    pub fn forward(&self, pixels: Tensor<4>) -> ClipVisionOutput {
        let b = pixels.dims()[0];
        let d = self.config.hidden_size;
        let patches = self.patch_embedding.forward(pixels);
        let patches = patches.reshape([b as i32, d as i32, -1]).swap_dims(1, 2);
        let class = self.class_embedding.clone().reshape([1, 1, d]).expand([b, 1, d]);
        let x = Tensor::cat(vec![class, patches], 1) + self.position_embedding.clone().unsqueeze_dim(0);
        let mut hidden_states = vec![self.pre_layrnorm.forward(x)];
        for layer in &self.layers {
            let next = layer.forward(hidden_states.last().unwrap().clone());
            hidden_states.push(next);
        }
        let class_token = hidden_states.last().unwrap().clone().slice(s![.., 0..1, ..]).reshape([b, d]);
        let image_embeds = self.visual_projection.forward(self.post_layernorm.forward(class_token));
        ClipVisionOutput { hidden_states, image_embeds }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use crate::config::ClipVisionConfig;
    use crate::gpu::{ComputeDType, DTypeChoice};
    use crate::testing::{Golden, read, relative_error, shared_gpu, tiny_component, upload};

    #[test]
    fn hidden_states_and_image_embeds_match_transformers() {
        pollster::block_on(async {
            let gpu = shared_gpu(DTypeChoice::Exactly(ComputeDType::F32)).await;
            let (config, clip) = tiny_component(&gpu, "image_encoder", |j| ClipVisionConfig::from_json(j).unwrap(), super::ClipVisionModelWithProjection::load).await;
            let pixels = upload(&Golden::open("preprocess.safetensors"), "input", &gpu);
            let out = clip.forward(pixels);
            let golden = Golden::open("clip.safetensors");
            assert_eq!(out.hidden_states.len(), config.num_hidden_layers + 1);
            for (i, h) in out.hidden_states.into_iter().enumerate() {
                let err = relative_error(&read(h).await, &golden.f32(&format!("hidden_states.{i}")));
                assert!(err < 1e-5, "hidden_states.{i}: relative error {err}");
            }
            let err = relative_error(&read(out.image_embeds).await, &golden.f32("image_embeds"));
            assert!(err < 1e-5, "image_embeds: relative error {err}");
        });
    }
}
