//! The browser's Fetch API behind `hub::Fetch`: CORS, redirects followed, no referrer, and no
//! HTTP cache (IndexedDB keeps the weights; the HTTP cache would hold a second copy).

use std::ops::Range;

use js_sys::{Promise, Uint8Array};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{ReferrerPolicy, Request, RequestCache, RequestInit, RequestMode, RequestRedirect, Response as JsResponse};

use crate::LocalFuture;
use crate::hub::{Fetch, Headers, Response};
use crate::js::{call_global, js_message, sleep_ms};

#[derive(Default)]
pub struct BrowserFetch;

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
    let headers = Headers::read(header);
    let status = answer.status();
    let body = match answer.array_buffer() {
        Ok(promise) => JsFuture::from(promise).await.ok(),
        Err(_) => None,
    };
    let truncated = body.is_none();
    let body = body.map(|b| Uint8Array::new(&b).to_vec()).unwrap_or_default();
    Ok(Response { status, headers, body, truncated })
}

impl Fetch for BrowserFetch {
    fn get<'a>(&'a self, url: &'a str, range: Option<Range<u64>>) -> LocalFuture<'a, Result<Response, String>> {
        Box::pin(get(url, range))
    }

    fn sleep(&self, duration: web_time::Duration) -> LocalFuture<'static, ()> {
        Box::pin(sleep_ms(duration.as_millis().min(i32::MAX as u128) as i32))
    }
}
