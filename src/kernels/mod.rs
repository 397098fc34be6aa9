//! Our own GPU kernels, in WGSL: they run unchanged natively (wgpu) and in the browser
//! (Dawn), in f32 or f16 storage with f32 arithmetic. Each is launched on burn's tensors
//! through cubecl's precompiled-kernel path, on the same queue as burn's own operations, so no
//! synchronisation is needed around them.
//!
//! - `conv2d`: tiled implicit-GEMM convolution, instead of burn's direct kernel that has no
//!   shared-memory tiling and accumulates in the storage dtype. Tile size and a split of the
//!   depth across workgroups are chosen by shape (`GemmPlan`). Its epilogue adds the bias (per
//!   batch, to fold in the timestep embedding) and a residual, and divides: a resnet's tail.
//! - `linear`: the same GEMM on channels-last rows, bias and residual fused, instead of burn's
//!   matmul followed by one launch per add. With one side channels first and the other last,
//!   it is also the transformers' 1x1 `proj_in`/`proj_out`, so no transposes surround them.
//! - `group_norm`: GroupNorm (+ SiLU) in two launches instead of about ten, each group spread
//!   over many workgroups.
//! - `layer_norm`: LayerNorm in one launch instead of about ten.
//! - `geglu`: the feed-forward's `hidden * gelu(gate)` in one launch instead of six.
//! - `attention`: multi-head attention with an online softmax (no score matrix), reading the
//!   heads straight out of the projections' channels.

mod attention;
mod gemm;
mod norm;
#[cfg(test)]
mod tests;

pub use attention::attention;
pub use gemm::{Epilogue, GemmForcing, conv1x1_from_tokens, conv1x1_to_tokens, conv2d, conv2d_upsampled, force_gemm, linear, linear_quick_gelu};
pub use norm::{geglu, geglu_stock, group_norm, group_norm_bands, group_norm_stock, layer_norm, layer_norm_stock};

use burn::backend::Cube;
use burn::tensor::{DType, Tensor};
use burn_cubecl::cubecl::ir::{UIntKind, metadata::Info, settings::Dim3};
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::cubecl::server::KernelArguments;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;

/// Pieces of WGSL shared by several shaders, appended to those that call the function they
/// define: `workgroup_sum`, and a GEMM's bindings and epilogue (`store_output`).
const SNIPPETS: [(&str, &str); 2] = [
    ("workgroup_sum(", include_str!("workgroup_sum.wgsl")),
    ("store_output(", include_str!("gemm_output.wgsl")),
];

/// A WGSL compute shader with `ELEM` standing for the storage type (and `ENABLE_F16` for the
/// `enable f16;` directive it then needs), and named constants fixed per compiled variant.
struct WgslKernel {
    name: &'static str,
    template: &'static str,
    f16: bool,
    workgroup: Dim3,
    constants: Vec<(&'static str, u32)>,
}

impl WgslKernel {
    fn new(name: &'static str, template: &'static str, f16: bool, workgroup: Dim3) -> Self {
        Self { name, template, f16, workgroup, constants: Vec::new() }
    }

    fn source(&self) -> String {
        let (enable, elem) = if self.f16 { ("enable f16;", "f16") } else { ("", "f32") };
        let mut source = self.template.to_string();
        for (call, snippet) in SNIPPETS {
            if self.template.contains(call) {
                source += snippet;
            }
        }
        source = source.replace("ENABLE_F16", enable).replace("ELEM", elem);
        for (name, value) in &self.constants {
            source = source.replace(name, &value.to_string());
        }
        source
    }
}

/// Unchecked: cubecl then compiles the WGSL without naga's loop bounding, a counter and exit
/// test added to every loop against infinite ones. Each of our loops ends by its own bound, and
/// the counters can keep a driver from unrolling the loops over a thread's register block.
/// (Memory accesses are unchecked either way: the shaders guard their own.)
const EXECUTION_MODE: ExecutionMode = ExecutionMode::Unchecked;

impl KernelMetadata for WgslKernel {
    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.name, self.f16, self.constants.clone())).mode(EXECUTION_MODE)
    }

    fn address_type(&self) -> ElemType {
        ElemType::UInt(UIntKind::U32)
    }
}

impl CubeKernel for WgslKernel {
    fn define(&self) -> KernelDefinition {
        let settings = KernelSettings::new(self.workgroup, EXECUTION_MODE, AddressType::U32);
        KernelDefinition { body: Scope::root(settings.clone()), settings, info: Info::default() }
    }

    fn source(&self) -> Option<PrecompiledSource> {
        Some(PrecompiledSource { source: WgslKernel::source(self), entrypoint_name: "main".into(), lang: "wgsl" })
    }
}

/// The cubecl tensor behind a float tensor, made contiguous (the kernels index densely).
fn cube<const D: usize>(tensor: Tensor<D>) -> CubeTensor {
    into_contiguous(tensor.try_into_primitive::<Cube>().expect("imvar's kernels run on its wgpu device"))
}

/// Whether the operands are f16 (else f32); they must all have one dtype, as the shaders read
/// every buffer with one element type.
fn is_f16(operands: &[&CubeTensor]) -> bool {
    let dtype = operands[0].dtype;
    assert!(operands.iter().all(|t| t.dtype == dtype), "imvar's kernels take operands of one dtype");
    match dtype {
        DType::F16 => true,
        DType::F32 => false,
        other => panic!("imvar's kernels take f16 or f32 tensors, not {other:?}"),
    }
}

type Handle = burn_cubecl::cubecl::server::Handle;

/// Launches `kernel` over `count` workgroups with `buffers` bound in order (group 0).
fn launch(client: &Client, kernel: WgslKernel, count: CubeCount, buffers: impl IntoIterator<Item = Handle>) {
    #[cfg(not(target_arch = "wasm32"))]
    dump_source(&kernel);
    let arguments = buffers.into_iter().fold(KernelArguments::new(), |a, handle| a.with_buffer(handle.binding()));
    client.launch(Box::new(kernel), count, arguments);
}

/// Natively, with `IMVAR_DUMP_WGSL=DIR` set, the source of every variant launched is written to
/// DIR, one file per variant: `scripts/check_tint` compiles them with Tint, the browser's WGSL
/// compiler, which the tests reach for f32 only (SwiftShader has no shader-f16).
#[cfg(not(target_arch = "wasm32"))]
fn dump_source(kernel: &WgslKernel) {
    static DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let Some(dir) = DIR.get_or_init(|| std::env::var_os("IMVAR_DUMP_WGSL").map(Into::into)) else { return };
    let source = kernel.source();
    let dtype = if kernel.f16 { "f16" } else { "f32" };
    let file = dir.join(format!("{}-{dtype}-{:08x}.wgsl", kernel.name, crc32fast::hash(source.as_bytes())));
    if !file.exists() {
        std::fs::write(&file, source).unwrap_or_else(|e| panic!("IMVAR_DUMP_WGSL: {}: {e}", file.display()));
    }
}

/// Workgroups per row of a large one-dimensional dispatch: WebGPU allows at most 65,535 per
/// dimension, so longer ones continue on further rows (the shaders compute
/// `group.x + group.y * 32768u`).
const WORKGROUPS_PER_ROW: u32 = 32768;

/// A dispatch of `workgroups` workgroups in rows of `WORKGROUPS_PER_ROW`.
fn grid(workgroups: u32) -> CubeCount {
    CubeCount::Static(workgroups.min(WORKGROUPS_PER_ROW), workgroups.div_ceil(WORKGROUPS_PER_ROW), 1)
}

/// A placeholder for an absent optional operand: a binding cannot be left empty, and binding
/// another operand's buffer again would alias a writable binding, which Dawn refuses.
fn absent(client: &Client) -> Handle {
    client.create_from_slice(&[0u8; 4])
}

/// A storage buffer holding 32-bit parameters (a struct of u32/f32 fields in the shader).
fn params(client: &Client, words: &[u32]) -> Handle {
    client.create_from_slice(&words.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>())
}
