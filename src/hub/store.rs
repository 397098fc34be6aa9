//! The weight cache's storage behind one small trait (IndexedDB in the browser), and the
//! record format: each record is its payload followed by the payload's CRC-32, so a damaged or
//! cut record is recognised when read.

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
    fn get<'a>(&'a self, key: &'a str) -> LocalFuture<'a, Result<Option<Vec<u8>>, StoreError>>;
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

/// A record is its payload followed by the payload's CRC-32, so a damaged or cut record is
/// recognised on read.
pub(super) fn seal(mut payload: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&payload);
    payload.extend_from_slice(&crc.to_le_bytes());
    payload
}

/// Whether a stored record is complete and undamaged (its checksum holds).
pub fn is_whole(record: &[u8]) -> bool {
    unseal(record.to_vec()).is_some()
}

pub(super) fn unseal(mut record: Vec<u8>) -> Option<Vec<u8>> {
    let split = record.len().checked_sub(4)?;
    let crc = u32::from_le_bytes(record[split..].try_into().unwrap());
    record.truncate(split);
    (crc32fast::hash(&record) == crc).then_some(record)
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
