// GroupNorm, second pass (optionally followed by SiLU): each workgroup combines the `p.stride`
// chunk statistics of its (batch, group) from group_norm_stats.wgsl (Chan et al.'s parallel
// variance, in f32; the chunks of every band of rows where the activation is kept in bands),
// then normalises its own chunk of this band and writes the affine transform in `ELEM`.
ENABLE_F16

// Every binding is read_write: cubecl's pool may place inputs and the output in one wgpu
// buffer, and a buffer cannot be read-only and writable in the same dispatch.
struct Params {
    channels: u32, spatial: u32, groups: u32, silu: u32,
    eps: f32, chunks: u32, chunk: u32, first: u32, stride: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<ELEM>;
@group(0) @binding(1) var<storage, read_write> gamma: array<ELEM>;
@group(0) @binding(2) var<storage, read_write> beta: array<ELEM>;
@group(0) @binding(3) var<storage, read_write> stats: array<f32>; // [batch * groups, stride, 3]
@group(0) @binding(4) var<storage, read_write> out: array<ELEM>;
@group(0) @binding(5) var<storage, read_write> p: Params;

// (count, mean, sum of squared deviations) per thread.
var<workgroup> partial: array<vec3<f32>, 256>;

fn combine(a: vec3<f32>, b: vec3<f32>) -> vec3<f32> {
    let n = a.x + b.x;
    if (n == 0.0) { return a; }
    let delta = b.y - a.y;
    return vec3<f32>(n, a.y + delta * b.x / n, a.z + b.z + delta * delta * a.x * b.x / n);
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let per_group = p.channels / p.groups;
    let len = per_group * p.spatial;

    // At most 256 chunks in all bands (norm.rs sizes them so): one per thread.
    var own = vec3<f32>(0.0, 0.0, 0.0);
    if (tid < p.stride) {
        let slot = (group.y * p.stride + tid) * 3u;
        own = vec3<f32>(stats[slot], stats[slot + 1u], stats[slot + 2u]);
    }
    partial[tid] = own;
    workgroupBarrier();
    for (var step = 128u; step > 0u; step >>= 1u) {
        if (tid < step) { partial[tid] = combine(partial[tid], partial[tid + step]); }
        workgroupBarrier();
    }
    let total = partial[0];
    let mean = total.y;
    let rstd = inverseSqrt(total.z / total.x + p.eps);

    let g = group.y % p.groups;
    let first = group.x * p.chunk;
    let start = group.y * len + first;
    for (var i = tid; i < min(p.chunk, len - first); i += 256u) {
        let c = g * per_group + (first + i) / p.spatial;
        var y = (f32(x[start + i]) - mean) * rstd * f32(gamma[c]) + f32(beta[c]);
        if (p.silu != 0u) { y = y / (1.0 + exp(-y)); }
        out[start + i] = ELEM(y);
    }
}
