//! `Fetch` natively: blocking HTTP (the CLI and native tests run the async core under
//! `pollster`).

use std::ops::Range;

use web_time::Duration;

use super::{Fetch, Headers, Response, body_window};
use crate::LocalFuture;

/// Blocking HTTP natively (the CLI and native tests run the async core under `pollster`).
pub struct NativeFetch {
    agent: ureq::Agent,
}

impl Default for NativeFetch {
    fn default() -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(10)
            .timeout_connect(Some(std::time::Duration::from_secs(30)))
            // A stalled transfer fails (and is retried) instead of hanging: 64 MiB pieces at
            // under ~110 kB/s would need longer.
            .timeout_global(Some(std::time::Duration::from_secs(600)))
            .build();
        Self { agent: config.into() }
    }
}

impl Fetch for NativeFetch {
    fn get<'a>(&'a self, url: &'a str, range: Option<Range<u64>>) -> LocalFuture<'a, Result<Response, String>> {
        use std::io::Read;
        let mut request = self.agent.get(url);
        if let Some(r) = &range {
            request = request.header("Range", format!("bytes={}-{}", r.start, r.end - 1));
        }
        let result = request.call().map_err(|e| e.to_string()).map(|mut answer| {
            let header = |name: &str| answer.headers().get(name).and_then(|v| v.to_str().ok()).map(String::from);
            let headers = Headers::read(header);
            let status = answer.status().as_u16();
            let window = body_window(status, range.as_ref());
            let mut reader = answer.body_mut().with_config().limit(u64::MAX).reader();
            // Skipped as it streams (a server that ignored the range); nothing read past the window.
            let skipped = std::io::copy(&mut (&mut reader).take(window.start), &mut std::io::sink());
            let mut body = Vec::new();
            let kept = skipped.as_ref().map(|_| (&mut reader).take(window.end - window.start).read_to_end(&mut body));
            let truncated = !matches!(kept, Ok(Ok(_)));
            Response { status, headers, body, skipped: skipped.unwrap_or(0), truncated }
        });
        Box::pin(std::future::ready(result))
    }

    fn sleep(&self, duration: Duration) -> LocalFuture<'static, ()> {
        std::thread::sleep(duration);
        Box::pin(std::future::ready(()))
    }
}
