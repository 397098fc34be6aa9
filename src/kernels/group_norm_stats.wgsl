// GroupNorm, first pass: one workgroup per chunk of `p.chunk` values of one (batch, group)
// computes the chunk's count, mean and sum of squared deviations (two passes over the chunk, in
// f32) for group_norm.wgsl to combine. Chunks spread one group over many workgroups: a VAE group
// of 128 channels at 512x512 holds a million values. An activation kept as bands of rows runs
// this once per band, each band's chunks at `p.first` of the `p.stride` chunks of a group.
ENABLE_F16

// Every binding is read_write: cubecl's pool may place inputs and the output in one wgpu
// buffer, and a buffer cannot be read-only and writable in the same dispatch.
struct Params {
    channels: u32, spatial: u32, groups: u32, silu: u32,
    eps: f32, chunks: u32, chunk: u32, first: u32, stride: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<ELEM>;
@group(0) @binding(1) var<storage, read_write> stats: array<f32>; // [batch * groups, stride, 3]
@group(0) @binding(2) var<storage, read_write> p: Params;

const THREADS: u32 = 256u; // workgroup_sum.wgsl follows

@compute @workgroup_size(THREADS, 1, 1)
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) group: vec3<u32>) {
    // (batch, group) along y; its values are contiguous in [B, C, H, W].
    let len = p.channels / p.groups * p.spatial;
    let start = group.y * len + group.x * p.chunk;
    let count = min(p.chunk, len - group.x * p.chunk);

    var sum = 0.0;
    for (var i = tid; i < count; i += THREADS) { sum += f32(x[start + i]); }
    let mean = workgroup_sum(tid, sum) / f32(count);
    var squares = 0.0;
    for (var i = tid; i < count; i += THREADS) {
        let d = f32(x[start + i]) - mean;
        squares += d * d;
    }
    let m2 = workgroup_sum(tid, squares);
    if (tid == 0u) {
        let slot = (group.y * p.stride + p.first + group.x) * 3u;
        stats[slot] = f32(count);
        stats[slot + 1u] = mean;
        stats[slot + 2u] = m2;
    }
}
