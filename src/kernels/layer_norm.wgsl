// LayerNorm over the last dimension, one 64-thread workgroup per row: mean, then variance of
// the centred values (as PyTorch), both in f32, then the affine transform written back in
// `ELEM` (f32 or f16).
ENABLE_F16

// Every binding is read_write: cubecl's pool may place inputs and the output in one wgpu
// buffer, and a buffer cannot be read-only and writable in the same dispatch.
struct Params { rows: u32, dim: u32, eps: f32, _pad: u32 }

@group(0) @binding(0) var<storage, read_write> x: array<ELEM>;
@group(0) @binding(1) var<storage, read_write> gamma: array<ELEM>;
@group(0) @binding(2) var<storage, read_write> beta: array<ELEM>;
@group(0) @binding(3) var<storage, read_write> out: array<ELEM>;
@group(0) @binding(4) var<storage, read_write> p: Params;

const THREADS: u32 = 64u; // workgroup_sum.wgsl follows
var<workgroup> shared_rows: u32;

@compute @workgroup_size(THREADS, 1, 1)
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let row = group.x + group.y * 32768u; // WORKGROUPS_PER_ROW in mod.rs
    // Loaded through workgroup memory so the early return is uniform (barriers follow).
    if (tid == 0u) { shared_rows = p.rows; }
    if (row >= workgroupUniformLoad(&shared_rows)) { return; }
    let base = row * p.dim;

    var sum = 0.0;
    for (var i = tid; i < p.dim; i += THREADS) { sum += f32(x[base + i]); }
    let mean = workgroup_sum(tid, sum) / f32(p.dim);
    var squares = 0.0;
    for (var i = tid; i < p.dim; i += THREADS) {
        let d = f32(x[base + i]) - mean;
        squares += d * d;
    }
    let rstd = inverseSqrt(workgroup_sum(tid, squares) / f32(p.dim) + p.eps);

    for (var i = tid; i < p.dim; i += THREADS) {
        out[base + i] = ELEM((f32(x[base + i]) - mean) * rstd * f32(gamma[i]) + f32(beta[i]));
    }
}
