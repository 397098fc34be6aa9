//! DDIMScheduler, deterministic (eta = 0).

use burn::tensor::Tensor;

use super::{Scheduler, alphas_cumprod, leading_timesteps};
use crate::config::SchedulerConfig;
use crate::torch_rng::BatchNoise;

pub struct DdimScheduler {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    step_ratio: usize,
    timesteps: Vec<f32>,
    clip_sample: bool,
}

impl DdimScheduler {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        let alphas_cumprod = alphas_cumprod(config);
        // DDIM's class defaults differ from PNDM's: set_alpha_to_one and clip_sample are true.
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) { 1.0 } else { alphas_cumprod[0] };
        let timesteps = leading_timesteps(config.num_train_timesteps, steps, config.steps_offset);
        Self {
            alphas_cumprod,
            final_alpha_cumprod,
            step_ratio: config.num_train_timesteps / steps,
            timesteps: timesteps.into_iter().map(|t| t as f32).collect(),
            clip_sample: config.clip_sample.unwrap_or(true),
        }
    }
}

impl Scheduler for DdimScheduler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn step(&mut self, index: usize, eps: Tensor<4>, sample: Tensor<4>, _: &mut BatchNoise) -> Tensor<4> {
        let t = self.timesteps[index] as usize;
        let a_t = self.alphas_cumprod[t];
        let a_prev = t.checked_sub(self.step_ratio).map_or(self.final_alpha_cumprod, |p| self.alphas_cumprod[p]);
        let mut x0 = (sample - eps.clone().mul_scalar((1.0 - a_t).sqrt())).div_scalar(a_t.sqrt());
        if self.clip_sample {
            x0 = x0.clamp(-1.0, 1.0);
        }
        x0.mul_scalar(a_prev.sqrt()) + eps.mul_scalar((1.0 - a_prev).sqrt())
    }
}
