//! Progress of a download or a load: bytes per component and overall, speed and ETA.

use std::collections::BTreeMap;

use web_time::Instant;

/// Which phase progress reports are about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Fetching tensors (and converting them) into the cache.
    Download,
    /// Moving tensors from the cache (or the network) to the GPU.
    Load,
}

impl Phase {
    /// The phase as reports name it: `download` or `load`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Download => "download",
            Phase::Load => "load",
        }
    }
}

/// A progress report: bytes of one component and of all, with speed and ETA for the phase.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheEvent {
    pub phase: Phase,
    pub component: String,
    pub done: u64,
    pub total: u64,
    pub overall_done: u64,
    pub overall_total: u64,
    pub bytes_per_second: f64,
    pub eta_seconds: Option<f64>,
}

/// Counts bytes per component for one phase and turns them into `CacheEvent`s.
pub struct Tracker {
    phase: Phase,
    components: BTreeMap<String, (u64, u64)>,
    started: Instant,
}

impl Tracker {
    pub fn new(phase: Phase, totals: impl IntoIterator<Item = (String, u64)>) -> Self {
        Self { phase, components: totals.into_iter().map(|(c, t)| (c, (0, t))).collect(), started: Instant::now() }
    }

    /// Records `bytes` more done for `component`.
    pub fn advance(&mut self, component: &str, bytes: u64) -> CacheEvent {
        let entry = self.components.entry(component.into()).or_default();
        entry.0 += bytes;
        let (done, total) = *entry;
        let (overall_done, overall_total) = self.components.values().fold((0, 0), |(d, t), (a, b)| (d + a, t + b));
        let seconds = self.started.elapsed().as_secs_f64();
        let bytes_per_second = if seconds > 0.0 { overall_done as f64 / seconds } else { 0.0 };
        let eta_seconds = (bytes_per_second > 0.0).then(|| (overall_total - overall_done) as f64 / bytes_per_second);
        CacheEvent {
            phase: self.phase,
            component: component.into(),
            done,
            total,
            overall_done,
            overall_total,
            bytes_per_second,
            eta_seconds,
        }
    }
}
