//! The browser's Fetch API behind `hub::Fetch`: CORS, redirects followed, no referrer, and no
//! HTTP cache (IndexedDB keeps the weights; the HTTP cache would hold a second copy). The body
//! is read as a stream: only `body_window` of it is kept, nothing after it is read, and an
//! answer that stalls is aborted.

use std::ops::Range;

use futures_util::future::{Either, select};
use js_sys::{Array, Promise, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{ReferrerPolicy, Request, RequestCache, RequestInit, RequestMode, RequestRedirect, Response as JsResponse};

use crate::LocalFuture;
use crate::hub::{Fetch, Headers, Response, body_window};
use crate::js::{call_global, call_method, js_message, navigator_member, sleep_ms};

/// An answer that sends nothing for this long is given up (and retried by `hub::download`): a
/// stalled server must not hang the tab, nor every tab waiting for the download's lock.
const STALL_MS: i32 = 30_000;

#[derive(Default)]
pub struct BrowserFetch;

/// A new `AbortController` (by reflection: the same in a window and a worker).
fn abort_controller() -> Result<JsValue, String> {
    let constructor = Reflect::get(&js_sys::global(), &"AbortController".into()).map_err(|e| js_message(&e))?;
    Reflect::construct(constructor.unchecked_ref::<js_sys::Function>(), &Array::new()).map_err(|e| js_message(&e))
}

/// `promise`'s value, or an error once it has taken `STALL_MS` (the request is then aborted).
async fn within_stall(promise: Promise, controller: &JsValue) -> Result<JsValue, String> {
    match select(Box::pin(JsFuture::from(promise)), Box::pin(sleep_ms(STALL_MS))).await {
        Either::Left((settled, _)) => settled.map_err(|e| js_message(&e)),
        Either::Right(_) => {
            call_method(controller, "abort", &[]);
            Err(format!("no data for {} s", STALL_MS / 1000))
        }
    }
}

/// The body's bytes in `window`, the bytes skipped before it, and whether the connection
/// failed or stalled first. The stream is cancelled once the window is full. Room for
/// `expected` bytes (at most the window) is made once, so each piece is copied once, straight
/// from the stream's buffer into it.
async fn read_window(answer: &JsResponse, window: Range<u64>, expected: u64, controller: &JsValue) -> (Vec<u8>, u64, bool) {
    let stream = Reflect::get(answer, &"body".into()).unwrap_or(JsValue::NULL);
    let Some(reader) = (!stream.is_null()).then(|| call_method(&stream, "getReader", &[])).flatten() else {
        return (Vec::new(), 0, false);
    };
    let capacity = expected.min(window.end - window.start) as usize;
    let (mut body, mut position, mut truncated) = (Vec::with_capacity(capacity), 0u64, false);
    while position < window.end {
        let Some(read) = call_method(&reader, "read", &[]).and_then(|p| p.dyn_into::<Promise>().ok()) else {
            truncated = true;
            break;
        };
        let Ok(result) = within_stall(read, controller).await else {
            truncated = true;
            break;
        };
        if Reflect::get(&result, &"done".into()).ok().and_then(|d| d.as_bool()) == Some(true) {
            break;
        }
        let Ok(chunk) = Reflect::get(&result, &"value".into()).and_then(|v| v.dyn_into::<Uint8Array>()) else {
            truncated = true;
            break;
        };
        let end = position + chunk.length() as u64;
        let (from, to) = (window.start.clamp(position, end), window.end.clamp(position, end));
        if from < to {
            let (piece, at, len) = (chunk.subarray((from - position) as u32, (to - position) as u32), body.len(), (to - from) as usize);
            body.reserve(len);
            piece.copy_to_uninit(&mut body.spare_capacity_mut()[..len]);
            // SAFETY: copy_to_uninit wrote all `len` bytes after `at` (zero-filling them first
            // took about 2 s of a real-size download's 47 s in a profile).
            unsafe { body.set_len(at + len) };
        }
        position = end;
    }
    if position >= window.end {
        call_method(&reader, "cancel", &[]);
    }
    (body, position.min(window.start), truncated)
}

async fn get(url: &str, range: Option<Range<u64>>) -> Result<Response, String> {
    let controller = abort_controller()?;
    let init = RequestInit::new();
    init.set_method("GET");
    init.set_mode(RequestMode::Cors);
    init.set_redirect(RequestRedirect::Follow);
    init.set_referrer_policy(ReferrerPolicy::NoReferrer);
    init.set_cache(RequestCache::NoStore);
    let signal = Reflect::get(&controller, &"signal".into()).map_err(|e| js_message(&e))?;
    Reflect::set(&init, &"signal".into(), &signal).map_err(|e| js_message(&e))?;
    let request = Request::new_with_str_and_init(url, &init).map_err(|e| js_message(&e))?;
    if let Some(r) = &range {
        request.headers().set("Range", &format!("bytes={}-{}", r.start, r.end - 1)).map_err(|e| js_message(&e))?;
    }
    let promise: Promise = call_global("fetch", &[request.into()]).map_err(|e| js_message(&e))?.unchecked_into();
    let answer: JsResponse = within_stall(promise, &controller).await?.unchecked_into();
    let header = |name: &str| answer.headers().get(name).ok().flatten();
    let headers = Headers::read(header);
    let status = answer.status();
    let stated = headers.content_length.as_deref().and_then(|l| l.trim().parse().ok()).unwrap_or(0);
    let (body, skipped, truncated) = read_window(&answer, body_window(status, range.as_ref()), stated, &controller).await;
    Ok(Response { status, headers, body, skipped, truncated })
}

impl Fetch for BrowserFetch {
    fn get<'a>(&'a self, url: &'a str, range: Option<Range<u64>>) -> LocalFuture<'a, Result<Response, String>> {
        Box::pin(get(url, range))
    }

    fn sleep(&self, duration: web_time::Duration) -> LocalFuture<'static, ()> {
        Box::pin(sleep_ms(duration.as_millis().min(i32::MAX as u128) as i32))
    }

    fn offline(&self) -> bool {
        navigator_member("onLine").and_then(|online| online.as_bool()) == Some(false)
    }
}
