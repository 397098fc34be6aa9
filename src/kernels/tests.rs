//! Each kernel against a CPU reference and, where there is one, burn's stock operation, in f32
//! and (where the adapter has shader-f16) f16; the shaders through naga; the GEMM's plans.

use burn::tensor::module::conv2d as stock_conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor, TensorData};

use super::{Epilogue, GemmForcing};
use crate::gpu::{ComputeDType, DTypeChoice, Gpu};
use crate::testing::{assert_close, conv2d_reference, gpu_test, read, shared_gpu, values};

fn upload<const D: usize>(gpu: &Gpu, values: &[f32], shape: [usize; D]) -> Tensor<D> {
    let dtype = DType::from(gpu.capabilities.compute_dtype.burn());
    Tensor::from_data(TensorData::new(values.to_vec(), shape), (&gpu.device, dtype))
}

/// Shapes that are not multiples of either tile (64 or 128 square, 16 or 8 deep) and span
/// several (198 columns, 130 out channels), batch > 1, stride 2, padding edges, 1x1, no
/// bias, and one exact small tile.
const CONVS: [([usize; 4], [usize; 4], usize, usize, bool); 5] = [
    ([2, 5, 9, 11], [7, 5, 3, 3], 1, 1, true),
    ([1, 33, 13, 10], [130, 33, 3, 3], 2, 1, false),
    ([3, 17, 8, 9], [20, 17, 1, 1], 1, 0, true),
    ([1, 4, 5, 5], [3, 4, 3, 3], 1, 0, true),
    ([1, 64, 8, 8], [64, 64, 3, 3], 1, 1, true),
];

/// Ours against the CPU and, in f32, against burn's stock conv2d.
async fn check_conv2d(gpu: &Gpu, tolerance: f32) {
    for (i, (xs, ws, stride, padding, has_bias)) in CONVS.into_iter().enumerate() {
        let seed = 10 * i as u32;
        let (x, w) = (values(xs.iter().product(), seed), values(ws.iter().product(), seed + 1));
        let bias = if has_bias { values(ws[0], seed + 2) } else { vec![0.0; ws[0]] };
        let (expected, shape) = conv2d_reference(&x, xs, &w, ws, &bias, stride, padding);
        let b = has_bias.then(|| upload(gpu, &bias, [ws[0]]));
        let ours = super::conv2d(upload(gpu, &x, xs), upload(gpu, &w, ws), stride, padding, Epilogue::bias(b.clone()));
        assert_eq!(ours.dims(), shape, "case {i}");
        let ours = read(ours).await;
        assert_close(&ours, &expected, tolerance, tolerance);
        if gpu.capabilities.compute_dtype == ComputeDType::F32 {
            let options = ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1);
            let stock = stock_conv2d(upload(gpu, &x, xs), upload(gpu, &w, ws), b, options);
            assert_close(&ours, &read(stock).await, tolerance, tolerance);
        }
    }
}

/// A resnet's tail: a bias per (batch, out channel), a residual and a divisor, across tile
/// edges (70 out channels, 99 pixels per item).
async fn check_conv2d_epilogue(gpu: &Gpu, tolerance: f32) {
    let (xs, ws) = ([2, 6, 9, 11], [70, 6, 3, 3]);
    let (x, w) = (values(xs.iter().product(), 60), values(ws.iter().product(), 61));
    let (bias, residual) = (values(2 * 70, 62), values(2 * 70 * 99, 63));
    let (conv, shape) = conv2d_reference(&x, xs, &w, ws, &[0.0; 70], 1, 1);
    let expected: Vec<f32> =
        conv.iter().zip(&residual).enumerate().map(|(i, (c, r))| (c + bias[i / 99] + r) / 2.0).collect();
    let epilogue = Epilogue { bias: Some(upload(gpu, &bias, [2, 70])), residual: Some(upload(gpu, &residual, shape)), divisor: 2.0 };
    let ours = super::conv2d(upload(gpu, &x, xs), upload(gpu, &w, ws), 1, 1, epilogue);
    assert_close(&read(ours).await, &expected, tolerance, tolerance);
}

/// The conv reading its input upsampled x2 (nearest): against the CPU conv of the input
/// upsampled there, batch 2, odd sizes, with padding.
async fn check_conv2d_upsampled(gpu: &Gpu, tolerance: f32) {
    let ([b, c, h, w], ws) = ([2, 5, 4, 3], [7, 5, 3, 3]);
    let (x, weight, bias) = (values(b * c * h * w, 80), values(ws.iter().product(), 81), values(7, 82));
    let upsampled: Vec<f32> =
        (0..b * c * 4 * h * w).map(|i| x[(i / (4 * h * w) * h + i / (2 * w) % (2 * h) / 2) * w + i % (2 * w) / 2]).collect();
    let (expected, shape) = conv2d_reference(&upsampled, [b, c, 2 * h, 2 * w], &weight, ws, &bias, 1, 1);
    let epilogue = Epilogue::bias(Some(upload(gpu, &bias, [7])));
    let ours = super::conv2d_upsampled(upload(gpu, &x, [b, c, h, w]), upload(gpu, &weight, ws), 1, 1, epilogue);
    assert_eq!(ours.dims(), shape);
    assert_close(&read(ours).await, &expected, tolerance, tolerance);
}

/// Rows, inputs and outputs across the tile edges, 3-D input, with and without bias and
/// residual, and with quick_gelu: against the CPU and, in f32, burn's stock `linear` (plus
/// the residual).
async fn check_linear(gpu: &Gpu, tolerance: f32) {
    for (i, (rows, inputs, outputs, has_bias, has_residual)) in
        [(70, 20, 9, true, false), (5, 33, 130, false, true), (130, 64, 64, true, true)].into_iter().enumerate()
    {
        let quick_gelu = i == 0;
        let seed = 500 + 10 * i as u32;
        let (x, w) = (values(rows * inputs, seed), values(outputs * inputs, seed + 1));
        let (bias, residual) = (values(outputs, seed + 2), values(rows * outputs, seed + 3));
        let expected: Vec<f32> = (0..rows * outputs)
            .map(|index| {
                let (r, o) = (index / outputs, index % outputs);
                let dot: f32 = (0..inputs).map(|k| x[r * inputs + k] * w[o * inputs + k]).sum();
                let y = dot + if has_bias { bias[o] } else { 0.0 };
                let y = if quick_gelu { y / (1.0 + (-1.702 * y).exp()) } else { y };
                y + if has_residual { residual[index] } else { 0.0 }
            })
            .collect();
        let b = has_bias.then(|| upload(gpu, &bias, [outputs]));
        let res = has_residual.then(|| upload(gpu, &residual, [1, rows, outputs]));
        let (x3, w2) = (upload(gpu, &x, [1, rows, inputs]), upload(gpu, &w, [outputs, inputs]));
        let ours = if quick_gelu { super::linear_quick_gelu(x3, w2, b.clone()) } else { super::linear(x3, w2, b.clone(), res.clone()) };
        assert_eq!(ours.dims(), [1, rows, outputs]);
        let ours = read(ours).await;
        assert_close(&ours, &expected, tolerance, tolerance);
        if gpu.capabilities.compute_dtype == ComputeDType::F32 && !quick_gelu {
            let stock = burn::tensor::module::linear(upload(gpu, &x, [1, rows, inputs]), upload(gpu, &w, [outputs, inputs]).transpose(), b);
            let stock = match res {
                Some(r) => stock + r,
                None => stock,
            };
            assert_close(&ours, &read(stock).await, tolerance, tolerance);
        }
    }
}

/// The transformers' 1x1 convolutions into and out of tokens, across tile edges (70 out
/// channels, 2 x 35 pixels): the channels-first reference, transposed.
async fn check_conv1x1_tokens(gpu: &Gpu, tolerance: f32) {
    let (b, c, h, w, o) = (2, 20, 5, 7, 70);
    let (x, weight, bias) = (values(b * c * h * w, 70), values(o * c, 71), values(o, 72));
    let to_tokens = |nchw: &[f32], channels: usize| -> Vec<f32> {
        (0..b * h * w * channels).map(|i| nchw[(i / (h * w * channels) * channels + i % channels) * h * w + i / channels % (h * w)]).collect()
    };
    let (conv, _) = conv2d_reference(&x, [b, c, h, w], &weight, [o, c, 1, 1], &bias, 1, 0);
    let ours = super::conv1x1_to_tokens(upload(gpu, &x, [b, c, h, w]), upload(gpu, &weight, [o, c, 1, 1]), Some(upload(gpu, &bias, [o])));
    assert_eq!(ours.dims(), [b, h * w, o]);
    assert_close(&read(ours).await, &to_tokens(&conv, o), tolerance, tolerance);

    let residual = values(b * o * h * w, 73);
    let expected: Vec<f32> = conv.iter().zip(&residual).map(|(v, r)| v + r).collect();
    let tokens = upload(gpu, &to_tokens(&x, c), [b, h * w, c]);
    let ours = super::conv1x1_from_tokens(tokens, [h, w], upload(gpu, &weight, [o, c, 1, 1]), Some(upload(gpu, &bias, [o])), Some(upload(gpu, &residual, [b, o, h, w])));
    assert_close(&read(ours).await, &expected, tolerance, tolerance);
}

/// PyTorch's GroupNorm on the CPU: per (batch, group) mean and centred variance.
fn group_norm_reference(x: &[f32], [b, c, h, w]: [usize; 4], gamma: &[f32], beta: &[f32], groups: usize, silu: bool) -> Vec<f32> {
    let len = c / groups * h * w;
    let mut out = vec![0.0; x.len()];
    for (start, chunk) in (0..b * groups).map(|i| (i * len, &x[i * len..(i + 1) * len])) {
        // f64 sums: groups here hold up to 1.1 million values.
        let mean = chunk.iter().map(|v| *v as f64).sum::<f64>() / len as f64;
        let var = chunk.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / len as f64;
        for (k, v) in chunk.iter().enumerate() {
            let channel = (start + k) / (h * w) % c;
            let y = ((*v as f64 - mean) / (var + 1e-5).sqrt()) as f32 * gamma[channel] + beta[channel];
            out[start + k] = if silu { y / (1.0 + (-y).exp()) } else { y };
        }
    }
    out
}

async fn check_group_norm(gpu: &Gpu, tolerance: f32) {
    for (i, (shape, groups, silu)) in [([2, 6, 5, 7], 3, false), ([1, 32, 9, 4], 8, true), ([3, 4, 1, 1], 2, true), ([1, 8, 40, 40], 2, true), ([2, 4, 64, 70], 1, false)]
        .into_iter()
        .enumerate()
    {
        let seed = 100 + 10 * i as u32;
        let c = shape[1];
        // A different mean per channel, so the chunks of a group differ.
        let spatial = shape[2] * shape[3];
        let x: Vec<f32> =
            values(shape.iter().product(), seed).iter().enumerate().map(|(i, v)| 3.0 * v + 0.5 + (i / spatial % c) as f32).collect();
        let (gamma, beta) = (values(c, seed + 1), values(c, seed + 2));
        let expected = group_norm_reference(&x, shape, &gamma, &beta, groups, silu);
        let ours = super::group_norm(upload(gpu, &x, shape), upload(gpu, &gamma, [c]), upload(gpu, &beta, [c]), groups, 1e-5, silu);
        let stock = super::group_norm_stock(upload(gpu, &x, shape), upload(gpu, &gamma, [c]), upload(gpu, &beta, [c]), groups, 1e-5, silu);
        let ours = read(ours).await;
        assert_close(&ours, &expected, tolerance, tolerance);
        assert_close(&read(stock).await, &expected, tolerance, tolerance);
    }
}

/// PyTorch's LayerNorm on the CPU: per row mean and centred variance.
fn layer_norm_reference(x: &[f32], dim: usize, gamma: &[f32], beta: &[f32]) -> Vec<f32> {
    x.chunks(dim)
        .flat_map(|row| {
            let mean = row.iter().sum::<f32>() / dim as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
            row.iter().enumerate().map(move |(i, v)| (v - mean) / (var + 1e-5).sqrt() * gamma[i] + beta[i])
        })
        .collect()
}

/// Rows narrower and wider than the 64-thread workgroup, one row, and 3-D input.
async fn check_layer_norm(gpu: &Gpu, tolerance: f32) {
    for (i, (rows, dim)) in [(5, 24), (3, 200), (1, 64), (70, 7)].into_iter().enumerate() {
        let seed = 300 + 10 * i as u32;
        let x: Vec<f32> = values(rows * dim, seed).iter().map(|v| 3.0 * v + 0.5).collect();
        let (gamma, beta) = (values(dim, seed + 1), values(dim, seed + 2));
        let expected = layer_norm_reference(&x, dim, &gamma, &beta);
        let shape = [1, rows, dim];
        let ours = super::layer_norm(upload(gpu, &x, shape), upload(gpu, &gamma, [dim]), upload(gpu, &beta, [dim]), 1e-5);
        assert_close(&read(ours).await, &expected, tolerance, tolerance);
        let stock = super::layer_norm_stock(upload(gpu, &x, shape), upload(gpu, &gamma, [dim]), upload(gpu, &beta, [dim]), 1e-5);
        assert_close(&read(stock).await, &expected, tolerance, tolerance);
    }
}

/// erf from its Maclaurin series in f64: cancellation costs at most ~2e-10 for the tests'
/// |x| <= 4.25 (largest term 7.9e5 times 2^-52), ~1.3e-7 at 5; from 5 on, ±1 in f32.
fn erf_reference(x: f32) -> f32 {
    let x = x as f64;
    if x.abs() >= 5.0 {
        return x.signum() as f32;
    }
    let (mut term, mut sum) = (x, x);
    for n in 1..200 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    (sum * 2.0 / std::f64::consts::PI.sqrt()) as f32
}

/// Widths across the 256-thread workgroups, gates from -6 to 6.
async fn check_geglu(gpu: &Gpu, tolerance: f32) {
    for (i, (rows, inner)) in [(3, 5), (2, 300), (17, 64)].into_iter().enumerate() {
        let x: Vec<f32> = values(rows * 2 * inner, 400 + i as u32).iter().map(|v| 6.0 * v).collect();
        let expected: Vec<f32> = (0..rows * inner)
            .map(|o| {
                let (r, c) = (o / inner, o % inner);
                let (hidden, gate) = (x[2 * r * inner + c], x[(2 * r + 1) * inner + c]);
                hidden * 0.5 * gate * (1.0 + erf_reference(gate / std::f32::consts::SQRT_2))
            })
            .collect();
        let shape = [rows, 1, 2 * inner];
        let ours = super::geglu(upload(gpu, &x, shape));
        assert_eq!(ours.dims(), [rows, 1, inner]);
        assert_close(&read(ours).await, &expected, tolerance, tolerance);
        assert_close(&read(super::geglu_stock(upload(gpu, &x, shape))).await, &expected, tolerance, tolerance);
    }
}

/// naga's parser and validator (what wgpu runs natively) accept every shader in both
/// storage types and every variant of its constants, with readable messages when they do
/// not. (Dawn's Tint checks more; the browser tests run every variant the pipeline uses.)
#[cfg(not(target_arch = "wasm32"))]
#[test]
fn shaders_are_valid_wgsl() {
    use burn::tensor::wgpu::wgpu::naga;
    let gemm_layouts = [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0), (1, 1, 1)];
    let gemm_variants = gemm_layouts.into_iter().flat_map(|(x, out, activation)| {
        [(3, 2, 4), (1, 1, 8)].map(|(kernel, upscale, block)| {
            vec![("X_LAYOUT", x), ("OUT_LAYOUT", out), ("ACTIVATION", activation), ("FILTER_SIZE", kernel), ("UPSAMPLING", upscale), ("THREAD_BLOCK", block)]
        })
    });
    let head_dims = [(40, 40, 8, 32, 1), (512, 128, 4, 4, 0), (6, 6, 8, 64, 1)].map(|(d, chunk, group, tile, registers)| {
        vec![("HEAD_DIM", d), ("CHUNK_DIM", chunk), ("KEY_GROUP", group), ("TILE_KEYS", tile), ("QUERY_IN_REGISTERS", registers)]
    });
    let shaders = [
        ("gemm", super::gemm::GEMM, gemm_variants.collect()),
        ("gemm_reduce", super::gemm::GEMM_REDUCE, [(0, 0), (1, 1)].map(|(out, activation)| vec![("OUT_LAYOUT", out), ("ACTIVATION", activation)]).to_vec()),
        ("group_norm_stats", super::norm::GROUP_NORM_STATS, vec![vec![]]),
        ("group_norm", super::norm::GROUP_NORM, vec![vec![]]),
        ("layer_norm", super::norm::LAYER_NORM, vec![vec![]]),
        ("geglu", super::norm::GEGLU, vec![vec![]]),
        ("attention", super::attention::ATTENTION, head_dims.to_vec()),
    ];
    for (name, template, variants) in shaders {
        for (f16, constants) in [false, true].into_iter().flat_map(|f16| variants.iter().map(move |c| (f16, c))) {
            let mut kernel = super::WgslKernel::new(name, template, f16, super::Dim3::new_single());
            kernel.constants = constants.clone();
            let source = kernel.source();
            let module = naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&source)));
            let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
            if let Err(e) = validator.validate(&module) {
                panic!("{name} (f16 {f16}, {constants:?}): {}", e.emit_to_string(&source));
            }
        }
    }
}

/// The rules' intent at SD1's shapes (batch 2 in the UNet).
#[test]
fn gemm_plans_at_sd1_shapes() {
    use super::gemm::{GemmPlan, block_for_shape};
    // Large tiles for the VAE decoder's convs at 512x512 and the UNet's feed-forward.
    assert_eq!(block_for_shape(128, 512 * 512), 8);
    assert_eq!(block_for_shape(512, 128 * 128), 8);
    assert_eq!(block_for_shape(2560, 2 * 64 * 64), 8);
    // Small ones for 320 channels (padded to 384), 1280 channels over 8x8 latents (10 large
    // tiles), and the VAE's 3 output channels.
    assert_eq!(block_for_shape(320, 2 * 64 * 64), 4);
    assert_eq!(block_for_shape(1280, 2 * 8 * 8), 4);
    assert_eq!(block_for_shape(3, 512 * 512), 4);
    // A 3x3 conv of 1280 channels over 8x8 latents: 40 tiles, split six ways.
    assert_eq!(GemmPlan::new(1280, 2 * 8 * 8, 1280 * 9), GemmPlan { block: 4, splits: 6, split_depth: 1920 });
    // CLIP's fc2 (257 tokens, 4096 -> 1024): 80 tiles, three parts.
    assert_eq!(GemmPlan::new(1024, 257, 4096), GemmPlan { block: 4, splits: 3, split_depth: 1376 });
    // Enough tiles, or too shallow to split: whole.
    assert_eq!(GemmPlan::new(320, 2 * 64 * 64, 320 * 9).splits, 1);
    assert_eq!(GemmPlan::new(1280, 2 * 8 * 8, 1280).splits, 1);
}

/// Dispatches beyond 32,768 workgroups in a row (the conv's z rows, `grid`'s y rows) and a
/// GroupNorm group over a million values (bigger chunks, at most 256): the real model's
/// 2048x2048 VAE and batches of latents reach these; too big for the browser tests.
#[cfg(not(target_arch = "wasm32"))]
#[test]
fn large_dispatches_cover_every_workgroup() {
    pollster::block_on(async {
        let gpu = shared_gpu(DTypeChoice::Exactly(ComputeDType::F32)).await;
        // 2,150,400 pixels: 33,600 tiles of 64, so a second row along z.
        let x = values(1024 * 2100, 600);
        let conv = super::conv2d(upload(&gpu, &x, [1, 1, 1024, 2100]), upload(&gpu, &[2.0], [1, 1, 1, 1]), 1, 0, Epilogue::bias(Some(upload(&gpu, &[0.5], [1]))));
        assert_close(&read(conv).await, &x.iter().map(|v| 2.0 * v + 0.5).collect::<Vec<_>>(), 1e-6, 1e-6);

        // 40,000 rows: 40,000 workgroups.
        let (gamma, beta) = (values(8, 601), values(8, 602));
        let rows = values(40_000 * 8, 603);
        let normed = super::layer_norm(upload(&gpu, &rows, [40_000, 8]), upload(&gpu, &gamma, [8]), upload(&gpu, &beta, [8]), 1e-5);
        assert_close(&read(normed).await, &layer_norm_reference(&rows, 8, &gamma, &beta), 1e-4, 1e-4);

        // 8,448,000 outputs: 33,000 workgroups of 256.
        let projected = upload(&gpu, &values(33_000 * 512, 604), [33_000, 512]);
        let ours = read(super::geglu(projected.clone())).await;
        assert_close(&ours, &read(super::geglu_stock(projected)).await, 1e-4, 1e-4);

        // 1,100,000 values in one group: 253 chunks of 4,352.
        assert_eq!(super::norm::group_norm_chunk(&[1_100_000]), 4352);
        let shape = [1, 2, 1100, 500];
        let x: Vec<f32> = values(1_100_000, 605).iter().enumerate().map(|(i, v)| v + (i / 550_000) as f32).collect();
        let (gamma, beta) = ([1.5, 0.5], [0.25, -0.25]);
        let ours = super::group_norm(upload(&gpu, &x, shape), upload(&gpu, &gamma, [2]), upload(&gpu, &beta, [2]), 1, 1e-5, false);
        assert_close(&read(ours).await, &group_norm_reference(&x, shape, &gamma, &beta, 1, false), 1e-4, 1e-4);
    });
}

/// Softmax attention on the CPU, heads interleaved in the channels.
fn attention_reference(q: &[f32], k: &[f32], v: &[f32], [b, l, s, c]: [usize; 4], heads: usize) -> Vec<f32> {
    let d = c / heads;
    let mut out = vec![0.0; b * l * c];
    for (bi, h, i) in (0..b).flat_map(|bi| (0..heads).flat_map(move |h| (0..l).map(move |i| (bi, h, i)))) {
        let row = |t: &[f32], n: usize, j: usize| (0..d).map(|e| t[(bi * n + j) * c + h * d + e]).collect::<Vec<f32>>();
        let query = row(q, l, i);
        let scores: Vec<f32> = (0..s).map(|j| row(k, s, j).iter().zip(&query).map(|(a, b)| a * b).sum::<f32>() / (d as f32).sqrt()).collect();
        let max = scores.iter().fold(f32::MIN, |m, v| m.max(*v));
        let weights: Vec<f32> = scores.iter().map(|v| (v - max).exp()).collect();
        let total: f32 = weights.iter().sum();
        for j in 0..s {
            for (e, value) in row(v, s, j).iter().enumerate() {
                out[(bi * l + i) * c + h * d + e] += weights[j] / total * value;
            }
        }
    }
    out
}

/// Query counts across the 64-row workgroups, keys across tiles (and not a multiple of
/// them), cross-attention lengths, head sizes from CLIP's tiny 8 to the VAE's single 512.
async fn check_attention(gpu: &Gpu, tolerance: f32) {
    // Head dims 8, 40, 16, 512 and 480 (wider than a thread holds), and 6 (not a whole
    // number of vec4s); key counts that are not whole groups or tiles.
    for (i, ([b, l, s, c], heads)) in
        [([2, 37, 37, 24], 3), ([1, 130, 130, 80], 2), ([2, 20, 5, 64], 4), ([1, 70, 70, 512], 1), ([1, 9, 9, 480], 1), ([2, 19, 23, 18], 3)]
        .into_iter()
        .enumerate()
    {
        let seed = 200 + 10 * i as u32;
        let (q, k, v) = (values(b * l * c, seed), values(b * s * c, seed + 1), values(b * s * c, seed + 2));
        let scaled: Vec<f32> = q.iter().map(|x| 4.0 * x).collect();
        let expected = attention_reference(&scaled, &k, &v, [b, l, s, c], heads);
        let ours = super::attention(upload(gpu, &scaled, [b, l, c]), upload(gpu, &k, [b, s, c]), upload(gpu, &v, [b, s, c]), heads);
        assert_close(&read(ours).await, &expected, tolerance, tolerance);
        if gpu.capabilities.compute_dtype == ComputeDType::F32 {
            let split = |t: Tensor<3>| {
                let [b, n, c] = t.dims();
                t.reshape([b, n, heads, c / heads]).swap_dims(1, 2)
            };
            let stock = burn::tensor::module::attention(
                split(upload(gpu, &scaled, [b, l, c])), split(upload(gpu, &k, [b, s, c])), split(upload(gpu, &v, [b, s, c])),
                None, None, burn::tensor::ops::AttentionModuleOptions::default(),
            );
            let stock = stock.swap_dims(1, 2).reshape([b, l, c]);
            assert_close(&read(stock).await, &expected, tolerance, tolerance);
        }
    }
}

/// Every use of the GEMM shader, with each thread block, whole and with its depth split.
async fn check_gemms(gpu: &Gpu, tolerance: f32) {
    for (block, splits) in [(4, 1), (8, 1), (4, 3), (8, 3)] {
        super::force_gemm(GemmForcing { block: Some(block), splits: Some(splits) });
        check_conv2d(gpu, tolerance).await;
        check_conv2d_epilogue(gpu, tolerance).await;
        check_conv2d_upsampled(gpu, tolerance).await;
        check_linear(gpu, tolerance).await;
        check_conv1x1_tokens(gpu, tolerance).await;
    }
    super::force_gemm(GemmForcing::default());
}

gpu_test! {
    async fn f32_kernels_match_the_cpu_and_burns_stock_ops() {
        let gpu = shared_gpu(DTypeChoice::Exactly(ComputeDType::F32)).await;
        check_gemms(&gpu, 1e-4).await;
        check_group_norm(&gpu, 1e-4).await;
        check_layer_norm(&gpu, 1e-4).await;
        check_geglu(&gpu, 1e-4).await;
        check_attention(&gpu, 1e-4).await;
    }
}

gpu_test! {
    async fn f16_kernels_match_the_cpu_where_the_adapter_has_shader_f16() {
        let probe = shared_gpu(DTypeChoice::Exactly(ComputeDType::F32)).await.capabilities;
        if !probe.shader_f16 {
            crate::testing::skip("f16_kernels_match_the_cpu_where_the_adapter_has_shader_f16", &format!("{} has no shader-f16", probe.adapter));
            return;
        }
        let gpu = shared_gpu(DTypeChoice::Exactly(ComputeDType::F16)).await;
        check_gemms(&gpu, 3e-2).await;
        check_group_norm(&gpu, 3e-2).await;
        check_layer_norm(&gpu, 3e-2).await;
        check_geglu(&gpu, 3e-2).await;
        check_attention(&gpu, 3e-2).await;
    }
}
