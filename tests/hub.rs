//! The Hub download core natively, against the local stand-in: plan, selective chunked
//! download by commit, cache hits, resume, faults, ETag changes (before and during a download),
//! damaged records and manifests, manifests of a newer format, quota, streaming.
#![cfg(not(target_arch = "wasm32"))]

mod standin;

use std::collections::BTreeMap;

use imvar::hub::{
    CacheError, CachedModel, DownloadOptions, Fetch, HubCache, HubError, HubModel, Manifest, NativeFetch, Remembered, Response, Retry, Storage, Store,
    is_whole,
};
use imvar::weights::{COMPONENTS, ModelSource, is_unused, unused_prefixes};
use standin::memory_store::MemoryStore;
use standin::{REPO, StandIn, fixtures, weight_requests};

fn options() -> DownloadOptions {
    // Small chunks so the tiny model spans several requests; quick retries.
    DownloadOptions { chunk_bytes: 256 << 10, parallel: 3, retry: Retry { attempts: 4, first_wait: std::time::Duration::from_millis(20) } }
}

fn cache<'a>(hub: &StandIn, revision: &str, fetch: &'a dyn Fetch, store: Option<&'a dyn Store>) -> HubCache<'a> {
    let model = HubModel::parse(&format!("{REPO}@{revision}"), &hub.url).unwrap();
    HubCache { fetch, store, model, storage: Storage::AsStored, options: options() }
}

fn prepare<'a>(cache: &HubCache<'a>) -> Result<CachedModel<'a>, CacheError> {
    pollster::block_on(cache.prepare(&|_| {}))
}

/// Every tensor the model hands out, by component and name.
fn contents(model: &dyn ModelSource) -> BTreeMap<String, Vec<u8>> {
    let mut all = BTreeMap::new();
    for (component, _) in COMPONENTS {
        let mut source = pollster::block_on(model.tensors(component)).unwrap();
        for info in source.tensors() {
            let raw = pollster::block_on(source.read(&info.name)).unwrap();
            all.insert(format!("{component}/{}", info.name), raw.bytes);
        }
    }
    all
}

/// The same tensors read straight from the fixture's fp16 files (what the plan picks).
fn expected() -> BTreeMap<String, Vec<u8>> {
    contents(&imvar::weights::source::ModelDir::open(&fixtures().join("tiny-sd-image-variations"), Some("fp16")).unwrap())
        .into_iter()
        .filter(|(name, _)| {
            let (component, tensor) = name.split_once('/').unwrap();
            !is_unused(tensor, unused_prefixes(component))
        })
        .collect()
}

fn served_bytes(log: &[serde_json::Value]) -> u64 {
    weight_requests(log).iter().map(|e| e["bytes"].as_u64().unwrap()).sum()
}

#[test]
fn downloads_what_the_pipeline_needs_once_then_serves_from_the_cache() {
    let hub = StandIn::start(&[]);
    let (fetch, store) = (NativeFetch::default(), MemoryStore::default());
    let cache = cache(&hub, "refs/pr/1", &fetch, Some(&store));
    let model = prepare(&cache).unwrap();
    let expected = expected();
    assert_eq!(contents(&model), expected);
    let log = hub.log("refs/pr/1");
    assert!(log.iter().all(|e| !e["path"].as_str().unwrap().starts_with("safety_checker")), "{log:?}");
    assert!(log.iter().filter(|e| e["cdn"] == false && e["path"].as_str().unwrap().ends_with(".safetensors")).all(|e| e["status"] == 302));
    // Only the needed tensors (plus headers) came over the wire: no VAE encoder.
    let needed: u64 = expected.values().map(|v| v.len() as u64).sum();
    let served = served_bytes(&log);
    assert!(served >= needed && served < needed + 128 * 1024, "served {served}, needed {needed}");
    assert!(weight_requests(&log).iter().all(|e| e["bytes"].as_u64().unwrap() <= 256 << 10 || e["range"].is_string()));
    // The model index at the asked revision, every other file from the commit it named.
    assert!(log.iter().all(|e| (e["path"] == "model_index.json") != (e["pinned"] == true)), "{log:?}");

    hub.reset();
    let again = prepare(&cache).unwrap();
    assert_eq!(contents(&again), expected);
    let log = hub.log("refs/pr/1");
    assert!(weight_requests(&log).is_empty(), "second load fetched weights: {log:?}");
    assert_eq!(log.len(), 1, "only model_index.json is asked for: {log:?}");
    drop(hub);
    // Offline: the cache alone.
    assert_eq!(contents(&prepare(&cache).unwrap()), expected);
}

/// A platform that says it has no network (a browser whose `navigator.onLine` is false), though
/// the stand-in still answers.
struct SaysOffline(NativeFetch);

impl Fetch for SaysOffline {
    fn get<'a>(&'a self, url: &'a str, range: Option<std::ops::Range<u64>>) -> imvar::LocalFuture<'a, Result<Response, String>> {
        self.0.get(url, range)
    }

    fn sleep(&self, duration: std::time::Duration) -> imvar::LocalFuture<'static, ()> {
        self.0.sleep(duration)
    }

    fn offline(&self) -> bool {
        true
    }
}

#[test]
fn a_return_visit_asks_the_hub_once_online_and_nothing_offline() {
    let hub = StandIn::start(&[]);
    let store = MemoryStore::default();
    let says_offline = SaysOffline(NativeFetch::default());
    // Said offline with nothing cached: the hint is not trusted, the Hub is asked.
    let model = prepare(&cache(&hub, "return", &says_offline, Some(&store))).unwrap();
    assert_eq!(contents(&model), expected());

    // What a load would download, then the load: one request, the model index.
    hub.reset();
    let remembered = Remembered::new(NativeFetch::default(), std::time::Duration::from_secs(60));
    let cache_online = cache(&hub, "return", &remembered, Some(&store));
    assert_eq!(pollster::block_on(cache_online.pending()).unwrap().download_bytes, 0);
    assert_eq!(contents(&prepare(&cache_online).unwrap()), expected());
    let paths: Vec<_> = hub.log("return").iter().map(|e| e["path"].clone()).collect();
    assert_eq!(paths, ["model_index.json"]);

    // Said offline with the model cached: no request at all.
    hub.reset();
    let cache_offline = cache(&hub, "return", &says_offline, Some(&store));
    assert_eq!(pollster::block_on(cache_offline.pending()).unwrap().download_bytes, 0);
    assert_eq!(contents(&prepare(&cache_offline).unwrap()), expected());
    assert_eq!(hub.log("return"), Vec::<serde_json::Value>::new());

    // Said offline with a record missing (an interrupted download): the Hub is asked, and the
    // download completes.
    let unet = store.records.borrow().keys().find(|k| k.contains("unet/") && k.ends_with("\nconv_in.weight")).unwrap().clone();
    store.records.borrow_mut().remove(&unet);
    assert_eq!(contents(&prepare(&cache_offline).unwrap()), expected());
    assert!(store.records.borrow().contains_key(&unet));
    assert!(!hub.log("return").is_empty());
}

#[test]
fn an_interrupted_download_resumes_with_only_what_is_missing() {
    let hub = StandIn::start(&[]);
    let (fetch, store) = (NativeFetch::default(), MemoryStore::default());
    let cache = cache(&hub, "resume", &fetch, Some(&store));
    // The UNet's file fails for good after the header: the download stops partway.
    // Answers longer than 200 kB (some chunks, not the headers) are cut, however often retried.
    hub.fault(serde_json::json!({"revision": "resume", "path": "unet/", "kind": "cut", "after": 200_000, "times": 1000}));
    let err = prepare(&cache).err().expect("the download fails");
    assert!(err.to_string().contains("network error"), "{err}");
    let first: Vec<String> = weight_requests(&hub.log("resume")).iter().filter(|e| e["cut"] == false && e["cdn"] == true).map(|e| e["range"].to_string()).collect();
    hub.reset();
    assert_eq!(contents(&prepare(&cache).unwrap()), expected());
    let second = hub.log("resume");
    let again: Vec<&serde_json::Value> = weight_requests(&second).into_iter().filter(|e| e["cdn"] == true && first.contains(&e["range"].to_string())).collect();
    // Only the headers are read twice; every tensor chunk completed before is not.
    assert!(again.iter().all(|e| e["bytes"].as_u64().unwrap() <= 8 || e["range"].as_str().unwrap().starts_with("bytes=8-")), "{again:?}");
    assert!(weight_requests(&second).iter().any(|e| e["path"].as_str().unwrap().starts_with("unet/")));
    let needed: u64 = expected().values().map(|v| v.len() as u64).sum();
    assert!(served_bytes(&second) < needed, "resumed, not restarted");
}

#[test]
fn ignored_ranges_5xx_cuts_and_slow_answers_are_survived() {
    let hub = StandIn::start(&[]);
    let (fetch, store) = (NativeFetch::default(), MemoryStore::default());
    let cache = cache(&hub, "faults", &fetch, Some(&store));
    for fault in [
        serde_json::json!({"kind": "ignore_range", "path": "vae/", "times": 3}),
        serde_json::json!({"kind": "error", "status": 503, "path": "unet/", "times": 2}),
        serde_json::json!({"kind": "error", "status": 500, "path": "model_index.json", "times": 1}),
        serde_json::json!({"kind": "cut", "after": 5000, "path": "unet/", "times": 2}),
        serde_json::json!({"kind": "slow", "delay_ms": 300, "path": "image_encoder/", "times": 2}),
    ] {
        let mut fault = fault;
        fault["revision"] = "faults".into();
        hub.fault(fault);
    }
    assert_eq!(contents(&prepare(&cache).unwrap()), expected());
    let log = hub.log("faults");
    assert!(log.iter().any(|e| e["status"] == 503) && log.iter().any(|e| e["cut"] == true));
    assert!(log.iter().any(|e| e["status"] == 200 && e["range"].is_string()), "a Range request answered whole");
}

#[test]
fn answers_longer_than_asked_or_endless_are_read_no_further_than_needed() {
    let hub = StandIn::start(&[]);
    let (fetch, store) = (NativeFetch::default(), MemoryStore::default());
    let long = cache(&hub, "long", &fetch, Some(&store));
    // Each retried: a chunk that runs on to the end of the UNet's file, a body without end.
    for fault in [
        serde_json::json!({"kind": "long", "path": "unet/", "times": 2}),
        serde_json::json!({"kind": "endless", "path": "vae/diffusion_pytorch_model", "times": 2}),
    ] {
        let mut fault = fault;
        fault["revision"] = "long".into();
        hub.fault(fault);
    }
    assert_eq!(contents(&prepare(&long).unwrap()), expected());
    // A config that never ends is no config: one clear error, after reading a bounded prefix.
    let endless = cache(&hub, "endless", &fetch, Some(&store));
    hub.fault(serde_json::json!({"revision": "endless", "kind": "endless", "path": "model_index.json"}));
    let err = prepare(&endless).err().expect("an endless model index is refused");
    assert!(err.to_string().contains("not a file imvar reads whole"), "{err}");
}

#[test]
fn a_changed_etag_refetches_that_file_only() {
    let hub = StandIn::start(&[]);
    let (fetch, store) = (NativeFetch::default(), MemoryStore::default());
    let cache = cache(&hub, "etag", &fetch, Some(&store));
    prepare(&cache).unwrap();
    hub.reset();
    hub.fault(serde_json::json!({"revision": "etag", "path": "vae/diffusion_pytorch_model.fp16", "kind": "etag", "salt": "v2"}));
    assert_eq!(contents(&prepare(&cache).unwrap()), expected());
    let log = hub.log("etag");
    let big: Vec<&str> = weight_requests(&log).iter().filter(|e| e["bytes"].as_u64().unwrap() > 100_000).map(|e| e["path"].as_str().unwrap()).collect();
    assert!(!big.is_empty() && big.iter().all(|p| p.starts_with("vae/")), "{big:?}");
}

#[test]
fn a_damaged_record_is_fetched_again_on_read() {
    let hub = StandIn::start(&[]);
    let (fetch, store) = (NativeFetch::default(), MemoryStore::default());
    let cache = cache(&hub, "damaged", &fetch, Some(&store));
    prepare(&cache).unwrap();
    let key = store.records.borrow().keys().find(|k| k.ends_with("\nconv_in.weight") && k.contains("unet/")).unwrap().clone();
    store.records.borrow_mut().get_mut(&key).unwrap()[3] ^= 0x40;
    hub.reset();
    assert_eq!(contents(&prepare(&cache).unwrap()), expected());
    let refetched: Vec<_> = weight_requests(&hub.log("damaged")).into_iter().filter(|e| e["cdn"] == true).cloned().collect();
    assert_eq!(refetched.len(), 1, "{refetched:?}");
    let truncated = store.records.borrow().get(&key).unwrap().len();
    store.records.borrow_mut().get_mut(&key).unwrap().truncate(truncated / 2);
    assert_eq!(contents(&prepare(&cache).unwrap()), expected());
}

#[test]
fn loading_reads_each_record_once_and_asks_for_the_next_one_ahead() {
    let hub = StandIn::start(&[]);
    let (fetch, store) = (NativeFetch::default(), MemoryStore::default());
    let model = prepare(&cache(&hub, "ahead", &fetch, Some(&store))).unwrap();
    store.gets.borrow_mut().clear();
    let mut source = pollster::block_on(model.tensors("unet")).unwrap();
    let names: Vec<_> = source.tensors().into_iter().map(|t| t.name).collect();
    let asked = |name: &str| store.gets.borrow().iter().filter(|key| key.ends_with(&format!("\n{name}"))).count();
    pollster::block_on(source.read(&names[0])).unwrap();
    assert_eq!(names[..3].iter().map(|n| asked(n)).collect::<Vec<_>>(), [1, 1, 0], "after the first read: {:?}", store.gets.borrow());
    for name in &names[1..] {
        pollster::block_on(source.read(name)).unwrap();
    }
    assert!(names.iter().all(|n| asked(n) == 1), "each record read once: {:?}", store.gets.borrow());
}

#[test]
fn too_little_storage_is_said_before_downloading() {
    let hub = StandIn::start(&[]);
    let fetch = NativeFetch::default();
    let store = MemoryStore { estimate: Some(1 << 20), ..Default::default() };
    let err = prepare(&cache(&hub, "estimate", &fetch, Some(&store))).err().expect("not enough room");
    let needed: u64 = expected().values().map(|v| v.len() as u64).sum();
    assert_eq!(err, CacheError::Quota { needed, available: Some(1 << 20), stored: 0 });
    assert!(err.to_string().contains("1.0 MB are available"), "{err}");
    assert!(served_bytes(&hub.log("estimate")) < 128 * 1024, "only headers were fetched");
}

#[test]
fn a_full_quota_stops_cleanly_keeps_what_is_stored_and_streaming_still_works() {
    let hub = StandIn::start(&[]);
    let fetch = NativeFetch::default();
    // No estimate: the quota shows up on a write, as it can in a browser.
    let mut store = MemoryStore { limit: Some(3 << 20), ..Default::default() };
    let err = prepare(&cache(&hub, "quota", &fetch, Some(&store))).err().expect("quota");
    assert!(matches!(err, CacheError::Quota { .. }), "{err}");
    assert!(err.to_string().contains("more are needed, and the storage refused to take more"), "{err}");
    // No room even for the plan: the same answer, with the sizes, from the download.
    let full = MemoryStore { limit: Some(100), ..Default::default() };
    let err = prepare(&cache(&hub, "quota-plan", &fetch, Some(&full))).err().expect("quota");
    assert!(matches!(err, CacheError::Quota { available: None, stored: 0, .. }), "{err}");
    // Nothing half-written: every record kept is whole.
    let tensors = store.records.borrow().keys().filter(|k| k.starts_with("tensor")).count();
    assert!(tensors > 0);
    assert!(all_whole(&store));
    store.limit = None;
    let streamed = cache(&hub, "quota", &fetch, None);
    assert_eq!(contents(&prepare(&streamed).unwrap()), expected());
    hub.reset();
    let resumed = cache(&hub, "quota", &fetch, Some(&store));
    assert_eq!(contents(&prepare(&resumed).unwrap()), expected());
    let needed: u64 = expected().values().map(|v| v.len() as u64).sum();
    assert!(served_bytes(&hub.log("quota")) < needed, "resumed, not restarted");
}

#[test]
fn fp32_files_are_stored_as_fp16_for_an_f16_device() {
    // A copy of the model without the fp16 variant files.
    let dir = std::env::temp_dir().join(format!("imvar-fp32-only-{}", std::process::id()));
    for entry in walk(&fixtures().join("tiny-sd-image-variations")) {
        let rel = entry.strip_prefix(fixtures().join("tiny-sd-image-variations")).unwrap();
        if !rel.to_str().unwrap().contains(".fp16.") {
            std::fs::create_dir_all(dir.join(rel).parent().unwrap()).unwrap();
            std::fs::copy(&entry, dir.join(rel)).unwrap();
        }
    }
    let hub = StandIn::start(&[("imvar-tests/fp32", &dir)]);
    let (fetch, store) = (NativeFetch::default(), MemoryStore::default());
    let model = HubModel::parse("imvar-tests/fp32@main", &hub.url).unwrap();
    let cache = HubCache { fetch: &fetch, store: Some(&store), model, storage: Storage::F16, options: options() };
    let prepared = prepare(&cache).unwrap();
    let mut vae = pollster::block_on(prepared.tensors("vae")).unwrap();
    let info = vae.tensors().into_iter().find(|t| t.name == "decoder.conv_in.weight").unwrap();
    assert_eq!(info.dtype, safetensors::Dtype::F16);
    let ours = pollster::block_on(vae.read("decoder.conv_in.weight")).unwrap().bytes;
    let file = std::fs::read(dir.join("vae/diffusion_pytorch_model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&file).unwrap();
    let f32s = tensors.tensor("decoder.conv_in.weight").unwrap();
    let halves: Vec<u8> = f32s.data().chunks_exact(4).flat_map(|b| half::f16::from_f32(f32::from_le_bytes(b.try_into().unwrap())).to_le_bytes()).collect();
    assert_eq!(ours, halves);
    // Records are kept under the file that was planned: the plain one, as the repo has no variant.
    assert!(store.records.borrow().keys().any(|k| k.contains("\nvae/diffusion_pytorch_model.safetensors\n")));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Whether every record in `store` is whole: a tensor's for the version of its file that its
/// manifest lists, the others for nothing else.
fn all_whole(store: &MemoryStore) -> bool {
    let records = store.records.borrow();
    let manifests: Vec<Manifest> =
        records.iter().filter(|(k, _)| k.starts_with("manifest\n")).map(|(_, r)| serde_json::from_slice(&r[..r.len() - 4]).unwrap()).collect();
    records.iter().all(|(key, record)| {
        let file = key.strip_prefix("tensor\n").map(|rest| manifests.iter().flat_map(|m| &m.files).find(|f| rest.contains(&format!("\n{}\n", f.path))));
        match file {
            Some(file) => file.is_some_and(|f| is_whole(&f.identity(), record)),
            None => is_whole(b"", record),
        }
    })
}

/// The manifest record of the one model in `store`.
fn manifest_key(store: &MemoryStore) -> String {
    store.records.borrow().keys().find(|k| k.starts_with("manifest\n")).unwrap().clone()
}

#[test]
fn a_push_during_the_download_is_refused_and_nothing_of_it_is_stored() {
    let hub = StandIn::start(&[]);
    let (fetch, store) = (NativeFetch::default(), MemoryStore::default());
    let cache = cache(&hub, "push", &fetch, Some(&store));
    // After the first chunk is stored, the VAE's file changes on the Hub (new ETag and commit).
    let pushed = std::cell::Cell::new(false);
    let push = |_: &imvar::hub::CacheEvent| {
        if !pushed.replace(true) {
            hub.fault(serde_json::json!({"revision": "push", "path": "vae/", "kind": "etag", "salt": "pushed"}));
        }
    };
    let err = pollster::block_on(cache.prepare(&push)).err().expect("the download stops");
    assert!(matches!(err, CacheError::Hub(HubError::Changed { .. })), "{err}");
    assert!(err.to_string().contains("changed on the Hub while it was downloaded"), "{err}");
    assert!(all_whole(&store), "only records of the planned version");
    // The next load plans the new commit: the VAE again, the rest as stored.
    hub.reset();
    hub.fault(serde_json::json!({"revision": "push", "path": "vae/", "kind": "etag", "salt": "pushed"}));
    assert_eq!(contents(&prepare(&cache).unwrap()), expected());
    let log = hub.log("push");
    let big: Vec<&str> = weight_requests(&log).iter().filter(|e| e["bytes"].as_u64().unwrap() > 100_000).map(|e| e["path"].as_str().unwrap()).collect();
    assert!(big.iter().any(|p| p.starts_with("vae/")), "{big:?}");
}

#[test]
fn a_damaged_manifest_keeps_every_record_that_proves_its_file() {
    let hub = StandIn::start(&[]);
    let (fetch, store) = (NativeFetch::default(), MemoryStore::default());
    let cache = cache(&hub, "manifest", &fetch, Some(&store));
    prepare(&cache).unwrap();
    let key = manifest_key(&store);
    store.records.borrow_mut().get_mut(&key).unwrap()[10] ^= 0x01;
    // A record of another version of a file, under a tensor's key: it must not survive.
    let stray = store.records.borrow().keys().find(|k| k.ends_with("\nconv_in.weight") && k.contains("unet/")).unwrap().clone();
    let mut fake = store.records.borrow()[&stray].clone();
    let payload = fake.len() - 4;
    fake.truncate(payload);
    let crc = crc32fast::hash(&fake);
    fake.extend(crc.to_le_bytes());
    store.records.borrow_mut().insert(stray.clone(), fake);
    hub.reset();
    assert_eq!(contents(&prepare(&cache).unwrap()), expected());
    let fetched: Vec<_> = weight_requests(&hub.log("manifest")).into_iter().filter(|e| e["bytes"].as_u64().unwrap() > 8 && !e["range"].as_str().unwrap().starts_with("bytes=8-")).cloned().collect();
    assert_eq!(fetched.len(), 1, "only the unproven record is fetched again: {fetched:?}");
    assert!(all_whole(&store));
}

#[test]
fn a_manifest_of_a_newer_format_is_left_as_it_is() {
    let hub = StandIn::start(&[]);
    let (fetch, store) = (NativeFetch::default(), MemoryStore::default());
    let cache = cache(&hub, "newer", &fetch, Some(&store));
    prepare(&cache).unwrap();
    let key = manifest_key(&store);
    let record = store.records.borrow()[&key].clone();
    let mut manifest: serde_json::Value = serde_json::from_slice(&record[..record.len() - 4]).unwrap();
    manifest["version"] = 99.into();
    let mut newer = serde_json::to_vec(&manifest).unwrap();
    let crc = crc32fast::hash(&newer);
    newer.extend(crc.to_le_bytes());
    store.records.borrow_mut().insert(key, newer);
    let before = store.records.borrow().clone();
    let err = prepare(&cache).err().expect("a newer cache is not used");
    assert!(matches!(err, CacheError::Newer { version: 99, .. }), "{err}");
    assert!(pollster::block_on(cache.pending()).is_err());
    assert_eq!(*store.records.borrow(), before, "nothing was changed");
}

#[test]
fn pending_reads_the_plan_and_writes_nothing() {
    let hub = StandIn::start(&[]);
    let (fetch, store) = (NativeFetch::default(), MemoryStore::default());
    let cache = cache(&hub, "pending", &fetch, Some(&store));
    let needed: u64 = expected().values().map(|v| v.len() as u64).sum();
    let fresh = pollster::block_on(cache.pending()).unwrap();
    assert_eq!((fresh.download_bytes, fresh.cached_bytes, fresh.stored_bytes), (needed, 0, needed));
    assert!(store.records.borrow().is_empty(), "pending wrote {:?}", store.records.borrow().keys().collect::<Vec<_>>());
    prepare(&cache).unwrap();
    // The VAE changes on the Hub: it counts as missing, and its records stay until a load.
    hub.fault(serde_json::json!({"revision": "pending", "path": "vae/", "kind": "etag", "salt": "v2"}));
    let before = store.records.borrow().clone();
    let changed = pollster::block_on(cache.pending()).unwrap();
    let vae: u64 = expected().iter().filter(|(k, _)| k.starts_with("vae/")).map(|(_, v)| v.len() as u64).sum();
    assert_eq!((changed.download_bytes, changed.cached_bytes), (vae, needed - vae));
    assert_eq!(*store.records.borrow(), before);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|e| {
            let path = e.unwrap().path();
            if path.is_dir() { walk(&path) } else { vec![path] }
        })
        .collect()
}
