// 2-D convolution (square kernel, groups 1, dilation 1) as a tiled implicit GEMM, and with it
// Linear (a 1x1 convolution over one row of pixels):
// out[oc, pixel] = sum_k weight[oc, k] * im2col(x)[k, pixel], k = (ic, ky, kx), the im2col
// column gathered on the fly; then the epilogue (act(conv + bias) + residual) / divisor, with a
// bias per out channel or per (batch, out channel) and act CLIP's quick_gelu where ACTIVATION
// is 1 (else none). With `upscale` 2 the convolution reads its input upsampled x2 by nearest
// neighbour (height and width are then the upsampled ones); the upsampled input is never
// stored. A workgroup computes a 64 (out channels) x 64 (pixels) tile in steps of 16 along k,
// staging both operands in workgroup memory as f32; each of its 16x16 threads accumulates a
// 4x4 block in f32 registers. `ELEM` is f32 or f16.
// X_LAYOUT and OUT_LAYOUT (fixed per compiled variant) give the layouts of x and out: 0 for
// channels first ([B, C, H, W]), 1 for channels last ([B * H * W, C], tokens: a Linear's rows,
// or a 1x1 convolution into or out of a transformer). Loads and stores run along whichever
// axis is contiguous.
ENABLE_F16

const X_TOKENS: u32 = X_LAYOUT;
const OUT_TOKENS: u32 = OUT_LAYOUT;
const QUICK_GELU: u32 = ACTIVATION;

// Every binding is read_write: cubecl's pool may place inputs and the output in one wgpu
// buffer, and a buffer cannot be read-only and writable in the same dispatch.
struct Params {
    batch: u32, channels: u32, height: u32, width: u32,
    out_channels: u32, out_height: u32, out_width: u32, kernel: u32,
    stride: u32, padding: u32,
    has_bias: u32, bias_stride: u32, has_residual: u32, divisor: f32,
    upscale: u32, _pad: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<ELEM>;
@group(0) @binding(1) var<storage, read_write> weight: array<ELEM>;
@group(0) @binding(2) var<storage, read_write> bias: array<ELEM>;
@group(0) @binding(3) var<storage, read_write> residual: array<ELEM>;
@group(0) @binding(4) var<storage, read_write> out: array<ELEM>;
@group(0) @binding(5) var<storage, read_write> p: Params;

const TILE_M: u32 = 64u;
const TILE_N: u32 = 64u;
const TILE_K: u32 = 16u;

var<workgroup> a_tile: array<f32, 1024>; // [TILE_K][TILE_M]
var<workgroup> shared_depth: u32;
var<workgroup> b_tile: array<f32, 1024>; // [TILE_K][TILE_N]

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(local_invocation_id) local: vec3<u32>, @builtin(workgroup_id) group: vec3<u32>) {
    let tid = local.y * 16u + local.x;
    // The thread's lanes in the tile: out channels along y and columns along x, swapped for
    // channels-last output so that neighbouring threads store neighbouring channels.
    let lane_m = select(local.y, local.x, OUT_TOKENS == 1u);
    let lane_n = select(local.x, local.y, OUT_TOKENS == 1u);
    let m0 = group.y * TILE_M;
    let n0 = (group.x + group.z * 32768u) * TILE_N; // WORKGROUPS_PER_ROW in mod.rs
    let taps = p.kernel * p.kernel;
    // Loaded through workgroup memory so the loop bound is uniform (its barriers need that).
    if (tid == 0u) { shared_depth = p.channels * taps; }
    let depth = workgroupUniformLoad(&shared_depth);
    let pixels = p.out_height * p.out_width;
    let columns = p.batch * pixels;
    // Channels first, a thread loads one column (tid % 64) at four depths per step: where its
    // window sits is worked out once here (integer division is slow on GPUs).
    let own_window = window_of(n0 + tid % TILE_N, columns, pixels);

    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) { acc[i][j] = 0.0; }
    }

    for (var k0 = 0u; k0 < depth; k0 += TILE_K) {
        // Weights: 64 rows x 16 k, read along k (contiguous in [oc, ic, ky, kx]).
        for (var l = 0u; l < 4u; l++) {
            let index = tid + l * 256u;
            let m = index / TILE_K;
            let kk = index % TILE_K;
            var value = 0.0;
            if (m0 + m < p.out_channels && k0 + kk < depth) {
                value = f32(weight[(m0 + m) * depth + k0 + kk]);
            }
            a_tile[kk * TILE_M + m] = value;
        }
        // Inputs: 16 k x 64 columns, read along columns (neighbouring x positions) channels
        // first, along k (neighbouring channels) channels last.
        for (var l = 0u; l < 4u; l++) {
            let index = tid + l * 256u;
            if (X_TOKENS == 1u) {
                let kk = index % TILE_K;
                let n = index / TILE_K;
                var value = 0.0;
                if (k0 + kk < depth && n0 + n < columns) { value = f32(x[(n0 + n) * p.channels + k0 + kk]); }
                b_tile[kk * TILE_N + n] = value;
            } else {
                let kk = index / TILE_N;
                b_tile[kk * TILE_N + tid % TILE_N] = input_at(k0 + kk, depth, taps, own_window);
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            var a: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) { a[i] = a_tile[kk * TILE_M + lane_m + 16u * i]; }
            for (var j = 0u; j < 4u; j++) { bv[j] = b_tile[kk * TILE_N + lane_n + 16u * j]; }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) { acc[i][j] = fma(a[i], bv[j], acc[i][j]); }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let m = m0 + lane_m + 16u * i;
        if (m >= p.out_channels) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let column = n0 + lane_n + 16u * j;
            if (column >= columns) { continue; }
            let b = column / pixels;
            var index = (b * p.out_channels + m) * pixels + column % pixels;
            if (OUT_TOKENS == 1u) { index = column * p.out_channels + m; }
            var y = acc[i][j];
            if (p.has_bias != 0u) { y += f32(bias[b * p.bias_stride + m]); }
            if (QUICK_GELU == 1u) { y = y / (1.0 + exp(-1.702 * y)); }
            if (p.has_residual != 0u) { y += f32(residual[index]); }
            out[index] = ELEM(y / p.divisor);
        }
    }
}

// Where a channels-first output column reads its input: the batch item's offset in x and the
// top-left corner of its kernel window (which may lie in the padding).
struct Window { base: u32, top: i32, left: i32, valid: bool }

fn window_of(column: u32, columns: u32, pixels: u32) -> Window {
    let pixel = column % pixels;
    let top = i32((pixel / p.out_width) * p.stride) - i32(p.padding);
    let left = i32((pixel % p.out_width) * p.stride) - i32(p.padding);
    let source_pixels = (p.height / p.upscale) * (p.width / p.upscale);
    return Window(column / pixels * p.channels * source_pixels, top, left, column < columns);
}

// im2col(x)[k, column] for the column at `w`: the input under kernel tap k, 0 in the padding
// and beyond the matrix.
fn input_at(k: u32, depth: u32, taps: u32, w: Window) -> f32 {
    if (k >= depth || !w.valid) { return 0.0; }
    let c = k / taps;
    let r = k - c * taps;
    let ky = r / p.kernel;
    let iy = w.top + i32(ky);
    let ix = w.left + i32(r - ky * p.kernel);
    if (iy < 0 || ix < 0 || u32(iy) >= p.height || u32(ix) >= p.width) { return 0.0; }
    let source_width = p.width / p.upscale;
    let source_y = u32(iy) / p.upscale;
    let source_x = u32(ix) / p.upscale;
    return f32(x[w.base + (c * (p.height / p.upscale) + source_y) * source_width + source_x]);
}
