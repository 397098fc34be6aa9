//! One GET with an optional single range, over whatever `Fetch` the platform gives, with the
//! answer checked (status, Content-Range, body length) and retried with backoff.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Range;

use web_time::{Duration, Instant};

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
    pub content_length: Option<String>,
    pub repo_commit: Option<String>,
}

impl Headers {
    /// The headers imvar reads, from any HTTP client's case-insensitive lookup.
    pub fn read(header: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            etag: header("etag"),
            linked_etag: header("x-linked-etag"),
            content_range: header("content-range"),
            content_length: header("content-length"),
            repo_commit: header("x-repo-commit"),
        }
    }
}

/// Whole files imvar asks for are configs and model indexes: a longer answer is not one.
pub const MAX_WHOLE_FILE: u64 = 16 << 20;

/// The part of an answer's body a `Fetch` keeps, by status: of a 206, the range's length; of a
/// 200 to a Range request (a server that ignores Range), the range's bytes of the whole file,
/// those before it skipped as they stream; of a whole file, up to `MAX_WHOLE_FILE`; nothing of
/// any other answer. One byte more is kept where it comes, to tell a body longer than it
/// should be, and nothing after it is read: no answer makes imvar buffer more than it asked for.
pub fn body_window(status: u16, range: Option<&Range<u64>>) -> Range<u64> {
    match (status, range) {
        (206, Some(r)) => 0..r.end - r.start + 1,
        (200, Some(r)) => r.start..r.end + 1,
        (200, None) => 0..MAX_WHOLE_FILE + 1,
        _ => 0..0,
    }
}

/// An HTTP answer, its body read as far as `body_window` says, or as far as it came.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Headers,
    /// The body's bytes in the window.
    pub body: Vec<u8>,
    /// Body bytes skipped before the window (fewer than its start when the body ended first).
    pub skipped: u64,
    /// The connection failed while the body was read: `body` holds what arrived.
    pub truncated: bool,
}

impl Response {
    /// An answer whose whole body is at hand, kept as a `Fetch` keeps it (`body_window`), for
    /// a request for `range`.
    pub fn whole(status: u16, headers: Headers, body: &[u8], range: Option<&Range<u64>>) -> Self {
        let window = body_window(status, range);
        let start = window.start.min(body.len() as u64) as usize;
        let end = window.end.min(body.len() as u64) as usize;
        Self { status, headers, body: body[start..end].to_vec(), skipped: start as u64, truncated: false }
    }
}

/// What the platform provides: one GET with an optional single range, following redirects, and
/// a timer for backoff.
pub trait Fetch {
    /// `Err` only when no answer came at all (network down, connection refused, CORS, a
    /// stalled answer). Keeps only `body_window` of the body.
    fn get<'a>(&'a self, url: &'a str, range: Option<Range<u64>>) -> LocalFuture<'a, Result<Response, String>>;
    fn sleep(&self, duration: Duration) -> LocalFuture<'static, ()>;
    /// The platform says there is no network at all (the browser's `navigator.onLine` is
    /// false). Only a hint: a complete cache is then used without asking the Hub, but with
    /// nothing cached the Hub is asked anyway.
    fn offline(&self) -> bool {
        false
    }
}

/// Answers to whole-file requests (model indexes and configs: weights are always asked for by
/// Range) kept for `fresh_for`, so that asking what a load would download and then loading, one
/// right after the other, ask the Hub once. A push to the repo within that time is seen by the
/// first load after it.
pub struct Remembered<F> {
    fetch: F,
    fresh_for: Duration,
    answers: RefCell<BTreeMap<String, (Instant, Response)>>,
}

impl<F> Remembered<F> {
    pub fn new(fetch: F, fresh_for: Duration) -> Self {
        Self { fetch, fresh_for, answers: RefCell::default() }
    }

    fn fresh(&self, url: &str) -> Option<Response> {
        let answers = self.answers.borrow();
        answers.get(url).filter(|(at, _)| at.elapsed() < self.fresh_for).map(|(_, answer)| answer.clone())
    }

    fn remember(&self, url: &str, answer: &Response) {
        let mut answers = self.answers.borrow_mut();
        answers.retain(|_, (at, _)| at.elapsed() < self.fresh_for);
        answers.insert(url.into(), (Instant::now(), answer.clone()));
    }
}

impl<F: Fetch> Fetch for Remembered<F> {
    fn get<'a>(&'a self, url: &'a str, range: Option<Range<u64>>) -> LocalFuture<'a, Result<Response, String>> {
        Box::pin(async move {
            if range.is_some() {
                return self.fetch.get(url, range).await;
            }
            if let Some(answer) = self.fresh(url) {
                return Ok(answer);
            }
            let answer = self.fetch.get(url, None).await;
            if let Ok(whole) = &answer
                && whole.status == 200
                && !whole.truncated
            {
                self.remember(url, whole);
            }
            answer
        })
    }

    fn sleep(&self, duration: Duration) -> LocalFuture<'static, ()> {
        self.fetch.sleep(duration)
    }

    fn offline(&self) -> bool {
        self.fetch.offline()
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

impl Download {
    /// The file's size as the answer stated it. Without it a stored file or blob could not be
    /// told complete (a 200 answer cut short looks like a small file), so it is refused.
    pub fn stated_size(&self, url: &str) -> Result<u64, HubError> {
        self.file_size.ok_or_else(|| HubError::Invalid(format!("{url}: the answer does not say the file's size")))
    }
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

/// A name the server chose that becomes part of a URL or, natively, a file or folder name in the
/// cache (a blob's ETag, a commit): only a hex digest — a git id (40 characters) or a sha256
/// (64) — so that no answer can name a path.
pub(super) fn digest<'a>(value: &'a str, what: &str, url: &str) -> Result<&'a str, HubError> {
    if matches!(value.len(), 40 | 64) && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(value);
    }
    let shown: String = value.chars().take(80).collect();
    Err(HubError::Invalid(format!("{url}: the server's {what} {shown:?} is not a hex digest")))
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
    match status {
        404 => return Err(Attempt::Fail(HubError::NotFound { url: url.into() })),
        408 | 429 | 500..=599 => return Err(Attempt::Retry(format!("HTTP {status}"))),
        200 | 206 => {}
        _ => return Err(Attempt::Fail(HubError::Status { url: url.into(), status })),
    }
    // The commit names what later requests ask for: a digest or nothing.
    let commit = match response.headers.repo_commit.as_deref() {
        Some(commit) => Some(digest(commit, "commit (X-Repo-Commit)", url).map_err(Attempt::Fail)?.to_string()),
        None => None,
    };
    if response.truncated {
        return Err(Attempt::Retry(format!("connection lost after {} bytes", response.body.len())));
    }
    // The window is one byte longer than what is wanted: a full one means the body went on.
    let window = body_window(status, range.as_ref());
    let longer = response.body.len() as u64 >= window.end - window.start;
    let stated_length = response.headers.content_length.as_deref().and_then(|l| l.trim().parse::<u64>().ok());
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
            // The server ignored the range: the window holds the range's bytes of the whole file.
            let seen = response.skipped + body.len() as u64;
            if response.skipped != wanted.start || (body.len() as u64) < wanted.end - wanted.start {
                return Err(Attempt::Fail(HubError::Invalid(format!("{url}: the file has {seen} bytes, not {}", wanted.end))));
            }
            body.truncate((wanted.end - wanted.start) as usize);
            (stated_length.or((!longer).then_some(seen)), body)
        }
        (200, None) if longer => {
            return Err(Attempt::Fail(HubError::Invalid(format!("{url}: longer than {MAX_WHOLE_FILE} bytes, not a file imvar reads whole"))));
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
        Ok(Response { status, headers, body: body.to_vec(), skipped: 0, truncated })
    }

    /// What a `Fetch` keeps of a 200 answer with all of `file` to a request for `range`.
    fn whole(file: &[u8], range: Option<&Range<u64>>) -> Result<Response, String> {
        let headers = Headers { etag: Some("\"e\"".into()), ..Default::default() };
        Ok(Response::whole(200, headers, file, range))
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
        let (ignored, _) = run(vec![whole(&file, Some(&(10..20)))], Some(10..20));
        let ignored = ignored.unwrap();
        // The body was cut after the range: the size is the one Content-Length states, if any.
        assert_eq!((ignored.bytes.as_slice(), ignored.file_size, ignored.etag.as_deref()), (&file[10..20], None, Some("e")));
        let (to_the_end, _) = run(vec![whole(&file, Some(&(90..100)))], Some(90..100));
        assert_eq!(to_the_end.unwrap().file_size, Some(100));
        let (past_the_end, _) = run(vec![whole(&file, Some(&(90..120)))], Some(90..120));
        assert!(past_the_end.unwrap_err().to_string().contains("the file has 100 bytes, not 120"));
        // A whole file longer than any config: refused, not buffered.
        let endless = vec![0u8; MAX_WHOLE_FILE as usize + 10];
        let (long, asked) = run(vec![whole(&endless, None)], None);
        assert!(long.unwrap_err().to_string().contains("not a file imvar reads whole") && asked == 1);
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
        (status, content_range(range), body, 0..96u64, any::<bool>()).prop_map(|(status, content_range, body, skipped, truncated)| {
            Response { status, headers: Headers { content_range, ..Default::default() }, body, skipped, truncated }
        })
    }

    /// What an honest server answers from a file of any length, often shorter than the range
    /// (a truncated upload, the end of a file): 206 with what it has, or 200 with all of it.
    fn honest(range: Range<u64>) -> impl Strategy<Value = Response> {
        (0..=range.end + 8, any::<bool>()).prop_map(move |(len, ignores_range)| {
            let file: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let end = range.end.min(len);
            if ignores_range || range.start >= len {
                return Response::whole(200, Headers::default(), &file, Some(&range));
            }
            let content_range = Some(format!("bytes {}-{}/{len}", range.start, end - 1));
            let body = file[range.start as usize..end as usize].to_vec();
            Response { status: 206, headers: Headers { content_range, ..Default::default() }, body, skipped: 0, truncated: false }
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
