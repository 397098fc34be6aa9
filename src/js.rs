//! JavaScript globals by reflection, the same in a window and in a worker (web-sys's typed
//! `window()` is absent in workers): `navigator` members, global functions, messages of
//! rejected promises, timers. And the module's static constructors, run once.

use js_sys::{Function, Promise, Reflect};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

/// Runs the module's static constructors (the `inventory` registrations of pliron, the IR crate
/// under burn's cubecl) the first time it is called. Where no code calls `__wasm_call_ctors`,
/// the linker wraps every export so that each call from JavaScript (every awaited promise,
/// every closure, every value crossing over) runs all of them again; in a profile of a
/// real-size first visit those runs took over half its time. This call in the module makes the linker wrap none,
/// so everything that needs the registrations must come through here first: the module's start
/// and opening the GPU (the start function does not run in wasm-bindgen's tests).
pub fn run_constructors_once() {
    unsafe extern "C" {
        fn __wasm_call_ctors();
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: the linker's constructor list, run exactly once, before anything that reads it.
    ONCE.call_once(|| unsafe { __wasm_call_ctors() });
}

/// `navigator.{name}`, where the global has it and it is neither undefined nor null.
pub fn navigator_member(name: &str) -> Option<JsValue> {
    let navigator = Reflect::get(&js_sys::global(), &"navigator".into()).ok()?;
    Reflect::get(&navigator, &name.into()).ok().filter(|v| !v.is_undefined() && !v.is_null())
}

/// `target.{method}(args)`, without awaiting what it returns.
pub fn call_method(target: &JsValue, method: &str, args: &[JsValue]) -> Option<JsValue> {
    let function: Function = Reflect::get(target, &method.into()).ok()?.dyn_into().ok()?;
    function.apply(target, &args.iter().collect()).ok()
}

/// `navigator.{object}.{method}(args)`, without awaiting what it returns.
pub fn call_navigator(object: &str, method: &str, args: &[JsValue]) -> Option<JsValue> {
    call_method(&navigator_member(object)?, method, args)
}

/// `navigator.{object}.{method}(args)`, awaiting the promise it returns.
pub async fn await_navigator(object: &str, method: &str, args: &[JsValue]) -> Option<JsValue> {
    let promise: Promise = call_navigator(object, method, args)?.dyn_into().ok()?;
    JsFuture::from(promise).await.ok()
}

/// Calls a function of the global object (window or worker) by name.
pub fn call_global(name: &str, args: &[JsValue]) -> Result<JsValue, JsValue> {
    let global = js_sys::global();
    let function: Function = Reflect::get(&global, &name.into())?.dyn_into()?;
    function.apply(&global, &args.iter().collect())
}

/// A readable message from a rejected promise (a DOMException, a TypeError, ...).
pub fn js_message(error: &JsValue) -> String {
    let field = |name: &str| Reflect::get(error, &name.into()).ok().and_then(|v| v.as_string());
    match (field("name"), field("message")) {
        (Some(name), Some(message)) => format!("{name}: {message}"),
        _ => error.as_string().unwrap_or_else(|| format!("{error:?}")),
    }
}

/// Resolves after `ms` milliseconds (setTimeout of window or worker).
pub async fn sleep_ms(ms: i32) {
    let promise = Promise::new(&mut |resolve, _| {
        let _ = call_global("setTimeout", &[resolve.into(), ms.into()]);
    });
    let _ = JsFuture::from(promise).await;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    static RUNS: AtomicU32 = AtomicU32::new(0);

    extern "C" fn counted() {
        RUNS.fetch_add(1, Ordering::Relaxed);
    }

    /// A static constructor of this test binary, as `inventory` makes them: it counts its runs.
    #[used]
    #[unsafe(link_section = ".init_array")]
    static CONSTRUCTOR: extern "C" fn() = counted;

    /// Each wake-up after an await is a call from JavaScript into the module: none of them may
    /// run the constructors again.
    #[wasm_bindgen_test::wasm_bindgen_test]
    async fn constructors_run_once_however_often_javascript_calls_in() {
        run_constructors_once();
        for _ in 0..3 {
            sleep_ms(0).await;
        }
        run_constructors_once();
        assert_eq!(RUNS.load(Ordering::Relaxed), 1);
    }
}
