//! Row and group kernels on the GEMMs' outputs: GroupNorm (+ SiLU), LayerNorm and the
//! feed-forward's GEGLU, with the stock burn versions the benchmark compares them with.

use burn::backend::Cube;
use burn::tensor::{DType, Tensor};
use burn_cubecl::cubecl::ir::settings::Dim3;
use burn_cubecl::cubecl::prelude::CubeCount;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;

use super::{WgslKernel, cube, grid, is_f16, launch, params};

pub(super) const GROUP_NORM_STATS: &str = include_str!("group_norm_stats.wgsl");
pub(super) const GROUP_NORM: &str = include_str!("group_norm.wgsl");
pub(super) const LAYER_NORM: &str = include_str!("layer_norm.wgsl");
pub(super) const GEGLU: &str = include_str!("geglu.wgsl");

/// Values of one (batch, group) per GroupNorm workgroup: 16 per thread at least, more where a
/// group would otherwise span over 256 chunks (the second pass combines one chunk per thread).
pub(super) fn group_norm_chunk(len: usize) -> usize {
    len.div_ceil(256).next_multiple_of(256).max(4096)
}

/// GroupNorm of `x` `[B, C, H, W]` with `groups` groups, affine `gamma`/`beta` `[C]`,
/// statistics in f32, optionally followed by SiLU.
pub fn group_norm(x: Tensor<4>, gamma: Tensor<1>, beta: Tensor<1>, groups: usize, eps: f64, silu: bool) -> Tensor<4> {
    let [batch, channels, height, width] = x.dims();
    assert!(channels % groups == 0, "group_norm: {channels} channels in {groups} groups");
    let (x, gamma, beta) = (cube(x), cube(gamma), cube(beta));
    let client = x.client.clone();
    let f16 = is_f16(&[&x, &gamma, &beta]);
    let len = channels / groups * height * width;
    let chunk = group_norm_chunk(len);
    let chunks = len.div_ceil(chunk);
    let stats = empty_device_contiguous_dtype(client.clone(), x.device.clone(), burn::tensor::Shape::new([batch * groups * chunks * 2]), DType::F32);
    let out = empty_device_contiguous_dtype(client.clone(), x.device.clone(), x.meta.shape().clone(), x.dtype);
    let [channels, spatial, groups, chunks, chunk] = [channels, height * width, groups, chunks, chunk].map(|v| v as u32);
    let p = params(&client, &[channels, spatial, groups, silu as u32, (eps as f32).to_bits(), chunks, chunk, 0]);
    // One workgroup per (chunk, batch and group) in both passes.
    let count = || CubeCount::Static(chunks, batch as u32 * groups, 1);
    let kernel = |name, template| WgslKernel::new(name, template, f16, Dim3::new_1d(256));
    launch(&client, kernel("group_norm_stats", GROUP_NORM_STATS), count(), [x.handle.clone(), stats.handle.clone(), p.clone()]);
    launch(&client, kernel("group_norm", GROUP_NORM), count(), [x.handle, gamma.handle, beta.handle, stats.handle, out.handle.clone(), p]);
    Tensor::from_primitive::<Cube>(out)
}

/// LayerNorm over the last dimension of `x`, affine `gamma`/`beta` of that width, statistics
/// in f32 (as PyTorch's autocast computes it).
pub fn layer_norm<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, beta: Tensor<1>, eps: f64) -> Tensor<D> {
    let dim = x.dims()[D - 1];
    let rows = x.shape().num_elements() / dim;
    assert!(gamma.dims() == [dim] && beta.dims() == [dim], "layer_norm: affine {:?} for input {:?}", gamma.dims(), x.dims());
    let (x, gamma, beta) = (cube(x), cube(gamma), cube(beta));
    let client = x.client.clone();
    let f16 = is_f16(&[&x, &gamma, &beta]);
    let out = empty_device_contiguous_dtype(client.clone(), x.device.clone(), x.meta.shape().clone(), x.dtype);
    let p = params(&client, &[rows as u32, dim as u32, (eps as f32).to_bits(), 0]);
    let kernel = WgslKernel::new("layer_norm", LAYER_NORM, f16, Dim3::new_1d(64));
    launch(&client, kernel, grid(rows as u32), [x.handle, gamma.handle, beta.handle, out.handle.clone(), p]);
    Tensor::from_primitive::<Cube>(out)
}

/// diffusers' GEGLU tail on a projection `[.., 2 * inner]`: `hidden * gelu(gate)` with
/// `hidden, gate` its two halves and the exact (erf) GELU; `[.., inner]` out.
pub fn geglu<const D: usize>(projected: Tensor<D>) -> Tensor<D> {
    let mut shape = projected.dims();
    assert!(shape[D - 1].is_multiple_of(2), "geglu: odd width {shape:?}");
    shape[D - 1] /= 2;
    let (inner, rows) = (shape[D - 1], shape[..D - 1].iter().product::<usize>());
    let x = cube(projected);
    let client = x.client.clone();
    let f16 = is_f16(&[&x]);
    let out = empty_device_contiguous_dtype(client.clone(), x.device.clone(), burn::tensor::Shape::new(shape), x.dtype);
    let p = params(&client, &[rows as u32, inner as u32]);
    let kernel = WgslKernel::new("geglu", GEGLU, f16, Dim3::new_1d(256));
    launch(&client, kernel, grid(((rows * inner) as u32).div_ceil(256)), [x.handle, out.handle.clone(), p]);
    Tensor::from_primitive::<Cube>(out)
}

/// GroupNorm (+ SiLU) from burn's stock tensor operations, the way `layers` computed it before
/// `group_norm`: the baseline the kernel benchmark compares with.
pub fn group_norm_stock(x: Tensor<4>, gamma: Tensor<1>, beta: Tensor<1>, groups: usize, eps: f64, silu: bool) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let dtype = x.dtype();
    let grouped = x.cast(burn::tensor::FloatDType::F32).reshape([b, groups, (c / groups) * h * w]);
    let mean = grouped.clone().mean_dim(2);
    let centered = grouped - mean;
    let var = centered.clone().square().mean_dim(2);
    let normed = (centered / var.add_scalar(eps).sqrt()).reshape([b, c, h, w]).cast(dtype);
    let y = normed * gamma.reshape([1, c, 1, 1]) + beta.reshape([1, c, 1, 1]);
    if silu { burn::tensor::activation::silu(y) } else { y }
}

/// LayerNorm from burn's stock operations in f32, the way `layers` computed it before
/// `layer_norm`: the benchmark's baseline.
pub fn layer_norm_stock<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, beta: Tensor<1>, eps: f64) -> Tensor<D> {
    use burn::tensor::FloatDType::F32;
    let dtype = x.dtype();
    burn::tensor::module::layer_norm(x.cast(F32), gamma.cast(F32), Some(beta.cast(F32)), eps).cast(dtype)
}

/// GEGLU from burn's stock operations, the way `FeedForward` computed it before `geglu`: the
/// benchmark's baseline.
pub fn geglu_stock<const D: usize>(projected: Tensor<D>) -> Tensor<D> {
    let mut halves = projected.chunk(2, D - 1);
    let gate = halves.pop().unwrap();
    let hidden = halves.pop().unwrap();
    hidden * burn::tensor::activation::gelu(gate)
}
