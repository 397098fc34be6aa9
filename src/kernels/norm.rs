//! Row and group kernels on the GEMMs' outputs: GroupNorm (+ SiLU), LayerNorm and the
//! feed-forward's GEGLU, with the stock burn versions the benchmark compares them with.

use burn::backend::Cube;
use burn::tensor::{DType, Tensor};
use burn_cubecl::cubecl::ir::settings::Dim3;
use burn_cubecl::cubecl::prelude::CubeCount;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;

use burn_cubecl::tensor::CubeTensor;

use super::{WgslKernel, cube, grid, is_f16, launch, params};

pub(super) const GROUP_NORM_STATS: &str = include_str!("group_norm_stats.wgsl");
pub(super) const GROUP_NORM: &str = include_str!("group_norm.wgsl");
pub(super) const LAYER_NORM: &str = include_str!("layer_norm.wgsl");
pub(super) const GEGLU: &str = include_str!("geglu.wgsl");

/// Values of one (batch, group) per GroupNorm workgroup, for a group split into bands of `lens`
/// values: 16 per thread at least, more where a group would otherwise span over 256 chunks (the
/// second pass combines one chunk per thread; each band after the first may end in a part chunk).
pub(super) fn group_norm_chunk(lens: &[usize]) -> usize {
    let total: usize = lens.iter().sum();
    total.div_ceil(257 - lens.len()).next_multiple_of(256).max(4096)
}

/// GroupNorm of `x` `[B, C, H, W]` with `groups` groups, affine `gamma`/`beta` `[C]`,
/// statistics in f32, optionally followed by SiLU.
pub fn group_norm(x: Tensor<4>, gamma: Tensor<1>, beta: Tensor<1>, groups: usize, eps: f64, silu: bool) -> Tensor<4> {
    group_norm_bands(vec![x], gamma, beta, groups, eps, silu).pop().unwrap()
}

/// `group_norm` of an activation kept as `bands` of rows (`[B, C, h_i, W]`, top to bottom):
/// statistics over all of them, so each band comes out as the unsplit one's rows would.
pub fn group_norm_bands(bands: Vec<Tensor<4>>, gamma: Tensor<1>, beta: Tensor<1>, groups: usize, eps: f64, silu: bool) -> Vec<Tensor<4>> {
    let [batch, channels, _, width] = bands[0].dims();
    assert!(channels % groups == 0, "group_norm: {channels} channels in {groups} groups");
    assert!(bands.len() < 256, "group_norm: {} bands", bands.len());
    let bands: Vec<_> = bands.into_iter().map(cube).collect();
    let (gamma, beta) = (cube(gamma), cube(beta));
    let client = bands[0].client.clone();
    let f16 = is_f16(&[&bands[0], &gamma, &beta]);
    let lens: Vec<usize> = bands.iter().map(|b| channels / groups * b.meta.shape()[2] * width).collect();
    let chunk = group_norm_chunk(&lens);
    let firsts: Vec<usize> = lens.iter().scan(0, |first, len| Some(std::mem::replace(first, *first + len.div_ceil(chunk)))).collect();
    let stride = firsts.last().unwrap() + lens.last().unwrap().div_ceil(chunk);
    let stats = empty_device_contiguous_dtype(client.clone(), bands[0].device.clone(), burn::tensor::Shape::new([batch * groups * stride * 3]), DType::F32);
    let kernel = |name, template| WgslKernel::new(name, template, f16, Dim3::new_1d(256));
    // One workgroup per (chunk, batch and group) of a band, in both passes.
    let band_params = |band: &CubeTensor, first: usize| {
        let height = band.meta.shape()[2];
        let chunks = (channels / groups * height * width).div_ceil(chunk) as u32;
        let words = [channels as u32, (height * width) as u32, groups as u32, silu as u32, (eps as f32).to_bits(), chunks, chunk as u32, first as u32, stride as u32];
        (params(&client, &words), CubeCount::Static(chunks, (batch * groups) as u32, 1))
    };
    for (band, first) in bands.iter().zip(&firsts) {
        let (p, count) = band_params(band, *first);
        launch(&client, kernel("group_norm_stats", GROUP_NORM_STATS), count, [band.handle.clone(), stats.handle.clone(), p]);
    }
    bands
        .into_iter()
        .zip(firsts)
        .map(|(band, first)| {
            let (p, count) = band_params(&band, first);
            let out = empty_device_contiguous_dtype(client.clone(), band.device.clone(), band.meta.shape().clone(), band.dtype);
            let buffers = [band.handle, gamma.handle.clone(), beta.handle.clone(), stats.handle.clone(), out.handle.clone(), p];
            launch(&client, kernel("group_norm", GROUP_NORM), count, buffers);
            Tensor::from_primitive::<Cube>(out)
        })
        .collect()
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
