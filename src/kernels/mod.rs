//! Our own GPU kernels, in WGSL: they run unchanged natively (wgpu) and in the browser
//! (Dawn), in f32 or f16 storage with f32 arithmetic. Each is launched on burn's tensors
//! through cubecl's precompiled-kernel path, on the same queue as burn's own operations, so no
//! synchronisation is needed around them.
//!
//! - `conv2d`: tiled implicit-GEMM convolution, instead of burn's direct kernel that has no
//!   shared-memory tiling and accumulates in the storage dtype. Tile size and a split of the
//!   depth across workgroups are chosen by shape (`GemmPlan`). Its epilogue adds the bias (per
//!   batch, to fold in the timestep embedding) and a residual, and divides: a resnet's tail.
//! - `linear`: the same GEMM on channels-last rows, bias and residual fused, instead of burn's
//!   matmul followed by one launch per add. With one side channels first and the other last,
//!   it is also the transformers' 1x1 `proj_in`/`proj_out`, so no transposes surround them.
//! - `group_norm`: GroupNorm (+ SiLU) in two launches instead of about ten, each group spread
//!   over many workgroups.
//! - `layer_norm`: LayerNorm in one launch instead of about ten.
//! - `geglu`: the feed-forward's `hidden * gelu(gate)` in one launch instead of six.
//! - `attention`: multi-head attention with an online softmax (no score matrix), reading the
//!   heads straight out of the projections' channels.

use std::cell::Cell;

use burn::backend::Cube;
use burn::tensor::{DType, Tensor};
use burn_cubecl::cubecl::ir::{UIntKind, metadata::Info, settings::Dim3};
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::cubecl::server::KernelArguments;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;

const GEMM: &str = include_str!("gemm.wgsl");
const GEMM_REDUCE: &str = include_str!("gemm_reduce.wgsl");
const GROUP_NORM_STATS: &str = include_str!("group_norm_stats.wgsl");
const GROUP_NORM: &str = include_str!("group_norm.wgsl");
const ATTENTION: &str = include_str!("attention.wgsl");
const LAYER_NORM: &str = include_str!("layer_norm.wgsl");
const GEGLU: &str = include_str!("geglu.wgsl");
/// Pieces of WGSL shared by several shaders, appended to those that call the function they
/// define: `workgroup_sum`, and a GEMM's bindings and epilogue (`store_output`).
const SNIPPETS: [(&str, &str); 2] = [
    ("workgroup_sum(", include_str!("workgroup_sum.wgsl")),
    ("store_output(", include_str!("gemm_output.wgsl")),
];

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
        let mut source = self.template.to_string();
        for (call, snippet) in SNIPPETS {
            if self.template.contains(call) {
                source += snippet;
            }
        }
        source = source.replace("ENABLE_F16", enable).replace("ELEM", elem);
        for (name, value) in &self.constants {
            source = source.replace(name, &value.to_string());
        }
        source
    }
}

/// Unchecked: cubecl then compiles the WGSL without naga's loop bounding, a counter and exit
/// test added to every loop against infinite ones. Each of our loops ends by its own bound, and
/// the counters can keep a driver from unrolling the loops over a thread's register block.
/// (Memory accesses are unchecked either way: the shaders guard their own.)
const EXECUTION_MODE: ExecutionMode = ExecutionMode::Unchecked;

impl KernelMetadata for WgslKernel {
    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.name, self.f16, self.constants.clone())).mode(EXECUTION_MODE)
    }

    fn address_type(&self) -> ElemType {
        ElemType::UInt(UIntKind::U32)
    }
}

impl CubeKernel for WgslKernel {
    fn define(&self) -> KernelDefinition {
        let settings = KernelSettings::new(self.workgroup, EXECUTION_MODE, AddressType::U32);
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

type Handle = burn_cubecl::cubecl::server::Handle;

/// Launches `kernel` over `count` workgroups with `buffers` bound in order (group 0).
fn launch(client: &Client, kernel: WgslKernel, count: CubeCount, buffers: impl IntoIterator<Item = Handle>) {
    let arguments = buffers.into_iter().fold(KernelArguments::new(), |a, handle| a.with_buffer(handle.binding()));
    client.launch(Box::new(kernel), count, arguments);
}

/// Workgroups per row of a large one-dimensional dispatch: WebGPU allows at most 65,535 per
/// dimension, so longer ones continue on further rows (the shaders compute
/// `group.x + group.y * 32768u`).
const WORKGROUPS_PER_ROW: u32 = 32768;

/// A dispatch of `workgroups` workgroups in rows of `WORKGROUPS_PER_ROW`.
fn grid(workgroups: u32) -> CubeCount {
    CubeCount::Static(workgroups.min(WORKGROUPS_PER_ROW), workgroups.div_ceil(WORKGROUPS_PER_ROW), 1)
}

/// A placeholder for an absent optional operand: a binding cannot be left empty, and binding
/// another operand's buffer again would alias a writable binding, which Dawn refuses.
fn absent(client: &Client) -> Handle {
    client.create_from_slice(&[0u8; 4])
}

/// A storage buffer holding 32-bit parameters (a struct of u32/f32 fields in the shader).
fn params(client: &Client, words: &[u32]) -> Handle {
    client.create_from_slice(&words.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>())
}

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
struct GemmPlan {
    block: u32,
    splits: u32,
    split_depth: u32,
}

impl GemmPlan {
    /// The plan for `out_channels` x `columns` outputs over `depth`, as forced on this thread
    /// or else chosen by shape.
    fn new(out_channels: u32, columns: u32, depth: u32) -> Self {
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
fn block_for_shape(out_channels: u32, columns: u32) -> u32 {
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

/// Values of one (batch, group) per GroupNorm workgroup: 16 per thread at least, more where a
/// group would otherwise span over 256 chunks (the second pass combines one chunk per thread).
fn group_norm_chunk(len: usize) -> usize {
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
    let chunk = if in_registers { head_dim } else { (1..=128).rev().find(|c| head_dim.is_multiple_of(*c)).unwrap() };
    // Key tiles and value-chunk tiles, as f32 vec4s, fit 12 KiB of workgroup memory (of
    // WebGPU's 16); a tile is a whole number of groups of keys scored together.
    let tile = (768 / (head_dim.div_ceil(4) + chunk.div_ceil(4))).clamp(1, 64);
    let group = tile.min(8);
    let tile = tile / group * group;
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
        ("KEY_GROUP", group as u32),
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

#[cfg(test)]
mod tests {
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
            ("gemm", super::GEMM, gemm_variants.collect()),
            ("gemm_reduce", super::GEMM_REDUCE, [(0, 0), (1, 1)].map(|(out, activation)| vec![("OUT_LAYOUT", out), ("ACTIVATION", activation)]).to_vec()),
            ("group_norm_stats", super::GROUP_NORM_STATS, vec![vec![]]),
            ("group_norm", super::GROUP_NORM, vec![vec![]]),
            ("layer_norm", super::LAYER_NORM, vec![vec![]]),
            ("geglu", super::GEGLU, vec![vec![]]),
            ("attention", super::ATTENTION, head_dims.to_vec()),
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
        use super::{GemmPlan, block_for_shape};
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
            assert_eq!(super::group_norm_chunk(1_100_000), 4352);
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
                crate::testing::log("no shader-f16 here: f16 kernels not run");
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
}
