// Multi-head scaled dot-product attention that never materialises the score matrix (the
// online softmax of FlashAttention). q [B, L, C], k and v [B, S, C], heads interleaved in the
// channels (head h is channels h*D .. h*D+D), output [B, L, C] in the same layout, so no
// transposes are needed around it. A workgroup takes 64 queries of one (batch, head) and one
// chunk of DC output dimensions; keys (all D dims) and the chunk of values stream through
// workgroup memory T at a time; each thread keeps its running max, sum and output chunk in
// f32, and its query too when it is small enough (else it rereads it: the VAE's single
// 512-wide head would not fit a thread's registers twice). `ELEM` is f32 or f16; HEAD_DIM,
// CHUNK_DIM, TILE_KEYS and QUERY_IN_REGISTERS are fixed per compiled variant.
ENABLE_F16

// Every binding is read_write: cubecl's pool may place inputs and the output in one wgpu
// buffer, and a buffer cannot be read-only and writable in the same dispatch.
struct Params {
    batch: u32, heads: u32, queries: u32, keys: u32,
    channels: u32, scale: f32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> q: array<ELEM>;
@group(0) @binding(1) var<storage, read_write> k: array<ELEM>;
@group(0) @binding(2) var<storage, read_write> v: array<ELEM>;
@group(0) @binding(3) var<storage, read_write> out: array<ELEM>;
@group(0) @binding(4) var<storage, read_write> p: Params;

const D: u32 = HEAD_DIMu;
const DC: u32 = CHUNK_DIMu;
const T: u32 = TILE_KEYSu;
const PRIVATE_QUERY: bool = QUERY_IN_REGISTERSu != 0u;
const QUERY_LEN: u32 = select(1u, D, PRIVATE_QUERY);

var<workgroup> k_tile: array<f32, T * D>;
var<workgroup> v_tile: array<f32, T * DC>;
var<workgroup> shared_keys: u32;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) group: vec3<u32>) {
    // Loaded through workgroup memory so the loop bound is uniform (its barriers need that).
    if (tid == 0u) { shared_keys = p.keys; }
    let keys = workgroupUniformLoad(&shared_keys);
    let b = group.y / p.heads;
    let h = group.y % p.heads;
    let row = group.x * 64u + tid;
    let in_range = row < p.queries;
    let chunk = group.z * DC;
    let query_base = (b * p.queries + min(row, p.queries - 1u)) * p.channels + h * D;

    var query: array<f32, QUERY_LEN>;
    var acc: array<f32, DC>;
    if (PRIVATE_QUERY) {
        for (var d = 0u; d < D; d++) { query[d] = f32(q[query_base + d]) * p.scale; }
    }
    var running_max = -3.0e38;
    var running_sum = 0.0;

    for (var s0 = 0u; s0 < keys; s0 += T) {
        let count = min(T, keys - s0);
        for (var e = tid; e < count * D; e += 64u) {
            k_tile[e] = f32(k[(b * keys + s0 + e / D) * p.channels + h * D + e % D]);
        }
        for (var e = tid; e < count * DC; e += 64u) {
            v_tile[e] = f32(v[(b * keys + s0 + e / DC) * p.channels + h * D + chunk + e % DC]);
        }
        workgroupBarrier();
        var scores: array<f32, T>;
        var tile_max = -3.0e38;
        for (var j = 0u; j < count; j++) {
            var dot = 0.0;
            if (PRIVATE_QUERY) {
                for (var d = 0u; d < D; d++) { dot = fma(query[d], k_tile[j * D + d], dot); }
            } else {
                for (var d = 0u; d < D; d++) { dot = fma(f32(q[query_base + d]), k_tile[j * D + d], dot); }
                dot *= p.scale;
            }
            scores[j] = dot;
            tile_max = max(tile_max, dot);
        }
        let new_max = max(running_max, tile_max);
        let correction = exp(running_max - new_max);
        running_sum *= correction;
        for (var d = 0u; d < DC; d++) { acc[d] *= correction; }
        for (var j = 0u; j < count; j++) {
            let weight = exp(scores[j] - new_max);
            running_sum += weight;
            for (var d = 0u; d < DC; d++) { acc[d] = fma(weight, v_tile[j * DC + d], acc[d]); }
        }
        running_max = new_max;
        workgroupBarrier();
    }

    if (in_range) {
        let inverse = 1.0 / running_sum;
        for (var d = 0u; d < DC; d++) { out[query_base + chunk + d] = ELEM(acc[d] * inverse); }
    }
}
