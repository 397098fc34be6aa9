//! EulerDiscreteScheduler (Karras et al. Algorithm 2 without churn), "linspace" spacing.

use burn::tensor::Tensor;

use super::{Scheduler, alphas_cumprod, interpolate_sigma, linspace_timesteps, train_sigmas};
use crate::config::SchedulerConfig;
use crate::torch_rng::TorchGenerator;

pub struct EulerDiscreteScheduler {
    timesteps: Vec<f32>,
    /// One per timestep, then a final 0.
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
}

impl EulerDiscreteScheduler {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        let (timesteps, sigmas) = euler_sigmas(config, steps);
        let init_noise_sigma = euler_init_noise_sigma(config, &sigmas);
        Self { timesteps, sigmas, init_noise_sigma }
    }
}

/// Timesteps and sigmas of the Euler family for the config's `timestep_spacing` (class default
/// "linspace").
pub(super) fn euler_sigmas(config: &SchedulerConfig, steps: usize) -> (Vec<f32>, Vec<f32>) {
    let spacing = config.timestep_spacing.as_deref().unwrap_or("linspace");
    let timesteps = match spacing {
        "linspace" => linspace_timesteps(config.num_train_timesteps, steps),
        "leading" => super::leading_timesteps(config.num_train_timesteps, steps, config.steps_offset)
            .into_iter()
            .map(|t| t as f32)
            .collect(),
        other => unreachable!("timestep_spacing '{other}' is rejected at config load"),
    };
    let train = train_sigmas(&alphas_cumprod(config));
    let mut sigmas: Vec<f32> = timesteps.iter().map(|&t| interpolate_sigma(&train, t)).collect();
    sigmas.push(0.0);
    (timesteps, sigmas)
}

/// The largest sigma as is for "linspace" spacing, else `sqrt(max^2 + 1)` (as diffusers).
pub(super) fn euler_init_noise_sigma(config: &SchedulerConfig, sigmas: &[f32]) -> f32 {
    let max = sigmas.iter().copied().fold(0.0, f32::max);
    match config.timestep_spacing.as_deref().unwrap_or("linspace") {
        "linspace" => max,
        _ => (max * max + 1.0).sqrt(),
    }
}

pub(super) fn scale_by_sigma(sample: Tensor<4>, sigma: f32) -> Tensor<4> {
    sample.div_scalar((sigma * sigma + 1.0).sqrt())
}

impl Scheduler for EulerDiscreteScheduler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: Tensor<4>, index: usize) -> Tensor<4> {
        scale_by_sigma(sample, self.sigmas[index])
    }

    fn step(&mut self, index: usize, eps: Tensor<4>, sample: Tensor<4>, _: &mut TorchGenerator) -> Tensor<4> {
        // x0 = x - sigma * eps; derivative (x - x0) / sigma = eps; x' = x + eps * (sigma' - sigma).
        let (sigma, next) = (self.sigmas[index], self.sigmas[index + 1]);
        let x0 = sample.clone() - eps.mul_scalar(sigma);
        let derivative = (sample.clone() - x0).div_scalar(sigma);
        sample + derivative.mul_scalar(next - sigma)
    }
}
