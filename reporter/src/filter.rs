//! Which IOs a report, export or page keeps: by op, by disk, by end-to-end latency,
//! and by when they began. A filter is given by names and times as a user writes them
//! ([`Filter`]) and resolved against one trace's layout and start ([`Filter::resolve`]).

use crate::join::{IoRow, Op, OtherIo};
use crate::layers::split;
use crate::layout::Layout;
use crate::units::fmt_ns;
use serde::Serialize;

/// The IOs to keep, as given on the command line. Empty: all.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only these ops.
    pub ops: Vec<Op>,
    /// Only the disks of these names: an image's path, its file name, or the name a
    /// guest knows it by (vda, sdb, a SCSI address), as reports name disks.
    pub disks: Vec<String>,
    /// Only IOs with an end-to-end time of at least this (so only complete ones).
    pub min_latency_ns: Option<u64>,
    /// Only IOs that began at or after this, counted from the recording's start.
    pub from_ns: Option<u64>,
    /// Only IOs that began before this, counted from the recording's start.
    pub to_ns: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("no disk named '{name}' in the trace's layout; its disks: {known}")]
    NoSuchDisk { name: String, known: String },
    #[error("the time window ends ({to}) before it begins ({from})")]
    EmptyWindow { from: String, to: String },
    #[error("the trace does not say when its recording began, so --from/--to cannot be placed")]
    NoStart,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
            && self.disks.is_empty()
            && self.min_latency_ns.is_none()
            && self.from_ns.is_none()
            && self.to_ns.is_none()
    }

    /// The filter for a trace with `layout` whose recording began at `start_ns`
    /// (monotonic; `None` when the trace does not say).
    pub fn resolve(&self, layout: &Layout, start_ns: Option<u64>) -> Result<Resolved, FilterError> {
        let windowed = self.from_ns.is_some() || self.to_ns.is_some();
        let start_ns = match start_ns {
            Some(s) => s,
            None if windowed => return Err(FilterError::NoStart),
            None => 0,
        };
        if let (Some(f), Some(t)) = (self.from_ns, self.to_ns)
            && t <= f
        {
            return Err(FilterError::EmptyWindow {
                from: fmt_ns(f as f64),
                to: fmt_ns(t as f64),
            });
        }
        let mut disks = Vec::new();
        for name in &self.disks {
            let found = layout.disks_named(name);
            if found.is_empty() {
                return Err(FilterError::NoSuchDisk {
                    name: name.clone(),
                    known: layout.disk_names().join(", "),
                });
            }
            disks.extend(found);
        }
        Ok(Resolved {
            ops: self.ops.iter().fold(0u16, |m, o| m | 1 << *o as u16),
            disks,
            disk_filter: !self.disks.is_empty(),
            min_latency_ns: self.min_latency_ns,
            window: (self.from_ns, self.to_ns),
            start_ns,
            described: self.describe(),
            kept: 0,
            left_out: 0,
        })
    }

    /// What it keeps, in words, for the report's summary.
    fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.ops.is_empty() {
            let ops: Vec<&str> = self.ops.iter().map(|o| o.name()).collect();
            parts.push(format!("op {}", ops.join(" or ")));
        }
        if !self.disks.is_empty() {
            parts.push(format!("disk {}", self.disks.join(" or ")));
        }
        if let Some(l) = self.min_latency_ns {
            parts.push(format!("end-to-end ≥ {}", fmt_ns(l as f64)));
        }
        match (self.from_ns, self.to_ns) {
            (None, None) => {}
            (f, t) => parts.push(format!(
                "began {} to {} into the recording",
                fmt_ns(f.unwrap_or(0) as f64),
                t.map_or("its end".to_owned(), |t| fmt_ns(t as f64))
            )),
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// A [`Filter`] for one trace, counting what it keeps and leaves out.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// One bit per [`Op`]; 0: every op.
    ops: u16,
    /// The layout's indices of the disks kept.
    disks: Vec<u16>,
    disk_filter: bool,
    min_latency_ns: Option<u64>,
    window: (Option<u64>, Option<u64>),
    start_ns: u64,
    described: Option<String>,
    kept: u64,
    left_out: u64,
}

/// What a filter did, for the summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Filtered {
    /// What it keeps, in words.
    pub filter: String,
    /// Guest IOs kept and left out (IO no guest request caused is not counted here).
    pub kept: u64,
    pub left_out: u64,
}

impl Resolved {
    /// Whether to keep this guest IO (and count it). `layout` gives an IO of a VM
    /// with one disk that disk.
    pub fn keep(&mut self, row: &IoRow, layout: &Layout) -> bool {
        let keep = self.keeps(row, layout);
        if keep {
            self.kept += 1;
        } else {
            self.left_out += 1;
        }
        keep
    }

    fn keeps(&self, row: &IoRow, layout: &Layout) -> bool {
        if self.ops != 0 && self.ops & (1 << row.op as u16) == 0 {
            return false;
        }
        if self.disk_filter {
            let disk = row.disk.or_else(|| layout.only_disk_of(row.vm));
            if !disk.is_some_and(|d| self.disks.contains(&d)) {
                return false;
            }
        }
        if let Some(min) = self.min_latency_ns {
            if row.partial != 0 {
                return false;
            }
            let (_, e2e) = split(&row.b);
            if e2e < min {
                return false;
            }
        }
        let began = row.b.as_array().iter().copied().find(|&t| t != 0);
        self.in_window(began)
    }

    /// Whether to keep IO no guest request caused: only the time window and the disks
    /// apply to it (it has no guest op, and its latency is no request's).
    pub fn keep_other(&self, o: &OtherIo) -> bool {
        if self.disk_filter && !o.disk.is_some_and(|d| self.disks.contains(&d)) {
            return false;
        }
        self.in_window(Some(o.start))
    }

    fn in_window(&self, began: Option<u64>) -> bool {
        let (from, to) = self.window;
        if from.is_none() && to.is_none() {
            return true;
        }
        let Some(t) = began else {
            return false;
        };
        let since = t.saturating_sub(self.start_ns);
        from.is_none_or(|f| since >= f) && to.is_none_or(|e| since < e)
    }

    /// The counts, once every IO went through it; `None` for an empty filter.
    pub fn filtered(&self) -> Option<Filtered> {
        self.described.as_ref().map(|f| Filtered {
            filter: f.clone(),
            kept: self.kept,
            left_out: self.left_out,
        })
    }
}
