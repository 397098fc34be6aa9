//! DPMSolverMultistepScheduler as DPM-Solver++(2M) (diffusers' defaults: order 2, midpoint,
//! lower-order final step, final sigma 0), "linspace" spacing.

use burn::tensor::Tensor;

use super::{Scheduler, alphas_cumprod, train_sigmas};
use crate::config::SchedulerConfig;
use crate::torch_rng::BatchNoise;

pub struct DpmSolverMultistepScheduler {
    timesteps: Vec<f32>,
    pub(super) sigmas: Vec<f32>,
    /// Data predictions (x0) of the last two steps, newest last.
    x0_history: Vec<Tensor<4>>,
}

impl DpmSolverMultistepScheduler {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        let train = train_sigmas(&alphas_cumprod(config));
        let timesteps: Vec<usize> = match config.timestep_spacing.as_deref().unwrap_or("linspace") {
            // np.linspace(0, N - 1, n + 1).round()[::-1][:-1]
            "linspace" => {
                let last = (config.num_train_timesteps - 1) as f64;
                (1..=steps).rev().map(|i| (i as f64 * (last / steps as f64)).round_ties_even() as usize).collect()
            }
            _ => super::leading_timesteps(config.num_train_timesteps, steps, config.steps_offset),
        };
        let mut sigmas: Vec<f32> = timesteps.iter().map(|&t| train[t]).collect();
        sigmas.push(0.0);
        Self {
            timesteps: timesteps.into_iter().map(|t| t as f32).collect(),
            sigmas,
            x0_history: Vec::new(),
        }
    }
}

/// (alpha_t, sigma_t, lambda_t) of a sigma: alpha = 1/sqrt(sigma^2+1), lambda = log(alpha/sigma).
fn alpha_sigma_lambda(sigma: f32) -> (f32, f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    let sigma_t = sigma * alpha;
    (alpha, sigma_t, alpha.ln() - sigma_t.ln())
}

impl Scheduler for DpmSolverMultistepScheduler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn scale_model_input(&self, sample: Tensor<4>, _index: usize) -> Tensor<4> {
        sample
    }

    fn step(&mut self, index: usize, eps: Tensor<4>, sample: Tensor<4>, _: &mut BatchNoise) -> Tensor<4> {
        let (alpha_s0, sigma_s0, lambda_s0) = alpha_sigma_lambda(self.sigmas[index]);
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(self.sigmas[index + 1]);
        let x0 = (sample.clone() - eps.mul_scalar(sigma_s0)).div_scalar(alpha_s0);
        if self.x0_history.len() == 2 {
            self.x0_history.remove(0);
        }
        self.x0_history.push(x0.clone());

        let h = lambda_t - lambda_s0;
        let decay = alpha_t * ((-h).exp() - 1.0);
        let base = sample.mul_scalar(sigma_t / sigma_s0) - x0.clone().mul_scalar(decay);
        // First order at the start and on the final step (its sigma is 0); second order between.
        let last = index + 1 == self.timesteps.len();
        if self.x0_history.len() < 2 || last {
            return base;
        }
        let (_, _, lambda_s1) = alpha_sigma_lambda(self.sigmas[index - 1]);
        let r0 = (lambda_s0 - lambda_s1) / h;
        let d1 = (x0 - self.x0_history[0].clone()).mul_scalar(1.0 / r0);
        base - d1.mul_scalar(0.5 * decay)
    }
}
