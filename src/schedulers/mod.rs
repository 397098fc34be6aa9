//! Noise schedulers, each a small module mirroring its diffusers class, driven by the repo's
//! `scheduler_config.json`. Timesteps, sigmas and every step equal diffusers' for the real config
//! (which has no `timestep_spacing` key, so each class applies its own default).
//!
//! Latents stay in f32 whatever the compute dtype: the schedulers' differences of large, close
//! numbers are where f16 would lose the image.

mod ddim;
mod dpm_solver_multistep;
mod euler_ancestral_discrete;
mod euler_discrete;
mod pndm;

use std::str::FromStr;

use burn::tensor::{DType, Tensor, TensorData};

use crate::config::SchedulerConfig;
use crate::torch_rng::BatchNoise;

pub use ddim::DdimScheduler;
pub use dpm_solver_multistep::DpmSolverMultistepScheduler;
pub use euler_ancestral_discrete::EulerAncestralDiscreteScheduler;
pub use euler_discrete::EulerDiscreteScheduler;
pub use pndm::PndmScheduler;

/// Why a scheduler cannot run a loop of the steps asked for.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum SchedulerError {
    /// The scheduler config asks for something imvar does not implement.
    #[error("scheduler/scheduler_config.json: {0}")]
    Unsupported(String),
    /// The number of steps does not fit the scheduler config.
    #[error("{0}")]
    Steps(String),
}

/// One denoising loop's worth of state: call `step` once per entry of `timesteps`, in order.
pub trait Scheduler {
    /// The UNet's timestep for each call (floats: Euler's fall between integers).
    fn timesteps(&self) -> &[f32];
    /// Scale of the initial Gaussian latents.
    fn init_noise_sigma(&self) -> f32;
    /// The UNet's input at call `index` (Euler-family: `sample / sqrt(sigma^2 + 1)`).
    fn scale_model_input(&self, sample: Tensor<4>, _index: usize) -> Tensor<4> {
        sample
    }
    /// The latents after call `index`, from the (guided) noise prediction. `noise` is the
    /// stream the initial latents came from; ancestral schedulers continue it.
    fn step(
        &mut self,
        index: usize,
        model_output: Tensor<4>,
        sample: Tensor<4>,
        noise: &mut BatchNoise,
    ) -> Tensor<4>;
}

/// The schedulers imvar offers, by their CLI / API names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SchedulerKind {
    #[serde(rename = "pndm")]
    Pndm,
    #[serde(rename = "ddim")]
    Ddim,
    #[serde(rename = "euler")]
    Euler,
    #[serde(rename = "euler-a")]
    EulerAncestral,
    #[serde(rename = "dpm++2m")]
    DpmSolverMultistep,
}

impl SchedulerKind {
    pub const ALL: [Self; 5] = [Self::Pndm, Self::Ddim, Self::Euler, Self::EulerAncestral, Self::DpmSolverMultistep];

    pub fn name(self) -> &'static str {
        match self {
            Self::Pndm => "pndm",
            Self::Ddim => "ddim",
            Self::Euler => "euler",
            Self::EulerAncestral => "euler-a",
            Self::DpmSolverMultistep => "dpm++2m",
        }
    }

    /// The kind a config's `_class_name` names (the model's own scheduler).
    pub fn of_config(config: &SchedulerConfig) -> Option<Self> {
        match config.class_name.as_deref()? {
            "PNDMScheduler" => Some(Self::Pndm),
            "DDIMScheduler" => Some(Self::Ddim),
            "EulerDiscreteScheduler" => Some(Self::Euler),
            "EulerAncestralDiscreteScheduler" => Some(Self::EulerAncestral),
            "DPMSolverMultistepScheduler" => Some(Self::DpmSolverMultistep),
            _ => None,
        }
    }

    /// A scheduler for a loop of `steps`, refusing what diffusers refuses (more steps than
    /// training timesteps) and what would step past the training timesteps (a `steps_offset`
    /// pushing the last one out), with the reason.
    pub fn build(self, config: &SchedulerConfig, steps: usize) -> Result<Box<dyn Scheduler>, SchedulerError> {
        let trained = config.num_train_timesteps;
        if steps == 0 || steps > trained {
            return Err(SchedulerError::Steps(format!(
                "steps must be between 1 and {trained}, the timesteps the model was trained with, not {steps}"
            )));
        }
        if self == Self::Pndm && !config.skip_prk_steps {
            return Err(SchedulerError::Unsupported(
                "PNDM's Runge-Kutta warm-up (`skip_prk_steps` false) is not implemented: choose another scheduler".into(),
            ));
        }
        let scheduler: Box<dyn Scheduler> = match self {
            Self::Pndm => Box::new(PndmScheduler::new(config, steps)),
            Self::Ddim => Box::new(DdimScheduler::new(config, steps)),
            Self::Euler => Box::new(EulerDiscreteScheduler::new(config, steps)),
            Self::EulerAncestral => Box::new(EulerAncestralDiscreteScheduler::new(config, steps)),
            Self::DpmSolverMultistep => Box::new(DpmSolverMultistepScheduler::new(config, steps)),
        };
        if let Some(&last) = scheduler.timesteps().iter().find(|&&t| t >= trained as f32) {
            return Err(SchedulerError::Steps(format!(
                "{steps} steps with `steps_offset` {} reach timestep {last}, past the {trained} the model was trained with: use fewer steps",
                config.steps_offset
            )));
        }
        Ok(scheduler)
    }
}

impl FromStr for SchedulerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|k| k.name()).collect();
            format!("unknown scheduler '{s}': expected one of {}", names.join(", "))
        })
    }
}

/// `alphas_cumprod` exactly as torch computes it in float32 (linspace of `torch.linspace`,
/// squared for `scaled_linear`; cumulative product accumulated in f64).
pub fn alphas_cumprod(config: &SchedulerConfig) -> Vec<f32> {
    let n = config.num_train_timesteps;
    let scaled = config.beta_schedule == "scaled_linear";
    let (start, end) = if scaled {
        (config.beta_start.sqrt() as f32, config.beta_end.sqrt() as f32)
    } else {
        (config.beta_start as f32, config.beta_end as f32)
    };
    let step = ((end - start) as f64 / (n - 1) as f64) as f32;
    let mut product = 1.0f64;
    (0..n)
        .map(|i| {
            // torch.linspace fills the first half from the start, the second from the end.
            let value = if i < n / 2 {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((n - 1 - i) as f32, end)
            };
            let beta = if scaled { value * value } else { value };
            product *= (1.0 - beta) as f64;
            product as f32
        })
        .collect()
}

/// `sqrt((1 - a) / a)` per train timestep, in f32 as torch computes it.
fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod.iter().map(|a| ((1.0 - a) / a).sqrt()).collect()
}

/// `np.interp(t, arange(len(sigmas)), sigmas)` (in f64, as numpy does), then f32.
fn interpolate_sigma(sigmas: &[f32], t: f32) -> f32 {
    let t = t as f64;
    let low = (t.floor() as usize).min(sigmas.len() - 1);
    let high = (low + 1).min(sigmas.len() - 1);
    let frac = t - low as f64;
    let (a, b) = (sigmas[low] as f64, sigmas[high] as f64);
    (a + (b - a) * frac) as f32
}

/// Evenly spaced float timesteps from `N - 1` down to 0 (`np.linspace(0, N-1, n)[::-1]` in f32).
fn linspace_timesteps(num_train: usize, steps: usize) -> Vec<f32> {
    let last = (num_train - 1) as f64;
    let mut t: Vec<f32> = (0..steps)
        .map(|i| if steps == 1 { 0.0 } else { (i as f64 * (last / (steps - 1) as f64)) as f32 })
        .collect();
    if steps > 1 {
        t[steps - 1] = last as f32; // numpy sets the endpoint exactly
    }
    t.reverse();
    t
}

/// `(arange(0, n) * (N // n)).round() + offset`, descending ("leading" spacing).
fn leading_timesteps(num_train: usize, steps: usize, offset: usize) -> Vec<usize> {
    let ratio = num_train / steps;
    (0..steps).rev().map(|i| i * ratio + offset).collect()
}

/// Fresh Gaussian noise on `like`'s device in f32, continuing the batch's stream.
fn gaussian_like(like: &Tensor<4>, noise: &mut BatchNoise) -> Tensor<4> {
    let shape = like.dims();
    let values = noise.draw(shape[1..].iter().product());
    Tensor::from_data(TensorData::new(values, shape), (&like.device(), DType::F32))
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
