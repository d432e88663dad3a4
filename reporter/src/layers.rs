//! Layer boundaries and the per-layer split of an IO's time (docs/layers.md defines
//! each boundary, like btt's Q/G/I/D/C).
//!
//! An IO's time is cut at the boundaries it has, in this fixed order; the time from one
//! present boundary to the next present one belongs to the layer that starts at the
//! first. So layer times always sum exactly to the end-to-end time, and a layer that
//! was not traced hands its time to the layer above it rather than losing it.

use serde::Serialize;

/// Boundaries, in path order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Boundary {
    /// The guest rang the doorbell (KVM fast MMIO / MMIO write).
    Notify = 0,
    /// QEMU parsed the request (virtio), or its first QEMU block event.
    Parsed = 1,
    /// The first host IO carrying its data entered the kernel.
    Submitted = 2,
    /// The first bio of that IO was queued (top block device).
    Queued = 3,
    /// The first request was issued to the bottom device (btt's D).
    Dispatched = 4,
    /// The last request on the bottom device completed (btt's C).
    DeviceDone = 5,
    /// The last host IO completed (syscall return, io_uring CQE, AIO completion).
    HostDone = 6,
    /// QEMU's block layer finished the request (virtio_blk_rw_complete).
    QemuDone = 7,
    /// virtio-blk pushed the completion to the guest's ring.
    Completed = 8,
    /// KVM injected the interrupt.
    Interrupt = 9,
}

pub const NB: usize = 10;
pub const NL: usize = NB - 1;

pub const BOUNDARY_NAMES: [&str; NB] = [
    "notify",
    "parsed",
    "submitted",
    "queued",
    "dispatched",
    "device_done",
    "host_done",
    "qemu_done",
    "completed",
    "interrupt",
];

/// Layer `i` runs from boundary `i` to the next boundary present.
pub const LAYER_NAMES: [&str; NL] = [
    "virtio_front",
    "qemu",
    "host_fs",
    "block_queue",
    "device",
    "host_completion",
    "qemu_completion",
    "virtio_completion",
    "irq",
];

pub const LAYER_HELP: [&str; NL] = [
    "doorbell → request parsed by virtio-blk",
    "QEMU block layer and format driver (qcow2, its metadata reads) → host IO submitted",
    "syscall / io_uring / AIO, VFS and filesystem → first bio queued",
    "remaps, stacked devices (loop, dm), scheduler → issued to the bottom device",
    "bottom device: issue → last completion",
    "completion back up the block stack and filesystem → host IO completed",
    "QEMU completion (thread pool / AIO reaping, coroutine, qcow2 updates)",
    "virtio-blk completion → pushed to the guest",
    "→ interrupt injected into the guest",
];

impl Boundary {
    /// Every boundary, in path order.
    pub const ALL: [Boundary; NB] = [
        Boundary::Notify,
        Boundary::Parsed,
        Boundary::Submitted,
        Boundary::Queued,
        Boundary::Dispatched,
        Boundary::DeviceDone,
        Boundary::HostDone,
        Boundary::QemuDone,
        Boundary::Completed,
        Boundary::Interrupt,
    ];

    pub fn name(self) -> &'static str {
        BOUNDARY_NAMES[self as usize]
    }
}

/// Timestamps (ns) at each boundary; 0 where absent. Indexed by [`Boundary`] only, so
/// no code names a boundary by its position. Serialized as the plain array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct Boundaries([u64; NB]);

impl Boundaries {
    /// No boundary seen yet.
    pub const fn new() -> Boundaries {
        Boundaries([0; NB])
    }

    /// The timestamps in path order (`Boundary::ALL`'s).
    pub fn as_array(&self) -> &[u64; NB] {
        &self.0
    }

    /// The timestamps in path order.
    pub fn iter(&self) -> std::slice::Iter<'_, u64> {
        self.0.iter()
    }

    /// The latest timestamp present (0 if none).
    pub fn latest(&self) -> u64 {
        self.iter().copied().max().unwrap_or(0)
    }

    /// Take `from`'s boundaries `first..=last`, e.g. the path of the request another
    /// one was merged into.
    pub fn copy_span(&mut self, from: &Boundaries, first: Boundary, last: Boundary) {
        let span = first as usize..=last as usize;
        self.0[span.clone()].copy_from_slice(&from.0[span]);
    }
}

impl From<[u64; NB]> for Boundaries {
    fn from(a: [u64; NB]) -> Boundaries {
        Boundaries(a)
    }
}

impl std::ops::Index<Boundary> for Boundaries {
    type Output = u64;
    #[inline]
    fn index(&self, b: Boundary) -> &u64 {
        &self.0[b as usize]
    }
}

impl std::ops::IndexMut<Boundary> for Boundaries {
    #[inline]
    fn index_mut(&mut self, b: Boundary) -> &mut u64 {
        &mut self.0[b as usize]
    }
}

/// Per-layer times and the end-to-end time. Boundaries out of order (CPU clock skew,
/// a child event that raced its parent) are clamped to the previous present boundary,
/// so no layer is negative and the sum stays exact.
pub fn split(b: &Boundaries) -> ([Option<u64>; NL], u64) {
    let mut out = [None; NL];
    let mut prev: Option<(usize, u64)> = None;
    let mut first = None;
    for (i, &t) in b.iter().enumerate() {
        if t == 0 {
            continue;
        }
        let t = match prev {
            Some((_, p)) => t.max(p),
            None => t,
        };
        if let Some((pi, p)) = prev {
            out[pi] = Some(t - p);
        } else {
            first = Some(t);
        }
        prev = Some((i, t));
    }
    let e2e = match (first, prev) {
        (Some(f), Some((_, l))) => l - f,
        _ => 0,
    };
    (out, e2e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_sum_to_end_to_end_and_missing_layers_go_to_the_one_above() {
        let mut b = Boundaries::new();
        b[Boundary::Parsed] = 100;
        b[Boundary::Submitted] = 150;
        b[Boundary::HostDone] = 400; // no block events: host_fs runs to host_done
        b[Boundary::Completed] = 420;
        let (l, e2e) = split(&b);
        assert_eq!(e2e, 320);
        assert_eq!(l[1], Some(50));
        assert_eq!(l[2], Some(250));
        assert_eq!(l[6], Some(20));
        assert_eq!(l[3], None);
        assert_eq!(l.iter().flatten().sum::<u64>(), e2e);
        // Out of order: clamped, never negative.
        b[Boundary::Queued] = 120;
        let (l, e2e) = split(&b);
        assert_eq!(l[2], Some(0));
        assert_eq!(l.iter().flatten().sum::<u64>(), e2e);
    }
}
