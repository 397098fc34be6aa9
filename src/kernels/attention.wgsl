// Multi-head scaled dot-product attention that never materialises the score matrix (the
// online softmax of FlashAttention). q [B, L, C], k and v [B, S, C], heads interleaved in the
// channels (head h is channels h*D .. h*D+D), output [B, L, C] in the same layout, so no
// transposes are needed around it. A workgroup takes 64 queries of one (batch, head) and one
// chunk of DC output dimensions; keys (all D dims) and the chunk of values stream through
// workgroup memory T at a time; each thread keeps its running max, sum and output chunk in
// f32, and its query too when it is small enough (else it rereads it: the VAE's single
// 512-wide head would not fit a thread's registers twice). `ELEM` is f32 or f16; HEAD_DIM,
// CHUNK_DIM, KEY_GROUP, TILE_KEYS and QUERY_IN_REGISTERS are fixed per compiled variant.
//
// Head dims are handled as vec4s (zero-padded to a multiple of 4): one workgroup-memory read
// feeds four FMAs. Keys are scored GROUP at a time into registers, and the running output is
// rescaled once per group; every loop over a thread's registers has a constant trip count so
// that it unrolls and nothing is indexed dynamically.
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
const D4: u32 = (D + 3u) / 4u;
const DC4: u32 = (DC + 3u) / 4u;
// Keys scored together, and keys per tile (a multiple of GROUP).
const GROUP: u32 = KEY_GROUPu;
const T: u32 = TILE_KEYSu;
const PRIVATE_QUERY: bool = QUERY_IN_REGISTERSu != 0u;
const QUERY_LEN: u32 = select(1u, D4, PRIVATE_QUERY);

var<workgroup> k_tile: array<vec4<f32>, T * D4>;
var<workgroup> v_tile: array<vec4<f32>, T * DC4>;
var<workgroup> shared_keys: u32;

// Element `index` of q (`tensor` 0), k (1) or v (2): one loader for the three bindings.
fn element(tensor: u32, index: u32) -> f32 {
    switch tensor {
        case 0u: { return f32(q[index]); }
        case 1u: { return f32(k[index]); }
        default: { return f32(v[index]); }
    }
}

// Four consecutive values of a row (at offset `row` in `tensor`) from `dim` on, 0 from `len`.
fn load4(tensor: u32, row: u32, dim: u32, len: u32) -> vec4<f32> {
    var r = vec4<f32>(0.0);
    for (var c = 0u; c < 4u; c++) { if (dim + c < len) { r[c] = element(tensor, row + dim + c); } }
    return r;
}

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

    var query: array<vec4<f32>, QUERY_LEN>;
    var acc: array<vec4<f32>, DC4>;
    if (PRIVATE_QUERY) {
        for (var d = 0u; d < D4; d++) { query[d] = load4(0u, query_base, 4u * d, D); }
    }
    var running_max = -3.0e38;
    var running_sum = 0.0;

    for (var s0 = 0u; s0 < keys; s0 += T) {
        let count = min(T, keys - s0);
        // Rows past `count` are zeros, so the unused keys of a last group read finite values.
        for (var e = tid; e < T * D4; e += 64u) {
            let j = e / D4;
            let key_row = (b * keys + s0 + min(j, count - 1u)) * p.channels + h * D;
            k_tile[e] = select(vec4<f32>(0.0), load4(1u, key_row, 4u * (e % D4), D), j < count);
        }
        for (var e = tid; e < T * DC4; e += 64u) {
            let j = e / DC4;
            let value_row = (b * keys + s0 + min(j, count - 1u)) * p.channels + h * D + chunk;
            v_tile[e] = select(vec4<f32>(0.0), load4(2u, value_row, 4u * (e % DC4), DC), j < count);
        }
        workgroupBarrier();
        for (var g = 0u; g < count; g += GROUP) {
            var scores: array<f32, GROUP>;
            var group_max = -3.0e38;
            for (var j = 0u; j < GROUP; j++) {
                var dot4 = vec4<f32>(0.0);
                for (var d = 0u; d < D4; d++) {
                    let key = k_tile[(g + j) * D4 + d];
                    if (PRIVATE_QUERY) {
                        dot4 = fma(query[d], key, dot4);
                    } else {
                        dot4 = fma(load4(0u, query_base, 4u * d, D), key, dot4);
                    }
                }
                // Keys past `count` weigh nothing (a group holds at least one real key, so
                // the running max is finite after it).
                let score = ((dot4.x + dot4.y) + (dot4.z + dot4.w)) * p.scale;
                scores[j] = select(-3.0e38, score, g + j < count);
                group_max = max(group_max, scores[j]);
            }
            let new_max = max(running_max, group_max);
            let correction = exp(running_max - new_max);
            running_sum *= correction;
            for (var d = 0u; d < DC4; d++) { acc[d] *= correction; }
            for (var j = 0u; j < GROUP; j++) {
                let weight = exp(scores[j] - new_max);
                running_sum += weight;
                for (var d = 0u; d < DC4; d++) { acc[d] = fma(vec4<f32>(weight), v_tile[(g + j) * DC4 + d], acc[d]); }
            }
            running_max = new_max;
        }
        workgroupBarrier();
    }

    if (in_range) {
        let inverse = 1.0 / running_sum;
        let base = query_base + chunk;
        for (var d = 0u; d < DC4; d++) {
            for (var c = 0u; c < 4u; c++) {
                if (4u * d + c < DC) { out[base + 4u * d + c] = ELEM(acc[d][c] * inverse); }
            }
        }
    }
}
