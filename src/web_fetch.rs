//! The browser's Fetch API behind `hub::Fetch`: CORS, redirects followed, no referrer, and no
//! HTTP cache (IndexedDB keeps the weights; the HTTP cache would hold a second copy).

use std::ops::Range;

use js_sys::{Function, Promise, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{ReferrerPolicy, Request, RequestCache, RequestInit, RequestMode, RequestRedirect, Response as JsResponse};

use crate::hub::{Fetch, Headers, Response};
use crate::weights::LocalFuture;

#[derive(Default)]
pub struct BrowserFetch;

/// A readable message from a rejected promise (a DOMException, a TypeError, ...).
pub fn js_message(error: &JsValue) -> String {
    let field = |name: &str| Reflect::get(error, &name.into()).ok().and_then(|v| v.as_string());
    match (field("name"), field("message")) {
        (Some(name), Some(message)) => format!("{name}: {message}"),
        _ => error.as_string().unwrap_or_else(|| format!("{error:?}")),
    }
}

/// Calls a function of the global object (window or worker) by name.
pub(crate) fn call_global(name: &str, args: &[JsValue]) -> Result<JsValue, JsValue> {
    let global = js_sys::global();
    let function: Function = Reflect::get(&global, &name.into())?.dyn_into()?;
    function.apply(&global, &args.iter().collect())
}

async fn get(url: &str, range: Option<Range<u64>>) -> Result<Response, String> {
    let init = RequestInit::new();
    init.set_method("GET");
    init.set_mode(RequestMode::Cors);
    init.set_redirect(RequestRedirect::Follow);
    init.set_referrer_policy(ReferrerPolicy::NoReferrer);
    init.set_cache(RequestCache::NoStore);
    let request = Request::new_with_str_and_init(url, &init).map_err(|e| js_message(&e))?;
    if let Some(r) = &range {
        request.headers().set("Range", &format!("bytes={}-{}", r.start, r.end - 1)).map_err(|e| js_message(&e))?;
    }
    let promise: Promise = call_global("fetch", &[request.into()]).map_err(|e| js_message(&e))?.unchecked_into();
    let answer: JsResponse = JsFuture::from(promise).await.map_err(|e| js_message(&e))?.unchecked_into();
    let header = |name: &str| answer.headers().get(name).ok().flatten();
    let headers = Headers {
        etag: header("etag"),
        linked_etag: header("x-linked-etag"),
        content_range: header("content-range"),
        repo_commit: header("x-repo-commit"),
    };
    let status = answer.status();
    let body = match answer.array_buffer() {
        Ok(promise) => JsFuture::from(promise).await.ok(),
        Err(_) => None,
    };
    let truncated = body.is_none();
    let body = body.map(|b| Uint8Array::new(&b).to_vec()).unwrap_or_default();
    Ok(Response { status, headers, body, truncated })
}

/// Resolves after `ms` milliseconds (setTimeout of window or worker).
pub(crate) async fn sleep_ms(ms: i32) {
    let promise = Promise::new(&mut |resolve, _| {
        let _ = call_global("setTimeout", &[resolve.into(), ms.into()]);
    });
    let _ = JsFuture::from(promise).await;
}

impl Fetch for BrowserFetch {
    fn get<'a>(&'a self, url: &'a str, range: Option<Range<u64>>) -> LocalFuture<'a, Result<Response, String>> {
        Box::pin(get(url, range))
    }

    fn sleep(&self, duration: web_time::Duration) -> LocalFuture<'static, ()> {
        Box::pin(sleep_ms(duration.as_millis().min(i32::MAX as u128) as i32))
    }
}
