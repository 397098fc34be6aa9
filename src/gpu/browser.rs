//! What the GPU layer needs from the browser beyond wgpu: whether `navigator.gpu` exists, and
//! the adapter's name where wgpu leaves it empty.

use js_sys::Reflect;
use wasm_bindgen::JsValue;

use super::Capabilities;
use crate::js;

/// Whether this global (window or worker) exposes `navigator.gpu`.
pub fn has_webgpu() -> bool {
    js::navigator_member("gpu").is_some()
}

/// wgpu leaves a WebGPU adapter's name and vendor empty where the browser gives no description
/// (Chrome gives vendor and architecture strings instead): fill them from `GPUAdapter.info`.
pub async fn name_adapter(capabilities: &mut Capabilities) {
    let Some(info) = adapter_info().await else { return };
    let field = |name: &str| Reflect::get(&info, &name.into()).ok().and_then(|v| v.as_string()).unwrap_or_default();
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

async fn adapter_info() -> Option<JsValue> {
    let options = js_sys::Object::new();
    Reflect::set(&options, &"powerPreference".into(), &"high-performance".into()).ok()?;
    let adapter = js::await_navigator("gpu", "requestAdapter", &[options.into()]).await?;
    Reflect::get(&adapter, &"info".into()).ok().filter(|i| !i.is_undefined())
}
