// diffusers' GEGLU tail: out[r, i] = hidden * gelu(gate) with hidden = x[r, i] and
// gate = x[r, inner + i] (the projection's two halves), the exact erf GELU, in f32 arithmetic
// on `ELEM` (f32 or f16) storage. One thread per output element.
ENABLE_F16

// Every binding is read_write: cubecl's pool may place inputs and the output in one wgpu
// buffer, and a buffer cannot be read-only and writable in the same dispatch.
struct Params { rows: u32, inner: u32 }

@group(0) @binding(0) var<storage, read_write> x: array<ELEM>;
@group(0) @binding(1) var<storage, read_write> out: array<ELEM>;
@group(0) @binding(2) var<storage, read_write> p: Params;

// WGSL has no erf: Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), as cubecl's.
fn erf(v: f32) -> f32 {
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = ((((1.0614054 * t - 1.453152) * t + 1.4214137) * t - 0.28449674) * t + 0.2548296) * t;
    return sign(v) * (1.0 - poly * exp(-a * a));
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let index = (group.x + group.y * 32768u) * 256u + tid; // WORKGROUPS_PER_ROW in mod.rs
    if (index >= p.rows * p.inner) { return; }
    let r = index / p.inner;
    let i = index % p.inner;
    let hidden = f32(x[2u * r * p.inner + i]);
    let gate = f32(x[(2u * r + 1u) * p.inner + i]);
    out[index] = ELEM(hidden * 0.5 * gate * (1.0 + erf(gate * 0.70710678118654752)));
}
