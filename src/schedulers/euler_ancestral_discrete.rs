//! EulerAncestralDiscreteScheduler: an Euler step to `sigma_down`, then fresh noise of size
//! `sigma_up`, drawn from the same generator as the initial latents (as diffusers does).

use burn::tensor::Tensor;

use super::euler_discrete::EulerSchedule;
use super::{Scheduler, gaussian_like};
use crate::config::SchedulerConfig;
use crate::torch_rng::BatchNoise;

pub struct EulerAncestralDiscreteScheduler {
    schedule: EulerSchedule,
}

impl EulerAncestralDiscreteScheduler {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        Self { schedule: EulerSchedule::new(config, steps) }
    }
}

impl Scheduler for EulerAncestralDiscreteScheduler {
    fn timesteps(&self) -> &[f32] {
        &self.schedule.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.schedule.init_noise_sigma
    }

    fn scale_model_input(&self, sample: Tensor<4>, index: usize) -> Tensor<4> {
        self.schedule.scale(sample, index)
    }

    fn step(&mut self, index: usize, eps: Tensor<4>, sample: Tensor<4>, noise: &mut BatchNoise) -> Tensor<4> {
        let (from, to) = (self.schedule.sigmas[index], self.schedule.sigmas[index + 1]);
        let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let down = (to * to - up * up).sqrt();
        let prev = self.schedule.euler_step(index, eps, sample, down);
        let fresh = gaussian_like(&prev, noise);
        prev + fresh.mul_scalar(up)
    }
}
