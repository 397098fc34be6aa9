//! What the cache holds of one model: the manifest (files, their tensors and byte ranges, the
//! commit they came from), how tensors are kept (`Storage`), and the record keys.

use safetensors::Dtype;

use half::slice::HalfFloatSliceExt;

use super::HubModel;
use crate::weights::TensorInfo;

/// How weights are kept: fp16 for an f16 device (fp32 tensors rounded), else as the file has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    F16,
    AsStored,
}

impl Storage {
    pub(super) fn dtype_of(self, stored: Dtype) -> Dtype {
        match (self, stored) {
            (Storage::F16, Dtype::F32) => Dtype::F16,
            _ => stored,
        }
    }
}

/// fp32 little-endian bytes to fp16 ones, rounding to nearest even (the `half` crate's
/// conversion, in bulk).
pub fn f32_to_f16_bytes(bytes: &[u8]) -> Vec<u8> {
    let values: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let mut halves = vec![half::f16::ZERO; values.len()];
    halves.convert_from_f32_slice(&values);
    halves.iter().flat_map(|h| h.to_le_bytes()).collect()
}

pub(super) fn convert(storage: Storage, dtype: Dtype, bytes: Vec<u8>) -> Vec<u8> {
    if storage.dtype_of(dtype) == dtype { bytes } else { f32_to_f16_bytes(&bytes) }
}

/// One tensor of a weight file: where it lies and how it is kept.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TensorEntry {
    /// Name, shape and dtype in the file.
    pub info: TensorInfo,
    /// Byte range in the file.
    pub start: u64,
    pub end: u64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FileEntry {
    pub component: String,
    pub path: String,
    pub etag: Option<String>,
    pub size: u64,
    /// CRC-32 of the safetensors header: with the size, tells a changed file where the ETag is
    /// hidden (CORS) or absent.
    pub header_crc: u32,
    /// The tensors imvar needs, in file order.
    pub tensors: Vec<TensorEntry>,
}

impl FileEntry {
    /// What names this version of the file: its tensor records are sealed for it, so a record
    /// written from another version never passes its checksum.
    pub fn identity(&self) -> Vec<u8> {
        format!("{}\n{}\n{}\n{:08x}", self.path, self.etag.as_deref().unwrap_or(""), self.size, self.header_crc).into_bytes()
    }

    /// Whether `other` describes the same version of the same file.
    pub(super) fn same_file(&self, other: &FileEntry) -> bool {
        self.identity() == other.identity()
    }
}

/// The manifest format this build writes. A manifest without the field is format 1 (the same
/// fields); one of a later format was written by a newer imvar and is left as it is.
pub const MANIFEST_VERSION: u32 = 1;

fn first_version() -> u32 {
    1
}

/// What is (to be) cached of one model.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// The format (`MANIFEST_VERSION` when written by this build).
    #[serde(default = "first_version")]
    pub version: u32,
    /// The model as asked for (its revision may be a branch).
    pub model: HubModel,
    /// The commit the plan was read from (`X-Repo-Commit`, a hex digest): every file is fetched
    /// from it, so a push during a download cannot mix two versions.
    pub commit: Option<String>,
    pub storage: Storage,
    /// Text files (model index, configs), cached whole.
    pub texts: Vec<String>,
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// Bytes the cached tensors take.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_sum(self.files.iter().flat_map(|f| &f.tensors))
    }

    /// Bytes `tensors` take in the cache.
    pub fn stored_sum<'t>(&self, tensors: impl IntoIterator<Item = &'t TensorEntry>) -> u64 {
        tensors.into_iter().map(|t| self.stored_len(t)).sum()
    }

    /// Bytes one tensor takes in the cache.
    pub fn stored_len(&self, tensor: &TensorEntry) -> u64 {
        let info = TensorInfo { dtype: self.storage.dtype_of(tensor.info.dtype), ..tensor.info.clone() };
        info.byte_len()
    }

    pub(super) fn id(&self) -> String {
        cache_id(&self.model, self.storage)
    }

    /// The model at the commit the plan was read from (at the asked revision when the Hub named
    /// no commit).
    pub fn pinned(&self) -> HubModel {
        HubModel { revision: self.commit.clone().unwrap_or_else(|| self.model.revision.clone()), ..self.model.clone() }
    }
}

/// A manifest record as found in the store.
#[derive(Debug)]
pub(super) enum Stored {
    Readable(Manifest),
    /// Damaged, or not a manifest this build can read: re-planned, and only the tensor records
    /// whose checksums prove them the planned files' are kept.
    Unreadable,
    /// Written by a newer imvar (this format): left untouched.
    Newer(u32),
}

impl Stored {
    pub(super) fn read(record: Vec<u8>) -> Self {
        let Some(bytes) = super::store::unseal(record) else { return Stored::Unreadable };
        /// The one field every format has (the others may change).
        #[derive(serde::Deserialize)]
        struct Format {
            #[serde(default = "first_version")]
            version: u32,
        }
        match serde_json::from_slice::<Format>(&bytes) {
            Ok(Format { version }) if version > MANIFEST_VERSION => Stored::Newer(version),
            _ => serde_json::from_slice(&bytes).map_or(Stored::Unreadable, Stored::Readable),
        }
    }
}

pub(super) fn cache_id(model: &HubModel, storage: Storage) -> String {
    format!("{}#{}", model.key(), serde_json::to_value(storage).unwrap().as_str().unwrap())
}

pub(super) const MANIFEST: &str = "manifest\n";

pub(super) fn manifest_key(id: &str) -> String {
    format!("{MANIFEST}{id}")
}

pub(super) const TEXT: &str = "text\n";
pub(super) const TENSOR: &str = "tensor\n";

pub(super) fn text_key(id: &str, path: &str) -> String {
    format!("{TEXT}{id}\n{path}")
}

pub(super) fn tensor_prefix(id: &str, path: &str) -> String {
    format!("{TENSOR}{id}\n{path}\n")
}

#[cfg(test)]
mod tests {
    use super::f32_to_f16_bytes;
    use crate::testing::gpu_test;

    /// An f16's value from its bits, by the IEEE 754 layout (1 sign, 5 exponent, 10 mantissa bits).
    fn f16_value(bits: u16) -> f64 {
        let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
        let (exponent, mantissa) = ((bits >> 10) & 0x1f, (bits & 0x3ff) as f64);
        sign * match exponent {
            0 => mantissa * 2f64.powi(-24),
            31 if mantissa == 0.0 => f64::INFINITY,
            31 => f64::NAN,
            e => (1024.0 + mantissa) * 2f64.powi(e as i32 - 25),
        }
    }

    /// The f16 nearest to `v`, ties to the even mantissa, found by search over every finite f16
    /// (no conversion library involved). From 65520 up, halfway to the next power of two, it
    /// rounds to infinity.
    fn reference_f16(v: f32) -> u16 {
        if v.is_nan() {
            return 0x7e00;
        }
        let sign = if v.is_sign_negative() { 0x8000 } else { 0 };
        let magnitude = (v as f64).abs();
        if magnitude >= 65520.0 {
            return sign | 0x7c00;
        }
        // Positive finite f16s grow with their bits: bisect for the last one not above `magnitude`.
        let (mut below, mut top) = (0u16, 0x7bffu16);
        while below < top {
            let middle = below + (top - below).div_ceil(2);
            if f16_value(middle) <= magnitude { below = middle } else { top = middle - 1 }
        }
        let above = (below + 1).min(0x7bff);
        let (low, high) = (magnitude - f16_value(below), f16_value(above) - magnitude);
        let nearest = if low < high || (low == high && below % 2 == 0) { below } else { above };
        sign | nearest
    }

    // Also in the browser, where `half` has no hardware conversion to lean on.
    gpu_test! {
        async fn f16_conversion_rounds_to_nearest_even_on_edge_values() {
            let mut values = vec![
                0.0f32, -0.0, 1.0, -1.0, 65504.0, 65520.0, -65520.0, 1e-8, 5.96e-8, 2.98e-8, 2.99e-8, 6.1e-5,
                f32::MIN_POSITIVE, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1.000_976_6, 1.000_488_3, 1.001_464_8, 0.1,
                f32::MAX, f32::MIN,
            ];
            // Just below the smallest value that rounds to infinity, and the smallest normal f16.
            values.extend([f32::from_bits(65520f32.to_bits() - 1), 2f32.powi(-14)]);
            // Every 64th f16 (sign, both ends and the subnormals included), the midpoint to its
            // neighbour, and the f32 just above it.
            for bits in (0..=u16::MAX).step_by(64).chain([1, 2, 0x3ff, 0x400, 0x7bff, 0x8001]) {
                let (h, next) = (f16_value(bits), f16_value(bits.wrapping_add(1)));
                if h.is_finite() && next.is_finite() {
                    let h = h as f32;
                    values.extend([h, ((h as f64 + next) / 2.0) as f32, f32::from_bits(h.to_bits() + 1)]);
                }
            }
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let ours = f32_to_f16_bytes(&bytes);
            assert_eq!(ours.len(), 2 * values.len());
            for (i, v) in values.iter().enumerate() {
                let (got, expected) = (u16::from_le_bytes([ours[2 * i], ours[2 * i + 1]]), reference_f16(*v));
                let both_nan = f16_value(got).is_nan() && v.is_nan();
                assert!(got == expected || both_nan, "{v:e}: {got:#06x} != {expected:#06x}");
            }
        }
    }
}
