//! PNDMScheduler with `skip_prk_steps` (the repo's scheduler): linear multistep (PLMS) only.
//! Its first step is taken twice at the same timestep (an Euler step, then the average of both
//! predictions from the stored sample), so `n` steps make `n + 1` UNet calls.

use burn::tensor::Tensor;

use super::{Scheduler, alphas_cumprod, leading_timesteps};
use crate::config::SchedulerConfig;
use crate::torch_rng::BatchNoise;

pub struct PndmScheduler {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    step_ratio: usize,
    timesteps: Vec<f32>,
    /// Past noise predictions, newest last (at most 4 kept).
    ets: Vec<Tensor<4>>,
    /// The sample of the first call, which the repeated second call restarts from.
    first_sample: Option<Tensor<4>>,
    counter: usize,
}

impl PndmScheduler {
    /// Only with `skip_prk_steps` (`SchedulerKind::build` refuses the rest).
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        let alphas_cumprod = alphas_cumprod(config);
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(false) { 1.0 } else { alphas_cumprod[0] };
        let t = leading_timesteps(config.num_train_timesteps, steps, config.steps_offset);
        // [t0, t1, t1, t2, ...]: the first is repeated after its own step (diffusers' plms order).
        let mut timesteps: Vec<f32> = t.iter().map(|&t| t as f32).collect();
        if steps > 1 {
            timesteps.insert(1, t[1] as f32);
        }
        Self {
            alphas_cumprod,
            final_alpha_cumprod,
            step_ratio: config.num_train_timesteps / steps,
            timesteps,
            ets: Vec::new(),
            first_sample: None,
            counter: 0,
        }
    }

    fn alpha(&self, t: isize) -> f32 {
        if t >= 0 { self.alphas_cumprod[t as usize] } else { self.final_alpha_cumprod }
    }

    /// DDIM-like transfer from `t` to `prev` with the (combined) noise prediction (eq. 9 of
    /// the PNDM paper, as diffusers' `_get_prev_sample`).
    fn prev_sample(&self, sample: Tensor<4>, t: isize, prev: isize, eps: Tensor<4>) -> Tensor<4> {
        let (a_t, a_prev) = (self.alpha(t), self.alpha(prev));
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        sample.mul_scalar(sample_coeff) - eps.mul_scalar((a_prev - a_t) / denom)
    }
}

impl Scheduler for PndmScheduler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn step(&mut self, index: usize, model_output: Tensor<4>, sample: Tensor<4>, _: &mut BatchNoise) -> Tensor<4> {
        let ratio = self.step_ratio as isize;
        let mut t = self.timesteps[index] as isize;
        let mut prev = t - ratio;
        if self.counter == 1 {
            // The repeated call: step again from the first timestep.
            prev = t;
            t += ratio;
        } else {
            if self.ets.len() == 4 {
                self.ets.remove(0);
            }
            self.ets.push(model_output.clone());
        }
        let e = &self.ets;
        let n = e.len();
        let (eps, sample) = match (n, self.counter) {
            (1, 0) => {
                self.first_sample = Some(sample.clone());
                (model_output, sample)
            }
            (1, 1) => {
                let first = self.first_sample.take().expect("first sample stored");
                ((model_output + e[0].clone()).mul_scalar(0.5), first)
            }
            (2, _) => ((e[1].clone().mul_scalar(3.0) - e[0].clone()).div_scalar(2.0), sample),
            (3, _) => (
                (e[2].clone().mul_scalar(23.0) - e[1].clone().mul_scalar(16.0) + e[0].clone().mul_scalar(5.0))
                    .div_scalar(12.0),
                sample,
            ),
            _ => (
                (e[3].clone().mul_scalar(55.0) - e[2].clone().mul_scalar(59.0) + e[1].clone().mul_scalar(37.0)
                    - e[0].clone().mul_scalar(9.0))
                .mul_scalar(1.0 / 24.0),
                sample,
            ),
        };
        self.counter += 1;
        self.prev_sample(sample, t, prev, eps)
    }
}
