//! `imvar bench-ops`: each hot operation at SD1's shapes, imvar's kernel beside burn's stock
//! operation (the baseline), timed as `bench` times its stages.

use burn::tensor::{Distribution, Tensor};
use serde_json::json;

use crate::bench::{sync, time_stage};
use imvar::gpu::Gpu;
use imvar::kernels::GemmForcing;
use imvar::pipeline::PipelineError;

/// Median times in ms of our operation and of burn's stock one, as `time_stage` takes them.
fn ours_and_stock<A, B>(gpu: &Gpu, runs: usize, ours: impl Fn() -> A, stock: impl Fn() -> B) -> Result<(f64, f64), PipelineError> {
    let ours = time_stage(runs, || {
        drop(ours());
        sync(gpu)
    })?;
    let stock = time_stage(runs, || {
        drop(stock());
        sync(gpu)
    })?;
    Ok((ours, stock))
}

/// `imvar bench-ops`: each hot operation at SD1's shapes (`small`: channels and sides / 8, for
/// a quick run on a CPU adapter), ours beside burn's stock operation, one JSON line per
/// (op, shape). `scripts/bench_ops_torch.py` prints the same lines for
/// PyTorch, so both can be compared from one run on the same GPU. `gemm` as in `BenchOptions`.
pub fn ops(gpu: &Gpu, runs: usize, small: bool, gemm: GemmForcing) -> Result<Vec<serde_json::Value>, PipelineError> {
    use burn::tensor::module::{attention, conv2d, linear};
    use burn::tensor::ops::{AttentionModuleOptions, ConvOptions};

    use imvar::kernels::{self, Epilogue};

    let caps = &gpu.capabilities;
    let dtype = caps.compute_dtype.tensor();
    let device = &gpu.device;
    let div = if small { 8 } else { 1 };
    kernels::force_gemm(gemm);
    let random = |shape: Vec<usize>| Tensor::<4>::random(
        [shape[0], shape[1], shape[2], shape[3]], Distribution::Uniform(-1.0, 1.0), (device, dtype));
    let mut lines = Vec::new();
    let mut report = |op: &str, shape: String, (ours, stock): (f64, f64)| {
        let round = |ms: f64| (ms * 1000.0).round() / 1000.0;
        let line = json!({
            "op": op, "shape": shape, "dtype": caps.compute_dtype, "ours_ms": round(ours),
            "burn_ms": round(stock), "runs": runs, "gemm_block": gemm.block, "gemm_splits": gemm.splits, "adapter": caps.adapter, "backend": caps.backend,
        });
        println!("{line}");
        lines.push(line);
    };

    // 3x3 convolutions of the UNet (64..8 latents) and the VAE decoder (128..512 pixels), and
    // the transformers' 1x1 projections.
    let convs: [(usize, usize, usize, usize); 9] = [
        (2, 320, 64, 3), (2, 640, 32, 3), (2, 1280, 16, 3), (2, 1280, 8, 3),
        (1, 128, 512, 3), (1, 256, 256, 3), (1, 512, 128, 3), (2, 320, 64, 1), (2, 1280, 16, 1),
    ];
    for (batch, channels, side, k) in convs {
        let (c, s) = ((channels / div).max(8), (side / div).max(4));
        let x = random(vec![batch, c, s, s]);
        let w = random(vec![c, c, k, k]).mul_scalar(0.05);
        let b = Tensor::<1>::zeros([c], (device, dtype));
        let pad = k / 2;
        let times = ours_and_stock(
            gpu,
            runs,
            || kernels::conv2d(x.clone(), w.clone(), 1, pad, Epilogue::bias(Some(b.clone()))),
            || conv2d(x.clone(), w.clone(), Some(b.clone()), ConvOptions::new([1, 1], [pad, pad], [1, 1], 1)),
        )?;
        report(&format!("conv2d_{k}x{k}"), format!("x[{batch},{c},{s},{s}] w[{c},{c}]"), times);
    }

    // A resnet's last conv with its residual add fused, against the stock conv and add.
    {
        let (c, s) = ((320 / div).max(8), (64 / div).max(4));
        let (x, residual) = (random(vec![2, c, s, s]), random(vec![2, c, s, s]));
        let w = random(vec![c, c, 3, 3]).mul_scalar(0.05);
        let b = Tensor::<1>::zeros([c], (device, dtype));
        let times = ours_and_stock(
            gpu,
            runs,
            || {
                let epilogue = Epilogue { bias: Some(b.clone().unsqueeze()), residual: Some(residual.clone()), divisor: 1.0 };
                kernels::conv2d(x.clone(), w.clone(), 1, 1, epilogue)
            },
            || conv2d(x.clone(), w.clone(), Some(b.clone()), ConvOptions::new([1, 1], [1, 1], [1, 1], 1)) + residual.clone(),
        )?;
        report("conv2d_3x3_residual", format!("x[2,{c},{s},{s}] w[{c},{c}]"), times);
    }

    for (batch, channels, side) in [(2, 320, 64), (1, 128, 512)] {
        let (c, s) = ((channels / div / 32).max(1) * 32, (side / div).max(4));
        let x = random(vec![batch, c, s, s]);
        let (gamma, beta) = (Tensor::<1>::ones([c], (device, dtype)), Tensor::<1>::zeros([c], (device, dtype)));
        let times = ours_and_stock(
            gpu,
            runs,
            || kernels::group_norm(x.clone(), gamma.clone(), beta.clone(), 32, 1e-5, true),
            || kernels::group_norm_stock(x.clone(), gamma.clone(), beta.clone(), 32, 1e-5, true),
        )?;
        report("group_norm_silu", format!("[{batch},{c},{s},{s}] groups 32"), times);
    }

    // The transformers' LayerNorms (UNet tokens at 64..16, CLIP ViT-L's 257) and GEGLU tail.
    for (rows, dim) in [(8192, 320), (2048, 640), (512, 1280), (257, 1024)] {
        let (r, d) = (rows / div, (dim / div).max(8));
        let x = Tensor::<2>::random([r, d], Distribution::Uniform(-1.0, 1.0), (device, dtype));
        let (gamma, beta) = (Tensor::<1>::ones([d], (device, dtype)), Tensor::<1>::zeros([d], (device, dtype)));
        let times = ours_and_stock(
            gpu,
            runs,
            || kernels::layer_norm(x.clone(), gamma.clone(), beta.clone(), 1e-5),
            || kernels::layer_norm_stock(x.clone(), gamma.clone(), beta.clone(), 1e-5),
        )?;
        report("layer_norm", format!("[{r},{d}]"), times);
    }
    for (rows, inner) in [(8192, 1280), (512, 5120)] {
        let (r, i) = (rows / div, inner / div);
        let x = Tensor::<2>::random([r, 2 * i], Distribution::Uniform(-1.0, 1.0), (device, dtype));
        let times = ours_and_stock(gpu, runs, || kernels::geglu(x.clone()), || kernels::geglu_stock(x.clone()))?;
        report("geglu", format!("[{r},{}]", 2 * i), times);
    }

    // Self-attention: ours on [B, L, C] with the heads in the channels, burn's on split heads.
    for (batch, heads, tokens, dim) in [(2, 8, 4096, 40), (2, 8, 1024, 80), (1, 1, 4096, 512)] {
        let (t, d) = (tokens / div / div, (dim / div).max(8));
        let qkv = || Tensor::<3>::random([batch, t, heads * d], Distribution::Uniform(-1.0, 1.0), (device, dtype));
        let (q, k, v) = (qkv(), qkv(), qkv());
        let split = |x: Tensor<3>| x.reshape([batch, t, heads, d]).swap_dims(1, 2);
        let times = ours_and_stock(
            gpu,
            runs,
            || kernels::attention(q.clone(), k.clone(), v.clone(), heads),
            || {
                let out = attention(split(q.clone()), split(k.clone()), split(v.clone()), None, None, AttentionModuleOptions::default());
                out.swap_dims(1, 2).reshape([batch, t, heads * d])
            },
        )?;
        report("attention", format!("[{batch},{heads},{t},{d}]"), times);
    }

    // Linear layers (no bias, as PyTorch's side), ours on the checkpoint's [out, in] weight.
    for (rows, inputs, outputs) in [(8192, 320, 320), (8192, 320, 2560), (2048, 640, 640), (512, 1280, 1280)] {
        let (r, i, o) = (rows / div, inputs / div, outputs / div);
        let x = Tensor::<2>::random([r, i], Distribution::Uniform(-1.0, 1.0), (device, dtype));
        let w = Tensor::<2>::random([o, i], Distribution::Uniform(-0.05, 0.05), (device, dtype));
        let times = ours_and_stock(
            gpu,
            runs,
            || kernels::linear(x.clone(), w.clone(), None, None),
            || linear(x.clone(), w.clone().transpose(), None),
        )?;
        report("linear", format!("[{r},{i}]x[{i},{o}]"), times);
    }
    Ok(lines)
}
