//! IndexedDB behind `hub::Store`: one object store of key → bytes records. Each `put`
//! is one readwrite transaction, so a chunk's records land whole or not at all. Storage
//! estimates and Web Locks come from `navigator` (persistence is asked for by the page: workers
//! have no `storage.persist()`).

use js_sys::{Array, Promise, Reflect, Uint8Array};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{EventTarget, IdbDatabase, IdbFactory, IdbKeyRange, IdbObjectStore, IdbRequest, IdbTransaction, IdbTransactionMode};

use crate::LocalFuture;
use crate::hub::{Store, StoreError};
use crate::js::{self, js_message};

const RECORDS: &str = "records";

pub struct IdbStore {
    db: IdbDatabase,
}

fn other(error: JsValue) -> StoreError {
    StoreError::Other(js_message(&error))
}

/// A DOMException named QuotaExceededError is the quota; anything else is reported as it is.
fn classify(error: JsValue) -> StoreError {
    let name = Reflect::get(&error, &"name".into()).ok().and_then(|n| n.as_string());
    if name.as_deref() == Some("QuotaExceededError") { StoreError::Quota } else { other(error) }
}

/// Settles when `target` fires `success` (true) or `failure` (false). It listens from the call
/// on, so the future may be awaited later (an event fired before then is not missed). The
/// listeners hold only a promise's resolve/reject functions (never the request, whose result may
/// be a whole tensor) and are removed once it settles, so nothing outlives the await.
fn fired(target: &EventTarget, success: &'static str, failure: &'static str) -> impl Future<Output = bool> + use<> {
    let (mut resolve, mut reject) = (None, None);
    let promise = Promise::new(&mut |yes, no| {
        resolve = Some(yes);
        reject = Some(no);
    });
    let (resolve, reject) = (resolve.unwrap(), reject.unwrap());
    let on_success = Closure::<dyn FnMut()>::new(move || drop(resolve.call0(&JsValue::NULL)));
    let on_failure = Closure::<dyn FnMut()>::new(move || drop(reject.call0(&JsValue::NULL)));
    for (event, listener) in [(success, &on_success), (failure, &on_failure)] {
        let _ = target.add_event_listener_with_callback(event, listener.as_ref().unchecked_ref());
    }
    let target = target.clone();
    async move {
        let succeeded = JsFuture::from(promise).await.is_ok();
        for (event, listener) in [(success, &on_success), (failure, &on_failure)] {
            let _ = target.remove_event_listener_with_callback(event, listener.as_ref().unchecked_ref());
        }
        succeeded
    }
}

/// Settles when `request` succeeds (with its result) or fails (with its error); listens from
/// the call on, as `fired`.
fn settle(request: &IdbRequest) -> impl Future<Output = Result<JsValue, JsValue>> + use<> {
    let (request, fired) = (request.clone(), fired(request, "success", "error"));
    async move {
        if fired.await {
            request.result()
        } else {
            Err(request.error().ok().flatten().map(JsValue::from).unwrap_or(JsValue::NULL))
        }
    }
}

/// Settles when `transaction` commits, or fails with the error that aborted it.
async fn committed(transaction: &IdbTransaction) -> Result<(), JsValue> {
    if fired(transaction, "complete", "abort").await {
        Ok(())
    } else {
        Err(transaction.error().map(JsValue::from).unwrap_or_else(|| "the transaction was aborted".into()))
    }
}

/// Keys from `prefix` up to `prefix` followed by the highest code unit.
fn prefix_range(prefix: &str) -> Result<JsValue, StoreError> {
    IdbKeyRange::bound(&prefix.into(), &format!("{prefix}\u{ffff}").into()).map(JsValue::from).map_err(other)
}

/// `navigator.storage.estimate()`: (usage, quota) in bytes.
pub async fn estimate() -> Option<(u64, u64)> {
    let estimate = js::await_navigator("storage", "estimate", &[]).await?;
    let field = |name: &str| Reflect::get(&estimate, &name.into()).ok().and_then(|v| v.as_f64()).map(|v| v as u64);
    Some((field("usage")?, field("quota")?))
}

impl IdbStore {
    /// Opens (creating on first use) the database `name`.
    pub async fn open(name: &str) -> Result<Self, StoreError> {
        let factory: IdbFactory = Reflect::get(&js_sys::global(), &"indexedDB".into())
            .ok()
            .and_then(|f| f.dyn_into().ok())
            .ok_or_else(|| StoreError::Other("IndexedDB is not available (private browsing?)".into()))?;
        let request = factory.open_with_u32(name, 1).map_err(other)?;
        // First use: create the object store (the event's target is the open request).
        let on_upgrade = Closure::<dyn FnMut(web_sys::Event)>::new(|event: web_sys::Event| {
            let result = event.target().and_then(|t| t.dyn_into::<IdbRequest>().ok()).and_then(|r| r.result().ok());
            if let Some(db) = result.and_then(|db| db.dyn_into::<IdbDatabase>().ok())
                && !db.object_store_names().contains(RECORDS)
            {
                let _ = db.create_object_store(RECORDS);
            }
        });
        request.set_onupgradeneeded(Some(on_upgrade.as_ref().unchecked_ref()));
        let opened = settle(&request).await;
        request.set_onupgradeneeded(None);
        let db: IdbDatabase = opened.map_err(other)?.unchecked_into();
        Ok(Self { db })
    }

    fn records(&self, mode: IdbTransactionMode) -> Result<(IdbTransaction, IdbObjectStore), StoreError> {
        let transaction = self.db.transaction_with_str_and_mode(RECORDS, mode).map_err(other)?;
        let store = transaction.object_store(RECORDS).map_err(other)?;
        Ok((transaction, store))
    }

    /// Asks for the record at once; the future only waits for it.
    fn get_record(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + use<> {
        let settled = self.records(IdbTransactionMode::Readonly).and_then(|(_, store)| store.get(&key.into()).map_err(other)).map(|r| settle(&r));
        async move {
            let value = settled?.await.map_err(other)?;
            Ok(value.dyn_into::<Uint8Array>().ok().map(|a| a.to_vec()))
        }
    }

    async fn put_records(&self, records: Vec<(String, Vec<u8>)>) -> Result<(), StoreError> {
        let (transaction, store) = self.records(IdbTransactionMode::Readwrite)?;
        for (key, bytes) in records {
            if let Err(e) = store.put_with_key(&Uint8Array::from(bytes.as_slice()), &key.into()) {
                // All or none: without this the records put so far would commit.
                let _ = transaction.abort();
                return Err(classify(e));
            }
        }
        committed(&transaction).await.map_err(classify)
    }

    async fn keys_with(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let (_, store) = self.records(IdbTransactionMode::Readonly)?;
        let request = store.get_all_keys_with_key(&prefix_range(prefix)?).map_err(other)?;
        let keys: Array = settle(&request).await.map_err(other)?.unchecked_into();
        Ok(keys.iter().filter_map(|k| k.as_string()).collect())
    }

    async fn delete_with(&self, prefix: &str) -> Result<(), StoreError> {
        let (transaction, store) = self.records(IdbTransactionMode::Readwrite)?;
        store.delete(&prefix_range(prefix)?).map_err(other)?;
        committed(&transaction).await.map_err(other)
    }
}

impl Store for IdbStore {
    fn get(&self, key: &str) -> LocalFuture<'_, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(self.get_record(key))
    }

    fn put(&self, records: Vec<(String, Vec<u8>)>) -> LocalFuture<'_, Result<(), StoreError>> {
        Box::pin(self.put_records(records))
    }

    fn keys<'a>(&'a self, prefix: &'a str) -> LocalFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(self.keys_with(prefix))
    }

    fn delete<'a>(&'a self, prefix: &'a str) -> LocalFuture<'a, Result<(), StoreError>> {
        Box::pin(self.delete_with(prefix))
    }

    fn available(&self) -> LocalFuture<'_, Option<u64>> {
        Box::pin(async { estimate().await.map(|(usage, quota)| quota.saturating_sub(usage)) })
    }

    /// A Web Lock named `name`, held until the guard drops (no lock where the API is missing).
    fn exclusive<'a>(&'a self, name: &'a str) -> LocalFuture<'a, Box<dyn std::any::Any>> {
        Box::pin(async move { Box::new(WebLock::acquire(name).await) as Box<dyn std::any::Any> })
    }
}

/// A held Web Lock: `navigator.locks.request` keeps it while the promise its callback returned
/// is pending; dropping the guard resolves that promise.
struct WebLock {
    release: Option<js_sys::Function>,
}

impl WebLock {
    async fn acquire(name: &str) -> Self {
        let mut release = None;
        let held = Promise::new(&mut |resolve, _| release = Some(resolve));
        let (granted_tx, granted) = {
            let mut grant = None;
            let promise = Promise::new(&mut |resolve, _| grant = Some(resolve));
            (grant.unwrap(), promise)
        };
        let callback = Closure::once_into_js(move |_lock: JsValue| {
            let _ = granted_tx.call0(&JsValue::NULL);
            held
        });
        let Some(request) = js::call_navigator("locks", "request", &[name.into(), callback]) else {
            return Self { release: None };
        };
        // The request's own promise settles only after release, or at once if it is refused
        // (an opaque origin, say): then go on without a lock rather than wait forever.
        let refused = JsFuture::from(Promise::resolve(&request));
        match futures_util::future::select(JsFuture::from(granted), refused).await {
            futures_util::future::Either::Left(_) => Self { release },
            futures_util::future::Either::Right(_) => Self { release: None },
        }
    }
}

impl Drop for WebLock {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.call0(&JsValue::NULL);
        }
    }
}
