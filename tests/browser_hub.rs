//! Weights in the browser, against the local Hub stand-in that `scripts/test` starts (its URL
//! is compiled in from `IMVAR_TEST_HUB`): download through cross-origin redirects into
//! IndexedDB, a golden generation, a reload with zero weight requests, offline loading, resume
//! after a cut, a stalled answer given up, and a damaged record fetched again.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;

use imvar::hub::{CacheEvent, Phase, Remembered, Store};
use imvar::js::{call_global, js_message};
use imvar::pipeline::preprocess::decode;
use imvar::pipeline::{GenerateOptions, ImageVariationPipeline};
use imvar::schedulers::SchedulerKind;
use imvar::web::idb::IdbStore;
use imvar::web::fetch::BrowserFetch;
use imvar::web::{LoadOptions, LoadSummary, load_pipeline, pending_download};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

// In a dedicated worker, as the demo runs the pipeline: long GPU work on the page's main thread
// would starve the test driver's messages to the page.
wasm_bindgen_test_configure!(run_in_dedicated_worker);

const UNET_FP16_FILE_BYTES: u64 = include_bytes!("fixtures/tiny-sd-image-variations/unet/diffusion_pytorch_model.fp16.safetensors").len() as u64;

fn hub() -> &'static str {
    option_env!("IMVAR_TEST_HUB").expect("IMVAR_TEST_HUB: run the browser tests through scripts/test, which starts the Hub stand-in")
}

fn log(message: &str) {
    web_sys::console::log_1(&message.into());
}

/// A request to the stand-in's control API.
async fn control(method: &str, path: &str, body: Option<String>) -> String {
    let init = web_sys::RequestInit::new();
    init.set_method(method);
    if let Some(body) = body {
        init.set_body(&body.into());
    }
    let request = web_sys::Request::new_with_str_and_init(&format!("{}{path}", hub()), &init).unwrap();
    let promise: js_sys::Promise = call_global("fetch", &[request.into()]).unwrap().unchecked_into();
    let response: web_sys::Response = JsFuture::from(promise).await.unwrap().unchecked_into();
    JsFuture::from(response.text().unwrap()).await.unwrap().as_string().unwrap()
}

async fn fault(fault: serde_json::Value) {
    control("POST", "/_faults", Some(fault.to_string())).await;
}

async fn reset() {
    control("POST", "/_reset", None).await;
}

/// The stand-in's log for `revision`.
async fn hub_log(revision: &str) -> Vec<serde_json::Value> {
    let all: Vec<serde_json::Value> = serde_json::from_str(&control("GET", "/_log", None).await).unwrap();
    all.into_iter().filter(|e| e["revision"] == revision).collect()
}

/// The stand-in's log for `revision`, weight-file requests only.
async fn weight_log(revision: &str) -> Vec<serde_json::Value> {
    hub_log(revision).await.into_iter().filter(|e| e["path"].as_str().unwrap().ends_with(".safetensors")).collect()
}

fn served(log: &[serde_json::Value]) -> u64 {
    log.iter().map(|e| e["bytes"].as_u64().unwrap()).sum()
}

fn options(revision: &str, database: &str) -> LoadOptions {
    LoadOptions {
        endpoint: Some(hub().into()),
        model: Some("imvar-tests/tiny".into()),
        revision: Some(revision.into()),
        database: Some(database.into()),
        chunk_bytes: Some(256 << 10),
        ..Default::default()
    }
}

/// A database name no earlier run used.
fn fresh_database(test: &str) -> String {
    format!("imvar-test-{test}-{}", js_sys::Date::now())
}

async fn load(options: &LoadOptions) -> (ImageVariationPipeline, LoadSummary, Vec<CacheEvent>) {
    let events = RefCell::new(Vec::new());
    let (pipeline, summary) = load_pipeline(options, &BrowserFetch, &|e| events.borrow_mut().push(e.clone()))
        .await
        .unwrap_or_else(|e| panic!("load: {}", js_message(&e)));
    (pipeline, summary, events.into_inner())
}

/// The PNDM golden run on the fp16 weight files (what the plan picks): 8-bit pixels.
async fn generate_and_compare(pipeline: &ImageVariationPipeline, label: &str) -> Vec<u8> {
    let input = decode(include_bytes!("fixtures/input.png")).unwrap();
    let options = GenerateOptions { steps: 5, seed: 2026, scheduler: Some(SchedulerKind::Pndm), ..Default::default() };
    let out = pipeline.generate(&input, &options, &mut |_| true).await.expect("generates");
    let golden = decode(include_bytes!("fixtures/golden/images/pndm-n1-g3-fp16-0.png")).unwrap();
    assert_eq!(out.len(), 1, "{label}: one variation");
    assert_eq!(out[0].image.pixels.len(), golden.pixels.len(), "{label}: the golden's size");
    let diffs: Vec<u8> = out[0].image.pixels.iter().zip(&golden.pixels).map(|(a, b)| a.abs_diff(*b)).collect();
    let max = *diffs.iter().max().unwrap();
    let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
    log(&format!("{label}: max {max} mean {mean:.4} levels against the golden PNG"));
    assert!(max <= 2 && mean < 0.01, "{label}: max {max}, mean {mean}");
    out[0].image.pixels.clone()
}

#[wasm_bindgen_test]
async fn first_visit_downloads_then_reloads_and_offline_use_fetch_no_weights() {
    reset().await;
    let (revision, database) = ("browser-first-visit", fresh_database("first"));
    let (pipeline, summary, events) = load(&options(revision, &database)).await;
    let log_first = weight_log(revision).await;
    assert!(log_first.iter().any(|e| e["status"] == 302) && log_first.iter().any(|e| e["cdn"] == true && e["status"] == 206), "through the CDN redirect");
    let downloads: Vec<&CacheEvent> = events.iter().filter(|e| e.phase == Phase::Download).collect();
    let last = downloads.last().expect("download progress");
    assert_eq!(last.overall_done, last.overall_total);
    assert_eq!(last.overall_total, summary.stored_bytes);
    assert!(events.iter().any(|e| e.phase == Phase::Load && e.overall_done == e.overall_total && e.overall_total > 0));
    log(&format!(
        "first visit: {} weight bytes served, {} stored; wasm heap peak while loading {} bytes (the UNet file is {UNET_FP16_FILE_BYTES}); \
         weights on the GPU {} bytes, device pools grew {:?} bytes; wasm memory {} bytes",
        served(&log_first), summary.stored_bytes, summary.heap_peak_bytes, summary.device.weight_bytes,
        summary.device.device_bytes_allocated, summary.wasm_memory_bytes
    ));
    // Streaming: far less than one weight file is ever held at once.
    assert!(summary.heap_peak_bytes < UNET_FP16_FILE_BYTES / 2, "heap peak {} bytes", summary.heap_peak_bytes);
    let first = generate_and_compare(&pipeline, "first visit").await;
    drop(pipeline);

    reset().await;
    let (pipeline, _, events) = load(&options(revision, &database)).await;
    assert_eq!(weight_log(revision).await.len(), 0, "a reload fetches no weights");
    assert!(events.iter().all(|e| e.phase != Phase::Download));
    assert_eq!(generate_and_compare(&pipeline, "reload").await, first);
    drop(pipeline);

    // A reload of the page asks what loading would download, then loads: the Hub is asked once
    // in all (the model index, whose commit says nothing changed).
    reset().await;
    let remembered = Remembered::new(BrowserFetch, std::time::Duration::from_secs(60));
    let pending = pending_download(&options(revision, &database), &remembered).await.unwrap_or_else(|e| panic!("pending: {}", js_message(&e)));
    assert_eq!((pending.download_bytes, pending.stored_bytes), (0, summary.stored_bytes));
    load_pipeline(&options(revision, &database), &remembered, &|_| {}).await.unwrap_or_else(|e| panic!("load: {}", js_message(&e)));
    let asked: Vec<_> = hub_log(revision).await.iter().map(|e| e["path"].clone()).collect();
    assert_eq!(asked, ["model_index.json"], "a reload's requests");

    // The server goes away: every connection is dropped unanswered. (The demo's end-to-end
    // test generates offline too.)
    fault(serde_json::json!({"revision": revision, "kind": "drop", "times": 1000})).await;
    let (_, offline, events) = load(&options(revision, &database)).await;
    assert!(events.iter().all(|e| e.phase != Phase::Download));
    assert_eq!((offline.commit, offline.stored_bytes), (summary.commit, summary.stored_bytes), "the same model, from the cache");
    reset().await;
}

/// An answer that sends nothing for 30 s is given up and asked for again: the load neither
/// hangs on it nor waits for it to come (five minutes). The first answer held back is the VAE
/// file's header probe; the bound's width is room for the rest of the load on a slow machine.
#[wasm_bindgen_test]
async fn a_stalled_answer_is_given_up_after_30_s_and_asked_for_again() {
    reset().await;
    let (revision, database) = ("browser-stall", fresh_database("stall"));
    fault(serde_json::json!({"revision": revision, "path": "vae/diffusion_pytorch_model", "kind": "slow", "delay_ms": 300_000})).await;
    let start = js_sys::Date::now();
    let (_, summary, _) = load(&options(revision, &database)).await;
    let seconds = (js_sys::Date::now() - start) / 1000.0;
    log(&format!("stalled answer: loaded in {seconds:.1} s, {} bytes stored", summary.stored_bytes));
    assert!((30.0..250.0).contains(&seconds), "loaded in {seconds:.1} s: the stall limit is 30 s and the stalled answer takes 300 s");
}

#[wasm_bindgen_test]
async fn a_cut_download_resumes_with_what_is_missing_and_a_damaged_record_is_refetched() {
    reset().await;
    let (revision, database) = ("browser-resume", fresh_database("resume"));
    let mut broken = options(revision, &database);
    broken.parallel = Some(1);
    // UNet answers over 200 kB are cut however often they are retried: the download stops.
    fault(serde_json::json!({"revision": revision, "path": "unet/", "kind": "cut", "after": 200_000, "times": 1000})).await;
    let err = load_pipeline(&broken, &BrowserFetch, &|_| {}).await.err().expect("the cut download fails");
    let message = js_message(&err);
    log(&format!("cut download: {message}"));
    assert!(message.starts_with("NetworkError"), "{message}");
    // Tensor chunks that arrived whole before the cut (header reads aside).
    let tensor_chunk = |e: &serde_json::Value| {
        let range = e["range"].as_str().unwrap_or("");
        e["cdn"] == true && e["status"] == 206 && e["cut"] == false && !range.starts_with("bytes=0-") && !range.starts_with("bytes=8-")
    };
    let stored_before: Vec<String> = weight_log(revision).await.iter().filter(|e| tensor_chunk(e)).map(|e| format!("{} {}", e["path"], e["range"])).collect();
    reset().await;
    // Ignored ranges, 5xx answers, answers past the range asked for and bodies without end on the
    // way are survived (the fetch reads no further than the range and one byte).
    fault(serde_json::json!({"revision": revision, "path": "vae/", "kind": "ignore_range", "times": 2})).await;
    fault(serde_json::json!({"revision": revision, "path": "vae/", "kind": "error", "status": 503, "times": 2})).await;
    fault(serde_json::json!({"revision": revision, "path": "unet/", "kind": "long", "times": 2})).await;
    fault(serde_json::json!({"revision": revision, "path": "image_encoder/model", "kind": "endless", "times": 2})).await;
    let (_, summary, _) = load(&options(revision, &database)).await;
    let after = weight_log(revision).await;
    let again: Vec<&serde_json::Value> = after.iter().filter(|e| stored_before.contains(&format!("{} {}", e["path"], e["range"]))).collect();
    log(&format!("resume: {} chunks stored before the cut, {} requests after, {} bytes stored", stored_before.len(), after.len(), summary.stored_bytes));
    assert!(!stored_before.is_empty() && again.is_empty(), "chunks fetched twice: {again:?}");
    assert!(after.iter().any(|e| e["status"] == 503) && after.iter().any(|e| e["status"] == 200 && e["range"].is_string()));

    // Damage one record in IndexedDB: it is fetched again when read.
    let store = IdbStore::open(&database).await.unwrap();
    let keys = store.keys("tensor\n").await.unwrap();
    let key = keys.iter().find(|k| k.ends_with("\nconv_in.weight") && k.contains("unet/")).unwrap();
    let mut record = store.get(key).await.unwrap().unwrap();
    record[5] ^= 0x10;
    store.put(vec![(key.clone(), record.clone())]).await.unwrap();
    reset().await;
    load(&options(revision, &database)).await;
    let refetched = weight_log(revision).await.into_iter().filter(|e| e["cdn"] == true).count();
    assert_eq!(refetched, 1, "one tensor fetched again");
    let repaired = store.get(key).await.unwrap().unwrap();
    assert_ne!(repaired, record, "the record was rewritten");
    reset().await;
    load(&options(revision, &database)).await;
    assert!(weight_log(revision).await.is_empty(), "the repaired record is whole");
}
