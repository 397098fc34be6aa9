// 2-D convolution (square kernel, groups 1, dilation 1) as a tiled implicit GEMM, and with it
// Linear (a 1x1 convolution over one row of pixels):
// out[oc, pixel] = sum_k weight[oc, k] * im2col(x)[k, pixel], k = (ic, ky, kx), the im2col
// column gathered on the fly; then the epilogue (act(conv + bias) + residual) / divisor, with a
// bias per out channel or per (batch, out channel) and act CLIP's quick_gelu where ACTIVATION
// is 1 (else none). With UPSAMPLING 2 the convolution reads its input upsampled x2 by nearest
// neighbour (height and width are then the upsampled ones); the upsampled input is never
// stored. Each of a workgroup's 16x16 threads accumulates a BLOCK x BLOCK block of outputs in
// f32 registers, so a workgroup computes a 16 BLOCK (out channels) x 16 BLOCK (pixels) tile,
// in steps along k that stage both operands in workgroup memory as f32. `ELEM` is f32 or f16.
// Where few tiles would each run a long depth (deep layers on small latents), the depth is
// split into `p.splits` parts along z: each workgroup then stores its tile's partial sums, and
// gemm_reduce.wgsl adds them up and applies the epilogue.
// X_LAYOUT and OUT_LAYOUT (fixed per compiled variant) give the layouts of x and out: 0 for
// channels first ([B, C, H, W]), 1 for channels last ([B * H * W, C], tokens: a Linear's rows,
// or a 1x1 convolution into or out of a transformer). Loads and stores run along whichever
// axis is contiguous.
ENABLE_F16

const X_TOKENS: u32 = X_LAYOUT;
// The kernel's side and the upsampling factor are constants so that the divisions by them in
// every input load compile to multiplications and shifts.
const KERNEL: u32 = FILTER_SIZE;
const TAPS: u32 = KERNEL * KERNEL;
const UPSCALE: u32 = UPSAMPLING;
// 4 or 8 (chosen per shape in mod.rs). A thread reads 2 BLOCK values from workgroup memory
// per k for BLOCK^2 FMAs: 8x8 blocks halve those reads per FMA, 4x4 blocks make tiles a
// quarter the size, so that small outputs still spread over many workgroups.
const BLOCK: u32 = THREAD_BLOCK;
const TILE_M: u32 = 16u * BLOCK;
const TILE_N: u32 = 16u * BLOCK;
// A step of k: each thread stages 4 values of each operand.
const TILE_K: u32 = 64u / BLOCK;
// The staged tiles are [TILE_K][STRIDE] with their rows padded: the threads storing one
// warp's worth of weights (TILE_K neighbouring k for 32 / TILE_K out channels) then hit 32
// distinct memory banks instead of sharing a few.
const STRIDE: u32 = TILE_M + 32u / TILE_K;

// The parameters, bias, residual, output and partial sums: gemm_output.wgsl, appended.
@group(0) @binding(5) var<storage, read_write> x: array<ELEM>;
@group(0) @binding(6) var<storage, read_write> weight: array<ELEM>;

var<workgroup> a_tile: array<f32, TILE_K * STRIDE>; // weights, [TILE_K][TILE_M + pad]
var<workgroup> shared_bounds: vec2<u32>;
var<workgroup> b_tile: array<f32, TILE_K * STRIDE>; // im2col(x), [TILE_K][TILE_N + pad]

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(local_invocation_id) local: vec3<u32>, @builtin(workgroup_id) group: vec3<u32>) {
    let tid = local.y * 16u + local.x;
    // The thread's lanes in the tile: out channels along y and columns along x, swapped for
    // channels-last output so that neighbouring threads store neighbouring channels.
    let lane_m = select(local.y, local.x, OUT_TOKENS == 1u);
    let lane_n = select(local.x, local.y, OUT_TOKENS == 1u);
    let split = p.splits > 1u;
    let m0 = group.y * TILE_M;
    // z is the part of a split depth, else a further row of column tiles.
    let n0 = (group.x + select(group.z * 32768u, 0u, split)) * TILE_N; // WORKGROUPS_PER_ROW in mod.rs
    let depth = p.channels * TAPS;
    // This workgroup's part of the depth, loaded through workgroup memory so that the loop
    // bounds are uniform (its barriers need that).
    if (tid == 0u) {
        let begin = select(0u, group.z * p.split_depth, split);
        // Unsplit, `p.split_depth` is the whole depth (rounded up).
        shared_bounds = vec2<u32>(begin, min(depth, begin + p.split_depth));
    }
    let bounds = workgroupUniformLoad(&shared_bounds);
    let pixels = p.out_height * p.out_width;
    let columns = p.batch * pixels;
    // Channels first, a thread loads one column (tid % TILE_N) at four depths per step: where its
    // window sits is worked out once here (integer division is slow on GPUs).
    let own_window = window_of(n0 + tid % TILE_N, columns, pixels);

    var acc: array<array<f32, BLOCK>, BLOCK>;
    for (var i = 0u; i < BLOCK; i++) {
        for (var j = 0u; j < BLOCK; j++) { acc[i][j] = 0.0; }
    }

    for (var k0 = bounds.x; k0 < bounds.y; k0 += TILE_K) {
        // Weights: TILE_M rows x TILE_K k, read along k (contiguous in [oc, ic, ky, kx]).
        for (var l = 0u; l < 4u; l++) {
            let index = tid + l * 256u;
            let m = index / TILE_K;
            let kk = index % TILE_K;
            var value = 0.0;
            if (m0 + m < p.out_channels && k0 + kk < bounds.y) {
                value = f32(weight[(m0 + m) * depth + k0 + kk]);
            }
            a_tile[kk * STRIDE + m] = value;
        }
        // Inputs: TILE_K k x TILE_N columns, read along columns (neighbouring x positions) channels
        // first, along k (neighbouring channels) channels last.
        for (var l = 0u; l < 4u; l++) {
            let index = tid + l * 256u;
            if (X_TOKENS == 1u) {
                let kk = index % TILE_K;
                let n = index / TILE_K;
                var value = 0.0;
                if (k0 + kk < bounds.y && n0 + n < columns) { value = f32(x[(n0 + n) * p.channels + k0 + kk]); }
                b_tile[kk * STRIDE + n] = value;
            } else {
                let kk = index / TILE_N;
                b_tile[kk * STRIDE + tid % TILE_N] = input_at(k0 + kk, bounds.y, own_window);
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            var a: array<f32, BLOCK>;
            var bv: array<f32, BLOCK>;
            for (var i = 0u; i < BLOCK; i++) { a[i] = a_tile[kk * STRIDE + lane_m + 16u * i]; }
            for (var j = 0u; j < BLOCK; j++) { bv[j] = b_tile[kk * STRIDE + lane_n + 16u * j]; }
            for (var i = 0u; i < BLOCK; i++) {
                for (var j = 0u; j < BLOCK; j++) { acc[i][j] = fma(a[i], bv[j], acc[i][j]); }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < BLOCK; i++) {
        let m = m0 + lane_m + 16u * i;
        if (m >= p.out_channels) { continue; }
        for (var j = 0u; j < BLOCK; j++) {
            let column = n0 + lane_n + 16u * j;
            if (column >= columns) { continue; }
            if (split) {
                partials[group.z * p.out_channels * columns + output_index(m, column)] = acc[i][j];
            } else {
                store_output(m, column, acc[i][j]);
            }
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
    let source_pixels = (p.height / UPSCALE) * (p.width / UPSCALE);
    return Window(column / pixels * p.channels * source_pixels, top, left, column < columns);
}

// im2col(x)[k, column] for the column at `w`: the input under kernel tap k, 0 in the padding
// and from depth `end` on.
fn input_at(k: u32, end: u32, w: Window) -> f32 {
    if (k >= end || !w.valid) { return 0.0; }
    let c = k / TAPS;
    let r = k - c * TAPS;
    let ky = r / KERNEL;
    let iy = w.top + i32(ky);
    let ix = w.left + i32(r - ky * KERNEL);
    if (iy < 0 || ix < 0 || u32(iy) >= p.height || u32(ix) >= p.width) { return 0.0; }
    let source_width = p.width / UPSCALE;
    let source_y = u32(iy) / UPSCALE;
    let source_x = u32(ix) / UPSCALE;
    return f32(x[w.base + (c * (p.height / UPSCALE) + source_y) * source_width + source_x]);
}
