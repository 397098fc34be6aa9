// Appended to the shaders that reduce across their workgroup (mod.rs, `WgslKernel::source`):
// each defines THREADS, its workgroup size, a power of two.

var<workgroup> partial: array<f32, THREADS>;

// The sum of `value` over the workgroup's threads, returned to every thread. Call it from
// uniform control flow (it has barriers).
fn workgroup_sum(tid: u32, value: f32) -> f32 {
    partial[tid] = value;
    workgroupBarrier();
    for (var step = THREADS / 2u; step > 0u; step >>= 1u) {
        if (tid < step) { partial[tid] += partial[tid + step]; }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}
