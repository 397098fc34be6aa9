//! Multi-head attention with an online softmax, in one launch: no score matrix is stored.

use burn::backend::Cube;
use burn::tensor::Tensor;
use burn_cubecl::cubecl::ir::settings::Dim3;
use burn_cubecl::cubecl::prelude::CubeCount;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;

use super::{WgslKernel, cube, is_f16, launch, params};

pub(super) const ATTENTION: &str = include_str!("attention.wgsl");

/// Multi-head attention `softmax(q kᵀ / sqrt(d)) v` on `q` `[B, L, C]` and `k`, `v` `[B, S, C]`
/// with `heads` heads interleaved in the channels; `[B, L, C]` out. No score matrix is stored.
pub fn attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize) -> Tensor<3> {
    let [batch, queries, channels] = q.dims();
    let keys = k.dims()[1];
    assert!(channels % heads == 0 && k.dims() == v.dims() && k.dims()[2] == channels, "attention: q {:?}, k {:?}, v {:?}", q.dims(), k.dims(), v.dims());
    let head_dim = channels / heads;
    // Up to 256 dims a thread holds its query and whole output row; wider heads (the VAE's 512)
    // reread the query and split the output into chunks of at most 128 dims.
    let in_registers = head_dim <= 256;
    let chunk = if in_registers { head_dim } else { (1..=128).rev().find(|c| head_dim.is_multiple_of(*c)).unwrap() };
    // Key tiles and value-chunk tiles, as f32 vec4s, fit 12 KiB of workgroup memory (of
    // WebGPU's 16); a tile is a whole number of groups of keys scored together.
    let tile = (768 / (head_dim.div_ceil(4) + chunk.div_ceil(4))).clamp(1, 64);
    let group = tile.min(8);
    let tile = tile / group * group;
    let (q, k, v) = (cube(q), cube(k), cube(v));
    let client = q.client.clone();
    let f16 = is_f16(&[&q, &k, &v]);
    let out = empty_device_contiguous_dtype(client.clone(), q.device.clone(), q.meta.shape().clone(), q.dtype);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let p = params(&client, &[batch as u32, heads as u32, queries as u32, keys as u32, channels as u32, scale.to_bits(), 0, 0]);
    let mut kernel = WgslKernel::new("attention", ATTENTION, f16, Dim3::new_1d(64));
    kernel.constants = vec![
        ("HEAD_DIM", head_dim as u32),
        ("CHUNK_DIM", chunk as u32),
        ("KEY_GROUP", group as u32),
        ("TILE_KEYS", tile as u32),
        ("QUERY_IN_REGISTERS", in_registers as u32),
    ];
    let count = CubeCount::Static((queries as u32).div_ceil(64), (batch * heads) as u32, (head_dim / chunk) as u32);
    launch(&client, kernel, count, [q.handle, k.handle, v.handle, out.handle.clone(), p]);
    Tensor::from_primitive::<Cube>(out)
}
