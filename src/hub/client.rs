//! One GET with an optional single range, over whatever `Fetch` the platform gives, with the
//! answer checked (status, Content-Range, body length) and retried with backoff.

use std::ops::Range;

use web_time::Duration;

use super::HubError;
use crate::LocalFuture;

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

impl Headers {
    /// The headers imvar reads, from any HTTP client's case-insensitive lookup.
    pub fn read(header: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            etag: header("etag"),
            linked_etag: header("x-linked-etag"),
            content_range: header("content-range"),
            repo_commit: header("x-repo-commit"),
        }
    }
}

/// An HTTP answer whose body was read completely, or as far as it came.
#[derive(Clone, Debug)]
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
    Some((start.parse().ok()?, end.parse::<u64>().ok()?.checked_add(1)?, total.parse().ok()?))
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
            // A file shorter than the range asked for stays short: no retry mends it, and a
            // short answer must never pass for the whole range.
            if total < wanted.end {
                return Err(Attempt::Fail(HubError::Invalid(format!("{url}: the file has {total} bytes, not the {} asked for", wanted.end))));
            }
            if start != wanted.start || end != wanted.end || body.len() as u64 != end - start {
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

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

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
        // A file that ends inside the range: one clear error, not a short body.
        let (short, asked) = run(vec![answer(206, Some("bytes 90-99/100"), &file[90..], false)], Some(90..120));
        assert!(short.unwrap_err().to_string().contains("the file has 100 bytes, not the 120 asked for") && asked == 1);
    }

    use proptest::prelude::*;

    /// A Content-Range header: well formed around `range` (right or off by a little), edge
    /// numbers, or any text.
    fn content_range(range: Range<u64>) -> impl Strategy<Value = Option<String>> {
        let near = (range.start.saturating_sub(2)..=range.start + 2, range.end.saturating_sub(3)..=range.end + 2, 0..=range.end + 64);
        prop_oneof![
            Just(None),
            near.prop_map(|(s, e, t)| Some(format!("bytes {s}-{e}/{t}"))),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(s, e, t)| Some(format!("bytes {s}-{e}/{t}"))),
            ".{0,40}".prop_map(Some),
        ]
    }

    /// Any status, Content-Range and body, cut or not.
    fn arbitrary(range: Range<u64>) -> impl Strategy<Value = Response> {
        let status = prop_oneof![Just(200u16), Just(206), Just(404), Just(416), Just(503), 100..600u16];
        let body = proptest::collection::vec(any::<u8>(), 0..(range.end as usize + 64));
        (status, content_range(range), body, any::<bool>()).prop_map(|(status, content_range, body, truncated)| {
            Response { status, headers: Headers { content_range, ..Default::default() }, body, truncated }
        })
    }

    /// What an honest server answers from a file of any length, often shorter than the range
    /// (a truncated upload, the end of a file): 206 with what it has, or 200 with all of it.
    fn honest(range: Range<u64>) -> impl Strategy<Value = Response> {
        (0..=range.end + 8, any::<bool>()).prop_map(move |(len, ignores_range)| {
            let file: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let end = range.end.min(len);
            if ignores_range || range.start >= len {
                return Response { status: 200, headers: Headers::default(), body: file, truncated: false };
            }
            let content_range = Some(format!("bytes {}-{}/{len}", range.start, end - 1));
            let body = file[range.start as usize..end as usize].to_vec();
            Response { status: 206, headers: Headers { content_range, ..Default::default() }, body, truncated: false }
        })
    }

    fn response(range: Range<u64>) -> impl Strategy<Value = Response> {
        prop_oneof![arbitrary(range.clone()), honest(range)]
    }

    proptest! {
        #![proptest_config(crate::testing::fuzz_cases(2000))]

        /// Whatever one answer says (status, Content-Range, body, a cut), a download gives
        /// exactly the bytes asked for or an error: never a panic, never a short or long body.
        #[test]
        fn any_answer_is_the_range_asked_for_or_an_error(
            (range, answer) in (0u64..64, 1u64..64).prop_flat_map(|(s, n)| (Just(s..s + n), response(s..s + n))),
            whole in any::<bool>(),
        ) {
            let range = (!whole).then_some(range);
            let script = Script { answers: vec![Ok(answer)].into(), asked: Default::default() };
            let retry = Retry { attempts: 1, first_wait: Duration::ZERO };
            if let (Ok(download), Some(range)) = (pollster::block_on(download(&script, "u", range.clone(), retry)), range) {
                prop_assert_eq!(download.bytes.len() as u64, range.end - range.start);
            }
        }
    }
}
