//! The tiled GEMM behind `conv2d`, `linear` and the transformers' 1x1 projections: the entry
//! points and their `Epilogue`, one launch (`Gemm`), and its plan by shape (`GemmPlan`,
//! forced by `force_gemm`).

use std::cell::Cell;

use burn::backend::Cube;
use burn::tensor::Tensor;
use burn_cubecl::cubecl::ir::settings::Dim3;
use burn_cubecl::cubecl::prelude::CubeCount;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;

use super::{WORKGROUPS_PER_ROW, WgslKernel, absent, cube, grid, is_f16, launch, params};

pub(super) const GEMM: &str = include_str!("gemm.wgsl");
pub(super) const GEMM_REDUCE: &str = include_str!("gemm_reduce.wgsl");

/// What `conv2d` does to each output before storing it: `(conv + bias + residual) / divisor`.
pub struct Epilogue {
    /// `[1, O]`, or `[B, O]` for a bias per batch item (a resnet's timestep embedding).
    pub bias: Option<Tensor<2>>,
    /// `[B, O, H', W']`, the output's shape.
    pub residual: Option<Tensor<4>>,
    pub divisor: f32,
}

impl Epilogue {
    /// Just the layer's own bias.
    pub fn bias(bias: Option<Tensor<1>>) -> Self {
        Self { bias: bias.map(|b| b.unsqueeze()), residual: None, divisor: 1.0 }
    }
}

/// `conv2d` with a square `kernel`, `stride`, `padding`, groups 1 and dilation 1, on
/// `x` `[B, C, H, W]` and `weight` `[O, C, k, k]` of the same dtype, then `epilogue`.
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, stride: usize, padding: usize, epilogue: Epilogue) -> Tensor<4> {
    conv2d_scaled(x, 1, weight, stride, padding, epilogue)
}

/// `conv2d` of `x` upsampled x2 by nearest neighbour (diffusers' `Upsample2D`), reading `x`
/// directly: the upsampled input, four times `x`'s size, is never stored.
pub fn conv2d_upsampled(x: Tensor<4>, weight: Tensor<4>, stride: usize, padding: usize, epilogue: Epilogue) -> Tensor<4> {
    conv2d_scaled(x, 2, weight, stride, padding, epilogue)
}

fn conv2d_scaled(x: Tensor<4>, upscale: usize, weight: Tensor<4>, stride: usize, padding: usize, epilogue: Epilogue) -> Tensor<4> {
    let [batch, channels, source_height, source_width] = x.dims();
    let (height, width) = (source_height * upscale, source_width * upscale);
    let [out_channels, in_channels, kernel, kernel_w] = weight.dims();
    assert!(in_channels == channels && kernel == kernel_w, "conv2d: weight {:?} for input {:?}", weight.dims(), x.dims());
    let out_height = (height + 2 * padding - kernel) / stride + 1;
    let out_width = (width + 2 * padding - kernel) / stride + 1;
    let shape = [batch, out_channels, out_height, out_width];
    let bias_stride = match epilogue.bias.as_ref().map(|b| b.dims()) {
        None => 0,
        Some([1, o]) if o == out_channels => 0,
        Some([b, o]) if b == batch && o == out_channels => out_channels,
        Some(dims) => panic!("conv2d: bias {dims:?} for output {shape:?}"),
    };
    if let Some(residual) = &epilogue.residual {
        assert_eq!(residual.dims(), shape, "conv2d: residual for output {shape:?}");
    }
    let geometry = [batch, channels, height, width, out_channels, out_height, out_width, stride, padding];
    let gemm = Gemm {
        bias: epilogue.bias.map(cube),
        bias_stride: bias_stride as u32,
        residual: epilogue.residual.map(cube),
        divisor: epilogue.divisor,
        upscale: upscale as u32,
        ..Gemm::new(x, weight, geometry)
    };
    Tensor::from_primitive::<Cube>(gemm.run(&shape))
}

/// PyTorch's `F.linear` on `x` `[.., K]` with `weight` `[O, K]` (the checkpoint's layout) and
/// `bias` `[O]`, plus `residual` `[.., O]` when given, in one launch.
pub fn linear<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Option<Tensor<1>>, residual: Option<Tensor<D>>) -> Tensor<D> {
    linear_with(x, weight, bias, residual, false)
}

/// `quick_gelu(F.linear(x, weight, bias))` (`y * sigmoid(1.702 y)`, CLIP's MLP) in one launch.
pub fn linear_quick_gelu<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<D> {
    linear_with(x, weight, bias, None, true)
}

fn linear_with<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Option<Tensor<1>>, residual: Option<Tensor<D>>, quick_gelu: bool) -> Tensor<D> {
    let mut shape = x.dims();
    let [outputs, inputs] = weight.dims();
    assert_eq!(shape[D - 1], inputs, "linear: weight {:?} for input {shape:?}", weight.dims());
    shape[D - 1] = outputs;
    if let Some(residual) = &residual {
        assert_eq!(residual.dims(), shape, "linear: residual for output {shape:?}");
    }
    // A 1x1 convolution over one row of `rows` pixels, with channels last.
    let rows = shape[..D - 1].iter().product::<usize>();
    let gemm = Gemm {
        x_tokens: true,
        out_tokens: true,
        quick_gelu,
        bias: bias.map(cube),
        residual: residual.map(cube),
        ..Gemm::new(x, weight, [1, inputs, 1, rows, outputs, 1, rows, 1, 0])
    };
    Tensor::from_primitive::<Cube>(gemm.run(&shape))
}

/// A 1x1 convolution of `x` `[B, C, H, W]` (`weight` `[O, C, 1, 1]`) written as transformer
/// tokens `[B, H * W, O]`: `proj_in` without the transpose that would follow it.
pub fn conv1x1_to_tokens(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>) -> Tensor<3> {
    let [batch, channels, height, width] = x.dims();
    let [outputs, inputs, 1, 1] = weight.dims() else { panic!("conv1x1_to_tokens: weight {:?}", weight.dims()) };
    assert_eq!(inputs, channels, "conv1x1_to_tokens: weight {:?} for input {:?}", weight.dims(), x.dims());
    let gemm = Gemm {
        out_tokens: true,
        bias: bias.map(cube),
        ..Gemm::new(x, weight, [batch, channels, height, width, outputs, height, width, 1, 0])
    };
    Tensor::from_primitive::<Cube>(gemm.run(&[batch, height * width, outputs]))
}

/// A 1x1 convolution (`weight` `[O, C, 1, 1]`) of transformer tokens `[B, H * W, C]` back to
/// `[B, O, H, W]`, plus `residual` of that shape: `proj_out` and the transformer's residual,
/// without the transpose before them.
pub fn conv1x1_from_tokens(
    tokens: Tensor<3>,
    [height, width]: [usize; 2],
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    residual: Option<Tensor<4>>,
) -> Tensor<4> {
    let [batch, length, channels] = tokens.dims();
    let [outputs, inputs, 1, 1] = weight.dims() else { panic!("conv1x1_from_tokens: weight {:?}", weight.dims()) };
    assert!(inputs == channels && length == height * width, "conv1x1_from_tokens: weight {:?} for tokens {:?}", weight.dims(), tokens.dims());
    let shape = [batch, outputs, height, width];
    if let Some(residual) = &residual {
        assert_eq!(residual.dims(), shape, "conv1x1_from_tokens: residual for output {shape:?}");
    }
    let gemm = Gemm {
        x_tokens: true,
        bias: bias.map(cube),
        residual: residual.map(cube),
        ..Gemm::new(tokens, weight, [batch, channels, height, width, outputs, height, width, 1, 0])
    };
    Tensor::from_primitive::<Cube>(gemm.run(&shape))
}

/// One launch of `gemm.wgsl`: a convolution in the shader's geometry (batch, channels, height,
/// width, out channels, out height, out width, stride, padding; the kernel's side is the
/// weight's), input and output each channels first or (`x_tokens`, `out_tokens`) channels
/// last, then the epilogue.
struct Gemm {
    x: CubeTensor,
    weight: CubeTensor,
    kernel: u32,
    geometry: [u32; 9],
    x_tokens: bool,
    out_tokens: bool,
    quick_gelu: bool,
    /// 2: x is read upsampled x2 by nearest neighbour (the geometry's input size is the
    /// upsampled one).
    upscale: u32,
    bias: Option<CubeTensor>,
    bias_stride: u32,
    residual: Option<CubeTensor>,
    divisor: f32,
}

impl Gemm {
    /// Channels first in and out, no epilogue: the fields to change are set over it.
    fn new<const D: usize, const W: usize>(x: Tensor<D>, weight: Tensor<W>, geometry: [usize; 9]) -> Self {
        // `[O, C, k, k]` for a convolution, `[O, K]` for a Linear.
        let kernel = if W == 4 { weight.dims()[2] } else { 1 };
        Self {
            x: cube(x),
            weight: cube(weight),
            kernel: kernel as u32,
            geometry: geometry.map(|v| v as u32),
            x_tokens: false,
            out_tokens: false,
            quick_gelu: false,
            upscale: 1,
            bias: None,
            bias_stride: 0,
            residual: None,
            divisor: 1.0,
        }
    }

    /// Launches it for an output of `shape`.
    fn run(self, shape: &[usize]) -> CubeTensor {
        let Self { x, weight, kernel, geometry, x_tokens, out_tokens, quick_gelu, upscale, bias, bias_stride, residual, divisor } = self;
        let client = x.client.clone();
        let f16 = is_f16(&[&x, &weight].into_iter().chain(bias.as_ref()).chain(residual.as_ref()).collect::<Vec<_>>());
        let [batch, channels, _, _, out_channels, out_height, out_width, ..] = geometry;
        let columns = batch * out_height * out_width;
        let plan = GemmPlan::new(out_channels, columns, channels * kernel * kernel);
        let flags = [bias.is_some() as u32, bias_stride, residual.is_some() as u32, divisor.to_bits(), plan.splits, plan.split_depth];
        let bias = bias.map_or_else(|| absent(&client), |b| b.handle);
        let residual = residual.map_or_else(|| absent(&client), |r| r.handle);
        let out = empty_device_contiguous_dtype(client.clone(), x.device.clone(), burn::tensor::Shape::from(shape.to_vec()), x.dtype);
        let p = params(&client, &[&geometry[..], &flags].concat());
        let partials = if plan.splits > 1 {
            client.empty(plan.splits as usize * out_channels as usize * columns as usize * size_of::<f32>())
        } else {
            absent(&client)
        };
        let constants = vec![("OUT_LAYOUT", out_tokens as u32), ("ACTIVATION", quick_gelu as u32)];
        let mut shader = WgslKernel::new("gemm", GEMM, f16, Dim3::new_2d(16, 16));
        shader.constants = [
            &constants[..],
            &[("X_LAYOUT", x_tokens as u32), ("FILTER_SIZE", kernel), ("UPSAMPLING", upscale), ("THREAD_BLOCK", plan.block)],
        ]
        .concat();
        // Column (pixel) tiles along x, output-channel tiles along y, and along z the parts of a
        // split depth, or else further rows of column tiles (beyond 65,535 workgroups, as a
        // 2048x2048 output has).
        let tile = 16 * plan.block;
        let column_tiles = columns.div_ceil(tile);
        let count = CubeCount::Static(
            column_tiles.min(WORKGROUPS_PER_ROW),
            out_channels.div_ceil(tile),
            if plan.splits > 1 { plan.splits } else { column_tiles.div_ceil(WORKGROUPS_PER_ROW) },
        );
        let outputs = [bias, residual, out.handle.clone(), p, partials];
        launch(&client, shader, count, outputs.iter().cloned().chain([x.handle, weight.handle]));
        if plan.splits > 1 {
            let mut reduce = WgslKernel::new("gemm_reduce", GEMM_REDUCE, f16, Dim3::new_1d(256));
            reduce.constants = constants;
            launch(&client, reduce, grid((out_channels * columns).div_ceil(256)), outputs);
        }
        out
    }
}

/// How a GEMM is cut into workgroups: `block`, the side of each thread's block of outputs
/// (tiles are 16 times that), and the depth split into `splits` parts of `split_depth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct GemmPlan {
    pub(super) block: u32,
    pub(super) splits: u32,
    pub(super) split_depth: u32,
}

impl GemmPlan {
    /// The plan for `out_channels` x `columns` outputs over `depth`, as forced on this thread
    /// or else chosen by shape.
    pub(super) fn new(out_channels: u32, columns: u32, depth: u32) -> Self {
        let forced = FORCED_GEMM.get();
        let block = forced.block.unwrap_or_else(|| block_for_shape(out_channels, columns));
        let tile = 16 * block;
        let workgroups = out_channels.div_ceil(tile) * columns.div_ceil(tile);
        // A split depth takes z, where more than a row of column tiles would go.
        let splits = if columns.div_ceil(tile) > WORKGROUPS_PER_ROW {
            1
        } else {
            forced.splits.unwrap_or_else(|| splits_for_shape(workgroups, depth))
        };
        // Parts a whole number of steps of either tile deep (16 and 8), none of them empty.
        let split_depth = depth.div_ceil(splits).next_multiple_of(16);
        Self { block, splits: depth.div_ceil(split_depth), split_depth }
    }
}

/// 8x8 blocks do twice the FMAs per workgroup-memory read of 4x4 ones, but their 128x128
/// tiles leave a small output to few workgroups (idle multiprocessors) and pad 320 out
/// channels to 384 where 64-tiles pad none. So large tiles only where they still make
/// `LARGE_TILE_MIN_WORKGROUPS` workgroups and pad the work by at most an eighth more than
/// small ones.
pub(super) fn block_for_shape(out_channels: u32, columns: u32) -> u32 {
    let padded_work = |tile: u32| u64::from(out_channels.div_ceil(tile) * tile) * u64::from(columns.div_ceil(tile) * tile);
    let large_workgroups = out_channels.div_ceil(128) * columns.div_ceil(128);
    if large_workgroups >= LARGE_TILE_MIN_WORKGROUPS && padded_work(128) * 8 <= padded_work(64) * 9 { 8 } else { 4 }
}

/// A GEMM of fewer than `SPLIT_BELOW_WORKGROUPS` workgroups leaves multiprocessors idle while
/// each workgroup runs the whole depth (11,520 for a 3x3 conv of 1280 channels): split the
/// depth into enough parts for `SPLIT_TARGET_WORKGROUPS`, each at least `MIN_SPLIT_DEPTH`.
fn splits_for_shape(workgroups: u32, depth: u32) -> u32 {
    if workgroups >= SPLIT_BELOW_WORKGROUPS {
        return 1;
    }
    (SPLIT_TARGET_WORKGROUPS / workgroups).min(depth / MIN_SPLIT_DEPTH).clamp(1, MAX_SPLITS)
}

// First guesses, to be set from the GPU benchmark (`--gemm-block`, `--no-split-k`;
// docs/performance.md). An H200 has 132 multiprocessors.
const LARGE_TILE_MIN_WORKGROUPS: u32 = 256;
const SPLIT_BELOW_WORKGROUPS: u32 = 128;
const SPLIT_TARGET_WORKGROUPS: u32 = 256;
const MIN_SPLIT_DEPTH: u32 = 1024;
const MAX_SPLITS: u32 = 16;

/// What the benchmarks and tests force on the GEMMs a thread launches, instead of the choice
/// by shape: the thread block (4 or 8) and the number of depth parts (1: no split).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GemmForcing {
    pub block: Option<u32>,
    pub splits: Option<u32>,
}

thread_local! {
    /// Per thread (operations launch from the thread that calls them), so a test that forces
    /// a plan leaves the tests beside it alone.
    static FORCED_GEMM: Cell<GemmForcing> = const { Cell::new(GemmForcing { block: None, splits: None }) };
}

/// Forces `forcing` on every GEMM this thread launches from now on (`GemmForcing::default()`
/// to choose by shape again).
pub fn force_gemm(forcing: GemmForcing) {
    assert!(matches!(forcing.block, None | Some(4 | 8)), "the GEMM's thread block is 4 or 8, not {:?}", forcing.block);
    assert!(forcing.splits != Some(0), "a GEMM's depth splits into one part or more");
    FORCED_GEMM.set(forcing);
}
