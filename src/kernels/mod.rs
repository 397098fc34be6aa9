//! Our own GPU kernels, in WGSL: they run unchanged natively (wgpu) and in the browser
//! (Dawn), in f32 or f16 storage with f32 arithmetic. Each is launched on burn's tensors
//! through cubecl's precompiled-kernel path, on the same queue as burn's own operations, so no
//! synchronisation is needed around them.
//!
//! - `conv2d`: tiled implicit-GEMM convolution (bias fused), instead of burn's direct kernel
//!   that has no shared-memory tiling and accumulates in the storage dtype.
//! - `group_norm`: GroupNorm (+ SiLU) in one launch instead of about ten.

use burn::backend::Cube;
use burn::tensor::{DType, Tensor};
use burn_cubecl::cubecl::ir::{UIntKind, metadata::Info, settings::Dim3};
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::cubecl::server::KernelArguments;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;

/// A WGSL compute shader with `ELEM` standing for the storage type (and `ENABLE_F16` for the
/// `enable f16;` directive it then needs).
struct WgslKernel {
    name: &'static str,
    template: &'static str,
    f16: bool,
    workgroup: Dim3,
}

impl WgslKernel {
    fn source(&self) -> String {
        let (enable, elem) = if self.f16 { ("enable f16;", "f16") } else { ("", "f32") };
        self.template.replace("ENABLE_F16", enable).replace("ELEM", elem)
    }
}

impl KernelMetadata for WgslKernel {
    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.name, self.f16))
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

fn is_f16(tensor: &CubeTensor) -> bool {
    match tensor.dtype {
        DType::F16 => true,
        DType::F32 => false,
        other => panic!("imvar's kernels take f16 or f32 tensors, not {other:?}"),
    }
}

/// A storage buffer holding 32-bit parameters (a struct of u32/f32 fields in the shader).
fn params(client: &Client, words: &[u32]) -> burn_cubecl::cubecl::server::Handle {
    client.create_from_slice(&words.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>())
}

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
    let f16 = is_f16(&x);
    let has_bias = bias.is_some() as u32;
    let bias_handle = match bias {
        Some(b) => cube(b).handle,
        None => client.create_from_slice(&[0u8; 4]),
    };
    let shape = [batch, out_channels, out_height, out_width];
    let out = empty_device_contiguous_dtype(client.clone(), x.device.clone(), burn::tensor::Shape::new(shape), x.dtype);
    let words = [batch, channels, height, width, out_channels, out_height, out_width, kernel, stride, padding]
        .map(|v| v as u32);
    let p = params(&client, &[&words[..], &[has_bias, 0]].concat());
    let columns = (batch * out_height * out_width) as u32;
    let kernel = WgslKernel { name: "conv2d", template: include_str!("conv2d.wgsl"), f16, workgroup: Dim3::new_2d(16, 16) };
    let arguments = KernelArguments::new()
        .with_buffer(x.handle.clone().binding())
        .with_buffer(weight.handle.clone().binding())
        .with_buffer(bias_handle.binding())
        .with_buffer(out.handle.clone().binding())
        .with_buffer(p.binding());
    client.launch(Box::new(kernel), CubeCount::Static(columns.div_ceil(64), (out_channels as u32).div_ceil(64), 1), arguments);
    Tensor::from_primitive::<Cube>(out)
}

/// GroupNorm of `x` `[B, C, H, W]` with `groups` groups, affine `gamma`/`beta` `[C]`,
/// statistics in f32, optionally followed by SiLU.
pub fn group_norm(x: Tensor<4>, gamma: Tensor<1>, beta: Tensor<1>, groups: usize, eps: f64, silu: bool) -> Tensor<4> {
    let [batch, channels, height, width] = x.dims();
    assert!(channels % groups == 0, "group_norm: {channels} channels in {groups} groups");
    let (x, gamma, beta) = (cube(x), cube(gamma), cube(beta));
    let client = x.client.clone();
    let f16 = is_f16(&x);
    let out = empty_device_contiguous_dtype(client.clone(), x.device.clone(), x.meta.shape().clone(), x.dtype);
    let p = params(&client, &[channels as u32, (height * width) as u32, groups as u32, silu as u32, (eps as f32).to_bits(), 0, 0, 0]);
    let kernel = WgslKernel { name: "group_norm", template: include_str!("group_norm.wgsl"), f16, workgroup: Dim3::new_1d(256) };
    let arguments = KernelArguments::new()
        .with_buffer(x.handle.clone().binding())
        .with_buffer(gamma.handle.clone().binding())
        .with_buffer(beta.handle.clone().binding())
        .with_buffer(out.handle.clone().binding())
        .with_buffer(p.binding());
    client.launch(Box::new(kernel), CubeCount::Static((batch * groups) as u32, 1, 1), arguments);
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

    gpu_test! {
        async fn f32_kernels_match_the_cpu_and_burns_stock_ops() {
            let gpu = shared_gpu(DTypeChoice::Exactly(ComputeDType::F32)).await;
            check_conv2d(&gpu, 1e-4).await;
            check_group_norm(&gpu, 1e-4).await;
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
        }
    }
}
