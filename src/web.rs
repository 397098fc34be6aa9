//! The browser edge: what JavaScript calls, and what the core needs from the page.

use wasm_bindgen::prelude::*;

use crate::gpu::{self, DTypeChoice, GpuOptions};

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// Whether this global (window or worker) exposes `navigator.gpu`.
pub(crate) fn has_webgpu() -> bool {
    let navigator = js_sys::Reflect::get(&js_sys::global(), &"navigator".into());
    navigator
        .and_then(|n| js_sys::Reflect::get(&n, &"gpu".into()))
        .is_ok_and(|gpu| !gpu.is_undefined() && !gpu.is_null())
}

/// wgpu leaves a WebGPU adapter's name and vendor empty where the browser gives no description
/// (Chrome gives vendor and architecture strings instead): fill them from `GPUAdapter.info`.
pub(crate) async fn name_adapter(capabilities: &mut crate::gpu::Capabilities) {
    let Some(info) = browser_adapter_info().await else { return };
    let field = |name: &str| {
        js_sys::Reflect::get(&info, &name.into())
            .ok()
            .and_then(|v| v.as_string())
            .unwrap_or_default()
    };
    if capabilities.adapter.is_empty() {
        let name = [field("vendor"), field("architecture"), field("device")]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        capabilities.adapter = if name.is_empty() { "unnamed WebGPU adapter".into() } else { name };
    }
    if capabilities.vendor == "unknown" && !field("vendor").is_empty() {
        capabilities.vendor = field("vendor");
    }
}

async fn browser_adapter_info() -> Option<JsValue> {
    let global = js_sys::global();
    let navigator = js_sys::Reflect::get(&global, &"navigator".into()).ok()?;
    let gpu = js_sys::Reflect::get(&navigator, &"gpu".into()).ok()?;
    let request: js_sys::Function = js_sys::Reflect::get(&gpu, &"requestAdapter".into()).ok()?.dyn_into().ok()?;
    let options = js_sys::Object::new();
    js_sys::Reflect::set(&options, &"powerPreference".into(), &"high-performance".into()).ok()?;
    let promise: js_sys::Promise = request.call1(&gpu, &options).ok()?.dyn_into().ok()?;
    let adapter = wasm_bindgen_futures::JsFuture::from(promise).await.ok()?;
    js_sys::Reflect::get(&adapter, &"info".into()).ok().filter(|i| !i.is_undefined())
}

/// Opens the GPU and describes it: `{ adapter, vendor, device_type, backend, driver, shader_f16,
/// timestamp_query, subgroups, max_buffer_size, max_storage_buffer_binding_size, ...,
/// compute_dtype }`. `dtype` is "auto" (default), "f16" or "f32". Rejects with a readable
/// message when WebGPU or a needed feature is missing.
#[wasm_bindgen]
pub async fn capabilities(dtype: Option<String>) -> Result<JsValue, JsError> {
    let dtype = match dtype.as_deref() {
        None => DTypeChoice::Auto,
        Some(s) => s.parse()?,
    };
    let gpu = gpu::init(&GpuOptions { dtype, ..Default::default() }).await?;
    Ok(serde_wasm_bindgen::to_value(&gpu.capabilities)?)
}
