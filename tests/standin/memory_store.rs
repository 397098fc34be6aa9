//! Records in memory behind `Store`, for the native tests of the Hub cache.

use std::cell::RefCell;
use std::collections::BTreeMap;

use imvar::LocalFuture;
use imvar::hub::{Store, StoreError};

/// Records in memory, with an optional byte limit that answers writes like a full quota, and
/// what it reports as available (`None`: unknown, as where there is no storage estimate). Every
/// key is logged in `gets` when its read is asked for (not when it is awaited), in order.
#[derive(Default)]
pub struct MemoryStore {
    pub records: RefCell<BTreeMap<String, Vec<u8>>>,
    pub gets: RefCell<Vec<String>>,
    pub limit: Option<u64>,
    pub estimate: Option<u64>,
}

impl MemoryStore {
    fn used(&self) -> u64 {
        self.records.borrow().values().map(|v| v.len() as u64).sum()
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &str) -> LocalFuture<'_, Result<Option<Vec<u8>>, StoreError>> {
        self.gets.borrow_mut().push(key.into());
        Box::pin(std::future::ready(Ok(self.records.borrow().get(key).cloned())))
    }

    fn put(&self, records: Vec<(String, Vec<u8>)>) -> LocalFuture<'_, Result<(), StoreError>> {
        let size: u64 = records.iter().map(|(_, v)| v.len() as u64).sum();
        let result = if self.limit.is_some_and(|limit| self.used() + size > limit) {
            Err(StoreError::Quota)
        } else {
            self.records.borrow_mut().extend(records);
            Ok(())
        };
        Box::pin(std::future::ready(result))
    }

    fn keys<'a>(&'a self, prefix: &'a str) -> LocalFuture<'a, Result<Vec<String>, StoreError>> {
        let keys = self.records.borrow().keys().filter(|k| k.starts_with(prefix)).cloned().collect();
        Box::pin(std::future::ready(Ok(keys)))
    }

    fn delete<'a>(&'a self, prefix: &'a str) -> LocalFuture<'a, Result<(), StoreError>> {
        self.records.borrow_mut().retain(|k, _| !k.starts_with(prefix));
        Box::pin(std::future::ready(Ok(())))
    }

    fn available(&self) -> LocalFuture<'_, Option<u64>> {
        Box::pin(std::future::ready(self.estimate))
    }

    fn exclusive<'a>(&'a self, _: &'a str) -> LocalFuture<'a, Box<dyn std::any::Any>> {
        Box::pin(std::future::ready(Box::new(()) as Box<dyn std::any::Any>))
    }
}
