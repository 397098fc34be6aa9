//! A Hugging Face Hub client core, platform-free: model ids, resolve URLs, and retrying
//! single-range downloads over a small `Fetch` trait (the browser's Fetch API in `web_fetch`, a
//! blocking HTTP client natively).

use std::ops::Range;

use web_time::Duration;

use crate::weights::LocalFuture;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
pub const DEFAULT_REPO: &str = "lambdalabs/sd-image-variations-diffusers";
/// The model's `main` holds pickle files only; this pull-request ref has its safetensors.
pub const DEFAULT_REVISION: &str = "refs/pr/20";

/// A model repository at a revision on a Hub endpoint.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HubModel {
    pub endpoint: String,
    pub repo: String,
    pub revision: String,
}

impl Default for HubModel {
    fn default() -> Self {
        Self { endpoint: DEFAULT_ENDPOINT.into(), repo: DEFAULT_REPO.into(), revision: DEFAULT_REVISION.into() }
    }
}

impl HubModel {
    /// `owner/name` or `owner/name@revision` (revision `main` when absent) on `endpoint`.
    pub fn parse(spec: &str, endpoint: &str) -> Result<Self, HubError> {
        let (repo, revision) = spec.split_once('@').unwrap_or((spec, "main"));
        let valid = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        match repo.split_once('/') {
            Some((owner, name)) if valid(owner) && valid(name) && !revision.is_empty() => Ok(Self {
                endpoint: endpoint.trim_end_matches('/').into(),
                repo: repo.into(),
                revision: revision.into(),
            }),
            _ => Err(HubError::Invalid(format!("`{spec}` is not a model id (owner/name or owner/name@revision)"))),
        }
    }

    /// `{endpoint}/{repo}/resolve/{revision}/{path}`, the revision one URL-encoded segment.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}/resolve/{}/{}", self.endpoint, self.repo, encode_segment(&self.revision), path)
    }

    /// One string naming this model in caches and logs.
    pub fn key(&self) -> String {
        format!("{} {}@{}", self.endpoint, self.repo, self.revision)
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The headers imvar reads from a Hub answer (after redirects).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Headers {
    pub etag: Option<String>,
    /// The Hub's sha256 of a large file, where the answer carries it (redirects are followed,
    /// so it is only seen from servers that answer directly).
    pub linked_etag: Option<String>,
    pub content_range: Option<String>,
    pub repo_commit: Option<String>,
}

/// An HTTP answer whose body was read completely, or as far as it came.
#[derive(Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
    /// The connection failed while the body was read: `body` holds what arrived.
    pub truncated: bool,
}

/// What the platform provides: one GET with an optional single range, following redirects, and
/// a timer for backoff.
pub trait Fetch {
    /// `Err` only when no answer came at all (network down, connection refused, CORS).
    fn get<'a>(&'a self, url: &'a str, range: Option<Range<u64>>) -> LocalFuture<'a, Result<Response, String>>;
    fn sleep(&self, duration: Duration) -> LocalFuture<'static, ()>;
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum HubError {
    #[error("{url}: not found on the Hub (404)")]
    NotFound { url: String },
    #[error("{url}: the Hub answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: network error after {attempts} attempts: {message}")]
    Network { url: String, attempts: u32, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl HubError {
    /// The network was unreachable (as opposed to the Hub answering no).
    pub fn is_offline(&self) -> bool {
        matches!(self, HubError::Network { .. })
    }
}

/// Retries with exponential backoff: 0.25 s, 0.5 s, 1 s, ... up to 8 s per wait.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub attempts: u32,
    pub first_wait: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self { attempts: 6, first_wait: Duration::from_millis(250) }
    }
}

impl Retry {
    fn wait(&self, attempt: u32) -> Duration {
        (self.first_wait * 2u32.saturating_pow(attempt)).min(Duration::from_secs(8))
    }
}

/// A downloaded byte range (or whole file) and what the answer said about the file.
#[derive(Debug)]
pub struct Download {
    pub bytes: Vec<u8>,
    /// The file's size, where the answer tells it.
    pub file_size: Option<u64>,
    pub etag: Option<String>,
    pub commit: Option<String>,
}

/// `bytes=a-b` answers as `bytes a-b/total`: (a, b + 1, total).
fn parse_content_range(value: &str) -> Option<(u64, u64, u64)> {
    let (span, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    Some((start.parse().ok()?, end.parse::<u64>().ok()? + 1, total.parse().ok()?))
}

/// An ETag without quotes or the weak prefix: for weight files, the sha256 the Hub reports.
fn clean_etag(tag: &str) -> String {
    tag.trim_start_matches("W/").trim_matches('"').to_string()
}

/// Why one attempt failed: retry it, or give up with this error.
enum Attempt {
    Retry(String),
    Fail(HubError),
}

/// Checks one answer to a GET for `range` (`None`: the whole file) and cuts out the range. A
/// server that ignores Range answers 200 with the whole body: the range is sliced from it.
fn accept(url: &str, range: &Option<Range<u64>>, response: Response) -> Result<Download, Attempt> {
    let status = response.status;
    let etag = response.headers.linked_etag.as_deref().or(response.headers.etag.as_deref()).map(clean_etag);
    let commit = response.headers.repo_commit.clone();
    match status {
        404 => return Err(Attempt::Fail(HubError::NotFound { url: url.into() })),
        408 | 429 | 500..=599 => return Err(Attempt::Retry(format!("HTTP {status}"))),
        200 | 206 => {}
        _ => return Err(Attempt::Fail(HubError::Status { url: url.into(), status })),
    }
    if response.truncated {
        return Err(Attempt::Retry(format!("connection lost after {} bytes", response.body.len())));
    }
    let mut body = response.body;
    let (file_size, bytes) = match (status, range) {
        (206, Some(wanted)) => {
            let (start, end, total) = response
                .headers
                .content_range
                .as_deref()
                .and_then(parse_content_range)
                .ok_or_else(|| Attempt::Fail(HubError::Invalid(format!("{url}: 206 without a usable Content-Range"))))?;
            if start != wanted.start || end != wanted.end.min(total) || body.len() as u64 != end - start {
                return Err(Attempt::Retry(format!("{url}: asked for {wanted:?}, got {start}..{end} ({} bytes)", body.len())));
            }
            (Some(total), body)
        }
        (200, Some(wanted)) => {
            let total = body.len() as u64;
            if wanted.end > total {
                return Err(Attempt::Fail(HubError::Invalid(format!("{url}: the file has {total} bytes, not {}", wanted.end))));
            }
            body.truncate(wanted.end as usize);
            body.drain(..wanted.start as usize);
            (Some(total), body)
        }
        (200, None) => (Some(body.len() as u64), body),
        _ => return Err(Attempt::Fail(HubError::Invalid(format!("{url}: 206 for a request without Range")))),
    };
    Ok(Download { bytes, file_size, etag, commit })
}

/// GETs `url` (the byte `range` of it, or all), retrying network errors, truncated bodies and
/// 5xx answers with backoff.
pub async fn download(fetch: &dyn Fetch, url: &str, range: Option<Range<u64>>, retry: Retry) -> Result<Download, HubError> {
    if range.as_ref().is_some_and(|r| r.is_empty()) {
        return Ok(Download { bytes: Vec::new(), file_size: None, etag: None, commit: None });
    }
    let mut attempt = 0;
    loop {
        let outcome = match fetch.get(url, range.clone()).await {
            Ok(response) => accept(url, &range, response),
            Err(message) => Err(Attempt::Retry(message)),
        };
        match outcome {
            Ok(download) => return Ok(download),
            Err(Attempt::Fail(error)) => return Err(error),
            Err(Attempt::Retry(message)) => {
                attempt += 1;
                if attempt >= retry.attempts {
                    return Err(HubError::Network { url: url.into(), attempts: attempt, message });
                }
                fetch.sleep(retry.wait(attempt - 1)).await;
            }
        }
    }
}

/// Blocking HTTP natively (the CLI and native tests run the async core under `pollster`).
#[cfg(not(target_arch = "wasm32"))]
pub struct NativeFetch {
    agent: ureq::Agent,
}

#[cfg(not(target_arch = "wasm32"))]
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

#[cfg(not(target_arch = "wasm32"))]
impl Fetch for NativeFetch {
    fn get<'a>(&'a self, url: &'a str, range: Option<Range<u64>>) -> LocalFuture<'a, Result<Response, String>> {
        use std::io::Read;
        let mut request = self.agent.get(url);
        if let Some(r) = &range {
            request = request.header("Range", format!("bytes={}-{}", r.start, r.end - 1));
        }
        let result = request.call().map_err(|e| e.to_string()).map(|mut answer| {
            let header = |name: &str| answer.headers().get(name).and_then(|v| v.to_str().ok()).map(String::from);
            let headers = Headers {
                etag: header("etag"),
                linked_etag: header("x-linked-etag"),
                content_range: header("content-range"),
                repo_commit: header("x-repo-commit"),
            };
            let mut body = Vec::new();
            let truncated = answer.body_mut().with_config().limit(u64::MAX).reader().read_to_end(&mut body).is_err();
            Response { status: answer.status().as_u16(), headers, body, truncated }
        });
        Box::pin(std::future::ready(result))
    }

    fn sleep(&self, duration: Duration) -> LocalFuture<'static, ()> {
        std::thread::sleep(duration);
        Box::pin(std::future::ready(()))
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_the_revision_as_one_segment() {
        let model = HubModel::default();
        assert_eq!(
            model.url("unet/diffusion_pytorch_model.safetensors"),
            "https://huggingface.co/lambdalabs/sd-image-variations-diffusers/resolve/refs%2Fpr%2F20/unet/diffusion_pytorch_model.safetensors"
        );
        let parsed = HubModel::parse("a-b/c.d_e@v1.0", "http://127.0.0.1:9/").unwrap();
        assert_eq!(parsed.url("x.json"), "http://127.0.0.1:9/a-b/c.d_e/resolve/v1.0/x.json");
        assert_eq!(HubModel::parse("owner/name", DEFAULT_ENDPOINT).unwrap().revision, "main");
        for bad in ["name", "a/b/c", "/b", "a/b@", "a b/c"] {
            assert!(HubModel::parse(bad, DEFAULT_ENDPOINT).is_err(), "{bad}");
        }
    }

    #[test]
    fn content_ranges_and_etags_parse() {
        assert_eq!(parse_content_range("bytes 0-7/5311412"), Some((0, 8, 5311412)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(clean_etag("W/\"abc\""), "abc");
    }

    /// A scripted server: answers in order, recording the ranges asked for.
    struct Script {
        answers: std::cell::RefCell<Vec<Result<Response, String>>>,
        asked: std::cell::RefCell<Vec<Option<Range<u64>>>>,
    }

    impl Fetch for Script {
        fn get<'a>(&'a self, _: &'a str, range: Option<Range<u64>>) -> LocalFuture<'a, Result<Response, String>> {
            self.asked.borrow_mut().push(range);
            Box::pin(std::future::ready(self.answers.borrow_mut().remove(0)))
        }

        fn sleep(&self, _: Duration) -> LocalFuture<'static, ()> {
            Box::pin(std::future::ready(()))
        }
    }

    fn answer(status: u16, content_range: Option<&str>, body: &[u8], truncated: bool) -> Result<Response, String> {
        let headers = Headers { content_range: content_range.map(String::from), etag: Some("\"e\"".into()), ..Default::default() };
        Ok(Response { status, headers, body: body.to_vec(), truncated })
    }

    fn run(answers: Vec<Result<Response, String>>, range: Option<Range<u64>>) -> (Result<Download, HubError>, usize) {
        let script = Script { answers: answers.into(), asked: Default::default() };
        let result = pollster::block_on(download(&script, "u", range, Retry::default()));
        (result, script.asked.borrow().len())
    }

    #[test]
    fn ranges_survive_ignored_range_truncation_and_5xx() {
        let file: Vec<u8> = (0..100).collect();
        let (ok, _) = run(vec![answer(206, Some("bytes 10-19/100"), &file[10..20], false)], Some(10..20));
        assert_eq!(ok.unwrap().bytes, &file[10..20]);
        let (whole, _) = run(vec![answer(200, None, &file, false)], Some(10..20));
        let whole = whole.unwrap();
        assert_eq!((whole.bytes.as_slice(), whole.file_size, whole.etag.as_deref()), (&file[10..20], Some(100), Some("e")));
        let answers = vec![
            Err("connection refused".into()),
            answer(503, None, b"busy", false),
            answer(206, Some("bytes 10-19/100"), &file[10..14], true),
            answer(206, Some("bytes 10-19/100"), &file[10..20], false),
        ];
        let (retried, asked) = run(answers, Some(10..20));
        assert_eq!((retried.unwrap().bytes.as_slice(), asked), (&file[10..20], 4));
        let (missing, asked) = run(vec![answer(404, None, b"", false)], Some(0..8));
        assert!(matches!(missing, Err(HubError::NotFound { .. })) && asked == 1);
        let down = (0..6).map(|_| Err("offline".to_string())).collect();
        let (offline, asked) = run(down, None);
        assert!(offline.unwrap_err().is_offline() && asked == 6);
        let (wrong, _) = run(vec![answer(206, Some("bytes 0-9/100"), &file[..10], false); 6], Some(10..20));
        assert!(wrong.is_err());
    }
}
