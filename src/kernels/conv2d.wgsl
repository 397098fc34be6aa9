// 2-D convolution (NCHW, square kernel, groups 1, dilation 1) as a tiled implicit GEMM:
// out[oc, pixel] = bias[oc] + sum_k weight[oc, k] * im2col(x)[k, pixel], k = (ic, ky, kx), the
// im2col column gathered on the fly. A workgroup computes a 64 (out channels) x 64 (pixels)
// tile in steps of 16 along k, staging both operands in workgroup memory as f32; each of its
// 16x16 threads accumulates a 4x4 block in f32 registers. `ELEM` is f32 or f16.
ENABLE_F16

// Every binding is read_write: cubecl's pool may place inputs and the output in one wgpu
// buffer, and a buffer cannot be read-only and writable in the same dispatch.
struct Params {
    batch: u32, channels: u32, height: u32, width: u32,
    out_channels: u32, out_height: u32, out_width: u32, kernel: u32,
    stride: u32, padding: u32, has_bias: u32, _pad: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<ELEM>;
@group(0) @binding(1) var<storage, read_write> weight: array<ELEM>;
@group(0) @binding(2) var<storage, read_write> bias: array<ELEM>;
@group(0) @binding(3) var<storage, read_write> out: array<ELEM>;
@group(0) @binding(4) var<storage, read_write> p: Params;

const TILE_M: u32 = 64u;
const TILE_N: u32 = 64u;
const TILE_K: u32 = 16u;

var<workgroup> a_tile: array<f32, 1024>; // [TILE_K][TILE_M]
var<workgroup> shared_depth: u32;
var<workgroup> b_tile: array<f32, 1024>; // [TILE_K][TILE_N]

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(local_invocation_id) local: vec3<u32>, @builtin(workgroup_id) group: vec3<u32>) {
    let tid = local.y * 16u + local.x;
    let m0 = group.y * TILE_M;
    let n0 = (group.x + group.z * 32768u) * TILE_N; // PIXEL_TILES_PER_ROW in mod.rs
    let window = p.kernel * p.kernel;
    // Loaded through workgroup memory so the loop bound is uniform (its barriers need that).
    if (tid == 0u) { shared_depth = p.channels * window; }
    let depth = workgroupUniformLoad(&shared_depth);
    let pixels = p.out_height * p.out_width;
    let columns = p.batch * pixels;

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
        // Input patches: 16 k x 64 pixels, read along pixels (neighbouring x positions).
        for (var l = 0u; l < 4u; l++) {
            let index = tid + l * 256u;
            let kk = index / TILE_N;
            let n = index % TILE_N;
            var value = 0.0;
            let k = k0 + kk;
            let column = n0 + n;
            if (k < depth && column < columns) {
                let c = k / window;
                let r = k % window;
                let b = column / pixels;
                let pixel = column % pixels;
                let iy = i32((pixel / p.out_width) * p.stride + r / p.kernel) - i32(p.padding);
                let ix = i32((pixel % p.out_width) * p.stride + r % p.kernel) - i32(p.padding);
                if (iy >= 0 && ix >= 0 && u32(iy) < p.height && u32(ix) < p.width) {
                    value = f32(x[((b * p.channels + c) * p.height + u32(iy)) * p.width + u32(ix)]);
                }
            }
            b_tile[kk * TILE_N + n] = value;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            var a: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) { a[i] = a_tile[kk * TILE_M + local.y + 16u * i]; }
            for (var j = 0u; j < 4u; j++) { bv[j] = b_tile[kk * TILE_N + local.x + 16u * j]; }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) { acc[i][j] = fma(a[i], bv[j], acc[i][j]); }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let m = m0 + local.y + 16u * i;
        if (m >= p.out_channels) { continue; }
        var shift = 0.0;
        if (p.has_bias != 0u) { shift = f32(bias[m]); }
        for (var j = 0u; j < 4u; j++) {
            let column = n0 + local.x + 16u * j;
            if (column >= columns) { continue; }
            let b = column / pixels;
            let pixel = column % pixels;
            out[(b * p.out_channels + m) * pixels + pixel] = ELEM(acc[i][j] + shift);
        }
    }
}
