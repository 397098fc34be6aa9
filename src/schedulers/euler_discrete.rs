//! EulerDiscreteScheduler (Karras et al. Algorithm 2 without churn), "linspace" spacing. Its
//! timesteps, sigmas and Euler step are shared with the ancestral variant.

use burn::tensor::Tensor;

use super::{Scheduler, alphas_cumprod, interpolate_sigma, leading_timesteps, linspace_timesteps, train_sigmas};
use crate::config::SchedulerConfig;
use crate::torch_rng::BatchNoise;

/// The Euler family's schedule for a step count.
pub(super) struct EulerSchedule {
    pub timesteps: Vec<f32>,
    /// One per timestep, then a final 0.
    pub sigmas: Vec<f32>,
    pub init_noise_sigma: f32,
}

impl EulerSchedule {
    /// For the config's `timestep_spacing` (class default "linspace"; "leading" as re-saved
    /// configs say). The initial sigma is the largest as is for "linspace", else
    /// `sqrt(max^2 + 1)`, as diffusers.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        let leading = config.timestep_spacing.as_deref() == Some("leading");
        let timesteps = if leading {
            leading_timesteps(config.num_train_timesteps, steps, config.steps_offset).into_iter().map(|t| t as f32).collect()
        } else {
            linspace_timesteps(config.num_train_timesteps, steps)
        };
        let train = train_sigmas(&alphas_cumprod(config));
        let mut sigmas: Vec<f32> = timesteps.iter().map(|&t| interpolate_sigma(&train, t)).collect();
        sigmas.push(0.0);
        let max = sigmas.iter().copied().fold(0.0, f32::max);
        let init_noise_sigma = if leading { (max * max + 1.0).sqrt() } else { max };
        Self { timesteps, sigmas, init_noise_sigma }
    }

    /// `sample / sqrt(sigma^2 + 1)`.
    pub fn scale(&self, sample: Tensor<4>, index: usize) -> Tensor<4> {
        let sigma = self.sigmas[index];
        sample.div_scalar((sigma * sigma + 1.0).sqrt())
    }

    /// An Euler step of the probability-flow ODE from sigma `index` to `target`:
    /// x0 = x - sigma * eps, derivative (x - x0) / sigma, x' = x + derivative * (target - sigma).
    pub fn euler_step(&self, index: usize, eps: Tensor<4>, sample: Tensor<4>, target: f32) -> Tensor<4> {
        let sigma = self.sigmas[index];
        let x0 = sample.clone() - eps.mul_scalar(sigma);
        let derivative = (sample.clone() - x0).div_scalar(sigma);
        sample + derivative.mul_scalar(target - sigma)
    }
}

pub struct EulerDiscreteScheduler {
    schedule: EulerSchedule,
}

impl EulerDiscreteScheduler {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        Self { schedule: EulerSchedule::new(config, steps) }
    }
}

impl Scheduler for EulerDiscreteScheduler {
    fn timesteps(&self) -> &[f32] {
        &self.schedule.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.schedule.init_noise_sigma
    }

    fn scale_model_input(&self, sample: Tensor<4>, index: usize) -> Tensor<4> {
        self.schedule.scale(sample, index)
    }

    fn step(&mut self, index: usize, eps: Tensor<4>, sample: Tensor<4>, _: &mut BatchNoise) -> Tensor<4> {
        let target = self.schedule.sigmas[index + 1];
        self.schedule.euler_step(index, eps, sample, target)
    }
}
