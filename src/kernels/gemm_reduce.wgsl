// The second launch of a GEMM whose depth was split (gemm.wgsl with `p.splits` > 1): sums
// each output's partial sums and stores it through the epilogue. One thread per output, in
// the output's own order.
ENABLE_F16

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let columns = p.batch * p.out_height * p.out_width;
    let outputs = p.out_channels * columns;
    let index = (group.x + group.y * 32768u) * 256u + tid; // WORKGROUPS_PER_ROW in mod.rs
    if (index >= outputs) { return; }
    var sum = 0.0;
    for (var split = 0u; split < p.splits; split++) { sum += partials[split * outputs + index]; }
    // The out channel and column at `index` (output_index's inverse): neighbouring threads read
    // and store neighbouring values in either layout.
    var m = index % p.out_channels;
    var column = index / p.out_channels;
    if (OUT_TOKENS == 0u) {
        let pixels = p.out_height * p.out_width;
        m = index / pixels % p.out_channels;
        column = index / (pixels * p.out_channels) * pixels + index % pixels;
    }
    store_output(m, column, sum);
}
