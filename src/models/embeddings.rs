//! diffusers' `Timesteps` (sinusoidal, computed on the CPU in f32 as torch does) and
//! `TimestepEmbedding` (linear, SiLU, linear).

use burn::tensor::activation::silu;
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::models::layers::Linear;
use crate::weights::{LoadError, Weights};

/// The sinusoidal embedding of one (possibly fractional) timestep, `dim` wide.
pub fn timestep_features(t: f32, dim: usize, flip_sin_to_cos: bool, freq_shift: f32) -> Vec<f32> {
    let half = dim / 2;
    let log_max_period = -(10000f64.ln()) as f32;
    let freqs = (0..half).map(|i| (log_max_period * i as f32 / (half as f32 - freq_shift)).exp());
    let args: Vec<f32> = freqs.map(|f| t * f).collect();
    let (sin, cos) = (args.iter().map(|a| a.sin()), args.iter().map(|a| a.cos()));
    let mut out: Vec<f32> = if flip_sin_to_cos { cos.chain(sin).collect() } else { sin.chain(cos).collect() };
    out.resize(dim, 0.0); // odd dims are zero-padded
    out
}

pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn load(w: &Weights, inputs: usize, dim: usize) -> Result<Self, LoadError> {
        Ok(Self {
            linear_1: Linear::load(&w.pp("linear_1"), inputs, dim, true)?,
            linear_2: Linear::load(&w.pp("linear_2"), dim, dim, true)?,
        })
    }

    /// The embedding of `features` `[B, inputs]` uploaded in `dtype`.
    pub fn forward(&self, features: Vec<f32>, batch: usize, device: &Device, dtype: DType) -> Tensor<2> {
        let width = features.len() / batch;
        let x = Tensor::<2>::from_data(TensorData::new(features, [batch, width]), (device, dtype));
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}
