//! The weight cache's storage behind one small trait (IndexedDB in the browser), and the
//! record format: each record is its payload followed by a CRC-32 of what it belongs to and the
//! payload, so a damaged or cut record, or one written for another file, is recognised when read.

use crate::LocalFuture;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum StoreError {
    #[error("the storage quota is full")]
    Quota,
    #[error("storage error: {0}")]
    Other(String),
}

/// Durable key → bytes records (IndexedDB in the browser, memory in tests).
pub trait Store {
    /// The record under `key`. The read starts when `get` is called, not when the future is
    /// first polled, so a reader can ask for the next record while it handles this one.
    fn get(&self, key: &str) -> LocalFuture<'_, Result<Option<Vec<u8>>, StoreError>>;
    /// Writes all `records` in one transaction: every record lands whole, or none does.
    fn put(&self, records: Vec<(String, Vec<u8>)>) -> LocalFuture<'_, Result<(), StoreError>>;
    /// Keys starting with `prefix`.
    fn keys<'a>(&'a self, prefix: &'a str) -> LocalFuture<'a, Result<Vec<String>, StoreError>>;
    /// Deletes every record whose key starts with `prefix`.
    fn delete<'a>(&'a self, prefix: &'a str) -> LocalFuture<'a, Result<(), StoreError>>;
    /// Bytes that may still be stored, where the platform tells.
    fn available(&self) -> LocalFuture<'_, Option<u64>>;
    /// Holds `name` exclusively (across tabs in the browser) until the guard is dropped.
    fn exclusive<'a>(&'a self, name: &'a str) -> LocalFuture<'a, Box<dyn std::any::Any>>;
}

/// A record is its payload followed by the CRC-32 of `context` and the payload, so a damaged or
/// cut record is recognised on read, and so is one read for another `context` than it was
/// written for (a tensor record's context is its file's identity: a record written from one
/// version of a file never passes for a tensor of another).
pub(super) fn seal_for(context: &[u8], mut payload: Vec<u8>) -> Vec<u8> {
    let crc = checksum(context, &payload);
    payload.extend_from_slice(&crc.to_le_bytes());
    payload
}

/// The payload of a record sealed for `context`, if its checksum holds.
pub(super) fn unseal_for(context: &[u8], mut record: Vec<u8>) -> Option<Vec<u8>> {
    holds(context, &record).then(|| {
        record.truncate(record.len() - 4);
        record
    })
}

/// Whether `record` was sealed for `context` and is whole.
pub(super) fn holds(context: &[u8], record: &[u8]) -> bool {
    let Some(split) = record.len().checked_sub(4) else { return false };
    checksum(context, &record[..split]).to_le_bytes() == record[split..]
}

fn checksum(context: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(context);
    hasher.update(payload);
    hasher.finalize()
}

/// A record that belongs to nothing else (the manifest, a config): sealed for no context.
pub(super) fn seal(payload: Vec<u8>) -> Vec<u8> {
    seal_for(b"", payload)
}

pub(super) fn unseal(record: Vec<u8>) -> Option<Vec<u8>> {
    unseal_for(b"", record)
}

/// Whether a stored record is complete and undamaged for `context` (its checksum holds).
pub fn is_whole(context: &[u8], record: &[u8]) -> bool {
    holds(context, record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_detect_damage() {
        let record = seal(vec![1, 2, 3, 4, 5]);
        assert_eq!(unseal(record.clone()), Some(vec![1, 2, 3, 4, 5]));
        let mut flipped = record.clone();
        flipped[2] ^= 1;
        assert_eq!(unseal(flipped), None);
        assert_eq!(unseal(record[..record.len() - 1].to_vec()), None);
        assert_eq!(unseal(vec![1]), None);
        let tensor = seal_for(b"file v1", vec![1, 2, 3]);
        assert_eq!(unseal_for(b"file v1", tensor.clone()), Some(vec![1, 2, 3]));
        assert_eq!(unseal_for(b"file v2", tensor.clone()), None);
        assert_eq!(unseal(tensor), None);
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod fuzz {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #![proptest_config(crate::testing::fuzz_cases(2000))]

            /// Any stored bytes are a whole record (its checksum holds) or none: never a panic,
            /// and a record cut or changed anywhere is never taken for whole.
            #[test]
            fn any_bytes_are_a_whole_record_or_none(payload in proptest::collection::vec(any::<u8>(), 0..64), at in any::<prop::sample::Index>(), flip in 1u8..) {
                let record = seal(payload.clone());
                prop_assert_eq!(unseal(record.clone()), Some(payload));
                let mut damaged = record.clone();
                let at = at.index(damaged.len());
                damaged[at] ^= flip;
                prop_assert_eq!(unseal(damaged), None);
                prop_assert_eq!(unseal(record[..at].to_vec()), None);
            }
        }
    }
}
