
// Appended to the shaders that store a GEMM's outputs (mod.rs, `WgslKernel::source`):
// `gemm.wgsl` and `gemm_reduce.wgsl`. Their parameters, the epilogue's operands and the output.
// OUT_LAYOUT and ACTIVATION are fixed per compiled variant (see gemm.wgsl).

const OUT_TOKENS: u32 = OUT_LAYOUT;
const QUICK_GELU: u32 = ACTIVATION;

// Every binding is read_write: cubecl's pool may place inputs and the output in one wgpu
// buffer, and a buffer cannot be read-only and writable in the same dispatch.
struct Params {
    batch: u32, channels: u32, height: u32, width: u32,
    out_channels: u32, out_height: u32, out_width: u32,
    stride: u32, padding: u32,
    has_bias: u32, bias_stride: u32, has_residual: u32, divisor: f32,
    // Parts the depth is split into (1: none), and the depth of each.
    splits: u32, split_depth: u32,
}

@group(0) @binding(0) var<storage, read_write> bias: array<ELEM>;
@group(0) @binding(1) var<storage, read_write> residual: array<ELEM>;
@group(0) @binding(2) var<storage, read_write> out: array<ELEM>;
@group(0) @binding(3) var<storage, read_write> p: Params;
// [splits][outputs], each part laid out as `out`: the split GEMM's sums over its part of the
// depth.
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;

// Where out channel `m` of output column `column` sits in `out` (and in a part of `partials`).
fn output_index(m: u32, column: u32) -> u32 {
    if (OUT_TOKENS == 1u) { return column * p.out_channels + m; }
    let pixels = p.out_height * p.out_width;
    return (column / pixels * p.out_channels + m) * pixels + column % pixels;
}

// Stores `value`, the sum over the depth for out channel `m` and output column `column`,
// through the epilogue (act(value + bias) + residual) / divisor.
fn store_output(m: u32, column: u32, value: f32) {
    let index = output_index(m, column);
    let b = column / (p.out_height * p.out_width);
    var y = value;
    if (p.has_bias != 0u) { y += f32(bias[b * p.bias_stride + m]); }
    if (QUICK_GELU == 1u) { y = y / (1.0 + exp(-1.702 * y)); }
    if (p.has_residual != 0u) { y += f32(residual[index]); }
    out[index] = ELEM(y / p.divisor);
}
