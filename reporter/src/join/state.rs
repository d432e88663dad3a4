//! The join's shared records: the guest request (`Root`), the host IO (`Hio`), bios,
//! block requests and per-thread contexts, the `Join` that holds them all, and the
//! helpers that make, index and forget them. Every handler module works on these;
//! none of them is imported from the dispatcher.

use super::row::{Op, OtherClass, OtherIo, Sink, Source, flags};
use super::slab::{Map, Ref, Slab};
use crate::layers::{Boundaries, Boundary};
use crate::layout::{DevRanges, DiskSet, Layout};
use serde::Serialize;
use smallvec::SmallVec;
use std::collections::VecDeque;
use viopath_layouts::{DeviceSector, GuestOffset, HostFileOffset};
use viopath_probes::abi::{RawEvent, qemu_probe as q};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HioKind {
    Data,
    Meta,
    Internal,
    Syscall,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Api {
    Unknown,
    Threads,
    Native,
    Uring,
}

pub(super) struct Hio {
    pub(super) root: Option<Ref>,
    /// The VM it is of (its request's, or the process's that made it; see `vms`).
    pub(super) vm: u16,
    pub(super) kind: HioKind,
    pub(super) api: Api,
    /// Where in its file (the image file, or a backing or data file of its chain).
    pub(super) offset: HostFileOffset,
    pub(super) bytes: u64,
    pub(super) created: u64,
    pub(super) submit: u64,
    pub(super) first_q: u64,
    /// The device its first bio was queued on.
    pub(super) first_q_dev: u32,
    /// When a bio of it was first queued on a bottom device other than that one: it
    /// came down through stacked devices (dm, md, loop).
    pub(super) bottom_q: u64,
    /// When it entered the filesystem's own read or write (function probes).
    pub(super) fs_entered: u64,
    /// When its first bio was first seen in the block layer (its partition remap),
    /// before block-cgroup throttling; 0 if not seen before it was queued.
    pub(super) first_seen: u64,
    pub(super) issue_any: u64,
    pub(super) done_any: u64,
    pub(super) issue_bottom: u64,
    pub(super) done_bottom: u64,
    pub(super) ranges: DevRanges,
    pub(super) has_kiocb: bool,
    /// The filesystem's fsync for it began (a flush).
    pub(super) fs_begun: bool,
    pub(super) bios: u32,
    pub(super) requests: u32,
    /// Block requests carrying it not yet completed.
    pub(super) open_rqs: u32,
    pub(super) flags: u16,
    pub(super) bottom_dev: u32,
    /// The disks whose chains hold the file the kernel named for it (0: not named).
    pub(super) disks: DiskSet,
    /// The file descriptor a thread-pool job names (0: not known).
    pub(super) fd: u64,
    /// A job without data (flush, discard, write zeroes) made for a request.
    pub(super) job: bool,
    /// A flush job: the fsync it runs writes back dirty pages, whose bios are its own.
    pub(super) sync: bool,
    /// A flush of a block device given as a disk, begun by its flush bio (no
    /// filesystem event): with linux-aio it ends with its device's flush request.
    pub(super) node_flush: bool,
    /// The kernel began a direct IO for it (iomap): its data bypasses the page cache.
    pub(super) direct: bool,
    /// Bytes its buffered read's readahead brought in beyond its own range.
    pub(super) ra_bytes: u64,
    /// Bytes of image file data the bios it queued wrote (a sync's writeback).
    pub(super) synced_bytes: u64,
    /// Ticks its thread paused in the dirty-page throttle while it ran.
    pub(super) dirty_pause_ticks: u64,
    pub(super) dirty_pauses: u32,
    /// When a loop device without direct IO (the lowest it went, if it went no lower)
    /// first issued and last completed a request of it.
    pub(super) loop_issue: u64,
    pub(super) loop_done: u64,
    /// A linux-aio write (its bios write), as QEMU submitted it.
    pub(super) aio_write: bool,
}

pub(super) struct Root {
    pub(super) id: u64,
    /// The VM whose process made it (see `vms`).
    pub(super) vm: u16,
    pub(super) op: Op,
    /// Where on the guest's disk, once a layer that knows it was traced.
    pub(super) offset: Option<GuestOffset>,
    pub(super) bytes: u64,
    pub(super) source: Source,
    pub(super) top_probe: u8,
    pub(super) top_child: u64,
    pub(super) virtio_req: u64,
    pub(super) aio_opaque: u64,
    /// The DMA request (DMAAIOCB) a virtio-scsi command's data moves by: the opaque
    /// of its `blk_aio_*` calls.
    pub(super) scsi_dma: u64,
    /// A virtio-scsi command's target and LUN (`scsi::scsi_addr`), 0: none, and its
    /// controller (the VirtIOSCSI device).
    pub(super) scsi_addr: u32,
    pub(super) scsi_ctrl: u64,
    /// Inline: a request has one to a few, and a heap allocation per request shows
    /// in the join's profile.
    pub(super) qiovs: SmallVec<[u64; 4]>,
    pub(super) b: Boundaries,
    pub(super) open_hios: u32,
    pub(super) data_hios: u32,
    pub(super) meta_hios: u32,
    pub(super) meta_ns: u64,
    /// When it entered QEMU's IO throttling (0: it did not), and how long it waited
    /// there: until its first call below the block backend.
    pub(super) throttle_at: u64,
    pub(super) throttle_ns: u64,
    /// Summed over its host IOs (see the row's fields of these names).
    pub(super) readahead_bytes: u64,
    pub(super) synced_bytes: u64,
    pub(super) dirty_wait_ns: u64,
    /// Its beginning was before the recording started.
    pub(super) cut_at_start: bool,
    /// A buffer of its own data is bound to it (not only metadata buffers).
    pub(super) has_data_qiov: bool,
    pub(super) bios: u32,
    pub(super) requests: u32,
    pub(super) flags: u16,
    pub(super) partial: u16,
    pub(super) last: u64,
    /// The thread that made it: a request without a completion event is over once
    /// this thread has gone on for a while after it went quiet (see [`IDLE_NS`]).
    pub(super) tid: u32,
    pub(super) qcow2: bool,
    pub(super) bottom_dev: u32,
    /// The disks all its named host IOs agree on (see [`Hio::disks`]): `None` until
    /// one is named, `Some(0)` if they disagree.
    pub(super) disks: Option<DiskSet>,
    pub(super) completed: bool,
    /// A host job without data was made for it (flush, discard): a later one on its
    /// thread is another request's.
    pub(super) host_job: bool,
    /// A block request without data was seen for it: a write of zeroes or a discard,
    /// whose host job (a fallocate) is not a flush's, and whose range (when it has
    /// one) came from that request, not from block IO.
    pub(super) nodata: bool,
    /// The BdrvChild of its first call on a block node (QEMU's block layer): for a
    /// request from a drive, that drive's root, the same for all its requests.
    pub(super) bdrv_child: u64,
    pub(super) merged_into: Option<u64>,
}

impl Root {
    /// Keep the BdrvChild of its first call on a block node (`bdrv_co_*`).
    #[inline]
    pub(super) fn note_bdrv_child(&mut self, probe: u8, child: u64) {
        if self.bdrv_child == 0 && level(probe) == 3 {
            self.bdrv_child = child;
        }
    }
}

#[derive(Clone, Copy)]
pub(super) enum QiovBind {
    Root(Ref),
    Meta(Option<Ref>),
    /// qcow2's copy-on-write buffer for an allocating write: reading the old cluster
    /// (from the backing file) is that write's metadata-like IO; writing the buffer
    /// out carries the write's data.
    Cow(Ref),
}

impl QiovBind {
    pub(super) fn root(self) -> Option<Ref> {
        match self {
            QiovBind::Root(r) | QiovBind::Cow(r) | QiovBind::Meta(Some(r)) => Some(r),
            QiovBind::Meta(None) => None,
        }
    }
}

/// One device range of a host IO in flight.
#[derive(Clone, Copy)]
pub(super) struct InflightRange {
    pub(super) dev: u32,
    pub(super) start: DeviceSector,
    pub(super) end: DeviceSector,
    pub(super) hio: Ref,
}

#[derive(Clone, Copy)]
pub(super) enum BioOwner {
    Hio(Ref),
    Other(u32),
}

/// A bio's owner, valid until the bio completes or its request does (blk-mq devices
/// trace no bio completion). `remapped`: the next queue event for this pointer is the
/// same bio moving down (partition remap), not a new bio at a reused address.
#[derive(Clone, Copy)]
pub(super) struct BioEntry {
    pub(super) owner: BioOwner,
    pub(super) remapped: bool,
    /// Where it was last queued: a remap from there is this bio moving down.
    pub(super) dev: u32,
    pub(super) sector: DeviceSector,
    /// Its size there (sectors, saturated): which clones below a device the layout
    /// does not map come from it.
    pub(super) sectors: u32,
}

pub(super) struct Req {
    pub(super) owners: SmallVec<[Ref; 2]>,
    pub(super) bios: SmallVec<[u64; 4]>,
    pub(super) other: Option<u32>,
    pub(super) dev: u32,
    pub(super) sector: DeviceSector,
    pub(super) sectors: u64,
    /// When it was inserted or issued: one whose completion was lost is dropped once
    /// it is older than any real request.
    pub(super) since: u64,
    /// Its REQ_OP: a bio or request merges only into one of the same operation.
    pub(super) op: u8,
    /// Issued to its driver: the kernel merges nothing more into it (RQF_STARTED, and
    /// RQF_DONTPREP once a driver prepared it, are among RQF_NOMERGE_FLAGS).
    pub(super) started: bool,
    /// A loop device's flush whose fsync of the backing file a worker has begun.
    pub(super) served: bool,
    /// When it was issued to its driver (0: not yet).
    pub(super) issued: u64,
}

/// A read on a bottom device that filled the page cache (a buffered read's, or
/// readahead no traced request made), completed recently: a buffered read of its
/// sectors running while it completed waited for it.
#[derive(Clone, Copy)]
pub(super) struct Fill {
    pub(super) dev: u32,
    pub(super) start: DeviceSector,
    pub(super) end: DeviceSector,
    pub(super) issued: u64,
    pub(super) done: u64,
}

/// Sectors buffered reads' readahead brought in beyond what they asked for, and no
/// read has asked for since: a page-cache hit on them is a readahead hit. Disjoint
/// ranges by (device, first sector), so a lookup is one step of the tree; past
/// [`READAHEAD_RANGES`] of them the oldest knowledge is dropped whole (a bound on
/// memory: a hit on readahead that old is then not told apart).
#[derive(Default)]
pub(super) struct ReadAheads {
    ranges: std::collections::BTreeMap<(u32, DeviceSector), DeviceSector>,
}

pub(super) const READAHEAD_RANGES: usize = 65_536;

impl ReadAheads {
    /// Sectors `[start, end)` of `dev` were read ahead.
    pub(super) fn add(&mut self, dev: u32, mut start: DeviceSector, mut end: DeviceSector) {
        if let Some((&(d, s), &e)) = self.ranges.range(..=(dev, start)).next_back()
            && d == dev
            && e >= start
        {
            self.ranges.remove(&(d, s));
            start = s;
            end = end.max(e);
        }
        while let Some((&(d, s), &e)) = self.ranges.range((dev, start)..=(dev, end)).next() {
            self.ranges.remove(&(d, s));
            end = end.max(e);
        }
        if self.ranges.len() >= READAHEAD_RANGES {
            self.ranges.clear();
        }
        self.ranges.insert((dev, start), end);
    }

    /// Whether any of `[start, end)` of `dev` was read ahead and not asked for since.
    pub(super) fn overlaps(&self, dev: u32, start: DeviceSector, end: DeviceSector) -> bool {
        self.ranges
            .range(..(dev, end))
            .next_back()
            .is_some_and(|(&(d, _), &e)| d == dev && e > start)
    }

    /// A read asked for `[start, end)` of `dev`: no longer readahead.
    pub(super) fn asked(&mut self, dev: u32, start: DeviceSector, end: DeviceSector) {
        let hit: Vec<(DeviceSector, DeviceSector)> = self
            .ranges
            .range(..(dev, end))
            .rev()
            .take_while(|&(&(d, _), &e)| d == dev && e > start)
            .map(|(&(_, s), &e)| (s, e))
            .collect();
        for (s, e) in hit {
            self.ranges.remove(&(dev, s));
            if s < start {
                self.ranges.insert((dev, s), start);
            }
            if e > end {
                self.ranges.insert((dev, end), e);
            }
        }
    }
}

/// Fills kept: the most recent this many.
pub(super) const RECENT_FILLS: usize = 4096;

/// A bio that merged into a request not seen yet: one still on the submitting task's
/// plug list, whose insert is traced only when the plug is flushed (and then covers
/// this bio's sectors).
pub(super) struct PluggedBio {
    pub(super) bio: u64,
    pub(super) owner: Ref,
    pub(super) dev: u32,
    pub(super) sector: DeviceSector,
    pub(super) sectors: u64,
}

pub(super) struct OtherState {
    pub(super) io: OtherIo,
}

/// What one thread is in the middle of. These were one map per field keyed by thread
/// id; most events touch two or three of them on the same thread, so one lookup of
/// the thread (usually the same as the last event's) replaces several hash inserts.
#[derive(Default)]
pub(super) struct ThreadCtx {
    /// The blk_aio_* request this coroutine thread announced, waiting for its qiov.
    pub(super) pending_co: Option<Ref>,
    /// The request qcow2 is serving on this thread.
    pub(super) qcow2: Option<Ref>,
    /// The virtio request this thread parsed last: its handler runs until the next.
    pub(super) last_parsed: Option<Ref>,
    /// The SCSI command with data this thread just handed its device, by its
    /// SCSIRequest (a key gone when it ends, unlike a slab slot): its DMA's first
    /// `blk_aio_*` follows on this thread, before the next command.
    pub(super) scsi_pending: Option<u64>,
    /// An L2/refcount cache lookup (owner, table offset): a read of that table follows.
    /// Only in traces of recorders that probed `qcow2_cache_get`.
    pub(super) meta: Option<(Option<Ref>, HostFileOffset)>,
    /// qcow2 zeroing part of a cluster the write it serves allocates (owner, file
    /// offset, length): the thread-pool job that follows at that range is its.
    pub(super) zeroing: Option<(Ref, HostFileOffset, u64)>,
    /// The last bdrv_co_p{read,write}v_part whose qiov is known: its file-posix
    /// request follows in the same coroutine, with a slice of that qiov (a new
    /// pointer) when it covers only part of it.
    pub(super) last_bdrv: Option<(QiovBind, u64, u64)>,
    /// The file-posix request just made here: the submission probe refers to it.
    pub(super) last_hio: Option<Ref>,
    /// The host IO this thread-pool worker is running synchronously.
    pub(super) worker: Option<Ref>,
    /// The fallocate job this worker ran last: (descriptor, offset, length) and its
    /// request. QEMU retries a write of zeroes in other modes on the same range within
    /// the same job.
    pub(super) falloc_job: Option<([u64; 3], Ref)>,
    /// linux-aio requests queued, submitted by this thread's next io_submit.
    pub(super) laio_wait: SmallVec<[Ref; 4]>,
    /// Host IOs this thread handed the kernel (io_submit, io_uring submission) whose
    /// direct IO has not begun. The kernel begins them on this thread during the
    /// syscall, in this order (io_uring may hand one to a worker thread instead).
    pub(super) submitted: SmallVec<[Ref; 4]>,
    /// The direct IO this thread is inside (bios it queues are that IO's).
    pub(super) dio: Option<Ref>,
    /// The host IO whose flush, on a loop device, this kernel worker is carrying out
    /// by an fsync of the backing file: the flush bios it queues below are that IO's.
    pub(super) loop_sync: Option<Ref>,
    /// The last virtio request completed here: (id, boundaries, time).
    pub(super) completion_batch: Option<(u64, Boundaries, u64, Option<DiskSet>)>,
    /// That request's block range and operation, where it was made from the block
    /// layer (see `JoinConfig::virtio_from_block`): requests virtio-blk merged into it
    /// complete right after it, inside that range.
    pub(super) batch_range: Option<(Op, GuestOffset, u64)>,
    /// Trace time of the last event that changed this context.
    pub(super) seen: u64,
}

/// Per-thread contexts, with a direct-mapped cache of where threads are in front of
/// the index. A trace has a few dozen threads, so each nearly always has a slot of its
/// own; remembering only the last thread looked up missed whenever consecutive events
/// were of different threads.
#[derive(Default)]
pub(super) struct Threads {
    pub(super) index: Map<u32, u32>,
    pub(super) ctx: Vec<(u32, ThreadCtx)>,
    pub(super) cache: ThreadCache,
}

/// Thread id and slot, packed (`u64::MAX`: empty), per `tid % THREAD_CACHE`.
pub(super) struct ThreadCache([std::cell::Cell<u64>; THREAD_CACHE]);

pub(super) const THREAD_CACHE: usize = 64;

impl Default for ThreadCache {
    fn default() -> Self {
        ThreadCache(std::array::from_fn(|_| std::cell::Cell::new(u64::MAX)))
    }
}

impl ThreadCache {
    #[inline]
    pub(super) fn get(&self, tid: u32) -> Option<u32> {
        let v = self.0[tid as usize % THREAD_CACHE].get();
        ((v >> 32) as u32 == tid && v != u64::MAX).then_some(v as u32)
    }
    #[inline]
    pub(super) fn set(&self, tid: u32, i: u32) {
        self.0[tid as usize % THREAD_CACHE].set((tid as u64) << 32 | i as u64);
    }
    pub(super) fn clear(&self) {
        for c in &self.0 {
            c.set(u64::MAX);
        }
    }
}

impl Threads {
    #[inline]
    pub(super) fn find(&self, tid: u32) -> Option<usize> {
        match self.cache.get(tid) {
            Some(i) => Some(i as usize),
            None => self.find_uncached(tid),
        }
    }

    #[cold]
    #[inline(never)]
    pub(super) fn find_uncached(&self, tid: u32) -> Option<usize> {
        let i = *self.index.get(&tid)?;
        self.cache.set(tid, i);
        Some(i as usize)
    }

    #[inline]
    pub(super) fn get(&self, tid: u32) -> Option<&ThreadCtx> {
        self.find(tid).map(|i| &self.ctx[i].1)
    }

    #[inline]
    pub(super) fn get_mut(&mut self, tid: u32) -> Option<&mut ThreadCtx> {
        self.find(tid).map(|i| &mut self.ctx[i].1)
    }

    /// The thread's context, made if it has none; `ts` marks it as in use.
    #[inline]
    pub(super) fn at(&mut self, tid: u32, ts: u64) -> &mut ThreadCtx {
        let i = match self.find(tid) {
            Some(i) => i,
            None => self.add(tid),
        };
        let c = &mut self.ctx[i].1;
        c.seen = c.seen.max(ts);
        c
    }

    /// Out of line: a new context is built on the stack, and a frame that size on
    /// every lookup showed in the join's profile.
    #[cold]
    #[inline(never)]
    pub(super) fn add(&mut self, tid: u32) -> usize {
        let i = self.ctx.len();
        self.ctx.push((tid, ThreadCtx::default()));
        self.index.insert(tid, i as u32);
        self.cache.set(tid, i as u32);
        i
    }

    /// Forget threads idle since before `before`: whatever they were in the middle of
    /// has been finished as stale by then, and exited threads must not pile up.
    pub(super) fn forget_idle(&mut self, before: u64) {
        let mut i = 0;
        while i < self.ctx.len() {
            if self.ctx[i].1.seen < before {
                let (tid, _) = self.ctx.swap_remove(i);
                self.index.remove(&tid);
                if let Some((moved, _)) = self.ctx.get(i) {
                    self.index.insert(*moved, i as u32);
                }
                // Slots moved: cached lookups may point at the wrong one.
                self.cache.clear();
            } else {
                i += 1;
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        self.ctx.len()
    }
}

/// A QEMU-level request with no completion event seen yet (no virtio layer), all its
/// host IO done, is finished once the thread that made it has been seen this long after
/// the request's last event. Measured on that thread, not on the trace's clock: a
/// completion callback (qemu-io's) runs on the thread that made the request, so while
/// that thread is off the CPU, however long, its callback may still come.
pub const IDLE_NS: u64 = 2_000_000;
/// Requests with nothing happening for this long are finished: as partial, unless all
/// their host IO is done and only their thread's going on was awaited (see
/// [`IDLE_NS`]).
pub const STALE_NS: u64 = 30_000_000_000;

/// Counters for the summary.
#[derive(Debug, Default, Clone, Serialize)]
pub struct JoinStats {
    pub events: u64,
    pub ios: u64,
    pub partial: u64,
    pub other_ios: u64,
    pub unknown_events: u64,
    /// The most guest requests and host IOs in flight at once, counted as each is made.
    pub peak_in_flight: usize,
    /// Block requests whose completion never came (event lost): dropped when their
    /// pointer came back for a new request, or when they were older than any real one.
    pub requests_lost: u64,
    /// Guest requests in flight when the recording started (only their end traced)
    /// and when it stopped (their end not traced): reported as partial rows.
    pub cut_at_start: u64,
    pub cut_at_end: u64,
    /// Events of the traced processes whose thread no VM of the trace was known to
    /// have (a trace of several VMs): joined as the first VM's.
    pub events_of_unknown_threads: u64,
}

/// What the trace's header says about the probes, which changes how rows end.
#[derive(Debug, Clone, Copy, Default)]
pub struct JoinConfig {
    /// The KVM interrupt probe was attached: a completed virtio request waits for its
    /// interrupt before it is reported.
    pub await_msi: bool,
    /// The images are qcow2 and the qcow2 probes were attached: a QEMU block request
    /// that never reaches qcow2 is QEMU's own file IO (image open, header updates),
    /// not a guest IO.
    pub expect_qcow2: bool,
    /// The images are qcow2 but qcow2's own functions could not be probed (a stripped
    /// QEMU): the block layer's calls on a request's nodes stand in for them. A
    /// request's first call on a node below its top is its qcow2 node, and a fresh
    /// buffer this thread then reads or writes on another node while the request goes
    /// on is qcow2's own IO for it (tables, copy-on-write), not a request of its own.
    pub qcow2_unprobed: bool,
    /// The fdatasync/fsync probes were attached: a thread-pool flush job ends at its
    /// worker's fdatasync return. Without them (older traces) a flush is QEMU's
    /// alone, as its job would never be seen to end.
    pub flush_syscalls: bool,
    /// The filesystem's fsync probes were attached: a flush QEMU hands the kernel
    /// through linux-aio (run by a kernel worker) or io_uring is followed into the
    /// filesystem's fsync wherever it runs. Without them a linux-aio flush is QEMU's
    /// alone, as its end would never be seen.
    pub fs_sync: bool,
    /// The direct-IO probe (iomap_dio_rw_begin) was attached: a read or write of the
    /// thread pool or io_uring for which the kernel began no direct IO went through the
    /// page cache. Without it (older traces, kernels without iomap's tracepoints) no
    /// host IO is known to be buffered.
    pub dio_probe: bool,
    /// Nanoseconds per tick of the recording kernel (1e9 / CONFIG_HZ; 0: not known):
    /// the dirty-page throttle's pauses are in ticks.
    pub tick_ns: u64,
    /// Some disk ran with a cache mode that syncs every write (writethrough,
    /// directsync): a flush job after a write's data is that write's own sync.
    pub synced_writes: bool,
    /// The workqueue probes for linux-aio fsync work were attached: a linux-aio flush
    /// is followed into its kernel worker on any filesystem, begun and ended by the
    /// work item (ext4's own fsync events, inside it, still mark the fsync's end).
    pub aio_fsync: bool,
    /// virtio-blk's completion probe was attached but not its parse
    /// (`virtio_blk_handle_request`, a static function a stripped QEMU does not
    /// export): a guest request is made where the block layer first names its
    /// VirtIOBlockReq (`blk_aio_*`), and QEMU's other block requests are its own.
    pub virtio_from_block: bool,
    /// The fallocate probes were attached: a thread-pool discard or write-zeroes job
    /// ends at its worker's fallocate return. Without them (older traces) those
    /// requests are QEMU's alone.
    pub falloc_syscalls: bool,
    /// qemu-io's completion callbacks (`aio_read_done`, `aio_write_done`) were
    /// attached: a request of QEMU's caller ends at its callback, however long it
    /// waits after its last host IO (an allocating qcow2 write waits, its tables
    /// written, for the allocation of a write ahead of it to finish), not when its
    /// thread has gone on without it for a while.
    pub caller_callbacks: bool,
}

pub struct Join<'l, S: Sink> {
    pub(super) layout: &'l Layout,
    pub sink: S,
    pub stats: JoinStats,
    pub(super) cfg: JoinConfig,
    pub(super) roots: Slab<Root>,
    pub(super) hios: Slab<Hio>,
    pub(super) active: Vec<Ref>,
    pub(super) inflight: Vec<Ref>,
    /// The device ranges of the host IOs in flight, flat: a queued bio's owner is
    /// looked up by address for every bio, and visiting each host IO for it showed.
    /// Kept in step with `hios` by `forget_hio`.
    pub(super) inflight_at: Vec<InflightRange>,
    /// Guest requests by their device model's request: the VirtIOBlockReq, or a
    /// virtio-scsi command's SCSIRequest.
    pub(super) virtio: Map<u64, Ref>,
    pub(super) aio_opaque: Map<u64, Ref>,
    /// virtio-scsi commands by the DMA request their data moves by (see `scsi`).
    pub(super) scsi_dma: Map<u64, Ref>,
    /// The disk each SCSI LUN (controller, target and LUN) was seen to be, for its
    /// commands that reach no host file (a command QEMU answers alone, a read of
    /// clusters not allocated). A VM has a few.
    pub(super) lun_disks: Vec<(u64, u32, u16)>,
    pub(super) qiov: Map<u64, QiovBind>,
    /// What each thread is in the middle of (see `ThreadCtx`).
    pub(super) threads: Threads,
    pub(super) file_children: Map<u64, ()>,
    pub(super) aiocb: Map<u64, Ref>,
    pub(super) uring_wait: VecDeque<Ref>,
    /// Thread-pool flush jobs not yet begun, with the file descriptor each flushes: a
    /// worker's fdatasync of that descriptor is the job.
    pub(super) flush_wait: VecDeque<(u64, Ref)>,
    /// Flushes handed to the kernel by linux-aio or io_uring, in submission order,
    /// whose fsync has not begun: the kernel runs it in a thread of its choosing, and
    /// the next fsync of an image file in a thread doing nothing traced is the first.
    pub(super) sync_wait: VecDeque<Ref>,
    /// Thread-pool discard and write-zeroes jobs not yet begun, with the file
    /// descriptor, offset and length each gives fallocate.
    pub(super) falloc_wait: VecDeque<([u64; 3], Ref)>,
    /// The disks of the file each descriptor of QEMU's opens, learnt from thread-pool
    /// jobs whose direct IO the kernel named the file of: a flush's or discard's job
    /// names only the descriptor.
    pub(super) fd_disks: Map<u64, DiskSet>,
    /// The disk of each drive's root BdrvChild, learnt from requests whose host IO
    /// named their disk: it names the disk of a request whose host IO names none.
    pub(super) child_disks: Map<u64, u16>,
    /// Host IOs that queued a flush bio (no data) on a device, waiting for the
    /// device's flush request: the block layer issues it without a bio. One entry per
    /// flush request expected (a FUA write on a device without FUA makes two).
    pub(super) preflush: Vec<(u32, Ref)>,
    /// Requests held back in QEMU's IO throttling whose first block call has not come:
    /// found by range when it does, while the thread goes on to announce others.
    pub(super) throttled: VecDeque<Ref>,
    /// Host IOs inside a filesystem's fsync, by the filesystem's device: the journal
    /// commit they wait for, made by the journal's thread, is theirs.
    pub(super) syncing: Vec<(u32, Ref)>,
    /// Recent page-cache fills on bottom devices, oldest first (see [`Fill`]).
    pub(super) fills: VecDeque<Fill>,
    /// Readahead beyond what buffered reads asked.
    pub(super) readahead: ReadAheads,
    pub(super) user_data: Map<u64, Ref>,
    pub(super) kiocb: Map<u64, Ref>,
    pub(super) bios: Map<u64, BioEntry>,
    /// Bios remapped from their partition and not yet queued: (when, by whom).
    pub(super) entered: Map<u64, (u64, u32)>,
    /// Devices the layout does not know that a bottom disk's bios moved to (an NVMe
    /// multipath head's hidden path disks, which have no number in sysfs), and that
    /// disk: their block events are the disk's.
    pub(super) path_disks: Map<u32, u32>,
    pub(super) reqs: Map<u64, Req>,
    pub(super) plugged: Vec<PluggedBio>,
    pub(super) others: Slab<OtherState>,
    pub(super) other_ids: Map<u32, Ref>,
    pub(super) next_other: u32,
    pub(super) msi_wait: Vec<Ref>,
    /// Per VM, its guest's last doorbell write.
    pub(super) last_notify: Vec<u64>,
    pub(super) vms: super::vms::Vms,
    /// The VM of the event being joined (0 for block-layer events; see `vms`).
    pub(super) cur_vm: u16,
    pub(super) next_id: u64,
    pub(super) now: u64,
    pub(super) next_sweep: u64,
}

/// How deep in QEMU's block stack a probe is: a request never re-enters its own top
/// level for the same node, so seeing that again with its qiov means a new request.
pub(super) fn level(probe: u8) -> u8 {
    match probe {
        q::BLK_AIO_PREADV | q::BLK_AIO_PWRITEV => 1,
        q::BLK_CO_PREADV_PART | q::BLK_CO_PWRITEV_PART => 2,
        q::BDRV_CO_PREADV_PART | q::BDRV_CO_PWRITEV_PART | q::BDRV_CO_PDISCARD => 3,
        q::QCOW2_CO_PREADV_PART | q::QCOW2_CO_PWRITEV_PART => 4,
        _ => 0,
    }
}

/// The kernel's REQ_OP_READ and REQ_OP_WRITE: a block event's `sub`.
pub(super) const REQ_OP_READ: u8 = 0;
pub(super) const REQ_OP_WRITE: u8 = 1;

pub(super) fn dev_bytes(a2: u64) -> (u32, u64) {
    ((a2 >> 32) as u32, a2 & 0xffff_ffff)
}

#[inline]
pub(super) fn min0(a: u64, b: u64) -> u64 {
    if a == 0 {
        b
    } else if b == 0 {
        a
    } else {
        a.min(b)
    }
}

impl<S: Sink> Join<'_, S> {
    /// After a request or host IO is made: the most in flight at once. Kept here, not
    /// after every event, so that each kind's handler is the event's last call.
    #[inline]
    pub(super) fn note_in_flight(&mut self) {
        let in_flight = self.roots.live + self.hios.live;
        if in_flight > self.stats.peak_in_flight {
            self.stats.peak_in_flight = in_flight;
        }
    }

    pub(super) fn new_root(&mut self, e: &RawEvent, source: Source) -> Ref {
        let id = self.next_id;
        self.next_id += 1;
        let mut b = Boundaries::new();
        b[Boundary::Parsed] = e.ts;
        let r = self.roots.insert(Root {
            id,
            vm: self.cur_vm,
            op: Op::Other,
            offset: None,
            bytes: 0,
            source,
            top_probe: 0,
            top_child: 0,
            virtio_req: 0,
            aio_opaque: 0,
            scsi_dma: 0,
            scsi_addr: 0,
            scsi_ctrl: 0,
            qiovs: SmallVec::new(),
            b,
            open_hios: 0,
            data_hios: 0,
            meta_hios: 0,
            meta_ns: 0,
            throttle_at: 0,
            throttle_ns: 0,
            readahead_bytes: 0,
            synced_bytes: 0,
            dirty_wait_ns: 0,
            cut_at_start: false,
            has_data_qiov: false,
            bios: 0,
            requests: 0,
            flags: 0,
            partial: 0,
            last: e.ts,
            tid: e.tid,
            qcow2: false,
            bottom_dev: 0,
            disks: None,
            completed: false,
            host_job: false,
            nodata: false,
            bdrv_child: 0,
            merged_into: None,
        });
        self.active.push(r);
        self.note_in_flight();
        r
    }

    /// A new guest request at `e`, keyed by its device model's request `key` (the
    /// VirtIOBlockReq, a SCSIRequest) until it is answered; the handler run that made it
    /// goes on on this thread.
    pub(super) fn new_guest_request(&mut self, e: &RawEvent, key: u64, op: Op) -> Ref {
        let r = self.new_root(e, Source::Virtio);
        let notify = self
            .last_notify
            .get(usize::from(self.cur_vm))
            .copied()
            .unwrap_or(0);
        if let Some(root) = self.roots.get_mut(r) {
            root.virtio_req = key;
            root.op = op;
            // Requests popped by one handler run share the doorbell before them.
            if notify != 0 && notify <= e.ts && e.ts - notify < 10_000_000 {
                root.b[Boundary::Notify] = notify;
            }
        }
        self.virtio.insert(key, r);
        self.threads.at(e.tid, e.ts).last_parsed = Some(r);
        r
    }

    pub(super) fn set_io(&mut self, r: Ref, op: Op, offset: GuestOffset, bytes: u64) {
        if let Some(root) = self.roots.get_mut(r)
            && root.offset.is_none()
        {
            root.op = op;
            root.offset = Some(offset);
            root.bytes = bytes;
        }
    }

    pub(super) fn bind_qiov(&mut self, qiov: u64, r: Ref) {
        self.qiov.insert(qiov, QiovBind::Root(r));
        if let Some(root) = self.roots.get_mut(r) {
            root.qiovs.push(qiov);
        }
    }

    pub(super) fn add_hio(
        &mut self,
        root: Option<Ref>,
        kind: HioKind,
        off: HostFileOffset,
        bytes: u64,
        ts: u64,
    ) -> Ref {
        let mut vm = self.cur_vm;
        if let Some(r) = root
            && let Some(root) = self.roots.get_mut(r)
        {
            vm = root.vm;
            root.open_hios += 1;
            root.last = ts;
            if kind == HioKind::Data {
                root.data_hios += 1;
                if root.data_hios > 1 {
                    root.flags |= flags::SPLIT;
                }
            }
        }
        let h = self.hios.insert(Hio {
            root,
            vm,
            kind,
            api: Api::Unknown,
            offset: off,
            bytes,
            created: ts,
            submit: 0,
            first_q: 0,
            first_q_dev: 0,
            bottom_q: 0,
            fs_entered: 0,
            first_seen: 0,
            issue_any: 0,
            done_any: 0,
            issue_bottom: 0,
            done_bottom: 0,
            ranges: DevRanges::new(),
            has_kiocb: false,
            fs_begun: false,
            bios: 0,
            requests: 0,
            open_rqs: 0,
            flags: 0,
            bottom_dev: 0,
            disks: 0,
            fd: 0,
            job: false,
            sync: false,
            node_flush: false,
            direct: false,
            ra_bytes: 0,
            synced_bytes: 0,
            dirty_pause_ticks: 0,
            dirty_pauses: 0,
            loop_issue: 0,
            loop_done: 0,
            aio_write: false,
        });
        // Its ranges made where they stay (they are most of its size).
        if bytes > 0
            && let Some(x) = self.hios.get_mut(h)
        {
            self.layout.dev_ranges(x.vm, off, bytes, &mut x.ranges);
        }
        self.inflight.push(h);
        self.index_ranges(h);
        self.note_in_flight();
        h
    }

    pub(super) fn index_ranges(&mut self, h: Ref) {
        if let Some(x) = self.hios.get(h) {
            self.inflight_at
                .extend(x.ranges.iter().map(|r| InflightRange {
                    dev: r.dev,
                    start: r.start_sector,
                    end: r.end_sector,
                    hio: h,
                }));
        }
    }

    /// The one way a host IO leaves: out of the slab, the in-flight list and the
    /// address index together. Dropped in place: moving a `Hio` out showed in the
    /// join's profile, so whoever needs its fields reads them before.
    pub(super) fn forget_hio(&mut self, h: Ref) {
        if !self.hios.discard(h) {
            return;
        }
        if let Some(i) = self.inflight.iter().position(|&x| x == h) {
            self.inflight.swap_remove(i);
        }
        self.unindex_ranges(h);
    }

    /// The host IO in flight made first of those `pick` accepts. The in-flight list's
    /// own order is shuffled by removals; QEMU's thread pool, linux-aio and io_uring
    /// take requests in the order QEMU made them.
    pub(super) fn earliest_in_flight(&self, pick: impl Fn(&Hio) -> bool) -> Option<Ref> {
        // Asked for a process's own event: another VM's IO is never it.
        self.inflight
            .iter()
            .filter_map(|&h| self.hios.get(h).map(|x| (h, x)))
            .filter(|(_, x)| x.vm == self.cur_vm && pick(x))
            .min_by_key(|(_, x)| x.created)
            .map(|(h, _)| h)
    }

    pub(super) fn unindex_ranges(&mut self, h: Ref) {
        // Its ranges were indexed together, so they sit side by side.
        if let Some(i) = self.inflight_at.iter().position(|x| x.hio == h) {
            let n = self.inflight_at[i..]
                .iter()
                .take_while(|x| x.hio == h)
                .count();
            self.inflight_at.drain(i..i + n);
        }
    }

    pub(super) fn new_other(
        &mut self,
        ts: u64,
        dev: u32,
        sector: DeviceSector,
        bytes: u64,
        op: u8,
    ) -> u32 {
        let image = self.layout.occupied(
            dev,
            sector,
            sector.saturating_add(bytes.div_ceil(512).max(1)),
        );
        let class = match (image, op) {
            (false, _) => OtherClass::OtherDeviceIo,
            (true, _) if !self.layout.is_top_device(dev) => OtherClass::ImageBelow,
            (true, REQ_OP_READ) => OtherClass::ImageRead,
            (true, _) => OtherClass::ImageWriteback,
        };
        let disk = if image {
            self.layout.disk_at(
                dev,
                sector,
                sector.saturating_add(bytes.div_ceil(512).max(1)),
            )
        } else {
            None
        };
        let id = self.next_other;
        self.next_other = self.next_other.wrapping_add(1);
        let r = self.others.insert(OtherState {
            io: OtherIo {
                class,
                start: ts,
                end: ts,
                bytes,
                dev,
                disk,
            },
        });
        self.other_ids.insert(id, r);
        id
    }
}
