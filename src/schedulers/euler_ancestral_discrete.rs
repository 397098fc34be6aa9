//! EulerAncestralDiscreteScheduler: an Euler step to `sigma_down`, then fresh noise of size
//! `sigma_up`, drawn from the same generator as the initial latents (as diffusers does).

use burn::tensor::Tensor;

use super::euler_discrete::{euler_init_noise_sigma, euler_sigmas, scale_by_sigma};
use super::{Scheduler, gaussian_like};
use crate::config::SchedulerConfig;
use crate::torch_rng::TorchGenerator;

pub struct EulerAncestralDiscreteScheduler {
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
}

impl EulerAncestralDiscreteScheduler {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        let (timesteps, sigmas) = euler_sigmas(config, steps);
        let init_noise_sigma = euler_init_noise_sigma(config, &sigmas);
        Self { timesteps, sigmas, init_noise_sigma }
    }
}

impl Scheduler for EulerAncestralDiscreteScheduler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: Tensor<4>, index: usize) -> Tensor<4> {
        scale_by_sigma(sample, self.sigmas[index])
    }

    fn step(&mut self, index: usize, eps: Tensor<4>, sample: Tensor<4>, generator: &mut TorchGenerator) -> Tensor<4> {
        let (from, to) = (self.sigmas[index], self.sigmas[index + 1]);
        let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let down = (to * to - up * up).sqrt();
        let x0 = sample.clone() - eps.mul_scalar(from);
        let derivative = (sample.clone() - x0).div_scalar(from);
        let prev = sample + derivative.mul_scalar(down - from);
        let noise = gaussian_like(&prev, generator);
        prev + noise.mul_scalar(up)
    }
}
