//! Layer boundaries and the per-layer split of an IO's time (docs/layers.md defines
//! each boundary, like btt's Q/G/I/D/C).
//!
//! An IO's time is cut at the boundaries it has, in path order ([`PATH`]); the time
//! from one present boundary to the next present one belongs to the layer that starts
//! at the first. So layer times always sum exactly to the end-to-end time, and a layer
//! that was not traced hands its time to the layer above it rather than losing it.
//!
//! Invariant: boundaries and layers keep their positions (array indices, export
//! columns) once given. One added later takes the next position, not its place in the
//! path: `Boundary::Entered` (position 10) lies between `Submitted` and `Queued`, and
//! the layer it starts, `blk_throttle` (position 9), between `host_fs` and
//! `block_queue`; `FsEntered` and `BottomQueued` (11, 12) start `filesystem` and
//! `bottom_queue` (10, 11). Code that shows layers in path order goes by
//! [`LAYER_PATH`].

use serde::Serialize;

/// Boundaries, by position (path order is [`PATH`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Boundary {
    /// The guest rang the doorbell (KVM fast MMIO / MMIO write).
    Notify = 0,
    /// QEMU parsed the request (virtio), or its first QEMU block event.
    Parsed = 1,
    /// The first host IO carrying its data entered the kernel.
    Submitted = 2,
    /// The first bio of that IO was queued (top block device), after block-cgroup
    /// throttling held it (blk-throttle: cgroup v1's blkio.throttle.*, cgroup v2's
    /// io.max).
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
    /// The first bio of the IO was first seen in the block layer: remapped from its
    /// partition to the disk, on the submitting thread, before block-cgroup throttling
    /// (only bios submitted to a partition show it; in the path, between `Submitted`
    /// and `Queued`).
    Entered = 10,
    /// The host IO entered the filesystem's own read or write (ext4's
    /// `ext4_file_{read,write}_iter`, by fentry or kprobe where the kernel allows):
    /// what comes before it is the syscall's and the VFS's (between `Submitted` and
    /// `Entered`).
    FsEntered = 11,
    /// The first bio of the IO was queued on its bottom device, having come down
    /// through stacked devices (dm, md, loop) from the one it was first queued on
    /// (only IOs through stacked devices show it; between `Queued` and `Dispatched`).
    BottomQueued = 12,
}

pub const NB: usize = 13;
pub const NL: usize = NB - 1;

/// The boundaries in path order.
pub const PATH: [Boundary; NB] = [
    Boundary::Notify,
    Boundary::Parsed,
    Boundary::Submitted,
    Boundary::FsEntered,
    Boundary::Entered,
    Boundary::Queued,
    Boundary::BottomQueued,
    Boundary::Dispatched,
    Boundary::DeviceDone,
    Boundary::HostDone,
    Boundary::QemuDone,
    Boundary::Completed,
    Boundary::Interrupt,
];

/// The layers (positions in [`LAYER_NAMES`]) in path order.
pub const LAYER_PATH: [usize; NL] = [0, 1, 2, 10, 9, 3, 11, 4, 5, 6, 7, 8];

/// The layers' names in path order.
pub fn path_layers() -> impl Iterator<Item = &'static str> + Clone {
    LAYER_PATH.iter().map(|&i| LAYER_NAMES[i])
}

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
    "entered",
    "fs_entered",
    "bottom_queued",
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
    "blk_throttle",
    "filesystem",
    "bottom_queue",
];

pub const LAYER_HELP: [&str; NL] = [
    "doorbell → request parsed by virtio-blk",
    "QEMU block layer and format driver (qcow2, its metadata reads) → host IO submitted",
    "syscall / io_uring / AIO, VFS and filesystem → first bio seen in the block layer (with filesystem: → the filesystem's entry)",
    "remaps, stacked devices (loop, dm, md), scheduler → issued to the bottom device (with bottom_queue: → queued on the bottom device)",
    "bottom device: issue → last completion",
    "completion back up the block stack and filesystem → host IO completed",
    "QEMU completion (thread pool / AIO reaping, coroutine, qcow2 updates)",
    "virtio-blk completion → pushed to the guest",
    "→ interrupt injected into the guest",
    "bio seen in the block layer (partition remap) → queued: block-cgroup throttling",
    "the filesystem's own read/write (its entry, by fentry or kprobe) → first bio seen in the block layer",
    "queued on the bottom device, below stacked devices → issued to it: its plug and scheduler",
];

impl Boundary {
    /// Every boundary, by position.
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
        Boundary::Entered,
        Boundary::FsEntered,
        Boundary::BottomQueued,
    ];

    pub fn name(self) -> &'static str {
        BOUNDARY_NAMES[self as usize]
    }

    /// The layer (position in [`LAYER_NAMES`]) this boundary starts; the last one,
    /// `Interrupt`, starts none.
    pub const fn starts(self) -> Option<usize> {
        match self {
            Boundary::Interrupt => None,
            Boundary::Entered => Some(9),
            Boundary::FsEntered => Some(10),
            Boundary::BottomQueued => Some(11),
            b => Some(b as usize),
        }
    }

    /// The layer this boundary bounds, for saying which one a missing boundary costs:
    /// the one it starts, or (the last) the one it ends.
    pub const fn layer(self) -> usize {
        match self.starts() {
            Some(l) => l,
            None => 8,
        }
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

    /// The timestamps by position (`Boundary::ALL`'s).
    pub fn as_array(&self) -> &[u64; NB] {
        &self.0
    }

    /// The timestamps by position.
    pub fn iter(&self) -> std::slice::Iter<'_, u64> {
        self.0.iter()
    }

    /// The latest timestamp present (0 if none).
    pub fn latest(&self) -> u64 {
        self.iter().copied().max().unwrap_or(0)
    }

    /// Take `from`'s boundaries `first..=last` in path order, e.g. the path of the
    /// request another one was merged into.
    pub fn copy_span(&mut self, from: &Boundaries, first: Boundary, last: Boundary) {
        let at = |b: Boundary| PATH.iter().position(|&x| x == b).unwrap_or(0);
        for &b in &PATH[at(first)..=at(last)] {
            self[b] = from[b];
        }
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
    let mut prev: Option<(Boundary, u64)> = None;
    let mut first = None;
    for &at in &PATH {
        let t = b[at];
        if t == 0 {
            continue;
        }
        let t = match prev {
            Some((_, p)) => t.max(p),
            None => t,
        };
        if let Some((pb, p)) = prev {
            if let Some(l) = pb.starts() {
                out[l] = Some(t - p);
            }
        } else {
            first = Some(t);
        }
        prev = Some((at, t));
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

    /// The function probes' boundary cuts host_fs at the filesystem's entry, and the
    /// bottom device's queue cuts block_queue below stacked devices.
    #[test]
    fn filesystem_and_bottom_queue_split_their_layers() {
        let mut b = Boundaries::new();
        b[Boundary::Submitted] = 100;
        b[Boundary::FsEntered] = 130;
        b[Boundary::Queued] = 500;
        b[Boundary::BottomQueued] = 900;
        b[Boundary::Dispatched] = 950;
        b[Boundary::DeviceDone] = 1_950;
        let (l, e2e) = split(&b);
        let by_name = |n: &str| l[LAYER_NAMES.iter().position(|x| *x == n).unwrap()];
        assert_eq!(by_name("host_fs"), Some(30));
        assert_eq!(by_name("filesystem"), Some(370));
        assert_eq!(by_name("block_queue"), Some(400));
        assert_eq!(by_name("bottom_queue"), Some(50));
        assert_eq!(by_name("device"), Some(1_000));
        assert_eq!(l.iter().flatten().sum::<u64>(), e2e);
        assert_eq!(LAYER_HELP.len(), LAYER_NAMES.len());
    }

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

    /// `Entered`, at the end of the array, cuts the path between `Submitted` and
    /// `Queued`: host_fs ends there and blk_throttle runs to the queue.
    #[test]
    fn the_throttle_layer_lies_between_host_fs_and_the_queue() {
        let mut b = Boundaries::new();
        b[Boundary::Parsed] = 100;
        b[Boundary::Submitted] = 150;
        b[Boundary::Entered] = 170;
        b[Boundary::Queued] = 5_170;
        b[Boundary::Dispatched] = 5_180;
        b[Boundary::DeviceDone] = 5_400;
        b[Boundary::HostDone] = 5_420;
        let (l, e2e) = split(&b);
        assert_eq!(e2e, 5_320);
        let by_name = |n: &str| l[LAYER_NAMES.iter().position(|x| *x == n).unwrap()];
        assert_eq!(by_name("host_fs"), Some(20));
        assert_eq!(by_name("blk_throttle"), Some(5_000));
        assert_eq!(by_name("block_queue"), Some(10));
        assert_eq!(by_name("device"), Some(220));
        assert_eq!(l.iter().flatten().sum::<u64>(), e2e);
        // In path order, the layers are named as LAYER_PATH orders them.
        let path: Vec<&str> = LAYER_PATH.iter().map(|&i| LAYER_NAMES[i]).collect();
        assert_eq!(
            &path[2..7],
            [
                "host_fs",
                "filesystem",
                "blk_throttle",
                "block_queue",
                "bottom_queue"
            ]
        );
        for b in PATH {
            if let Some(l) = b.starts() {
                assert_eq!(
                    LAYER_PATH.iter().position(|&x| x == l),
                    PATH.iter().position(|&x| x == b)
                );
            }
        }
    }
}
