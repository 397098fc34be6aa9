// GroupNorm over [B, C, H, W] (optionally followed by SiLU) in one pass per (batch, group)
// workgroup: mean, then variance of the centred values (as PyTorch), both in f32, then the
// affine transform and activation written back in `ELEM` (f32 or f16).
ENABLE_F16

// Every binding is read_write: cubecl's pool may place inputs and the output in one wgpu
// buffer, and a buffer cannot be read-only and writable in the same dispatch.
struct Params {
    channels: u32, spatial: u32, groups: u32, silu: u32,
    eps: f32, _pad0: u32, _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<ELEM>;
@group(0) @binding(1) var<storage, read_write> gamma: array<ELEM>;
@group(0) @binding(2) var<storage, read_write> beta: array<ELEM>;
@group(0) @binding(3) var<storage, read_write> out: array<ELEM>;
@group(0) @binding(4) var<storage, read_write> p: Params;

var<workgroup> partial: array<f32, 256>;

fn workgroup_sum(tid: u32, value: f32) -> f32 {
    partial[tid] = value;
    workgroupBarrier();
    for (var step = 128u; step > 0u; step >>= 1u) {
        if (tid < step) { partial[tid] += partial[tid + step]; }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let per_group = p.channels / p.groups;
    let len = per_group * p.spatial;
    let b = group.x / p.groups;
    let g = group.x % p.groups;
    let base = (b * p.channels + g * per_group) * p.spatial;

    var sum = 0.0;
    for (var i = tid; i < len; i += 256u) { sum += f32(x[base + i]); }
    let mean = workgroup_sum(tid, sum) / f32(len);
    var squares = 0.0;
    for (var i = tid; i < len; i += 256u) {
        let d = f32(x[base + i]) - mean;
        squares += d * d;
    }
    let rstd = inverseSqrt(workgroup_sum(tid, squares) / f32(len) + p.eps);

    for (var i = tid; i < len; i += 256u) {
        let c = g * per_group + i / p.spatial;
        var y = (f32(x[base + i]) - mean) * rstd * f32(gamma[c]) + f32(beta[c]);
        if (p.silu != 0u) { y = y / (1.0 + exp(-y)); }
        out[base + i] = ELEM(y);
    }
}
