//! The report's summary: what the trace and the join say about the recording as a
//! whole, and the lines the terminal and HTML reports print from it.

use crate::cache::DiskCache;
use crate::join::{IoRow, OtherClass, OtherIo, flags};
use crate::units::{fmt_ns, human_bytes};
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
    /// Events whose timestamp lies outside the recording (impossible: a damaged or
    /// foreign file), left out of the join.
    #[serde(skip_serializing_if = "is_zero")]
    pub events_impossible: u64,
    pub trace_complete: bool,
    pub damage: Option<crate::reader::Damage>,
    /// Fields and entries of the trace's JSON chunks and layout snapshot left out
    /// because they were malformed (see docs/trace-format.md).
    #[serde(skip_serializing_if = "is_zero")]
    pub trace_entries_skipped: u64,
    pub layers_missing: Vec<String>,
    /// The libvirt domain recorded (`record --domain`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The VMs of a recording of several, each with when its tracing began or ended
    /// if not with the recording's; and the QEMU processes it did not trace, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vms: Vec<String>,
    /// Events of the traced processes whose thread no VM was known to have (joined
    /// as the first VM's).
    #[serde(skip_serializing_if = "is_zero")]
    pub events_of_unknown_threads: u64,
    /// Boundaries of layers that were traced but that no complete IO has, each with
    /// the layer it bounds (e.g. `notify (virtio_front)`: no KVM doorbell event, as
    /// under TCG): those layers' time is in the next layer's.
    pub boundaries_missing: Vec<String>,
    /// IOs that waited in QEMU's IO throttling (a drive's `throttling.*` limits), and
    /// how long: part of their `qemu` layer.
    #[serde(skip_serializing_if = "Throttling::is_none")]
    pub throttled: Throttling,
    /// The cache mode each disk ran with (see [`crate::cache`]).
    pub cache_modes: Vec<DiskCache>,
    /// What the host page cache did for the IOs (buffered cache modes, loop devices
    /// without direct IO).
    #[serde(skip_serializing_if = "PageCache::is_none")]
    pub page_cache: PageCache,
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
    /// What `--op`, `--disk`, `--min-latency` and `--from/--to` kept: everything else
    /// (counts, tables, export) is of the IOs kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filtered: Option<crate::filter::Filtered>,
}

/// What is wrong with a trace as input, a line each (none when nothing is): what
/// `report`'s summary table says, for the outputs that have no such table (exports,
/// `compare`) to warn of on stderr.
pub fn input_warnings(
    damage: Option<&crate::reader::Damage>,
    lost_in_kernel: u64,
    impossible: u64,
    complete: bool,
) -> Vec<String> {
    let mut w = Vec::new();
    if let Some(d) = damage {
        w.push(format!(
            "damaged at byte {}: {} ({} bytes unread)",
            d.offset, d.problem, d.bytes_unread
        ));
    }
    if lost_in_kernel > 0 {
        w.push(format!(
            "{lost_in_kernel} events were lost in the kernel while recording"
        ));
    }
    if impossible > 0 {
        w.push(format!(
            "{impossible} events with timestamps outside the recording were left out"
        ));
    }
    if !complete {
        w.push("the recording did not end properly (no End chunk): interrupted?".into());
    }
    w
}

/// The events row: how many were read, lost, left unread, out of order, impossible.
pub fn events_note(s: &Summary) -> String {
    let mut t = format!(
        "{} read, {} lost in the kernel, {} unread (damage), {} out of order",
        s.events, s.events_lost_in_kernel, s.events_unread, s.events_late
    );
    if s.events_impossible > 0 {
        t += &format!(
            ", {} with timestamps outside the recording (damage, left out)",
            s.events_impossible
        );
    }
    t
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

/// The host page cache's part, counted over every IO (complete or not) and the IO no
/// request caused.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PageCache {
    pub reads_hit: u64,
    pub reads_missed: u64,
    /// Of the hits, those on pages an earlier read's readahead brought in.
    pub readahead_hits: u64,
    /// Bytes read ahead beyond what the reads asked for.
    pub readahead_bytes: u64,
    pub writes_buffered: u64,
    /// Writes whose host part included their own sync (writethrough, directsync).
    pub writes_synced: u64,
    /// Guest flushes whose sync wrote back image data, and how much.
    pub flushes_writing_back: u64,
    pub flush_writeback_bytes: u64,
    /// Bytes the write-through writes' own syncs wrote.
    pub write_sync_bytes: u64,
    /// Writes that slept in the kernel's dirty-page throttle, and for how long.
    pub dirty_throttled: u64,
    pub dirty_wait_total_ns: u64,
    pub dirty_wait_max_ns: u64,
    /// IOs that went no lower than a loop device's backing page cache.
    pub loop_page_cache: u64,
    /// The kernel's own writeback of image files (no request's), per disk.
    pub writeback: Vec<DiskWriteback>,
}

/// Writeback of one disk's image files that no request caused.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiskWriteback {
    /// The disk's index in the layout (`None`: its sectors are no single disk's).
    pub disk: Option<u16>,
    pub ios: u64,
    pub bytes: u64,
    pub total_ns: u64,
    pub max_ns: u64,
}

impl PageCache {
    fn is_none(&self) -> bool {
        self.reads_hit
            + self.reads_missed
            + self.writes_buffered
            + self.writes_synced
            + self.flushes_writing_back
            + self.loop_page_cache
            == 0
            && self.writeback.is_empty()
    }

    pub fn add(&mut self, row: &IoRow) {
        let f = row.flags;
        let has = |bit: u16| f & bit != 0;
        self.reads_hit += u64::from(has(flags::PAGE_CACHE_HIT));
        self.reads_missed += u64::from(has(flags::PAGE_CACHE_MISS));
        self.readahead_hits += u64::from(has(flags::READAHEAD_HIT));
        self.readahead_bytes = self.readahead_bytes.saturating_add(row.readahead_bytes);
        self.writes_buffered += u64::from(has(flags::PAGE_CACHE_WRITE));
        self.loop_page_cache += u64::from(has(flags::LOOP_PAGE_CACHE));
        if has(flags::SYNCED) {
            self.writes_synced += 1;
            self.write_sync_bytes = self.write_sync_bytes.saturating_add(row.synced_bytes);
        } else if row.synced_bytes > 0 {
            self.flushes_writing_back += 1;
            self.flush_writeback_bytes =
                self.flush_writeback_bytes.saturating_add(row.synced_bytes);
        }
        if has(flags::DIRTY_THROTTLED) {
            self.dirty_throttled += 1;
            self.dirty_wait_total_ns = self.dirty_wait_total_ns.saturating_add(row.dirty_wait_ns);
            self.dirty_wait_max_ns = self.dirty_wait_max_ns.max(row.dirty_wait_ns);
        }
    }

    pub fn other(&mut self, o: &OtherIo) {
        if o.class != OtherClass::ImageWriteback {
            return;
        }
        let i = match self.writeback.iter().position(|w| w.disk == o.disk) {
            Some(i) => i,
            None => {
                self.writeback.push(DiskWriteback {
                    disk: o.disk,
                    ..DiskWriteback::default()
                });
                self.writeback.len() - 1
            }
        };
        let w = &mut self.writeback[i];
        let d = o.end.saturating_sub(o.start);
        w.ios += 1;
        w.bytes = w.bytes.saturating_add(o.bytes);
        w.total_ns = w.total_ns.saturating_add(d);
        w.max_ns = w.max_ns.max(d);
    }

    /// The summary's lines: (what, line), each under 120 columns with its label.
    pub fn notes(&self, disk_name: &dyn Fn(u16) -> String) -> Vec<(String, String)> {
        let mut v = Vec::new();
        let reads = self.reads_hit + self.reads_missed;
        if reads > 0 {
            v.push((
                "page cache reads".to_owned(),
                format!(
                    "{} hit ({} on readahead), {} missed; {} read ahead",
                    self.reads_hit,
                    self.readahead_hits,
                    self.reads_missed,
                    human_bytes(self.readahead_bytes)
                ),
            ));
        }
        if self.writes_buffered > 0 || self.writes_synced > 0 {
            v.push((
                "page cache writes".to_owned(),
                format!(
                    "{} into the cache, {} synced by their own write-through ({} written)",
                    self.writes_buffered,
                    self.writes_synced,
                    human_bytes(self.write_sync_bytes)
                ),
            ));
        }
        if self.flushes_writing_back > 0 {
            v.push((
                "flush writeback".to_owned(),
                format!(
                    "{} flushes wrote back {} of dirty image data",
                    self.flushes_writing_back,
                    human_bytes(self.flush_writeback_bytes)
                ),
            ));
        }
        if self.dirty_throttled > 0 {
            v.push((
                "dirty throttle".to_owned(),
                format!(
                    "{} writes paused in balance_dirty_pages: mean {}, max {} (inside host_fs)",
                    self.dirty_throttled,
                    fmt_ns(self.dirty_wait_total_ns as f64 / self.dirty_throttled as f64),
                    fmt_ns(self.dirty_wait_max_ns as f64)
                ),
            ));
        }
        if self.loop_page_cache > 0 {
            v.push((
                "loop page cache".to_owned(),
                format!(
                    "{} IOs went no lower than a loop device's backing page cache",
                    self.loop_page_cache
                ),
            ));
        }
        for w in &self.writeback {
            let name = w
                .disk
                .map_or_else(|| "no single disk".to_owned(), disk_name);
            v.push((
                "kernel writeback".to_owned(),
                format!(
                    "{name}: {} IOs, {}, mean {}, max {}",
                    w.ios,
                    human_bytes(w.bytes),
                    fmt_ns(w.total_ns as f64 / w.ios.max(1) as f64),
                    fmt_ns(w.max_ns as f64)
                ),
            ));
        }
        v
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
    } else if s.layers_missing.iter().any(|l| l.contains(" without ")) {
        // Each layer with what it lacks on a line of its own.
        s.layers_missing.join(",\n")
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
