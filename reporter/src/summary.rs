//! The report's summary: what the trace and the join say about the recording as a
//! whole, and the lines the terminal and HTML reports print from it.

use serde::Serialize;

/// The counts are filled in by [`crate::report::Collector::report`]; the rest comes
/// from the trace.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub ios: u64,
    pub complete_ios: u64,
    pub partial_ios: u64,
    pub duration_ns: u64,
    pub iops: f64,
    pub bytes: u64,
    pub events: u64,
    pub events_lost_in_kernel: u64,
    pub events_unread: u64,
    pub events_late: u64,
    pub trace_complete: bool,
    pub damage: Option<crate::reader::Damage>,
    /// Fields and entries of the trace's JSON chunks and layout snapshot left out
    /// because they were malformed (see docs/trace-format.md).
    #[serde(skip_serializing_if = "is_zero")]
    pub trace_entries_skipped: u64,
    pub layers_missing: Vec<String>,
    /// Boundaries of layers that were traced but that no complete IO has, each with
    /// the layer it bounds (e.g. `notify (virtio_front)`: no KVM doorbell event, as
    /// under TCG): those layers' time is in the next layer's.
    pub boundaries_missing: Vec<String>,
    /// IOs that waited in QEMU's IO throttling (a drive's `throttling.*` limits), and
    /// how long: part of their `qemu` layer.
    #[serde(skip_serializing_if = "Throttling::is_none")]
    pub throttled: Throttling,
    pub peak_in_flight: usize,
    /// Block requests whose completion event was lost: their pointer came back for a
    /// new request, or they outlived any real request (30 s of trace time).
    pub requests_completion_lost: u64,
    /// Guest requests in flight when the recording started (only their end traced)
    /// and when it stopped (their end not traced): partial rows, with those reasons.
    pub cut_at_start: u64,
    pub cut_at_end: u64,
    /// Quantiles are exact (false: more than [`crate::report::EXACT_IOS`] complete IOs, so they come
    /// from log buckets, within 0.4%).
    pub exact_quantiles: bool,
}

/// Waits in QEMU's IO throttling, over the IOs that had one.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Throttling {
    pub ios: u64,
    pub total_ns: u64,
    pub max_ns: u64,
}

impl Throttling {
    fn is_none(&self) -> bool {
        self.ios == 0
    }

    /// The summary's line, if any IO waited.
    pub fn note(&self) -> Option<String> {
        (self.ios > 0).then(|| {
            format!(
                "{} IOs waited in QEMU's throttling: mean {}, max {} (inside the qemu layer)",
                self.ios,
                crate::units::fmt_ns(self.total_ns as f64 / self.ios as f64),
                crate::units::fmt_ns(self.max_ns as f64)
            )
        })
    }
}

/// The summary's line on requests the recording window cut, if any.
pub fn cut_note(s: &Summary) -> Option<String> {
    (s.cut_at_start + s.cut_at_end > 0).then(|| {
        format!(
            "{} guest requests in flight when the recording started, {} when it stopped \
             (partial rows)",
            s.cut_at_start, s.cut_at_end
        )
    })
}

/// The summary's "layers missing" line: layers not traced, then boundaries of traced
/// layers that no complete IO has.
pub fn layers_missing_note(s: &Summary) -> String {
    let traced = if s.layers_missing.is_empty() {
        "none".to_owned()
    } else {
        s.layers_missing.join(", ")
    };
    if s.boundaries_missing.is_empty() {
        traced
    } else {
        format!(
            "{traced}; not seen in any IO: {}",
            s.boundaries_missing.join(", ")
        )
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
