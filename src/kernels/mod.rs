//! Our own GPU kernels, in WGSL: they run unchanged natively (wgpu) and in the browser
//! (Dawn), in f32 or f16 storage with f32 arithmetic. Each is launched on burn's tensors
//! through cubecl's precompiled-kernel path, on the same queue as burn's own operations, so no
//! synchronisation is needed around them.
//!
//! - `conv2d`: tiled implicit-GEMM convolution (bias fused), instead of burn's direct kernel
//!   that has no shared-memory tiling and accumulates in the storage dtype.
//! - `group_norm`: GroupNorm (+ SiLU) in one launch instead of about ten.
//! - `attention`: multi-head attention with an online softmax (no score matrix), reading the
//!   heads straight out of the projections' channels.

use burn::backend::Cube;
use burn::tensor::{DType, Tensor};
use burn_cubecl::cubecl::ir::{UIntKind, metadata::Info, settings::Dim3};
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::cubecl::server::KernelArguments;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;

const CONV2D: &str = include_str!("conv2d.wgsl");
const GROUP_NORM: &str = include_str!("group_norm.wgsl");
const ATTENTION: &str = include_str!("attention.wgsl");

/// A WGSL compute shader with `ELEM` standing for the storage type (and `ENABLE_F16` for the
/// `enable f16;` directive it then needs), and named constants fixed per compiled variant.
struct WgslKernel {
    name: &'static str,
    template: &'static str,
    f16: bool,
    workgroup: Dim3,
    constants: Vec<(&'static str, u32)>,
}

impl WgslKernel {
    fn new(name: &'static str, template: &'static str, f16: bool, workgroup: Dim3) -> Self {
        Self { name, template, f16, workgroup, constants: Vec::new() }
    }

    fn source(&self) -> String {
        let (enable, elem) = if self.f16 { ("enable f16;", "f16") } else { ("", "f32") };
        let mut source = self.template.replace("ENABLE_F16", enable).replace("ELEM", elem);
        for (name, value) in &self.constants {
            source = source.replace(name, &value.to_string());
        }
        source
    }
}

impl KernelMetadata for WgslKernel {
    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.name, self.f16, self.constants.clone()))
    }

    fn address_type(&self) -> ElemType {
        ElemType::UInt(UIntKind::U32)
    }
}

impl CubeKernel for WgslKernel {
    fn define(&self) -> KernelDefinition {
        let settings = KernelSettings::new(self.workgroup, ExecutionMode::Checked, AddressType::U32);
        KernelDefinition { body: Scope::root(settings.clone()), settings, info: Info::default() }
    }

    fn source(&self) -> Option<PrecompiledSource> {
        Some(PrecompiledSource { source: WgslKernel::source(self), entrypoint_name: "main".into(), lang: "wgsl" })
    }
}

/// The cubecl tensor behind a float tensor, made contiguous (the kernels index densely).
fn cube<const D: usize>(tensor: Tensor<D>) -> CubeTensor {
    into_contiguous(tensor.try_into_primitive::<Cube>().expect("imvar's kernels run on its wgpu device"))
}

/// Whether the operands are f16 (else f32); they must all have one dtype, as the shaders read
/// every buffer with one element type.
fn is_f16(operands: &[&CubeTensor]) -> bool {
    let dtype = operands[0].dtype;
    assert!(operands.iter().all(|t| t.dtype == dtype), "imvar's kernels take operands of one dtype");
    match dtype {
        DType::F16 => true,
        DType::F32 => false,
        other => panic!("imvar's kernels take f16 or f32 tensors, not {other:?}"),
    }
}

/// Launches `kernel` over `count` workgroups with `buffers` bound in order (group 0).
fn launch(client: &Client, kernel: WgslKernel, count: CubeCount, buffers: [burn_cubecl::cubecl::server::Handle; 5]) {
    let arguments = buffers.into_iter().fold(KernelArguments::new(), |a, handle| a.with_buffer(handle.binding()));
    client.launch(Box::new(kernel), count, arguments);
}

/// A storage buffer holding 32-bit parameters (a struct of u32/f32 fields in the shader).
fn params(client: &Client, words: &[u32]) -> burn_cubecl::cubecl::server::Handle {
    client.create_from_slice(&words.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>())
}

/// Pixel tiles per row of the conv2d dispatch grid (`conv2d.wgsl` reads it the same way).
const PIXEL_TILES_PER_ROW: u32 = 32768;

/// `conv2d` with a square `kernel`, `stride`, `padding`, groups 1 and dilation 1, on
/// `x` `[B, C, H, W]` and `weight` `[O, C, k, k]` of the same dtype.
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>, stride: usize, padding: usize) -> Tensor<4> {
    let [batch, channels, height, width] = x.dims();
    let [out_channels, in_channels, kernel, kernel_w] = weight.dims();
    assert!(in_channels == channels && kernel == kernel_w, "conv2d: weight {:?} for input {:?}", weight.dims(), x.dims());
    let out_height = (height + 2 * padding - kernel) / stride + 1;
    let out_width = (width + 2 * padding - kernel) / stride + 1;
    let (x, weight) = (cube(x), cube(weight));
    let client = x.client.clone();
    let bias = bias.map(cube);
    let f16 = is_f16(&[&x, &weight].into_iter().chain(bias.as_ref()).collect::<Vec<_>>());
    let has_bias = bias.is_some() as u32;
    let bias_handle = match bias {
        Some(b) => b.handle,
        None => client.create_from_slice(&[0u8; 4]),
    };
    let shape = [batch, out_channels, out_height, out_width];
    let out = empty_device_contiguous_dtype(client.clone(), x.device.clone(), burn::tensor::Shape::new(shape), x.dtype);
    let words = [batch, channels, height, width, out_channels, out_height, out_width, kernel, stride, padding]
        .map(|v| v as u32);
    let p = params(&client, &[&words[..], &[has_bias, 0]].concat());
    let columns = (batch * out_height * out_width) as u32;
    let kernel = WgslKernel::new("conv2d", CONV2D, f16, Dim3::new_2d(16, 16));
    // Pixel tiles beyond WebGPU's 65,535 workgroups per dimension (a 2048x2048 output has
    // 65,536) continue along z.
    let tiles = columns.div_ceil(64);
    let count = CubeCount::Static(tiles.min(PIXEL_TILES_PER_ROW), (out_channels as u32).div_ceil(64), tiles.div_ceil(PIXEL_TILES_PER_ROW));
    launch(&client, kernel, count, [x.handle, weight.handle, bias_handle, out.handle.clone(), p]);
    Tensor::from_primitive::<Cube>(out)
}

/// GroupNorm of `x` `[B, C, H, W]` with `groups` groups, affine `gamma`/`beta` `[C]`,
/// statistics in f32, optionally followed by SiLU.
pub fn group_norm(x: Tensor<4>, gamma: Tensor<1>, beta: Tensor<1>, groups: usize, eps: f64, silu: bool) -> Tensor<4> {
    let [batch, channels, height, width] = x.dims();
    assert!(channels % groups == 0, "group_norm: {channels} channels in {groups} groups");
    let (x, gamma, beta) = (cube(x), cube(gamma), cube(beta));
    let client = x.client.clone();
    let f16 = is_f16(&[&x, &gamma, &beta]);
    let out = empty_device_contiguous_dtype(client.clone(), x.device.clone(), x.meta.shape().clone(), x.dtype);
    let p = params(&client, &[channels as u32, (height * width) as u32, groups as u32, silu as u32, (eps as f32).to_bits(), 0, 0, 0]);
    let kernel = WgslKernel::new("group_norm", GROUP_NORM, f16, Dim3::new_1d(256));
    let count = CubeCount::Static((batch * groups) as u32, 1, 1);
    launch(&client, kernel, count, [x.handle, gamma.handle, beta.handle, out.handle.clone(), p]);
    Tensor::from_primitive::<Cube>(out)
}

/// Multi-head attention `softmax(q kᵀ / sqrt(d)) v` on `q` `[B, L, C]` and `k`, `v` `[B, S, C]`
/// with `heads` heads interleaved in the channels; `[B, L, C]` out. No score matrix is stored.
pub fn attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize) -> Tensor<3> {
    let [batch, queries, channels] = q.dims();
    let keys = k.dims()[1];
    assert!(channels % heads == 0 && k.dims() == v.dims() && k.dims()[2] == channels, "attention: q {:?}, k {:?}, v {:?}", q.dims(), k.dims(), v.dims());
    let head_dim = channels / heads;
    // Up to 256 dims a thread holds its query and whole output row; wider heads (the VAE's 512)
    // reread the query and split the output into chunks of at most 128 dims.
    let in_registers = head_dim <= 256;
    let chunk = if in_registers { head_dim } else { (1..=128).rev().find(|c| head_dim % c == 0).unwrap() };
    // Key tiles and value-chunk tiles in f32 fit 12 KiB of workgroup memory (of WebGPU's 16).
    let tile = (3072 / (head_dim + chunk)).clamp(1, 64);
    let (q, k, v) = (cube(q), cube(k), cube(v));
    let client = q.client.clone();
    let f16 = is_f16(&[&q, &k, &v]);
    let out = empty_device_contiguous_dtype(client.clone(), q.device.clone(), q.meta.shape().clone(), q.dtype);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let p = params(&client, &[batch as u32, heads as u32, queries as u32, keys as u32, channels as u32, scale.to_bits(), 0, 0]);
    let mut kernel = WgslKernel::new("attention", ATTENTION, f16, Dim3::new_1d(64));
    kernel.constants = vec![
        ("HEAD_DIM", head_dim as u32),
        ("CHUNK_DIM", chunk as u32),
        ("TILE_KEYS", tile as u32),
        ("QUERY_IN_REGISTERS", in_registers as u32),
    ];
    let count = CubeCount::Static((queries as u32).div_ceil(64), (batch * heads) as u32, (head_dim / chunk) as u32);
    launch(&client, kernel, count, [q.handle, k.handle, v.handle, out.handle.clone(), p]);
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

#[cfg(test)]
mod tests {
    use burn::tensor::module::conv2d as stock_conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{DType, Tensor, TensorData};

    use crate::gpu::{ComputeDType, DTypeChoice, Gpu};
    use crate::testing::{assert_close, conv2d_reference, gpu_test, read, shared_gpu, values};

    fn upload<const D: usize>(gpu: &Gpu, values: &[f32], shape: [usize; D]) -> Tensor<D> {
        let dtype = DType::from(gpu.capabilities.compute_dtype.burn());
        Tensor::from_data(TensorData::new(values.to_vec(), shape), (&gpu.device, dtype))
    }

    /// Shapes that are not multiples of the 64x64x16 tile, batch > 1, stride 2, padding edges,
    /// 1x1, no bias, and one exact tile.
    const CONVS: [([usize; 4], [usize; 4], usize, usize, bool); 5] = [
        ([2, 5, 9, 11], [7, 5, 3, 3], 1, 1, true),
        ([1, 33, 13, 10], [70, 33, 3, 3], 2, 1, false),
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
            let ours = super::conv2d(upload(gpu, &x, xs), upload(gpu, &w, ws), b.clone(), stride, padding);
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

    /// PyTorch's GroupNorm on the CPU: per (batch, group) mean and centred variance.
    fn group_norm_reference(x: &[f32], [b, c, h, w]: [usize; 4], gamma: &[f32], beta: &[f32], groups: usize, silu: bool) -> Vec<f32> {
        let len = c / groups * h * w;
        let mut out = vec![0.0; x.len()];
        for (start, chunk) in (0..b * groups).map(|i| (i * len, &x[i * len..(i + 1) * len])) {
            let mean = chunk.iter().sum::<f32>() / len as f32;
            let var = chunk.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / len as f32;
            for (k, v) in chunk.iter().enumerate() {
                let channel = (start + k) / (h * w) % c;
                let y = (v - mean) / (var + 1e-5).sqrt() * gamma[channel] + beta[channel];
                out[start + k] = if silu { y / (1.0 + (-y).exp()) } else { y };
            }
        }
        out
    }

    async fn check_group_norm(gpu: &Gpu, tolerance: f32) {
        for (i, (shape, groups, silu)) in [([2, 6, 5, 7], 3, false), ([1, 32, 9, 4], 8, true), ([3, 4, 1, 1], 2, true), ([1, 8, 40, 40], 2, true)]
            .into_iter()
            .enumerate()
        {
            let seed = 100 + 10 * i as u32;
            let c = shape[1];
            let x: Vec<f32> = values(shape.iter().product(), seed).iter().map(|v| 3.0 * v + 0.5).collect();
            let (gamma, beta) = (values(c, seed + 1), values(c, seed + 2));
            let expected = group_norm_reference(&x, shape, &gamma, &beta, groups, silu);
            let ours = super::group_norm(upload(gpu, &x, shape), upload(gpu, &gamma, [c]), upload(gpu, &beta, [c]), groups, 1e-5, silu);
            let stock = super::group_norm_stock(upload(gpu, &x, shape), upload(gpu, &gamma, [c]), upload(gpu, &beta, [c]), groups, 1e-5, silu);
            let ours = read(ours).await;
            assert_close(&ours, &expected, tolerance, tolerance);
            assert_close(&read(stock).await, &expected, tolerance, tolerance);
        }
    }

    /// naga's parser and validator (what wgpu runs natively) accept every shader in both
    /// storage types, with readable messages when they do not.
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn shaders_are_valid_wgsl() {
        use burn::tensor::wgpu::wgpu::naga;
        for (name, template) in [("conv2d", super::CONV2D), ("group_norm", super::GROUP_NORM), ("attention", super::ATTENTION)] {
            for f16 in [false, true] {
                let mut kernel = super::WgslKernel::new(name, template, f16, super::Dim3::new_single());
                kernel.constants = vec![("HEAD_DIM", 512), ("CHUNK_DIM", 128), ("TILE_KEYS", 4), ("QUERY_IN_REGISTERS", 0)];
                let source = kernel.source();
                let module = naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&source)));
                let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
                if let Err(e) = validator.validate(&module) {
                    panic!("{name} (f16 {f16}): {}", e.emit_to_string(&source));
                }
            }
        }
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
        for (i, ([b, l, s, c], heads)) in [([2, 37, 37, 24], 3), ([1, 130, 130, 80], 2), ([2, 20, 5, 64], 4), ([1, 70, 70, 512], 1), ([1, 9, 9, 480], 1)]
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

    gpu_test! {
        async fn f32_kernels_match_the_cpu_and_burns_stock_ops() {
            let gpu = shared_gpu(DTypeChoice::Exactly(ComputeDType::F32)).await;
            check_conv2d(&gpu, 1e-4).await;
            check_group_norm(&gpu, 1e-4).await;
            check_attention(&gpu, 1e-4).await;
        }
    }

    gpu_test! {
        async fn f16_kernels_match_the_cpu_where_the_adapter_has_shader_f16() {
            let probe = shared_gpu(DTypeChoice::Exactly(ComputeDType::F32)).await.capabilities;
            if !probe.shader_f16 {
                crate::testing::log("no shader-f16 here: f16 kernels not run");
                return;
            }
            let gpu = shared_gpu(DTypeChoice::Exactly(ComputeDType::F16)).await;
            check_conv2d(&gpu, 3e-2).await;
            check_group_norm(&gpu, 3e-2).await;
            check_attention(&gpu, 3e-2).await;
        }
    }
}
