//! JavaScript globals by reflection, the same in a window and in a worker (web-sys's typed
//! `window()` is absent in workers): `navigator` members, global functions, messages of
//! rejected promises, timers.

use js_sys::{Function, Promise, Reflect};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

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
