//! Which JavaScript `Error` name each failure gets, so a page can word it. Compiled and tested
//! natively; the browser shell only builds the `Error` object.

use crate::gpu::GpuError;
use crate::hub::{CacheError, HubError, StoreError};
use crate::pipeline::PipelineError;
use crate::schedulers::SchedulerError;
use crate::weights::LoadError;

/// The `name` of the `Error` a failed call rejects with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    NoWebGpu,
    GpuError,
    QuotaError,
    OfflineError,
    NetworkError,
    ModelError,
    ImageError,
    OptionError,
    CancelledError,
    StorageError,
}

impl ErrorKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::NoWebGpu => "NoWebGpu",
            Self::GpuError => "GpuError",
            Self::QuotaError => "QuotaError",
            Self::OfflineError => "OfflineError",
            Self::NetworkError => "NetworkError",
            Self::ModelError => "ModelError",
            Self::ImageError => "ImageError",
            Self::OptionError => "OptionError",
            Self::CancelledError => "CancelledError",
            Self::StorageError => "StorageError",
        }
    }
}

/// A failure that knows which kind of `Error` it is for JavaScript.
pub trait Classified: std::fmt::Display {
    fn kind(&self) -> ErrorKind;
}

impl Classified for GpuError {
    fn kind(&self) -> ErrorKind {
        match self {
            GpuError::NoWebGpu | GpuError::NoAdapter(_) => ErrorKind::NoWebGpu,
            GpuError::InvalidOption(_) => ErrorKind::OptionError,
            _ => ErrorKind::GpuError,
        }
    }
}

impl Classified for HubError {
    fn kind(&self) -> ErrorKind {
        if self.is_offline() { ErrorKind::NetworkError } else { ErrorKind::ModelError }
    }
}

impl Classified for LoadError {
    fn kind(&self) -> ErrorKind {
        match self {
            LoadError::Network(_) => ErrorKind::NetworkError,
            LoadError::Storage { full: true, .. } => ErrorKind::QuotaError,
            LoadError::Storage { full: false, .. } => ErrorKind::StorageError,
            _ => ErrorKind::ModelError,
        }
    }
}

impl Classified for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Quota => ErrorKind::QuotaError,
            StoreError::Other(_) => ErrorKind::StorageError,
        }
    }
}

impl Classified for CacheError {
    fn kind(&self) -> ErrorKind {
        match self {
            CacheError::Quota { .. } => ErrorKind::QuotaError,
            CacheError::Offline(_) => ErrorKind::OfflineError,
            CacheError::Hub(e) => e.kind(),
            CacheError::Load(e) => e.kind(),
            CacheError::Store(e) => e.kind(),
            CacheError::Newer { .. } => ErrorKind::StorageError,
        }
    }
}

impl Classified for PipelineError {
    fn kind(&self) -> ErrorKind {
        match self {
            PipelineError::Image(_) => ErrorKind::ImageError,
            PipelineError::InvalidOption(_) => ErrorKind::OptionError,
            PipelineError::Cancelled => ErrorKind::CancelledError,
            PipelineError::Gpu(_) => ErrorKind::GpuError,
            PipelineError::Config(_) | PipelineError::Scheduler(SchedulerError::Unsupported(_)) => ErrorKind::ModelError,
            PipelineError::Scheduler(SchedulerError::Steps(_)) => ErrorKind::OptionError,
            PipelineError::Load(e) => e.kind(),
        }
    }
}

/// Options that could not be used, named in the message.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[error("invalid options: {0}")]
pub struct OptionError(pub String);

impl Classified for OptionError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::OptionError
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network() -> HubError {
        HubError::Network { url: "u".into(), attempts: 3, message: "refused".into() }
    }

    #[test]
    fn a_network_failure_is_a_network_error_wherever_it_happens() {
        // While planning, while streaming a tensor into the pipeline, and while repairing one.
        assert_eq!(CacheError::Hub(network()).kind(), ErrorKind::NetworkError);
        let streaming = LoadError::Network("unet: conv_in.weight could not be fetched".into());
        assert_eq!(PipelineError::Load(streaming.clone()).kind(), ErrorKind::NetworkError);
        assert_eq!(CacheError::Load(streaming).kind(), ErrorKind::NetworkError);
        // The Hub answering no is the model's problem, not the network's.
        assert_eq!(CacheError::Hub(HubError::NotFound { url: "u".into() }).kind(), ErrorKind::ModelError);
        assert_eq!(PipelineError::Load(LoadError::Io("bad".into())).kind(), ErrorKind::ModelError);
        // A store failing under a load is the store's, not the model's.
        let full = LoadError::Storage { message: "quota".into(), full: true };
        assert_eq!(PipelineError::Load(full).kind(), ErrorKind::QuotaError);
        let broken = LoadError::Storage { message: "closed".into(), full: false };
        assert_eq!(PipelineError::Load(broken).kind(), ErrorKind::StorageError);
    }

    #[test]
    fn each_failure_has_its_kind() {
        assert_eq!(GpuError::NoWebGpu.kind(), ErrorKind::NoWebGpu);
        assert_eq!(GpuError::NoAdapter("none".into()).kind(), ErrorKind::NoWebGpu);
        assert_eq!(GpuError::RequestDevice("lost".into()).kind(), ErrorKind::GpuError);
        assert_eq!(GpuError::InvalidOption("dtype".into()).kind(), ErrorKind::OptionError);
        assert_eq!(CacheError::Quota { needed: 1, available: None, stored: 0 }.kind(), ErrorKind::QuotaError);
        assert_eq!(CacheError::Store(StoreError::Quota).kind(), ErrorKind::QuotaError);
        assert_eq!(CacheError::Store(StoreError::Other("x".into())).kind(), ErrorKind::StorageError);
        assert_eq!(CacheError::Offline("m".into()).kind(), ErrorKind::OfflineError);
        assert_eq!(CacheError::Newer { model: "m".into(), version: 2 }.kind(), ErrorKind::StorageError);
        assert_eq!(PipelineError::Cancelled.kind(), ErrorKind::CancelledError);
        assert_eq!(PipelineError::InvalidOption("n".into()).kind(), ErrorKind::OptionError);
        assert_eq!(PipelineError::Gpu("lost".into()).kind(), ErrorKind::GpuError);
        assert_eq!(PipelineError::Scheduler(SchedulerError::Steps("too many".into())).kind(), ErrorKind::OptionError);
        assert_eq!(PipelineError::Scheduler(SchedulerError::Unsupported("prk".into())).kind(), ErrorKind::ModelError);
        assert_eq!(OptionError("seed".into()).kind().name(), "OptionError");
    }
}
