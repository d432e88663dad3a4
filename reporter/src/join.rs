//! The join: events in timestamp order in, one [`IoRow`] per guest-visible IO out, plus
//! [`OtherIo`] for IO no guest request caused. Streaming: state is kept only for
//! requests in flight and dropped when they finish, so memory follows the queue depth,
//! not the trace length.
//!
//! How events find their request (docs/layers.md has the full rules):
//! - inside QEMU by pointers: the VirtIOBlockReq, then the QEMUIOVector every block
//!   layer of one request shares, the thread-pool job, io_uring user_data; qcow2
//!   metadata reads by the L2 cache lookup that precedes them on the same thread;
//! - host syscalls by the thread-pool worker's thread id, or by offset and length;
//! - direct IO by position and length, then by kiocb;
//! - bios and requests by address: each host IO in flight registers the sectors it
//!   covers on every device below the image file (from the layout), and a bio queued on
//!   one of those sectors while it is in flight belongs to it; after that, by bio and
//!   request pointer until completion. Merged requests belong to every IO they carry.
//!
//! Every key is removed when its request ends, so a reused pointer starts fresh.

use crate::layers::{Boundaries, NB};
use crate::layout::{DevRanges, DiskSet, Layout};
use serde::Serialize;
use smallvec::{SmallVec, smallvec};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use viopath_probes::abi::{EventKind, RawEvent, qemu_probe as q};

/// A fast hasher for pointer and id keys (already well spread).
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        // Both halves of the 128-bit product, folded: hashbrown picks the bucket from
        // the low bits, and those of a plain product depend only on the key's low
        // bits, which are all zero in aligned pointers (every key in one bucket).
        let p = (v as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = (p as u64) ^ ((p >> 64) as u64);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64)
    }
}

type Map<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A slab with generation-checked references: a stale reference finds nothing.
struct Slab<T> {
    /// Generation (never 0) and item.
    items: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    live: usize,
}

/// A slab slot and its generation in one word (generation high, never 0): an
/// `Option<Ref>` is then one word too, written and read whole. Two halves written
/// apart and read as one word cannot be forwarded from the store buffer, and that
/// stall showed in the join's profile wherever a context field was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Ref(std::num::NonZeroU64);

impl Ref {
    fn new(idx: u32, generation: u32) -> Ref {
        let g = std::num::NonZeroU64::new((generation as u64) << 32).expect("generation 0");
        Ref(g | idx as u64)
    }
    fn idx(self) -> usize {
        self.0.get() as u32 as usize
    }
    fn generation(self) -> u32 {
        (self.0.get() >> 32) as u32
    }
}

impl<T> Slab<T> {
    fn new() -> Self {
        Slab {
            items: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }
    fn insert(&mut self, t: T) -> Ref {
        self.live += 1;
        if let Some(idx) = self.free.pop() {
            let slot = &mut self.items[idx as usize];
            slot.0 = slot.0.checked_add(1).unwrap_or(1);
            slot.1 = Some(t);
            Ref::new(idx, slot.0)
        } else {
            self.items.push((1, Some(t)));
            Ref::new(self.items.len() as u32 - 1, 1)
        }
    }
    fn get(&self, r: Ref) -> Option<&T> {
        match self.items.get(r.idx()) {
            Some((g, Some(t))) if *g == r.generation() => Some(t),
            _ => None,
        }
    }
    fn get_mut(&mut self, r: Ref) -> Option<&mut T> {
        match self.items.get_mut(r.idx()) {
            Some((g, Some(t))) if *g == r.generation() => Some(t),
            _ => None,
        }
    }
    fn remove(&mut self, r: Ref) -> Option<T> {
        match self.items.get_mut(r.idx()) {
            Some((g, slot @ Some(_))) if *g == r.generation() => {
                self.free.push(r.idx() as u32);
                self.live -= 1;
                slot.take()
            }
            _ => None,
        }
    }
    /// Remove without handing the item back: dropped where it is. False if it was
    /// not there.
    fn discard(&mut self, r: Ref) -> bool {
        if let Some((g, slot @ Some(_))) = self.items.get_mut(r.idx())
            && *g == r.generation()
        {
            *slot = None;
            self.free.push(r.idx() as u32);
            self.live -= 1;
            return true;
        }
        false
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Read,
    Write,
    Other,
    /// virtio-blk FLUSH: QEMU flushes the image (qcow2 metadata, then fdatasync).
    Flush,
    /// virtio-blk DISCARD and WRITE_ZEROES.
    Discard,
    WriteZeroes,
    /// virtio-blk GET_ID: answered by QEMU without IO.
    GetId,
}

impl Op {
    pub const ALL: [Op; 7] = [
        Op::Read,
        Op::Write,
        Op::Other,
        Op::Flush,
        Op::Discard,
        Op::WriteZeroes,
        Op::GetId,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Other => "other",
            Op::Flush => "flush",
            Op::Discard => "discard",
            Op::WriteZeroes => "write_zeroes",
            Op::GetId => "get_id",
        }
    }

    /// From a virtio-blk request header's type (VIRTIO_BLK_T_*; the old BARRIER bit
    /// is ignored).
    pub fn from_virtio(t: u32) -> Op {
        match t & !0x8000_0000 {
            0 => Op::Read,
            1 => Op::Write,
            4 => Op::Flush,
            8 => Op::GetId,
            11 => Op::Discard,
            13 => Op::WriteZeroes,
            _ => Op::Other,
        }
    }

    /// Moves data between the guest and the image (so host IO is expected).
    pub fn moves_data(self) -> bool {
        matches!(self, Op::Read | Op::Write)
    }
}

/// Which layer an IO was first seen at: the top of its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A virtio-blk request from the guest.
    Virtio,
    /// A QEMU block request (blk_aio_*, blk_co_*, bdrv_co_*): no virtio layer traced,
    /// or QEMU's own user (qemu-io, a block job).
    QemuBlock,
}

pub mod flags {
    /// Its data went to the host as more than one IO (qcow2 cluster boundaries).
    pub const SPLIT: u16 = 1;
    /// A block request carried its data together with another IO's.
    pub const MERGED: u16 = 2;
    /// virtio-blk merged it into the request before it; times are that request's.
    pub const VIRTIO_MERGED: u16 = 4;
    /// A bio was split in the block layer.
    pub const BIO_SPLIT: u16 = 8;
    /// Part of it read a hole or an unwritten extent of the image file: the host
    /// filesystem returned zeros without device IO.
    pub const FS_ZEROS: u16 = 16;
}

pub mod reasons {
    pub const NO_HOST_IO: u16 = 1;
    pub const HOST_IO_UNFINISHED: u16 = 2;
    pub const NO_COMPLETION: u16 = 4;
    pub const KEY_REUSED: u16 = 8;
    pub const NO_DEVICE_IO: u16 = 16;
    pub const NAMES: [(u16, &str); 5] = [
        (
            NO_HOST_IO,
            "no host IO joined (events lost, or served from QEMU's cache)",
        ),
        (HOST_IO_UNFINISHED, "a host IO never completed in the trace"),
        (
            NO_COMPLETION,
            "no completion seen (trace ended, or events lost)",
        ),
        (
            KEY_REUSED,
            "its pointer was reused before it completed (events lost)",
        ),
        (
            NO_DEVICE_IO,
            "host IO reached no bottom device (page cache, or block events lost)",
        ),
    ];
}

/// One guest-visible IO, joined.
#[derive(Debug, Clone, Serialize)]
pub struct IoRow {
    /// Order of arrival.
    pub id: u64,
    pub op: Op,
    /// Guest offset (bytes), when a layer that knows it was traced.
    pub offset: Option<u64>,
    pub bytes: u64,
    pub source: Source,
    /// Boundary timestamps, ns; 0 = absent.
    pub b: Boundaries,
    /// Host IOs carrying its data, and qcow2 metadata IOs it caused.
    pub host_ios: u32,
    pub meta_ios: u32,
    pub meta_ns: u64,
    pub bios: u32,
    pub requests: u32,
    /// Bottom device (kernel dev_t), 0 if none.
    pub bottom_dev: u32,
    /// The VM's disk it was for (index in the layout's disks): known from the image
    /// file the kernel named for its host IO, or when the VM has one disk.
    pub disk: Option<u16>,
    pub flags: u16,
    /// Why the row is partial (see [`reasons`]); 0 = complete.
    pub partial: u16,
    /// For virtio-merged requests: the id of the request that carried it.
    pub merged_into: Option<u64>,
}

impl IoRow {
    /// A complete 4 KiB virtio read with one host IO, for tests to vary.
    #[cfg(test)]
    pub(crate) fn example() -> IoRow {
        IoRow {
            id: 0,
            op: Op::Read,
            offset: Some(0),
            bytes: 4096,
            source: Source::Virtio,
            b: [0; NB],
            host_ios: 1,
            meta_ios: 0,
            meta_ns: 0,
            bios: 1,
            requests: 1,
            bottom_dev: 0,
            disk: None,
            flags: 0,
            partial: 0,
            merged_into: None,
        }
    }
}

/// What IO that belongs to no guest request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum OtherClass {
    /// QEMU file IO outside any guest request: qcow2 metadata flushes, header updates.
    QemuInternal,
    /// A positioned syscall of the QEMU process that no QEMU block event led to.
    QemuSyscall,
    /// Block IO on an image file's sectors that no traced request issued: page-cache
    /// writeback or readahead of the image, or another process using the file.
    ImageWriteback,
    /// Block IO on the devices below the images, elsewhere: filesystem journal, other
    /// files, other processes.
    OtherDeviceIo,
}

impl OtherClass {
    pub fn name(self) -> &'static str {
        match self {
            OtherClass::QemuInternal => "qemu internal file IO (qcow2 metadata flush, header)",
            OtherClass::QemuSyscall => "qemu syscall outside block requests",
            OtherClass::ImageWriteback => "image file IO not from a request (writeback, readahead)",
            OtherClass::OtherDeviceIo => "other IO on the same devices (journal, other files)",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OtherIo {
    pub class: OtherClass,
    pub start: u64,
    pub end: u64,
    pub bytes: u64,
    pub dev: u32,
}

pub trait Sink {
    fn io(&mut self, row: &IoRow);
    fn other(&mut self, other: &OtherIo);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HioKind {
    Data,
    Meta,
    Internal,
    Syscall,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Unknown,
    Threads,
    Native,
    Uring,
}

struct Hio {
    root: Option<Ref>,
    kind: HioKind,
    api: Api,
    offset: u64,
    bytes: u64,
    created: u64,
    submit: u64,
    first_q: u64,
    issue_any: u64,
    done_any: u64,
    issue_bottom: u64,
    done_bottom: u64,
    ranges: DevRanges,
    has_kiocb: bool,
    /// The filesystem's fsync for it began (a flush).
    fs_begun: bool,
    bios: u32,
    requests: u32,
    /// Block requests carrying it not yet completed.
    open_rqs: u32,
    flags: u16,
    bottom_dev: u32,
    /// The disks whose chains hold the file the kernel named for it (0: not named).
    disks: DiskSet,
    /// The file descriptor a thread-pool job names (0: not known).
    fd: u64,
    /// A job without data (flush, discard, write zeroes) made for a request.
    job: bool,
}

struct Root {
    id: u64,
    op: Op,
    offset: Option<u64>,
    bytes: u64,
    source: Source,
    top_probe: u8,
    top_child: u64,
    virtio_req: u64,
    aio_opaque: u64,
    /// Inline: a request has one to a few, and a heap allocation per request shows
    /// in the join's profile.
    qiovs: SmallVec<[u64; 4]>,
    b: Boundaries,
    open_hios: u32,
    data_hios: u32,
    meta_hios: u32,
    meta_ns: u64,
    bios: u32,
    requests: u32,
    flags: u16,
    partial: u16,
    last: u64,
    /// The thread that made it: a request without a completion event is over once
    /// this thread has gone on for a while after it went quiet (see [`IDLE_NS`]).
    tid: u32,
    qcow2: bool,
    bottom_dev: u32,
    /// The disks all its named host IOs agree on (see [`Hio::disks`]): `None` until
    /// one is named, `Some(0)` if they disagree.
    disks: Option<DiskSet>,
    completed: bool,
    /// A host job without data was made for it (flush, discard): a later one on its
    /// thread is another request's.
    host_job: bool,
    /// A block request without data was seen for it: a write of zeroes or a discard,
    /// whose host job (a fallocate) is not a flush's, and whose range (when it has
    /// one) came from that request, not from block IO.
    nodata: bool,
    /// The BdrvChild of its first call on a block node (QEMU's block layer): for a
    /// request from a drive, that drive's root, the same for all its requests.
    bdrv_child: u64,
    merged_into: Option<u64>,
}

impl Root {
    /// Keep the BdrvChild of its first call on a block node (`bdrv_co_*`).
    #[inline]
    fn note_bdrv_child(&mut self, probe: u8, child: u64) {
        if self.bdrv_child == 0 && level(probe) == 3 {
            self.bdrv_child = child;
        }
    }
}

#[derive(Clone, Copy)]
enum QiovBind {
    Root(Ref),
    Meta(Option<Ref>),
    /// qcow2's copy-on-write buffer for an allocating write: reading the old cluster
    /// (from the backing file) is that write's metadata-like IO; writing the buffer
    /// out carries the write's data.
    Cow(Ref),
}

impl QiovBind {
    fn root(self) -> Option<Ref> {
        match self {
            QiovBind::Root(r) | QiovBind::Cow(r) | QiovBind::Meta(Some(r)) => Some(r),
            QiovBind::Meta(None) => None,
        }
    }
}

/// One device range of a host IO in flight.
#[derive(Clone, Copy)]
struct InflightRange {
    dev: u32,
    start: u64,
    end: u64,
    hio: Ref,
}

#[derive(Clone, Copy)]
enum BioOwner {
    Hio(Ref),
    Other(u32),
}

/// A bio's owner, valid until the bio completes or its request does (blk-mq devices
/// trace no bio completion). `remapped`: the next queue event for this pointer is the
/// same bio moving down (partition remap), not a new bio at a reused address.
#[derive(Clone, Copy)]
struct BioEntry {
    owner: BioOwner,
    remapped: bool,
}

struct Req {
    owners: SmallVec<[Ref; 2]>,
    bios: SmallVec<[u64; 4]>,
    other: Option<u32>,
    dev: u32,
    sector: u64,
    sectors: u64,
    /// When it was inserted or issued: one whose completion was lost is dropped once
    /// it is older than any real request.
    since: u64,
    /// Its REQ_OP: a bio or request merges only into one of the same operation.
    op: u8,
    /// Issued to its driver: the kernel merges nothing more into it (RQF_STARTED, and
    /// RQF_DONTPREP once a driver prepared it, are among RQF_NOMERGE_FLAGS).
    started: bool,
}

/// A bio that merged into a request not seen yet: one still on the submitting task's
/// plug list, whose insert is traced only when the plug is flushed (and then covers
/// this bio's sectors).
struct PluggedBio {
    bio: u64,
    owner: Ref,
    dev: u32,
    sector: u64,
    sectors: u64,
}

struct OtherState {
    io: OtherIo,
}

/// What one thread is in the middle of. These were one map per field keyed by thread
/// id; most events touch two or three of them on the same thread, so one lookup of
/// the thread (usually the same as the last event's) replaces several hash inserts.
#[derive(Default)]
struct ThreadCtx {
    /// The blk_aio_* request this coroutine thread announced, waiting for its qiov.
    pending_co: Option<Ref>,
    /// The request qcow2 is serving on this thread.
    qcow2: Option<Ref>,
    /// An L2/refcount cache lookup (owner, table offset): a read of that table follows.
    meta: Option<(Option<Ref>, u64)>,
    /// The last bdrv_co_p{read,write}v_part whose qiov is known: its file-posix
    /// request follows in the same coroutine, with a slice of that qiov (a new
    /// pointer) when it covers only part of it.
    last_bdrv: Option<(QiovBind, u64, u64)>,
    /// The file-posix request just made here: the submission probe refers to it.
    last_hio: Option<Ref>,
    /// The host IO this thread-pool worker is running synchronously.
    worker: Option<Ref>,
    /// The fallocate job this worker ran last: (descriptor, offset, length) and its
    /// request. QEMU retries a write of zeroes in other modes on the same range within
    /// the same job.
    falloc_job: Option<([u64; 3], Ref)>,
    /// linux-aio requests queued, submitted by this thread's next io_submit.
    laio_wait: SmallVec<[Ref; 4]>,
    /// Host IOs this thread handed the kernel (io_submit, io_uring submission) whose
    /// direct IO has not begun. The kernel begins them on this thread during the
    /// syscall, in this order (io_uring may hand one to a worker thread instead).
    submitted: SmallVec<[Ref; 4]>,
    /// The direct IO this thread is inside (bios it queues are that IO's).
    dio: Option<Ref>,
    /// The last virtio request completed here: (id, boundaries, time).
    completion_batch: Option<(u64, Boundaries, u64, Option<DiskSet>)>,
    /// Trace time of the last event that changed this context.
    seen: u64,
}

/// Per-thread contexts, with a direct-mapped cache of where threads are in front of
/// the index. A trace has a few dozen threads, so each nearly always has a slot of its
/// own; remembering only the last thread looked up missed whenever consecutive events
/// were of different threads.
#[derive(Default)]
struct Threads {
    index: Map<u32, u32>,
    ctx: Vec<(u32, ThreadCtx)>,
    cache: ThreadCache,
}

/// Thread id and slot, packed (`u64::MAX`: empty), per `tid % THREAD_CACHE`.
struct ThreadCache([std::cell::Cell<u64>; THREAD_CACHE]);

const THREAD_CACHE: usize = 64;

impl Default for ThreadCache {
    fn default() -> Self {
        ThreadCache(std::array::from_fn(|_| std::cell::Cell::new(u64::MAX)))
    }
}

impl ThreadCache {
    #[inline]
    fn get(&self, tid: u32) -> Option<u32> {
        let v = self.0[tid as usize % THREAD_CACHE].get();
        ((v >> 32) as u32 == tid && v != u64::MAX).then_some(v as u32)
    }
    #[inline]
    fn set(&self, tid: u32, i: u32) {
        self.0[tid as usize % THREAD_CACHE].set((tid as u64) << 32 | i as u64);
    }
    fn clear(&self) {
        for c in &self.0 {
            c.set(u64::MAX);
        }
    }
}

impl Threads {
    #[inline]
    fn find(&self, tid: u32) -> Option<usize> {
        match self.cache.get(tid) {
            Some(i) => Some(i as usize),
            None => self.find_uncached(tid),
        }
    }

    #[cold]
    #[inline(never)]
    fn find_uncached(&self, tid: u32) -> Option<usize> {
        let i = *self.index.get(&tid)?;
        self.cache.set(tid, i);
        Some(i as usize)
    }

    #[inline]
    fn get(&self, tid: u32) -> Option<&ThreadCtx> {
        self.find(tid).map(|i| &self.ctx[i].1)
    }

    #[inline]
    fn get_mut(&mut self, tid: u32) -> Option<&mut ThreadCtx> {
        self.find(tid).map(|i| &mut self.ctx[i].1)
    }

    /// The thread's context, made if it has none; `ts` marks it as in use.
    #[inline]
    fn at(&mut self, tid: u32, ts: u64) -> &mut ThreadCtx {
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
    fn add(&mut self, tid: u32) -> usize {
        let i = self.ctx.len();
        self.ctx.push((tid, ThreadCtx::default()));
        self.index.insert(tid, i as u32);
        self.cache.set(tid, i as u32);
        i
    }

    /// Forget threads idle since before `before`: whatever they were in the middle of
    /// has been finished as stale by then, and exited threads must not pile up.
    fn forget_idle(&mut self, before: u64) {
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

    fn len(&self) -> usize {
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
    /// The fdatasync/fsync probes were attached: a thread-pool flush job ends at its
    /// worker's fdatasync return. Without them (older traces) a flush is QEMU's
    /// alone, as its job would never be seen to end.
    pub flush_syscalls: bool,
    /// The filesystem's fsync probes were attached: a flush QEMU hands the kernel
    /// through linux-aio (run by a kernel worker) or io_uring is followed into the
    /// filesystem's fsync wherever it runs. Without them a linux-aio flush is QEMU's
    /// alone, as its end would never be seen.
    pub fs_sync: bool,
    /// The workqueue probes for linux-aio fsync work were attached: a linux-aio flush
    /// is followed into its kernel worker on any filesystem, begun and ended by the
    /// work item (ext4's own fsync events, inside it, still mark the fsync's end).
    pub aio_fsync: bool,
    /// The fallocate probes were attached: a thread-pool discard or write-zeroes job
    /// ends at its worker's fallocate return. Without them (older traces) those
    /// requests are QEMU's alone.
    pub falloc_syscalls: bool,
}

pub struct Join<'l, S: Sink> {
    layout: &'l Layout,
    pub sink: S,
    pub stats: JoinStats,
    cfg: JoinConfig,
    roots: Slab<Root>,
    hios: Slab<Hio>,
    active: Vec<Ref>,
    inflight: Vec<Ref>,
    /// The device ranges of the host IOs in flight, flat: a queued bio's owner is
    /// looked up by address for every bio, and visiting each host IO for it showed.
    /// Kept in step with `hios` by `forget_hio`.
    inflight_at: Vec<InflightRange>,
    virtio: Map<u64, Ref>,
    aio_opaque: Map<u64, Ref>,
    qiov: Map<u64, QiovBind>,
    /// What each thread is in the middle of (see `ThreadCtx`).
    threads: Threads,
    file_children: Map<u64, ()>,
    aiocb: Map<u64, Ref>,
    uring_wait: VecDeque<Ref>,
    /// Thread-pool flush jobs not yet begun, with the file descriptor each flushes: a
    /// worker's fdatasync of that descriptor is the job.
    flush_wait: VecDeque<(u64, Ref)>,
    /// Flushes handed to the kernel by linux-aio or io_uring, in submission order,
    /// whose fsync has not begun: the kernel runs it in a thread of its choosing, and
    /// the next fsync of an image file in a thread doing nothing traced is the first.
    sync_wait: VecDeque<Ref>,
    /// Thread-pool discard and write-zeroes jobs not yet begun, with the file
    /// descriptor, offset and length each gives fallocate.
    falloc_wait: VecDeque<([u64; 3], Ref)>,
    /// The disks of the file each descriptor of QEMU's opens, learnt from thread-pool
    /// jobs whose direct IO the kernel named the file of: a flush's or discard's job
    /// names only the descriptor.
    fd_disks: Map<u64, DiskSet>,
    /// The disk of each drive's root BdrvChild, learnt from requests whose host IO
    /// named their disk: it names the disk of a request whose host IO names none.
    child_disks: Map<u64, u16>,
    /// Host IOs that queued a flush bio (no data) on a device, waiting for the
    /// device's flush request: the block layer issues it without a bio.
    preflush: Vec<(u32, Ref)>,
    user_data: Map<u64, Ref>,
    kiocb: Map<u64, Ref>,
    bios: Map<u64, BioEntry>,
    reqs: Map<u64, Req>,
    plugged: Vec<PluggedBio>,
    others: Slab<OtherState>,
    other_ids: Map<u32, Ref>,
    next_other: u32,
    msi_wait: Vec<Ref>,
    last_notify: u64,
    next_id: u64,
    now: u64,
    next_sweep: u64,
}

/// How deep in QEMU's block stack a probe is: a request never re-enters its own top
/// level for the same node, so seeing that again with its qiov means a new request.
fn level(probe: u8) -> u8 {
    match probe {
        q::BLK_AIO_PREADV | q::BLK_AIO_PWRITEV => 1,
        q::BLK_CO_PREADV_PART | q::BLK_CO_PWRITEV_PART => 2,
        q::BDRV_CO_PREADV_PART | q::BDRV_CO_PWRITEV_PART | q::BDRV_CO_PDISCARD => 3,
        q::QCOW2_CO_PREADV_PART | q::QCOW2_CO_PWRITEV_PART => 4,
        _ => 0,
    }
}

fn dev_bytes(a2: u64) -> (u32, u64) {
    ((a2 >> 32) as u32, a2 & 0xffff_ffff)
}

#[inline]
fn min0(a: u64, b: u64) -> u64 {
    if a == 0 {
        b
    } else if b == 0 {
        a
    } else {
        a.min(b)
    }
}

/// For each QEMU probe the join uses: its number in the dispatch ([`code`]), and an
/// out-of-line handler, [`Join::qemu`] specialised to it, so that [`Join::event`] stays a
/// small dispatcher that jumps to its handler and saves no registers of its own.
macro_rules! qemu_probes {
    ($($probe:ident => $name:ident),* $(,)?) => {
        /// An event's kind, or for a QEMU event its probe, as one number to dispatch on.
        mod code {
            use super::q;
            pub const QEMU: u16 = 256;
            pub const QEMU_LAST: u16 = QEMU + u8::MAX as u16;
            $(pub const $probe: u16 = QEMU + q::$probe as u16;)*
        }

        impl<S: Sink> Join<'_, S> {
            $(
                #[inline(never)]
                fn $name(&mut self, e: &RawEvent) {
                    self.qemu(e, q::$probe)
                }
            )*
        }
    };
}

qemu_probes! {
    VIRTIO_HANDLE_REQUEST => q_virtio_handle_request,
    VIRTIO_SUBMIT_MULTIREQ => q_virtio_submit_multireq,
    VIRTIO_RW_COMPLETE => q_virtio_rw_complete,
    VIRTIO_REQ_COMPLETE => q_virtio_req_complete,
    BLK_AIO_PREADV => q_blk_aio_preadv,
    BLK_AIO_PWRITEV => q_blk_aio_pwritev,
    BLK_CO_PREADV_PART => q_blk_co_preadv_part,
    BLK_CO_PWRITEV_PART => q_blk_co_pwritev_part,
    BDRV_CO_PREADV_PART => q_bdrv_co_preadv_part,
    BDRV_CO_PWRITEV_PART => q_bdrv_co_pwritev_part,
    QCOW2_CO_PREADV_PART => q_qcow2_co_preadv_part,
    QCOW2_CO_PWRITEV_PART => q_qcow2_co_pwritev_part,
    QCOW2_CACHE_GET => q_qcow2_cache_get,
    RAW_CO_PRW => q_raw_co_prw,
    THREAD_POOL_SUBMIT_AIO => q_thread_pool_submit_aio,
    HANDLE_AIOCB_RW => q_handle_aiocb_rw,
    LAIO_CO_SUBMIT => q_laio_co_submit,
    LURING_CO_SUBMIT => q_luring_co_submit,
    QEMU_IO_AIO_READ_DONE => q_qemu_io_aio_read_done,
    QEMU_IO_AIO_WRITE_DONE => q_qemu_io_aio_write_done,
    BDRV_CO_PDISCARD => q_bdrv_co_pdiscard,
}

impl<'l, S: Sink> Join<'l, S> {
    pub fn new(layout: &'l Layout, sink: S, cfg: JoinConfig) -> Self {
        Join {
            layout,
            sink,
            stats: JoinStats::default(),
            cfg,
            roots: Slab::new(),
            hios: Slab::new(),
            active: Vec::new(),
            inflight: Vec::new(),
            inflight_at: Vec::new(),
            virtio: Map::default(),
            aio_opaque: Map::default(),
            qiov: Map::default(),
            file_children: Map::default(),
            aiocb: Map::default(),
            threads: Threads::default(),
            uring_wait: VecDeque::new(),
            flush_wait: VecDeque::new(),
            sync_wait: VecDeque::new(),
            falloc_wait: VecDeque::new(),
            fd_disks: Map::default(),
            child_disks: Map::default(),
            preflush: Vec::new(),
            user_data: Map::default(),
            kiocb: Map::default(),
            bios: Map::default(),
            reqs: Map::default(),
            plugged: Vec::new(),
            others: Slab::new(),
            other_ids: Map::default(),
            next_other: 0,
            msi_wait: Vec::new(),
            last_notify: 0,
            next_id: 0,
            now: 0,
            next_sweep: 0,
        }
    }

    /// Requests, host IOs, bios, block requests and thread contexts currently held.
    pub fn in_flight(&self) -> usize {
        self.roots.live + self.hios.live + self.bios.len() + self.reqs.len() + self.threads.len()
    }

    pub fn event(&mut self, e: &RawEvent) {
        self.stats.events += 1;
        self.now = self.now.max(e.ts);
        if self.now >= self.next_sweep {
            self.sweep_now();
        }
        const QEMU: u8 = EventKind::Qemu as u8;
        const SYS_ENTER: u16 = EventKind::SysEnter as u16;
        const SYS_EXIT: u16 = EventKind::SysExit as u16;
        const BIO_QUEUE: u16 = EventKind::BioQueue as u16;
        const BIO_REMAP: u16 = EventKind::BioRemap as u16;
        const BIO_SPLIT: u16 = EventKind::BioSplit as u16;
        const BIO_MERGE: u16 = EventKind::BioMerge as u16;
        const BIO_COMPLETE: u16 = EventKind::BioComplete as u16;
        const RQ_INSERT: u16 = EventKind::RqInsert as u16;
        const RQ_ISSUE: u16 = EventKind::RqIssue as u16;
        const RQ_COMPLETE: u16 = EventKind::RqComplete as u16;
        const RQ_MERGE: u16 = EventKind::RqMerge as u16;
        const URING_SUBMIT: u16 = EventKind::UringSubmit as u16;
        const URING_COMPLETE: u16 = EventKind::UringComplete as u16;
        const DIO_BEGIN: u16 = EventKind::DioBegin as u16;
        const DIO_MAP: u16 = EventKind::DioMap as u16;
        const DIO_COMPLETE: u16 = EventKind::DioComplete as u16;
        const FS_ENTER: u16 = EventKind::FsEnter as u16;
        const FS_EXIT: u16 = EventKind::FsExit as u16;
        const KVM_MMIO: u16 = EventKind::KvmMmio as u16;
        const KVM_MSI: u16 = EventKind::KvmMsi as u16;
        const DM_SUBMIT: u16 = EventKind::DmSubmit as u16;
        const DM_ENDIO: u16 = EventKind::DmEndio as u16;
        const FS_SYNC: u16 = EventKind::FsSync as u16;
        // QEMU's probe is dispatched in the same jump table as the event kind: one
        // indirect jump per event instead of two for QEMU's, which are half of them
        // (with the thread cache, a tenth off the join's time: docs/benchmarks.md).
        let code = if e.kind == QEMU {
            code::QEMU + e.sub as u16
        } else {
            e.kind as u16
        };
        match code {
            code::VIRTIO_HANDLE_REQUEST => self.q_virtio_handle_request(e),
            code::VIRTIO_SUBMIT_MULTIREQ => self.q_virtio_submit_multireq(e),
            code::VIRTIO_RW_COMPLETE => self.q_virtio_rw_complete(e),
            code::VIRTIO_REQ_COMPLETE => self.q_virtio_req_complete(e),
            code::BLK_AIO_PREADV => self.q_blk_aio_preadv(e),
            code::BLK_AIO_PWRITEV => self.q_blk_aio_pwritev(e),
            code::BLK_CO_PREADV_PART => self.q_blk_co_preadv_part(e),
            code::BLK_CO_PWRITEV_PART => self.q_blk_co_pwritev_part(e),
            code::BDRV_CO_PREADV_PART => self.q_bdrv_co_preadv_part(e),
            code::BDRV_CO_PWRITEV_PART => self.q_bdrv_co_pwritev_part(e),
            code::QCOW2_CO_PREADV_PART => self.q_qcow2_co_preadv_part(e),
            code::QCOW2_CO_PWRITEV_PART => self.q_qcow2_co_pwritev_part(e),
            code::QCOW2_CACHE_GET => self.q_qcow2_cache_get(e),
            code::RAW_CO_PRW => self.q_raw_co_prw(e),
            code::THREAD_POOL_SUBMIT_AIO => self.q_thread_pool_submit_aio(e),
            code::HANDLE_AIOCB_RW => self.q_handle_aiocb_rw(e),
            code::LAIO_CO_SUBMIT => self.q_laio_co_submit(e),
            code::LURING_CO_SUBMIT => self.q_luring_co_submit(e),
            code::QEMU_IO_AIO_READ_DONE => self.q_qemu_io_aio_read_done(e),
            code::QEMU_IO_AIO_WRITE_DONE => self.q_qemu_io_aio_write_done(e),
            code::BDRV_CO_PDISCARD => self.q_bdrv_co_pdiscard(e),
            // A probe this join does not use (a newer recorder's): ignored, as before
            // the probes shared this table, not counted as an unknown event.
            code::QEMU..=code::QEMU_LAST => {}
            SYS_ENTER => self.sys_enter(e),
            SYS_EXIT => self.sys_exit(e),
            BIO_QUEUE => self.bio_queue(e),
            BIO_REMAP => self.bio_remap(e),
            BIO_SPLIT => self.bio_split(e),
            BIO_MERGE => self.bio_merge(e),
            BIO_COMPLETE => self.bio_complete(e),
            RQ_INSERT | RQ_ISSUE => self.rq_start(e),
            RQ_COMPLETE => self.rq_complete(e),
            RQ_MERGE => self.rq_merge(e),
            URING_SUBMIT => self.uring_submit(e),
            URING_COMPLETE => self.uring_complete(e),
            DIO_BEGIN | FS_ENTER => self.dio_begin(e),
            DIO_COMPLETE => self.dio_complete(e),
            KVM_MMIO => self.last_notify = e.ts,
            KVM_MSI => self.msi(e.ts),
            DIO_MAP => self.dio_map(e),
            FS_SYNC => self.fs_sync(e),
            FS_EXIT | DM_SUBMIT | DM_ENDIO => {}
            _ => self.stats.unknown_events += 1,
        }
    }

    /// After a request or host IO is made: the most in flight at once. Kept here, not
    /// after every event, so that each kind's handler is the event's last call.
    #[inline]
    fn note_in_flight(&mut self) {
        let in_flight = self.roots.live + self.hios.live;
        if in_flight > self.stats.peak_in_flight {
            self.stats.peak_in_flight = in_flight;
        }
    }

    #[inline(never)]
    fn bio_remap(&mut self, e: &RawEvent) {
        if let Some(b) = self.bios.get_mut(&e.a[0]) {
            b.remapped = true;
        }
    }

    #[inline(never)]
    fn bio_split(&mut self, e: &RawEvent) {
        if let Some(BioOwner::Hio(h)) = self.bios.get(&e.a[0]).map(|b| b.owner)
            && let Some(h) = self.hios.get_mut(h)
        {
            h.flags |= flags::BIO_SPLIT;
        }
    }

    #[inline(never)]
    fn uring_complete(&mut self, e: &RawEvent) {
        if let Some(h) = self.user_data.remove(&e.a[0]) {
            self.hio_done(h, e.ts);
        }
    }

    #[inline(never)]
    fn dio_complete(&mut self, e: &RawEvent) {
        if let Some(h) = self.kiocb.remove(&e.a[0])
            && let Some(hio) = self.hios.get_mut(h)
        {
            hio.done_any = hio.done_any.max(e.ts);
            if hio.api == Api::Native {
                self.hio_done(h, e.ts);
            }
        }
    }

    #[inline(never)]
    fn dio_map(&mut self, e: &RawEvent) {
        // iomap type HOLE (0) or UNWRITTEN (3): the filesystem answers with zeros, no
        // bio follows for that range.
        if matches!(e.sub, 0 | 3)
            && let Some(h) = self.threads.get(e.tid).and_then(|t| t.dio)
            && let Some(hio) = self.hios.get_mut(h)
        {
            hio.flags |= flags::FS_ZEROS;
        }
    }

    fn new_root(&mut self, e: &RawEvent, source: Source) -> Ref {
        let id = self.next_id;
        self.next_id += 1;
        let mut b = [0; NB];
        b[1] = e.ts;
        let r = self.roots.insert(Root {
            id,
            op: Op::Other,
            offset: None,
            bytes: 0,
            source,
            top_probe: 0,
            top_child: 0,
            virtio_req: 0,
            aio_opaque: 0,
            qiovs: SmallVec::new(),
            b,
            open_hios: 0,
            data_hios: 0,
            meta_hios: 0,
            meta_ns: 0,
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

    fn set_io(&mut self, r: Ref, op: Op, offset: u64, bytes: u64) {
        if let Some(root) = self.roots.get_mut(r)
            && root.offset.is_none()
        {
            root.op = op;
            root.offset = Some(offset);
            root.bytes = bytes;
        }
    }

    fn bind_qiov(&mut self, qiov: u64, r: Ref) {
        self.qiov.insert(qiov, QiovBind::Root(r));
        if let Some(root) = self.roots.get_mut(r) {
            root.qiovs.push(qiov);
        }
    }

    /// `sub`: the event's QEMU probe, a constant in each of the handlers
    /// `qemu_probes!` makes, into which this inlines.
    #[inline(always)]
    fn qemu(&mut self, e: &RawEvent, sub: u8) {
        let [a0, a1, a2, a3] = e.a;
        match sub {
            q::VIRTIO_HANDLE_REQUEST => {
                if let Some(old) = self.virtio.remove(&a0) {
                    self.finish_root(old, reasons::KEY_REUSED);
                }
                let r = self.new_root(e, Source::Virtio);
                let notify = self.last_notify;
                if let Some(root) = self.roots.get_mut(r) {
                    root.virtio_req = a0;
                    // Requests popped by one handler run share the doorbell before them.
                    if notify != 0 && notify <= e.ts && e.ts - notify < 10_000_000 {
                        root.b[0] = notify;
                    }
                }
                self.virtio.insert(a0, r);
            }
            q::BLK_AIO_PREADV | q::BLK_AIO_PWRITEV => {
                let op = if e.sub == q::BLK_AIO_PREADV {
                    Op::Read
                } else {
                    Op::Write
                };
                let r = match self.virtio.get(&a0) {
                    Some(&r) => r,
                    None => {
                        if let Some(old) = self.aio_opaque.remove(&a0) {
                            self.finish_root(old, 0);
                        }
                        let r = self.new_root(e, Source::QemuBlock);
                        self.aio_opaque.insert(a0, r);
                        if let Some(root) = self.roots.get_mut(r) {
                            root.aio_opaque = a0;
                            root.top_probe = e.sub;
                            root.top_child = a3;
                        }
                        r
                    }
                };
                self.set_io(r, op, a1, a2);
                self.threads.at(e.tid, e.ts).pending_co = Some(r);
            }
            q::BLK_CO_PREADV_PART
            | q::BLK_CO_PWRITEV_PART
            | q::BDRV_CO_PREADV_PART
            | q::BDRV_CO_PWRITEV_PART
            | q::QCOW2_CO_PREADV_PART
            | q::QCOW2_CO_PWRITEV_PART => self.qemu_block(e),
            q::BDRV_CO_PDISCARD => self.qemu_block_without_data(e, Op::Discard, true),
            q::QCOW2_CACHE_GET => {
                let ctx = self.qcow2_serving(e.tid);
                self.threads.at(e.tid, e.ts).meta = Some((ctx, a1));
            }
            q::RAW_CO_PRW => {
                self.new_file_io(e, a0, a1, a2);
            }
            q::THREAD_POOL_SUBMIT_AIO => match a3 & 0xff {
                // Only read/write jobs reach handle_aiocb_rw.
                q::AIO_READ | q::AIO_WRITE => {
                    let h = self.file_io_for(e, a1, a2, Api::Threads);
                    if let Some(x) = self.hios.get_mut(h) {
                        x.fd = a3 >> 32;
                    }
                    self.aiocb.insert(a0, h);
                }
                q::AIO_FLUSH if self.cfg.flush_syscalls => {
                    let h = self.job_io(e, Api::Threads, None);
                    self.fd_names_disks(h, a3 >> 32);
                    self.flush_wait.push_back((a3 >> 32, h));
                }
                // A write of zeroes that may unmap is both (0x30).
                t if t & (q::AIO_DISCARD | q::AIO_WRITE_ZEROES) != 0
                    && t & !(q::AIO_DISCARD | q::AIO_WRITE_ZEROES) == 0
                    && self.cfg.falloc_syscalls =>
                {
                    // Its range is the file's, but what it does there is the
                    // filesystem's (extents, no data): it keeps no device ranges, and
                    // the bios its worker queues inside fallocate are its own.
                    let h = self.job_io(e, Api::Threads, Some((a1, a2)));
                    if let Some(x) = self.hios.get_mut(h) {
                        x.offset = a1;
                        x.bytes = a2;
                    }
                    self.fd_names_disks(h, a3 >> 32);
                    self.falloc_wait.push_back(([a3 >> 32, a1, a2], h));
                }
                // Not followed into the kernel (its probes missing, or a type no
                // request of the guest's makes), but the request it serves must not
                // be taken for a flush's.
                _ => {
                    if let Some(r) = self.job_root(e.tid, Some((a1, a2)))
                        && let Some(root) = self.roots.get_mut(r)
                    {
                        root.host_job = true;
                    }
                }
            },
            q::HANDLE_AIOCB_RW => {
                if let Some(h) = self.aiocb.remove(&a0) {
                    self.threads.at(e.tid, e.ts).worker = Some(h);
                }
            }
            q::LAIO_CO_SUBMIT => {
                let h = if a3 & 0xff == q::AIO_FLUSH {
                    // Without the fsync probes nothing would end it.
                    if !self.cfg.fs_sync && !self.cfg.aio_fsync {
                        return;
                    }
                    let h = self.job_io(e, Api::Native, None);
                    self.sync_wait.push_back(h);
                    h
                } else {
                    self.file_io_for(e, a1, a2, Api::Native)
                };
                self.set_fd(h, a3 >> 32);
                self.threads.at(e.tid, e.ts).laio_wait.push(h);
            }
            q::LURING_CO_SUBMIT => {
                let h = if a3 & 0xff == q::AIO_FLUSH {
                    let h = self.job_io(e, Api::Uring, None);
                    if self.cfg.fs_sync {
                        self.sync_wait.push_back(h);
                    }
                    h
                } else {
                    self.file_io_for(e, a1, a2, Api::Uring)
                };
                self.set_fd(h, a3 >> 32);
                self.uring_wait.push_back(h);
            }
            q::VIRTIO_RW_COMPLETE => {
                if let Some(&r) = self.virtio.get(&a0)
                    && let Some(root) = self.roots.get_mut(r)
                {
                    // Copied before the store, not after: a wide read of a word just
                    // written waits for the store to retire.
                    let mut b = root.b;
                    b[7] = e.ts;
                    root.b[7] = e.ts;
                    root.last = e.ts;
                    let snapshot = (root.id, b, e.ts, root.disks);
                    self.threads.at(e.tid, e.ts).completion_batch = Some(snapshot);
                }
            }
            q::QEMU_IO_AIO_READ_DONE | q::QEMU_IO_AIO_WRITE_DONE => {
                // The caller's completion callback: QEMU is done with the request, as
                // virtio_blk_rw_complete says for a virtio one. Nothing of it follows.
                if let Some(&r) = self.aio_opaque.get(&a0) {
                    if let Some(root) = self.roots.get_mut(r) {
                        root.b[7] = e.ts;
                        root.last = root.last.max(e.ts);
                    }
                    self.finish_root(r, 0);
                }
            }
            q::VIRTIO_REQ_COMPLETE => {
                let Some(r) = self.virtio.remove(&a0) else {
                    return;
                };
                let batch = self.threads.get(e.tid).and_then(|t| t.completion_batch);
                let Some(root) = self.roots.get_mut(r) else {
                    return;
                };
                root.b[8] = e.ts;
                root.last = e.ts;
                root.completed = true;
                root.virtio_req = 0;
                // The request header the guest wrote: type and sector; and the data
                // size. Zero in traces from recorders that did not read them.
                let vop = Op::from_virtio(a2 as u32);
                let known_type = a1 != 0 || a2 != 0 || a3 != 0;
                let had_block = root.offset.is_some();
                if !had_block && known_type {
                    root.op = vop;
                    // A discard's or a write of zeroes' ranges are in its data, which is
                    // not read: the header's sector is 0 and the data size that of the
                    // range list, so neither is the request's range.
                    if vop.moves_data() {
                        root.offset = Some(a1.saturating_mul(512));
                        root.bytes = a3;
                    }
                }
                if !had_block
                    && root.data_hios == 0
                    && root.open_hios == 0
                    && (!known_type || vop.moves_data())
                    && let Some((id, b, at, disks)) = batch
                    && id != root.id
                    && e.ts.saturating_sub(at) < 1_000_000
                {
                    // Merged by virtio-blk into the request completing before it on
                    // this thread: it shares that request's path (and disk).
                    root.b[2..8].copy_from_slice(&b[2..8]);
                    root.disks = disks;
                    root.flags |= flags::VIRTIO_MERGED;
                    root.merged_into = Some(id);
                }
                if self.cfg.await_msi {
                    // QEMU has freed the request: its next one may reuse the request
                    // and its qiov at once, before this one's interrupt (under TCG
                    // there is none: it waits for the sweep).
                    let qiovs = std::mem::take(&mut root.qiovs);
                    for qv in &qiovs {
                        if self.qiov.get(qv).and_then(|b| b.root()) == Some(r) {
                            self.qiov.remove(qv);
                        }
                    }
                    self.msi_wait.push(r);
                } else {
                    self.finish_root(r, 0);
                }
            }
            _ => {}
        }
    }

    fn qemu_block(&mut self, e: &RawEvent) {
        let [qiov, off, bytes, child] = e.a;
        let write = matches!(
            e.sub,
            q::BLK_CO_PWRITEV_PART | q::BDRV_CO_PWRITEV_PART | q::QCOW2_CO_PWRITEV_PART
        );
        let op = if write { Op::Write } else { Op::Read };
        let is_qcow2 = matches!(e.sub, q::QCOW2_CO_PREADV_PART | q::QCOW2_CO_PWRITEV_PART);
        let is_bdrv = matches!(e.sub, q::BDRV_CO_PREADV_PART | q::BDRV_CO_PWRITEV_PART);
        if qiov == 0 {
            self.qemu_block_without_data(e, op, is_bdrv);
            return;
        }
        let bound = self.qiov.get(&qiov).copied();
        let bind = match bound {
            Some(QiovBind::Root(r)) => {
                let reuse = match self.roots.get(r) {
                    Some(root) => {
                        level(root.top_probe) == level(e.sub)
                            && root.top_child == child
                            && root.open_hios == 0
                    }
                    None => true,
                };
                if reuse {
                    // The pointer is back for a new request: the old one is over.
                    self.qiov.remove(&qiov);
                    if self.roots.get(r).is_some() {
                        self.finish_root(r, 0);
                    }
                    None
                } else {
                    let root = self.roots.get_mut(r).expect("checked");
                    root.last = e.ts;
                    root.note_bdrv_child(e.sub, child);
                    if is_qcow2 {
                        root.qcow2 = true;
                        self.threads.at(e.tid, e.ts).qcow2 = Some(r);
                    } else if root.qcow2 && is_bdrv {
                        self.file_children.insert(child, ());
                    }
                    bound
                }
            }
            // Metadata and copy-on-write buffers live on coroutine stacks, so their
            // addresses come back for other purposes: after its owner is gone, as a
            // table read that a cache lookup announces, or (a metadata buffer) as
            // qcow2's own copy-on-write read.
            Some(b @ (QiovBind::Meta(_) | QiovBind::Cow(_)))
                if b.root()
                    .is_some_and(|r| self.roots.get(r).is_none_or(|x| x.completed))
                    || (is_qcow2 && matches!(b, QiovBind::Meta(_)))
                    || self
                        .threads
                        .get(e.tid)
                        .and_then(|t| t.meta)
                        .is_some_and(|(_, t)| t == off) =>
            {
                self.qiov.remove(&qiov);
                None
            }
            other => other,
        };
        let bind = match bind {
            Some(b) => b,
            None => self.bind_new_qiov(e, qiov, op, is_qcow2),
        };
        if is_bdrv {
            self.threads.at(e.tid, e.ts).last_bdrv = Some((bind, off, bytes));
        }
    }

    /// A block request without data: a write of zeroes, a discard (or a read that
    /// only prefetches). The null qiov keys nothing (two of them in flight would share
    /// it), so the request is found by thread: the one this thread just announced at
    /// the same range one layer up, the one this thread is in the middle of (a call
    /// on a lower node), or the guest's request this thread is serving (as for a host
    /// job: the earliest virtio request in flight with nothing below it yet), or else
    /// a new one.
    fn qemu_block_without_data(&mut self, e: &RawEvent, op: Op, is_bdrv: bool) {
        let [_, off, bytes, child] = e.a;
        let above = self
            .threads
            .get(e.tid)
            .and_then(|t| t.last_bdrv)
            .and_then(|(b, o, n)| match b {
                QiovBind::Root(r) if o == off && n == bytes => Some(r),
                _ => None,
            })
            .filter(|&r| {
                self.roots
                    .get(r)
                    .is_some_and(|x| !x.completed && x.qiovs.is_empty() && x.data_hios == 0)
            });
        // A write of zeroes or a discard is a guest request's; a prefetching read is
        // QEMU's.
        let request = matches!(op, Op::Write | Op::Discard);
        let row_op = if op == Op::Write { Op::WriteZeroes } else { op };
        // A call further down the stack for the request this thread is in the middle
        // of (qcow2 passing a discard on to its image file, at the host offset): on
        // another node than the request's first call was.
        let nested = || {
            let r = self.threads.get(e.tid).and_then(|t| t.qcow2)?;
            let x = self.roots.get(r)?;
            (x.nodata && !x.completed && x.top_child != 0 && x.top_child != child).then_some(r)
        };
        let serving = || request.then(|| self.job_root(e.tid, None)).flatten();
        let r = match above.or_else(nested).or_else(serving) {
            Some(r) => r,
            None => {
                // Writes of zeroes this thread made before with none of their IO in
                // flight are over (no completion event ends them): their metadata
                // buffers, on the coroutine stack, come back for this one.
                let done: SmallVec<[Ref; 2]> = self
                    .active
                    .iter()
                    .copied()
                    .filter(|&r| {
                        self.roots.get(r).is_some_and(|x| {
                            x.source == Source::QemuBlock
                                && x.nodata
                                && x.tid == e.tid
                                && x.open_hios == 0
                        })
                    })
                    .collect();
                for r in done {
                    self.finish_root(r, 0);
                }
                let r = self.new_root(e, Source::QemuBlock);
                self.set_io(r, row_op, off, bytes);
                // Above the image file, where qcow2 images are expected: qcow2's request
                // (it has no probe on this path), not QEMU's own IO to the file.
                let via_qcow2 = self.cfg.expect_qcow2 && !self.file_children.contains_key(&child);
                let root = self.roots.get_mut(r).expect("just made");
                root.top_probe = e.sub;
                root.top_child = child;
                root.qcow2 = via_qcow2;
                r
            }
        };
        if request
            && self
                .roots
                .get(r)
                .is_some_and(|x| x.source == Source::Virtio)
        {
            // The guest's range list is in its data, which the virtio probe does not
            // read: this request's first call has it.
            self.set_io(r, row_op, off, bytes);
        }
        if let Some(root) = self.roots.get_mut(r) {
            root.last = e.ts;
            root.note_bdrv_child(e.sub, child);
            root.nodata |= request;
            if root.top_child == 0 {
                root.top_child = child;
            }
        }
        // qcow2 (not probed on this path) writes the zero flags into its L2 tables on
        // this thread: that metadata IO is this request's.
        let t = self.threads.at(e.tid, e.ts);
        t.qcow2 = Some(r);
        if is_bdrv {
            t.last_bdrv = Some((QiovBind::Root(r), off, bytes));
        }
    }

    /// A qiov not seen before: a metadata read after an L2 cache lookup, the block
    /// request a blk_aio_* event announced, a copy-on-write buffer, QEMU's own file IO,
    /// or a new request. Returns how it was bound.
    fn bind_new_qiov(&mut self, e: &RawEvent, qiov: u64, op: Op, is_qcow2: bool) -> QiovBind {
        let [_, off, bytes, child] = e.a;
        // Only while the request that looked the table up is going on: a table it found
        // in the cache is written back later, maybe by a flush after the request was
        // answered, and that write is not its.
        if let Some((ctx, table)) = self.threads.get(e.tid).and_then(|t| t.meta)
            && table == off
            && ctx.is_none_or(|r| self.roots.get(r).is_some_and(|x| !x.completed))
        {
            self.threads.at(e.tid, e.ts).meta = None;
            // Tables live in the image file: this child is one (needed when no guest
            // data has gone to it yet, as in a fresh overlay).
            self.file_children.insert(child, ());
            return self.bind_to(qiov, QiovBind::Meta(ctx));
        }
        if let Some(r) = self.threads.get(e.tid).and_then(|t| t.pending_co)
            && let Some(root) = self.roots.get(r)
            && root.offset == Some(off)
            && root.bytes == bytes
            && root.qiovs.is_empty()
        {
            self.threads.at(e.tid, e.ts).pending_co = None;
            self.bind_qiov(qiov, r);
            let root = self.roots.get_mut(r).expect("checked");
            root.note_bdrv_child(e.sub, child);
            if root.top_probe == 0 || root.aio_opaque != 0 {
                root.top_probe = e.sub;
                root.top_child = child;
            }
            if is_qcow2 {
                root.qcow2 = true;
                self.threads.at(e.tid, e.ts).qcow2 = Some(r);
            }
            return QiovBind::Root(r);
        }
        // A write of zeroes the driver could not make as such (qcow2, for part of a
        // cluster that does not read as zeroes): the block layer writes a buffer of
        // zeroes in its place, on its thread, a piece of its range at a time.
        if op == Op::Write
            && let Some(r) = self.threads.get(e.tid).and_then(|t| t.qcow2)
            && let Some(root) = self.roots.get_mut(r)
            && root.nodata
            && root.op == Op::WriteZeroes
            && !root.completed
            && let Some(start) = root.offset
            && off >= start
            && off.saturating_add(bytes) <= start.saturating_add(root.bytes)
        {
            root.qcow2 |= is_qcow2;
            return self.bind_to(qiov, QiovBind::Root(r));
        }
        if is_qcow2 && let Some(r) = self.cow_owner(e.tid, off, bytes) {
            return self.bind_to(qiov, QiovBind::Cow(r));
        }
        if self.file_children.contains_key(&child) {
            let ctx = self.qcow2_serving(e.tid);
            return self.bind_to(qiov, QiovBind::Meta(ctx));
        }
        let r = self.new_root(e, Source::QemuBlock);
        self.set_io(r, op, off, bytes);
        self.bind_qiov(qiov, r);
        let root = self.roots.get_mut(r).expect("just made");
        root.note_bdrv_child(e.sub, child);
        root.top_probe = e.sub;
        root.top_child = child;
        if is_qcow2 {
            root.qcow2 = true;
            self.threads.at(e.tid, e.ts).qcow2 = Some(r);
        }
        QiovBind::Root(r)
    }

    /// The request qcow2 is serving on `tid`, for its metadata IO: the one its last
    /// probe there named, while in flight; else (a discard or a flush, whose path
    /// through qcow2 has no probe) the guest request a host job of that thread would
    /// be for. A request over is never it: its virtio request pointer can come back
    /// for a discard while it waits for its interrupt.
    fn qcow2_serving(&self, tid: u32) -> Option<Ref> {
        self.threads
            .get(tid)
            .and_then(|t| t.qcow2)
            .filter(|r| self.roots.get(*r).is_some_and(|r| !r.completed))
            .or_else(|| self.job_root(tid, None))
    }

    fn bind_to(&mut self, qiov: u64, b: QiovBind) -> QiovBind {
        self.qiov.insert(qiov, b);
        if let Some(r) = b.root()
            && let Some(root) = self.roots.get_mut(r)
        {
            root.qiovs.push(qiov);
        }
        b
    }

    /// The allocating write a qcow2 request with a fresh buffer is the copy-on-write
    /// of: qcow2 calls its own read entry point (no block layer above it) for the
    /// parts of the new cluster the write does not cover, on the thread of the write
    /// it is serving, inside that write's cluster (2 MiB, qcow2's largest).
    fn cow_owner(&self, tid: u32, off: u64, bytes: u64) -> Option<Ref> {
        const MAX_CLUSTER: u64 = 2 << 20;
        let r = self.threads.get(tid)?.qcow2?;
        let root = self.roots.get(r)?;
        let start = root.offset?;
        let lo = start / MAX_CLUSTER * MAX_CLUSTER;
        let hi = start.saturating_add(root.bytes).div_ceil(MAX_CLUSTER) * MAX_CLUSTER;
        (matches!(root.op, Op::Write | Op::WriteZeroes)
            && !root.completed
            && off >= lo
            && off.saturating_add(bytes) <= hi)
            .then_some(r)
    }

    /// A file-posix request: a host IO is coming.
    fn new_file_io(&mut self, e: &RawEvent, qiov: u64, off: u64, bytes: u64) -> Ref {
        let bdrv = self.threads.at(e.tid, e.ts).last_bdrv.take();
        let bind = self.qiov.get(&qiov).copied().or_else(|| {
            // A slice of the block layer's qiov (this IO covers part of it).
            bdrv.filter(|&(_, o, n)| o == off && n == bytes)
                .map(|(b, _, _)| b)
        });
        let live = |r: Ref| self.roots.get(r).is_some();
        let (root, kind) = match bind {
            Some(QiovBind::Root(r)) if live(r) => (Some(r), HioKind::Data),
            Some(QiovBind::Meta(Some(r))) if live(r) => (Some(r), HioKind::Meta),
            Some(QiovBind::Cow(r)) if live(r) => {
                if e.a[3] & 0xff == q::AIO_WRITE {
                    (Some(r), HioKind::Data)
                } else {
                    (Some(r), HioKind::Meta)
                }
            }
            _ => (None, HioKind::Internal),
        };
        let h = self.add_hio(root, kind, off, bytes, e.ts);
        self.threads.at(e.tid, e.ts).last_hio = Some(h);
        h
    }

    fn add_hio(&mut self, root: Option<Ref>, kind: HioKind, off: u64, bytes: u64, ts: u64) -> Ref {
        if let Some(r) = root
            && let Some(root) = self.roots.get_mut(r)
        {
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
            kind,
            api: Api::Unknown,
            offset: off,
            bytes,
            created: ts,
            submit: 0,
            first_q: 0,
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
        });
        // Its ranges made where they stay (they are most of its size).
        if bytes > 0
            && let Some(x) = self.hios.get_mut(h)
        {
            self.layout.dev_ranges(off, bytes, &mut x.ranges);
        }
        self.inflight.push(h);
        self.index_ranges(h);
        self.note_in_flight();
        h
    }

    fn index_ranges(&mut self, h: Ref) {
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
    fn forget_hio(&mut self, h: Ref) {
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
    fn earliest_in_flight(&self, pick: impl Fn(&Hio) -> bool) -> Option<Ref> {
        self.inflight
            .iter()
            .filter_map(|&h| self.hios.get(h).map(|x| (h, x)))
            .filter(|(_, x)| pick(x))
            .min_by_key(|(_, x)| x.created)
            .map(|(h, _)| h)
    }

    fn unindex_ranges(&mut self, h: Ref) {
        // Its ranges were indexed together, so they sit side by side.
        if let Some(i) = self.inflight_at.iter().position(|x| x.hio == h) {
            let n = self.inflight_at[i..]
                .iter()
                .take_while(|x| x.hio == h)
                .count();
            self.inflight_at.drain(i..i + n);
        }
    }

    /// The guest request a host job without data (flush, discard) made on `tid` serves:
    /// QEMU's block layer has no probe for these, so it is the earliest virtio request
    /// of that thread still in flight that has no block IO and no such job yet.
    /// virtio-blk submits the reads and writes popped before a flush first, so by then
    /// they have their block IO.
    ///
    /// Where no virtio layer was traced, a job with a range (`range`: the job's file
    /// offset and length) belongs to a QEMU block request writing zeroes made on the
    /// same thread: the one at that range of a raw image, or, through qcow2 (which maps
    /// the range, and punches out clusters the write frees), the request qcow2 is
    /// serving on that thread.
    fn job_root(&self, tid: u32, range: Option<(u64, u64)>) -> Option<Ref> {
        let serving = self.threads.get(tid).and_then(|t| t.qcow2);
        self.active
            .iter()
            .filter_map(|&r| self.roots.get(r).map(|x| (r, x)))
            .filter(|&(r, x)| {
                x.tid == tid
                    && !x.completed
                    && !x.host_job
                    && x.data_hios == 0
                    // A flush's job is not a write of zeroes'.
                    && !(x.nodata && range.is_none())
                    && match x.source {
                        // No block IO yet (a range from a request without data
                        // is not block IO).
                        Source::Virtio => x.offset.is_none() || x.nodata,
                        Source::QemuBlock => {
                            x.nodata
                                && range.is_some_and(|(off, len)| {
                                    if x.qcow2 {
                                        serving == Some(r)
                                    } else {
                                        x.offset == Some(off) && x.bytes == len
                                    }
                                })
                        }
                    }
            })
            // A job with a range goes first to the request known to write zeroes.
            .min_by_key(|(_, x)| (!(x.nodata && range.is_some()), x.id))
            .map(|(r, _)| r)
    }

    /// A linux-aio or io_uring submission names its descriptor (0 in traces recorded
    /// before it did): a job without data takes the disk the descriptor is known for;
    /// one with data teaches the descriptor its disk once the kernel names its file.
    fn set_fd(&mut self, h: Ref, fd: u64) {
        if fd == 0 {
            return;
        }
        if let Some(x) = self.hios.get_mut(h) {
            x.fd = fd;
        }
        self.fd_names_disks(h, fd);
    }

    /// A job of descriptor `fd` is for the disks whose file that descriptor was seen to
    /// open (its file as the filesystem names it overrides this).
    fn fd_names_disks(&mut self, h: Ref, fd: u64) {
        if let Some(&d) = self.fd_disks.get(&fd)
            && let Some(x) = self.hios.get_mut(h)
        {
            x.disks = d;
        }
    }

    /// A host job without data made on `e.tid` (a flush, a discard, a write of zeroes):
    /// the host side of a guest request (see [`Join::job_root`]), or QEMU's own.
    fn job_io(&mut self, e: &RawEvent, api: Api, range: Option<(u64, u64)>) -> Ref {
        let root = self.job_root(e.tid, range);
        if let Some(r) = root
            && let Some(x) = self.roots.get_mut(r)
        {
            x.host_job = true;
        }
        let kind = if root.is_some() {
            HioKind::Data
        } else {
            HioKind::Internal
        };
        let h = self.add_hio(root, kind, 0, 0, e.ts);
        if let Some(hio) = self.hios.get_mut(h) {
            hio.api = api;
            hio.job = true;
        }
        h
    }

    /// The host IO a submission probe (thread pool, linux-aio, io_uring) refers to:
    /// the file-posix request just made on this thread, or a new one from the qiov.
    fn file_io_for(&mut self, e: &RawEvent, off: u64, bytes: u64, api: Api) -> Ref {
        if let Some(h) = self.threads.get(e.tid).and_then(|t| t.last_hio)
            && let Some(hio) = self.hios.get_mut(h)
            && hio.offset == off
            && hio.api == Api::Unknown
        {
            hio.api = api;
            return h;
        }
        let qiov = if api == Api::Threads { 0 } else { e.a[0] };
        let h = self.new_file_io(e, qiov, off, bytes);
        if let Some(hio) = self.hios.get_mut(h) {
            hio.api = api;
        }
        h
    }

    fn sys_enter(&mut self, e: &RawEvent) {
        match e.sub {
            1..=6 => {
                let h = match self.threads.get(e.tid).and_then(|t| t.worker) {
                    Some(h) => h,
                    None => {
                        // No thread-pool probe: find the file IO by offset and length.
                        let found = self.earliest_in_flight(|x| {
                            x.submit == 0
                                && x.offset == e.a[1]
                                && x.bytes == e.a[2]
                                && matches!(x.api, Api::Unknown | Api::Threads)
                        });
                        let h = found.unwrap_or_else(|| {
                            let h = self.add_hio(None, HioKind::Syscall, e.a[1], e.a[2], e.ts);
                            self.hios.get_mut(h).expect("new").api = Api::Threads;
                            h
                        });
                        self.threads.at(e.tid, e.ts).worker = Some(h);
                        h
                    }
                };
                if let Some(hio) = self.hios.get_mut(h)
                    && hio.submit == 0
                {
                    hio.submit = e.ts;
                }
            }
            13 => {
                let key = [e.a[0], e.a[1], e.a[2]];
                let job = self
                    .falloc_wait
                    .iter()
                    .position(|&(k, _)| k == key)
                    .and_then(|i| self.falloc_wait.remove(i))
                    .map(|(_, h)| h);
                let job = match job {
                    Some(h) => {
                        let root = self.hios.get(h).and_then(|x| x.root);
                        self.threads.at(e.tid, e.ts).falloc_job = root.map(|r| (key, r));
                        Some(h)
                    }
                    None => self.falloc_retry(e, key),
                };
                self.worker_runs(e, job, e.a[2]);
            }
            11 | 12 => {
                let fd = e.a[0];
                let job = self
                    .flush_wait
                    .iter()
                    .position(|&(f, _)| f == fd)
                    .and_then(|i| self.flush_wait.remove(i))
                    .map(|(_, h)| h);
                self.worker_runs(e, job, 0);
            }
            7 => {
                if let Some(t) = self.threads.get_mut(e.tid) {
                    let wait = std::mem::take(&mut t.laio_wait);
                    for &h in &wait {
                        if let Some(hio) = self.hios.get_mut(h) {
                            hio.submit = min0(hio.submit, e.ts);
                        }
                    }
                    t.submitted = wait;
                }
            }
            _ => {}
        }
    }

    /// A fallocate no job waits for, on the range of the one this worker just ran for
    /// a request still in flight: QEMU trying another mode for the same write of zeroes
    /// (a filesystem that refuses `FALLOC_FL_ZERO_RANGE` gets a punched hole and then
    /// an allocation). It is more of that request's host part, not more of its data.
    fn falloc_retry(&mut self, e: &RawEvent, key: [u64; 3]) -> Option<Ref> {
        let (k, r) = self.threads.get(e.tid)?.falloc_job?;
        if k != key || self.roots.get(r).is_none_or(|x| x.completed) {
            return None;
        }
        let h = self.add_hio(Some(r), HioKind::Data, 0, 0, e.ts);
        if let Some(root) = self.roots.get_mut(r) {
            root.data_hios -= 1;
            if root.data_hios <= 1 {
                root.flags &= !flags::SPLIT;
            }
        }
        if let Some(x) = self.hios.get_mut(h) {
            x.api = Api::Threads;
            x.job = true;
            x.offset = key[1];
            x.bytes = key[2];
        }
        self.fd_names_disks(h, key[0]);
        Some(h)
    }

    /// Thread `e.tid` entered the syscall that runs thread-pool job `job`, or, with no
    /// job waiting for it, one of QEMU's own (preallocation, image growth: no
    /// request's) of `bytes`. The syscall's return ends it.
    fn worker_runs(&mut self, e: &RawEvent, job: Option<Ref>, bytes: u64) {
        let h = match job.filter(|&h| self.hios.get(h).is_some()) {
            Some(h) => h,
            None => {
                let h = self.add_hio(None, HioKind::Syscall, 0, 0, e.ts);
                if let Some(x) = self.hios.get_mut(h) {
                    x.api = Api::Threads;
                    x.bytes = bytes;
                }
                h
            }
        };
        if let Some(hio) = self.hios.get_mut(h) {
            hio.submit = e.ts;
        }
        self.threads.at(e.tid, e.ts).worker = Some(h);
    }

    /// The filesystem's fsync of a file began or ended, in thread `e.tid`.
    fn fs_sync(&mut self, e: &RawEvent) {
        if e.sub == 3 {
            // A kernel worker's linux-aio fsync work returned: the flush's host end,
            // unless ext4's fsync return ended it already.
            if let Some(t) = self.threads.get_mut(e.tid)
                && let Some(h) = t.worker
                && self.hios.get(h).is_some_and(|x| x.api == Api::Native)
            {
                t.worker = None;
                self.hio_done(h, e.ts);
            }
            return;
        }
        let ino = e.a[0];
        // Only image files' (any file's if the layout does not know them by inode).
        let disks = self.layout.disks_of_inode(ino);
        if disks.is_none() && self.layout.files_have_inodes() && !self.layout.is_empty() {
            return;
        }
        let mine = self
            .threads
            .get(e.tid)
            .and_then(|t| t.worker)
            .filter(|&h| self.hios.get(h).is_some());
        // 0: ext4's fsync begun; 2: a linux-aio fsync work item begun (any filesystem),
        // before ext4's inside it.
        if e.sub == 0 || e.sub == 2 {
            let h = match mine {
                // A thread-pool worker's fdatasync: the flush it runs.
                Some(h) => h,
                None => {
                    // A flush QEMU handed the kernel, begun in a kernel worker (linux-aio)
                    // or an io_uring worker: the first submitted not begun yet of the
                    // disk whose file this is. Workers may begin two disks' flushes in
                    // either order; a flush whose disk is not known (its descriptor
                    // never seen with data) waits in submission order.
                    let waiting = |want: &dyn Fn(&Hio) -> bool| {
                        self.sync_wait.iter().position(|&h| {
                            self.hios.get(h).is_some_and(|x| x.submit != 0 && want(x))
                        })
                    };
                    let found = match disks {
                        Some(d) => {
                            waiting(&|x| x.disks & d != 0).or_else(|| waiting(&|x| x.disks == 0))
                        }
                        None => waiting(&|_| true),
                    };
                    let Some(i) = found else {
                        return;
                    };
                    let h = self.sync_wait.remove(i).expect("found");
                    self.threads.at(e.tid, e.ts).worker = Some(h);
                    h
                }
            };
            if let Some(hio) = self.hios.get_mut(h) {
                hio.fs_begun = true;
                if let Some(d) = disks {
                    hio.disks = d;
                }
            }
        } else if let Some(h) = mine {
            match self.hios.get(h).map(|x| x.api) {
                // Nothing of QEMU's sees a linux-aio fsync end: this is the host's end.
                Some(Api::Native) => {
                    self.threads.at(e.tid, e.ts).worker = None;
                    self.hio_done(h, e.ts);
                }
                // Ends at its completion entry; this thread goes on to other things.
                Some(Api::Uring) => self.threads.at(e.tid, e.ts).worker = None,
                // A worker's fdatasync ends with the syscall.
                _ => {}
            }
        }
    }

    fn sys_exit(&mut self, e: &RawEvent) {
        if matches!(e.sub, 1..=6 | 11..=13) {
            let worker = self.threads.get_mut(e.tid).and_then(|t| {
                t.dio = None;
                t.worker.take()
            });
            if let Some(h) = worker {
                self.hio_done(h, e.ts);
            }
        } else if matches!(e.sub, 7 | 9)
            && let Some(t) = self.threads.get_mut(e.tid)
        {
            // Whatever the kernel began of them, it began during the call.
            t.submitted.clear();
            if e.sub == 7 {
                t.dio = None;
            }
        }
    }

    fn uring_submit(&mut self, e: &RawEvent) {
        let h = loop {
            match self.uring_wait.pop_front() {
                Some(h) if self.hios.get(h).is_some() => break h,
                Some(_) => continue,
                None => {
                    let h = self.add_hio(None, HioKind::Syscall, 0, 0, e.ts);
                    self.hios.get_mut(h).expect("new").api = Api::Uring;
                    break h;
                }
            }
        };
        if let Some(hio) = self.hios.get_mut(h) {
            hio.submit = min0(hio.submit, e.ts);
        }
        self.user_data.insert(e.a[0], h);
        let t = self.threads.at(e.tid, e.ts);
        if t.submitted.len() >= 16 {
            // Its io_uring_enter exit not traced: keep the list short.
            t.submitted.remove(0);
        }
        t.submitted.push(h);
    }

    fn dio_begin(&mut self, e: &RawEvent) {
        let [kiocb, pos, count, ino] = e.a;
        let fits = |x: &Hio| !x.has_kiocb && x.offset == pos && x.bytes == count;
        // The same IO begun again: io_uring tries a write without waiting inside
        // io_uring_enter, the filesystem refuses (-EAGAIN, e.g. blocks to allocate) after
        // the direct IO began, and an io-wq worker runs it again with the same kiocb.
        let again = self.kiocb.get(&kiocb).copied().filter(|&h| {
            self.hios
                .get(h)
                .is_some_and(|x| x.offset == pos && x.bytes == count)
        });
        let h = match self.threads.get(e.tid).map(|t| (t.worker, &t.submitted)) {
            _ if again.is_some() => again,
            Some((Some(h), _)) => Some(h),
            // Begun inside io_submit or io_uring_enter: one this thread submitted, the
            // first that fits (another thread's at the same position and length, e.g.
            // the other disk of a mirror on its own iothread, is not this one).
            Some((None, sub)) if !sub.is_empty() => sub
                .iter()
                .position(|&h| self.hios.get(h).is_some_and(fits))
                .map(|i| {
                    let t = self.threads.get_mut(e.tid).expect("looked up");
                    t.submitted.remove(i)
                })
                .or_else(|| self.earliest_in_flight(fits)),
            _ => self.earliest_in_flight(fits),
        };
        let h = match h {
            Some(h) => h,
            None => {
                // A direct IO no QEMU probe announced (probes missing, or not QEMU's).
                let h = self.add_hio(None, HioKind::Syscall, pos, count, e.ts);
                self.hios.get_mut(h).expect("new").api = Api::Native;
                h
            }
        };
        if let Some(hio) = self.hios.get_mut(h) {
            hio.has_kiocb = true;
            hio.submit = min0(hio.submit, e.ts);
            if hio.ranges.is_empty() && hio.bytes == 0 {
                hio.offset = pos;
                hio.bytes = count;
                self.layout.dev_ranges(pos, count, &mut hio.ranges);
                self.index_ranges(h);
            }
        }
        // The kernel names the file: keep only its sectors, so that IO to the same
        // offset of another image file in flight at once does not take this one's bios,
        // nor this one theirs. The file also says which disk the IO is for.
        if self.layout.file_count() > 1
            && let Some(hio) = self.hios.get_mut(h)
        {
            let mut ranges = DevRanges::new();
            if let Some(disks) =
                self.layout
                    .dev_ranges_of_inode(ino, hio.offset, hio.bytes, &mut ranges)
            {
                hio.disks = disks;
                if hio.fd != 0 {
                    self.fd_disks.insert(hio.fd, disks);
                }
                if ranges != hio.ranges {
                    hio.ranges = ranges;
                    self.unindex_ranges(h);
                    self.index_ranges(h);
                }
            }
        }
        self.kiocb.insert(kiocb, h);
        self.threads.at(e.tid, e.ts).dio = Some(h);
    }

    /// Whose is a bio queued at `dev`/`sector`: a host IO in flight covering it.
    /// When several cover it (IO to the same blocks in flight at once), the one the
    /// queueing thread is inside, if it is one of them: a direct IO queues its bios
    /// from its own syscall. Otherwise the first registered.
    fn owner_by_address(&self, tid: u32, dev: u32, sector: u64, sectors: u64) -> Option<Ref> {
        let end = sector.saturating_add(sectors.max(1));
        let mine = self.threads.get(tid).and_then(|t| t.dio.or(t.worker));
        let mut first = None;
        // Every range here is of a host IO still in flight (`forget_hio` removes them
        // together), so none needs looking up to be checked.
        for r in &self.inflight_at {
            if r.dev == dev && r.start < end && sector < r.end {
                if Some(r.hio) == mine {
                    return mine;
                }
                if first.is_none() {
                    first = Some(r.hio);
                    if mine.is_none() {
                        break;
                    }
                }
            }
        }
        first
    }

    fn is_bottom(hio: &Hio, dev: u32) -> Option<bool> {
        if hio.ranges.is_empty() {
            None
        } else {
            Some(hio.ranges.iter().any(|r| r.dev == dev && r.bottom))
        }
    }

    fn bio_queue(&mut self, e: &RawEvent) {
        let [bio, sector, a2, _] = e.a;
        let (dev, bytes) = dev_bytes(a2);
        // The same bio moving down (a remap): its entry is kept, only no longer marked,
        // instead of looked up again to be replaced.
        let known = match self.bios.get_mut(&bio) {
            Some(b) if b.remapped => {
                b.remapped = false;
                Some(b.owner)
            }
            _ => None,
        };
        let owner = match known {
            Some(o) => Some(o),
            None => self
                .owner_by_address(e.tid, dev, sector, bytes.div_ceil(512))
                .or_else(|| {
                    // Submitted synchronously by the thread doing a traced direct IO or
                    // syscall whose blocks are not known (a flush, an empty layout).
                    self.threads
                        .get(e.tid)
                        .and_then(|t| t.dio.or(t.worker))
                        .filter(|&h| self.hios.get(h).is_some_and(|x| x.ranges.is_empty()))
                })
                .map(BioOwner::Hio),
        };
        let owner = match owner {
            Some(o) => o,
            None => {
                let id = self.new_other(e.ts, dev, sector, bytes);
                BioOwner::Other(id)
            }
        };
        if let BioOwner::Hio(h) = owner
            && let Some(hio) = self.hios.get_mut(h)
        {
            hio.first_q = min0(hio.first_q, e.ts);
            hio.bios += 1;
            if bytes == 0 {
                // A flush bio (no data): the device's flush request will carry it.
                self.preflush.push((dev, h));
            }
        }
        if known.is_none() {
            self.bios.insert(
                bio,
                BioEntry {
                    owner,
                    remapped: false,
                },
            );
        }
    }

    fn new_other(&mut self, ts: u64, dev: u32, sector: u64, bytes: u64) -> u32 {
        let class = if self.layout.occupied(
            dev,
            sector,
            sector.saturating_add(bytes.div_ceil(512).max(1)),
        ) {
            OtherClass::ImageWriteback
        } else {
            OtherClass::OtherDeviceIo
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
            },
        });
        self.other_ids.insert(id, r);
        id
    }

    /// IO nobody claimed completed: report it.
    fn other_done(&mut self, id: u32, ts: u64) {
        let Some(r) = self.other_ids.remove(&id) else {
            return;
        };
        if let Some(mut o) = self.others.remove(r) {
            o.io.end = o.io.end.max(ts);
            self.stats.other_ios += 1;
            self.sink.other(&o.io);
        }
    }

    fn bio_complete(&mut self, e: &RawEvent) {
        match self.bios.remove(&e.a[0]).map(|b| b.owner) {
            Some(BioOwner::Hio(h)) => {
                if let Some(hio) = self.hios.get_mut(h) {
                    hio.done_any = hio.done_any.max(e.ts);
                }
            }
            Some(BioOwner::Other(id)) => self.other_done(id, e.ts),
            None => {}
        }
    }

    /// The request a bio or request of `op` at these sectors merged into: one on its
    /// device, of its operation, not yet issued, that it extends at the back or the
    /// front (as `side` says: 1 back, 2 front, anything else either).
    fn find_adjacent_rq(
        &self,
        dev: u32,
        op: u8,
        sector: u64,
        sectors: u64,
        side: u64,
    ) -> Option<u64> {
        self.reqs.iter().find_map(|(&k, r)| {
            let back = side != 2 && r.sector.saturating_add(r.sectors) == sector;
            let front = side != 1 && sector.saturating_add(sectors) == r.sector;
            (r.dev == dev && r.op == op && !r.started && (back || front)).then_some(k)
        })
    }

    fn bio_merge(&mut self, e: &RawEvent) {
        let [bio, sector, a2, side] = e.a;
        let (dev, bytes) = dev_bytes(a2);
        let sectors = bytes.div_ceil(512);
        let Some(owner) = self.bios.get(&bio).map(|b| b.owner) else {
            return;
        };
        let Some(k) = self.find_adjacent_rq(dev, e.sub, sector, sectors, side) else {
            if let BioOwner::Hio(h) = owner {
                self.plugged.push(PluggedBio {
                    bio,
                    owner: h,
                    dev,
                    sector,
                    sectors,
                });
            }
            return;
        };
        let rq = self.reqs.get_mut(&k).expect("found");
        rq.bios.push(bio);
        if sector.saturating_add(sectors) == rq.sector {
            rq.sector = sector;
        }
        rq.sectors = rq.sectors.saturating_add(sectors);
        if let BioOwner::Hio(h) = owner
            && !rq.owners.contains(&h)
        {
            rq.owners.push(h);
            if let Some(x) = self.hios.get_mut(h) {
                x.open_rqs += 1;
            }
            if rq.owners.len() > 1 {
                for &o in &rq.owners {
                    if let Some(x) = self.hios.get_mut(o) {
                        x.flags |= flags::MERGED;
                    }
                }
            }
        }
    }

    fn rq_start(&mut self, e: &RawEvent) {
        let [rq, sector, a2, first_bio] = e.a;
        let (dev, bytes) = dev_bytes(a2);
        // The same request again (issued after insert, re-dispatched when the driver
        // was busy, requeued) starts where it did with the bios it had. Anything else
        // at this pointer is a new request: the old one's completion was lost.
        let issue = e.kind == EventKind::RqIssue as u8;
        let new = match self.reqs.get_mut(&rq) {
            None => true,
            Some(old)
                if old.dev == dev && old.sector == sector && old.bios.contains(&first_bio) =>
            {
                // Issued after its insert (the usual case): one lookup for both.
                if issue {
                    old.started = true;
                    Self::note_issue(&mut self.hios, old, e.ts);
                }
                return;
            }
            Some(_) => {
                self.drop_req(rq);
                true
            }
        };
        if new {
            let mut owners = SmallVec::new();
            let mut other = None;
            match self.bios.get(&first_bio).map(|b| b.owner) {
                Some(BioOwner::Hio(h)) if self.hios.get(h).is_some() => owners.push(h),
                Some(BioOwner::Other(id)) => other = Some(id),
                // The block layer's flush request: no bio, no data. It carries the
                // flush bios queued on its device before it.
                _ if first_bio == 0 && bytes == 0 => {
                    let hios = &self.hios;
                    self.preflush.retain(|&(d, h)| {
                        let live = hios.get(h).is_some();
                        if live && d == dev && !owners.contains(&h) {
                            owners.push(h);
                        }
                        live && d != dev
                    });
                }
                _ => {
                    if let Some(h) = self.owner_by_address(e.tid, dev, sector, bytes.div_ceil(512))
                    {
                        owners.push(h);
                    }
                }
            }
            for &h in &owners {
                if let Some(x) = self.hios.get_mut(h) {
                    x.requests += 1;
                    x.open_rqs += 1;
                }
            }
            self.reqs.insert(
                rq,
                Req {
                    owners,
                    bios: smallvec![first_bio],
                    other,
                    dev,
                    sector,
                    sectors: bytes.div_ceil(512),
                    since: e.ts,
                    op: e.sub,
                    started: false,
                },
            );
            if !self.plugged.is_empty() {
                self.attach_plugged(rq);
            }
        }
        if issue && let Some(r) = self.reqs.get_mut(&rq) {
            r.started = true;
            Self::note_issue(&mut self.hios, r, e.ts);
        }
    }

    /// A request went to its driver: the host IOs it carries were issued then.
    fn note_issue(hios: &mut Slab<Hio>, r: &Req, ts: u64) {
        for &h in &r.owners {
            if let Some(x) = hios.get_mut(h) {
                x.issue_any = min0(x.issue_any, ts);
                match Self::is_bottom(x, r.dev) {
                    Some(true) => {
                        x.issue_bottom = min0(x.issue_bottom, ts);
                        x.bottom_dev = r.dev;
                    }
                    // Blocks not known (a flush, an empty layout): its device is the
                    // one its requests go to.
                    None => x.bottom_dev = r.dev,
                    Some(false) => {}
                }
            }
        }
    }

    /// A request just inserted takes the bios that merged into it while it was plugged:
    /// they lie inside its sectors on its device. Their host IOs wait for it as if the
    /// merge had found it, and are marked merged.
    fn attach_plugged(&mut self, k: u64) {
        let Some(rq) = self.reqs.get_mut(&k) else {
            return;
        };
        let (dev, lo, hi) = (rq.dev, rq.sector, rq.sector.saturating_add(rq.sectors));
        let hios = &mut self.hios;
        let before = rq.owners.len();
        self.plugged.retain(|p| {
            if p.dev != dev || p.sector < lo || p.sector.saturating_add(p.sectors) > hi {
                return true;
            }
            rq.bios.push(p.bio);
            if !rq.owners.contains(&p.owner) {
                rq.owners.push(p.owner);
                if let Some(x) = hios.get_mut(p.owner) {
                    x.open_rqs += 1;
                }
            }
            false
        });
        if rq.owners.len() > 1 && rq.owners.len() > before {
            for &o in &rq.owners {
                if let Some(x) = hios.get_mut(o) {
                    x.flags |= flags::MERGED;
                }
            }
        }
    }

    fn rq_complete(&mut self, e: &RawEvent) {
        let Some(r) = self.reqs.remove(&e.a[0]) else {
            return;
        };
        let mut finished = Vec::new();
        for &h in &r.owners {
            if let Some(x) = self.hios.get_mut(h) {
                x.done_any = x.done_any.max(e.ts);
                if Self::is_bottom(x, r.dev) == Some(true) {
                    x.done_bottom = x.done_bottom.max(e.ts);
                }
                x.open_rqs = x.open_rqs.saturating_sub(1);
                // linux-aio: the kernel's completion runs in IRQ context, outside the
                // traced process, so the last block completion is the host's.
                if x.open_rqs == 0 && x.api == Api::Native && x.has_kiocb {
                    finished.push(h);
                }
            }
        }
        for h in finished {
            self.hio_done(h, e.ts);
        }
        for b in &r.bios {
            self.bios.remove(b);
        }
        if let Some(id) = r.other {
            self.other_done(id, e.ts);
        }
    }

    /// Forget a request whose completion will never come (its event was lost): its host
    /// IOs stop waiting for it, IO of no guest request is reported as far as it got.
    /// Its bios go with it, unless their pointers already carry new bios of others.
    fn drop_req(&mut self, k: u64) {
        let Some(r) = self.reqs.remove(&k) else {
            return;
        };
        self.stats.requests_lost += 1;
        for b in &r.bios {
            let ours = match self.bios.get(b).map(|x| x.owner) {
                Some(BioOwner::Hio(h)) => r.owners.contains(&h),
                Some(BioOwner::Other(id)) => r.other == Some(id),
                None => false,
            };
            if ours {
                self.bios.remove(b);
            }
        }
        for &h in &r.owners {
            if let Some(x) = self.hios.get_mut(h) {
                x.open_rqs = x.open_rqs.saturating_sub(1);
            }
        }
        if let Some(id) = r.other {
            self.other_done(id, 0);
        }
    }

    fn rq_merge(&mut self, e: &RawEvent) {
        let Some(absorbed) = self.reqs.remove(&e.a[0]) else {
            return;
        };
        if let Some(k) = self.find_adjacent_rq(
            absorbed.dev,
            absorbed.op,
            absorbed.sector,
            absorbed.sectors,
            0,
        ) {
            let rq = self.reqs.get_mut(&k).expect("found");
            if absorbed.sector.saturating_add(absorbed.sectors) == rq.sector {
                rq.sector = absorbed.sector;
            }
            rq.sectors = rq.sectors.saturating_add(absorbed.sectors);
            rq.bios.extend(absorbed.bios);
            for &h in &absorbed.owners {
                // Carried by the target now: counted once, for it.
                if rq.owners.contains(&h)
                    && let Some(x) = self.hios.get_mut(h)
                {
                    x.open_rqs = x.open_rqs.saturating_sub(1);
                }
            }
            for h in absorbed.owners {
                if !rq.owners.contains(&h) {
                    rq.owners.push(h);
                }
            }
            if rq.owners.len() > 1 {
                for &o in &rq.owners {
                    if let Some(x) = self.hios.get_mut(o) {
                        x.flags |= flags::MERGED;
                    }
                }
            }
        }
    }

    fn msi(&mut self, ts: u64) {
        let mut wait = std::mem::take(&mut self.msi_wait);
        for r in wait.drain(..) {
            if let Some(root) = self.roots.get_mut(r) {
                root.b[9] = ts;
            }
            self.finish_root(r, 0);
        }
        // Its buffer back: a request waits here for nearly every interrupt, and
        // allocating it anew was one allocation and free per IO.
        if self.msi_wait.is_empty() {
            self.msi_wait = wait;
        }
    }

    /// A host IO completed: fold it into its request.
    fn hio_done(&mut self, h: Ref, ts: u64) {
        let Some(hio) = self.hios.get(h) else {
            return;
        };
        let submit = if hio.submit != 0 {
            hio.submit
        } else {
            hio.created
        };
        let root = hio
            .root
            .and_then(|r| self.roots.get_mut(r).map(|root| (r, root)));
        match root {
            Some((_, root)) => {
                root.open_hios = root.open_hios.saturating_sub(1);
                root.last = root.last.max(ts);
                // Data, metadata and copy-on-write IO all go to files of the request's
                // own chain: each named one narrows down its disk.
                if hio.disks != 0 {
                    root.disks = Some(root.disks.map_or(hio.disks, |d| d & hio.disks));
                }
                match hio.kind {
                    HioKind::Data => {
                        let b = &mut root.b;
                        b[2] = min0(b[2], submit);
                        b[3] = min0(b[3], hio.first_q);
                        let (issue, done) = if hio.issue_bottom != 0 || hio.done_bottom != 0 {
                            (hio.issue_bottom, hio.done_bottom)
                        } else if hio.ranges.is_empty() {
                            (hio.issue_any, hio.done_any)
                        } else {
                            (0, 0)
                        };
                        b[4] = min0(b[4], issue);
                        b[5] = b[5].max(done);
                        b[6] = b[6].max(ts);
                        root.bios = root.bios.saturating_add(hio.bios);
                        root.requests = root.requests.saturating_add(hio.requests);
                        root.flags |= hio.flags;
                        if hio.bottom_dev != 0 {
                            root.bottom_dev = hio.bottom_dev;
                        }
                    }
                    _ => {
                        root.meta_hios += 1;
                        root.meta_ns = root.meta_ns.saturating_add(ts.saturating_sub(submit));
                    }
                }
            }
            None => {
                let class = match hio.kind {
                    HioKind::Syscall => OtherClass::QemuSyscall,
                    _ => OtherClass::QemuInternal,
                };
                self.stats.other_ios += 1;
                self.sink.other(&OtherIo {
                    class,
                    start: submit,
                    end: ts,
                    bytes: hio.bytes,
                    dev: hio.bottom_dev,
                });
            }
        }
        self.forget_hio(h);
    }

    fn finish_root(&mut self, r: Ref, reason: u16) {
        // Read in place and dropped in place: moving the record out of the slab cost
        // more than the rest of this (a few hundred bytes copied per IO).
        let Some(root) = self.roots.get_mut(r) else {
            return;
        };
        let qiovs = std::mem::take(&mut root.qiovs);
        let (open_hios, virtio_req, aio_opaque) =
            (root.open_hios, root.virtio_req, root.aio_opaque);
        // Its host IOs that never completed (events lost) must not claim later bios.
        if open_hios > 0 {
            let open: SmallVec<[Ref; 4]> = self
                .inflight
                .iter()
                .copied()
                .filter(|&h| self.hios.get(h).is_some_and(|x| x.root == Some(r)))
                .collect();
            let mut unseen = 0;
            for h in open {
                if let Some(x) = self.hios.get(h)
                    && x.job
                    && (x.submit == 0 || (x.api == Api::Native && !x.fs_begun))
                {
                    unseen += 1;
                }
                self.forget_hio(h);
            }
            // A job the kernel was never seen to begin (a linux-aio flush on a
            // filesystem without the probed tracepoint; a job whose syscall did not
            // match it): the request is QEMU's alone, as without the probes.
            if unseen > 0
                && let Some(root) = self.roots.get_mut(r)
            {
                root.open_hios -= unseen;
                root.data_hios -= unseen;
            }
        }
        for qv in &qiovs {
            if let Some(b) = self.qiov.get(qv)
                && b.root() == Some(r)
            {
                self.qiov.remove(qv);
            }
        }
        if virtio_req != 0 && self.virtio.get(&virtio_req) == Some(&r) {
            self.virtio.remove(&virtio_req);
        }
        if aio_opaque != 0 && self.aio_opaque.get(&aio_opaque) == Some(&r) {
            self.aio_opaque.remove(&aio_opaque);
        }
        let root = self.roots.get(r).expect("looked up above");
        if self.cfg.expect_qcow2 && root.source == Source::QemuBlock && !root.qcow2 {
            // QEMU reading or writing the image file itself (open, header, flush).
            let end = root.b.iter().copied().max().unwrap_or(0);
            self.stats.other_ios += 1;
            self.sink.other(&OtherIo {
                class: OtherClass::QemuInternal,
                start: root.b[1],
                end,
                bytes: root.bytes,
                dev: root.bottom_dev,
            });
            self.roots.discard(r);
            return;
        }
        // A write of zeroes that qcow2 did in its tables alone (no host job) ends when
        // its last metadata IO does: nothing later of it is seen.
        let mut b = root.b;
        if root.source == Source::QemuBlock && root.nodata && b[6] == 0 && b[7] == 0 {
            b[7] = root.last;
        }
        let mut partial = root.partial | reason;
        // Flush, GET_ID, discard carry no data the host reads or writes: they need no
        // host IO to be complete (QEMU may answer them itself, or the trace lacks the
        // fsync / fallocate probes). `Other` is also what a trace without request
        // types gives, so it still expects host IO.
        let no_data = matches!(
            root.op,
            Op::Flush | Op::GetId | Op::Discard | Op::WriteZeroes
        );
        if root.flags & flags::VIRTIO_MERGED == 0 && !no_data {
            if root.data_hios == 0 {
                partial |= reasons::NO_HOST_IO;
            } else if root.b[4] == 0
                && root.b[5] == 0
                // Bios queued but none seen on the bottom device is no device time
                // either: reporting it complete would charge that time to queueing.
                && root.flags & flags::FS_ZEROS == 0
                && !self.layout.is_empty()
            {
                partial |= reasons::NO_DEVICE_IO;
            }
        }
        if root.open_hios > 0 {
            partial |= reasons::HOST_IO_UNFINISHED;
        }
        if root.source == Source::Virtio && root.b[8] == 0 {
            partial |= reasons::NO_COMPLETION;
        }
        let disk = if self.layout.disks.len() == 1 {
            Some(0)
        } else {
            match root.disks.and_then(Layout::one_disk) {
                Some(d) => {
                    if root.bdrv_child != 0 {
                        self.child_disks.insert(root.bdrv_child, d);
                    }
                    Some(d)
                }
                // Host IO naming no single disk (none, or a shared backing file's
                // only): its drive's, as the drive's earlier requests showed.
                None if root.bdrv_child != 0 => self.child_disks.get(&root.bdrv_child).copied(),
                None => None,
            }
        };
        let row = IoRow {
            id: root.id,
            op: root.op,
            offset: root.offset,
            bytes: root.bytes,
            source: root.source,
            b,
            host_ios: root.data_hios,
            meta_ios: root.meta_hios,
            meta_ns: root.meta_ns,
            bios: root.bios,
            requests: root.requests,
            bottom_dev: root.bottom_dev,
            disk,
            flags: root.flags,
            partial,
            merged_into: root.merged_into,
        };
        self.roots.discard(r);
        self.stats.ios += 1;
        if partial != 0 {
            self.stats.partial += 1;
        }
        self.sink.io(&row);
    }

    /// Once per millisecond of trace time; out of line, so that it takes no registers
    /// from the dispatch.
    #[cold]
    #[inline(never)]
    fn sweep_now(&mut self) {
        self.sweep();
        self.next_sweep = self.now.saturating_add(1_000_000);
    }

    /// Finish what is idle or stale.
    fn sweep(&mut self) {
        let now = self.now;
        let mut done = Vec::new();
        let threads = &self.threads;
        self.active.retain(|&r| {
            let Some(root) = self.roots.get(r) else {
                return false;
            };
            // All its host IO done, and nothing (no callback) expected to end it.
            // (A write of zeroes may need no host IO at all.)
            let over = root.open_hios == 0
                && root.source == Source::QemuBlock
                && (root.data_hios + root.meta_hios > 0 || root.nodata);
            let idle = over
                && threads
                    .get(root.tid)
                    .is_some_and(|t| t.seen.saturating_sub(root.last) > IDLE_NS);
            let stale = now.saturating_sub(root.last) > STALE_NS;
            if idle || stale {
                done.push((r, if over { 0 } else { reasons::NO_COMPLETION }));
                false
            } else {
                true
            }
        });
        for (r, why) in done {
            self.finish_root(r, why);
        }
        if self.msi_wait.iter().any(|&r| {
            self.roots
                .get(r)
                .is_some_and(|x| now.saturating_sub(x.last) > IDLE_NS)
        }) {
            for r in std::mem::take(&mut self.msi_wait) {
                self.finish_root(r, 0);
            }
        }
        // Bios whose owner is gone (completion not traced for this device).
        let hios = &self.hios;
        let other_ids = &self.other_ids;
        self.bios.retain(|_, b| match b.owner {
            BioOwner::Hio(h) => hios.get(h).is_some(),
            BioOwner::Other(id) => other_ids.contains_key(&id),
        });
        // Flush bios of host IOs over: their device's flush request never came (a
        // write-through device completes them at once).
        self.preflush.retain(|&(_, h)| hios.get(h).is_some());
        self.flush_wait.retain(|&(_, h)| hios.get(h).is_some());
        self.sync_wait.retain(|&h| hios.get(h).is_some());
        self.falloc_wait.retain(|&(_, h)| hios.get(h).is_some());
        // Plugged bios whose host IO is over or whose bio is gone: no insert claimed them.
        let bios = &self.bios;
        self.plugged
            .retain(|p| hios.get(p.owner).is_some() && bios.contains_key(&p.bio));
        // Requests whose completion was lost (no device takes this long).
        let old: Vec<u64> = self
            .reqs
            .iter()
            .filter(|(_, r)| now.saturating_sub(r.since) > STALE_NS)
            .map(|(&k, _)| k)
            .collect();
        for k in old {
            self.drop_req(k);
        }
        // Host IOs nothing will complete any more.
        let stale_hios: Vec<Ref> = self
            .inflight
            .iter()
            .copied()
            .filter(|&h| {
                self.hios
                    .get(h)
                    .is_some_and(|x| now.saturating_sub(x.created) > STALE_NS)
            })
            .collect();
        for h in stale_hios {
            self.forget_hio(h);
        }
        self.threads.forget_idle(now.saturating_sub(STALE_NS));
    }

    /// The trace ended: report everything still open as it is.
    pub fn finish(mut self) -> (S, JoinStats) {
        // Host IOs whose completion is known from the block layer (linux-aio without the
        // direct-IO probe) complete there.
        let open: Vec<Ref> = self.inflight.clone();
        for h in open {
            let done = self.hios.get(h).map(|x| x.done_any).unwrap_or(0);
            if done != 0 {
                self.hio_done(h, done);
            }
        }
        for r in std::mem::take(&mut self.msi_wait) {
            self.finish_root(r, 0);
        }
        let mut rest: Vec<(u64, Ref)> = self
            .active
            .iter()
            .filter_map(|&r| self.roots.get(r).map(|x| (x.id, r)))
            .collect();
        rest.sort_unstable_by_key(|x| x.0);
        for (_, r) in rest {
            let reason = match self.roots.get(r) {
                Some(x) if x.source == Source::Virtio && !x.completed => reasons::NO_COMPLETION,
                _ => 0,
            };
            self.finish_root(r, reason);
        }
        let others: Vec<u32> = self.other_ids.keys().copied().collect();
        for id in others {
            if let Some(&r) = self.other_ids.get(&id)
                && let Some(o) = self.others.remove(r)
            {
                self.stats.other_ios += 1;
                self.sink.other(&o.io);
            }
        }
        (self.sink, self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use viopath_probes::abi::kernel_dev;

    #[test]
    fn thread_contexts_stay_with_their_threads_through_cache_collisions_and_forgetting() {
        let mut t = Threads::default();
        // Thread ids that share cache slots (equal modulo THREAD_CACHE) and ones that
        // do not; each thread is last seen at its own time, which marks its context.
        let tids: Vec<u32> = (0..40u32)
            .map(|i| 1000 + (i % 5) * THREAD_CACHE as u32 + i / 5)
            .collect();
        let seen = |n: usize| 10 + n as u64;
        for (n, &tid) in tids.iter().enumerate() {
            t.at(tid, seen(n));
        }
        for (n, &tid) in tids.iter().enumerate().rev() {
            assert_eq!(t.get(tid).map(|c| c.seen), Some(seen(n)));
        }
        // The first ten were last seen before 20: forgotten, and the others, moved
        // into their slots, are still found as themselves.
        t.forget_idle(20);
        assert_eq!(t.len(), 30);
        for (n, &tid) in tids.iter().enumerate() {
            let found = t.get(tid).map(|c| c.seen);
            assert_eq!(found, (n >= 10).then_some(seen(n)), "thread {tid}");
        }
        // A forgotten thread seen again starts afresh.
        assert!(t.at(tids[0], 100).pending_co.is_none());
        assert_eq!(t.get(tids[0]).map(|c| c.seen), Some(100));
        assert_eq!(t.get_mut(tids[39]).map(|c| c.seen), Some(seen(39)));
    }

    fn r(idx: u32) -> Ref {
        Ref::new(idx, 1)
    }

    #[test]
    fn thread_contexts_survive_forgetting_others() {
        let mut t = Threads::default();
        for tid in 1..=5u32 {
            t.at(tid, tid as u64 * 100).worker = Some(r(tid));
        }
        // Threads 1 and 2 idle since before 250: forgotten; 3..=5 keep their state
        // under their own ids although their slots moved.
        t.forget_idle(250);
        assert_eq!(t.len(), 3);
        assert!(t.get(1).is_none() && t.get(2).is_none());
        for tid in 3..=5u32 {
            assert_eq!(t.get(tid).and_then(|c| c.worker), Some(r(tid)), "tid {tid}");
        }
        // A forgotten thread starts over empty.
        assert!(t.at(1, 600).worker.is_none());
        assert_eq!(t.get(5).and_then(|c| c.worker), Some(r(5)));
        // The remembered last lookup does not leak one thread's state to another.
        t.get_mut(4).expect("kept").worker = None;
        assert_eq!(t.get(3).and_then(|c| c.worker), Some(r(3)));
        assert!(t.get(4).and_then(|c| c.worker).is_none());
    }

    struct Nothing;
    impl Sink for Nothing {
        fn io(&mut self, _: &IoRow) {}
        fn other(&mut self, _: &OtherIo) {}
    }

    #[derive(Default)]
    struct Others(Vec<OtherIo>);
    impl Sink for Others {
        fn io(&mut self, _: &IoRow) {}
        fn other(&mut self, o: &OtherIo) {
            self.0.push(o.clone());
        }
    }

    fn ev(ts: u64, tid: u32, kind: EventKind, a: [u64; 4]) -> RawEvent {
        RawEvent {
            ts,
            tid,
            kind: kind as u8,
            sub: 0,
            cpu: 0,
            a,
        }
    }

    /// A bio queued at `ts` and the block request made of it, inserted and issued.
    fn block_request<S: Sink>(
        j: &mut Join<S>,
        ts: u64,
        tid: u32,
        bio: u64,
        rq: u64,
        sector: u64,
        dev_bytes: u64,
    ) {
        j.event(&ev(
            ts,
            tid,
            EventKind::BioQueue,
            [bio, sector, dev_bytes, 0],
        ));
        j.event(&ev(
            ts + 100,
            tid,
            EventKind::RqInsert,
            [rq, sector, dev_bytes, bio],
        ));
        j.event(&ev(
            ts + 200,
            tid,
            EventKind::RqIssue,
            [rq, sector, dev_bytes, bio],
        ));
    }

    #[test]
    fn a_request_pointer_back_after_a_lost_completion_is_a_new_request() {
        let layout = Layout::default();
        let mut j = Join::new(&layout, Others::default(), JoinConfig::default());
        let dev = u64::from(kernel_dev(254, 0)) << 32;
        let (rq, bio_a, bio_b) = (
            0xffff_8881_0253_9a80,
            0xffff_8881_2219_ad80,
            0xffff_8881_2219_a840,
        );
        // Someone else's 512-byte write: queued, inserted, issued; its completion lost.
        block_request(&mut j, 1_000, 5, bio_a, rq, 100, dev | 512);
        // Issued again as it was (the driver was busy): still the same request.
        j.event(&ev(
            1_300,
            5,
            EventKind::RqIssue,
            [rq, 100, dev | 512, bio_a],
        ));
        assert_eq!(j.stats.requests_lost, 0);
        // Much later a traced direct IO's bio gets a request at the same pointer.
        j.event(&ev(5_000_000, 7, EventKind::DioBegin, [0x77, 0, 4096, 12]));
        block_request(&mut j, 5_000_100, 7, bio_b, rq, 200, dev | 4096);
        assert_eq!(j.stats.requests_lost, 1);
        assert!(!j.bios.contains_key(&bio_a) && j.bios.contains_key(&bio_b));
        let h = j.threads.get(7).and_then(|t| t.dio).expect("direct IO");
        assert_eq!(j.reqs.get(&rq).map(|r| r.owners.to_vec()), Some(vec![h]));
        let hio = j.hios.get(h).expect("in flight");
        assert_eq!(
            (hio.requests, hio.open_rqs, hio.issue_any),
            (1, 1, 5_000_300)
        );
        j.event(&ev(
            5_090_000,
            0,
            EventKind::RqComplete,
            [rq, 200, dev | 4096, 4096],
        ));
        // A direct IO no QEMU probe announced ends with its last block request.
        assert!(j.hios.get(h).is_none());
        let dio: Vec<&OtherIo> = j.sink.0.iter().filter(|o| o.start == 5_000_000).collect();
        assert_eq!(dio.len(), 1, "{:?}", j.sink.0);
        assert_eq!(dio[0].end, 5_090_000);
        // The lost one is reported as far as it was seen, not with the new completion.
        let stale: Vec<&OtherIo> = j.sink.0.iter().filter(|o| o.start == 1_000).collect();
        assert_eq!(stale.len(), 1, "{:?}", j.sink.0);
        assert!(stale[0].end < 5_000_000, "{:?}", stale[0]);
    }

    #[test]
    fn a_bio_covered_by_two_host_ios_goes_to_the_one_queueing_it() {
        // Two direct IOs to the same host blocks at once (one thread re-reading what
        // another reads): the bio belongs to the IO of the thread that queues it, not
        // to whichever came first.
        let layout = Layout::from_snapshot(&crate::synth::layout());
        let mut j = Join::new(&layout, Others::default(), JoinConfig::default());
        let (pos, len) = (0x20_0000, 4096);
        let mut ranges = DevRanges::new();
        layout.dev_ranges(pos, len, &mut ranges);
        let bottom = ranges.iter().find(|r| r.bottom).expect("bottom range");
        let dev_bytes = (u64::from(bottom.dev) << 32) | len;
        j.event(&ev(1_000, 7, EventKind::DioBegin, [0x71, pos, len, 12]));
        j.event(&ev(1_100, 8, EventKind::DioBegin, [0x81, pos, len, 12]));
        let first = j.threads.get(7).and_then(|t| t.dio).expect("7's IO");
        let second = j.threads.get(8).and_then(|t| t.dio).expect("8's IO");
        // 8 queues its own bio; then a thread inside neither (a driver's worker) queues
        // one, which goes to the first registered.
        for (ts, tid, bio, rq, want) in [
            (1_200, 8, 0xb8, 0x9008, second),
            (1_300, 99, 0xb7, 0x9007, first),
        ] {
            block_request(&mut j, ts, tid, bio, rq, bottom.start_sector, dev_bytes);
            let owners = j.reqs.get(&rq).map(|r| r.owners.to_vec());
            assert_eq!(owners, Some(vec![want]), "bio queued by thread {tid}");
        }
    }

    #[test]
    fn a_bio_merges_only_into_a_request_of_its_operation_not_yet_issued() {
        // Thread 8's read bio back-merges into thread 7's read request, still plugged
        // (inserted after the merge). Two other requests end where the bio begins: an
        // issued read and a queued write. The kernel merges into neither (a started
        // request takes no merges; a read never joins a write), so neither may take it.
        use EventKind::*;
        let layout = Layout::default();
        let mut j = Join::new(&layout, Others::default(), JoinConfig::default());
        let dev = u64::from(kernel_dev(8, 0)) << 32;
        let (read, write) = (0u8, 1u8);
        let (issued, queued_write, plugged) = (0x9001, 0x9002, 0x9007);
        let (mut h7, mut h8) = (None, None);
        // (time, thread, event, REQ_OP, [pointer, sector, bytes, last]), in order.
        let events = [
            (1_000, 5, BioQueue, read, [0xb1, 104, 2048, 0]),
            (1_100, 5, RqInsert, read, [issued, 104, 2048, 0xb1]),
            (1_200, 5, RqIssue, read, [issued, 104, 2048, 0xb1]),
            (1_300, 5, BioQueue, write, [0xb2, 100, 4096, 0]),
            (1_400, 5, RqInsert, write, [queued_write, 100, 4096, 0xb2]),
            (2_000, 7, DioBegin, 0, [0x71, 0, 4096, 12]),
            (2_100, 8, DioBegin, 0, [0x81, 4096, 4096, 12]),
            (2_200, 7, BioQueue, read, [0xb7, 100, 4096, 0]),
            (2_300, 8, BioQueue, read, [0xb8, 108, 4096, 0]),
            (2_400, 8, BioMerge, read, [0xb8, 108, 4096, 1]),
            (2_500, 5, RqInsert, read, [plugged, 100, 8192, 0xb7]),
            (2_600, 5, RqIssue, read, [plugged, 100, 8192, 0xb7]),
            (9_000, 0, RqComplete, read, [plugged, 100, 8192, 8192]),
        ];
        for (ts, tid, kind, op, [a0, a1, bytes, a3]) in events {
            // Block events carry the device beside their bytes; a direct IO its inode.
            let a2 = if kind == DioBegin { bytes } else { dev | bytes };
            if kind == RqIssue && a0 == plugged {
                let owners = |k| j.reqs.get(&k).map(|r| r.owners.to_vec());
                assert_eq!(owners(plugged), Some(vec![h7.unwrap(), h8.unwrap()]));
                assert_eq!(owners(issued), Some(vec![]));
                assert_eq!(owners(queued_write), Some(vec![]));
            }
            j.event(&sub_ev(ts, tid, kind, op, [a0, a1, a2, a3]));
            if kind == DioBegin {
                let h = j.threads.get(tid).and_then(|t| t.dio);
                *if tid == 7 { &mut h7 } else { &mut h8 } = h;
            }
        }
        // Direct IOs no QEMU probe announced end with their last block request.
        for start in [2_000, 2_100] {
            let dio: Vec<&OtherIo> = j.sink.0.iter().filter(|o| o.start == start).collect();
            assert_eq!(dio.len(), 1, "{:?}", j.sink.0);
            assert_eq!(dio[0].end, 9_000, "{:?}", dio[0]);
        }
        assert!(j.hios.get(h7.unwrap()).is_none() && j.hios.get(h8.unwrap()).is_none());
    }

    /// Two image files (inodes 11 and 12) on one partition of sda, each 1 GiB, the
    /// second right after the first.
    fn two_file_layout(with_inodes: bool) -> Layout {
        let file = |name: &str, ino: u64, part_byte: u64| {
            let disk_byte = part_byte + (2048 * 512);
            serde_json::json!({
                "file": name,
                "len": 1u64 << 30,
                "ino": if with_inodes { Some(ino) } else { None },
                "host": [{"offset": 0, "len": 1u64 << 30, "hops": [
                    {"hop": "file", "path": name, "offset": 0, "state": "mapped"},
                    {"hop": "device", "device": "/dev/sda1", "dev": "8:1", "byte": part_byte, "via": "filesystem"},
                    {"hop": "device", "device": "/dev/sda", "dev": "8:0", "byte": disk_byte, "via": "partition"}
                ]}]
            })
        };
        Layout::from_snapshot(&serde_json::json!({
            "images": [{
                "path": "/vm/a.qcow2",
                "file_hosts": [file("/vm/a.qcow2", 11, 1 << 30), file("/vm/b.qcow2", 12, 2 << 30)]
            }],
            "devices": []
        }))
    }

    #[test]
    fn a_host_io_keeps_to_the_sectors_of_the_file_the_kernel_names() {
        // Direct IOs to the same offset of two image files at once (two disks of a VM):
        // QEMU's probes do not say which file, so each IO first covers both files'
        // sectors. Once the kernel's probe names the file, a bio queued at the second
        // file's sectors by a thread inside neither IO (a loop or dm worker) is the
        // second IO's. Without inode numbers it stays with the first registered.
        for with_inodes in [true, false] {
            let layout = two_file_layout(with_inodes);
            let mut j = Join::new(&layout, Others::default(), JoinConfig::default());
            let (pos, len) = (0x20_0000, 4096);
            let mut both = DevRanges::new();
            layout.dev_ranges(pos, len, &mut both);
            // Per file: the partition, the partition at the disk's sector numbers (as
            // its bios are traced), the disk.
            assert_eq!(both.len(), 6, "{both:?}");
            j.event(&ev(1_000, 7, EventKind::DioBegin, [0x71, pos, len, 11]));
            j.event(&ev(1_100, 8, EventKind::DioBegin, [0x81, pos, len, 12]));
            let first = j.threads.get(7).and_then(|t| t.dio).expect("7's IO");
            let second = j.threads.get(8).and_then(|t| t.dio).expect("8's IO");
            let ranges = |h| j.hios.get(h).map(|x| x.ranges.len());
            assert_eq!(
                (ranges(first), ranges(second)),
                if with_inodes {
                    (Some(3), Some(3))
                } else {
                    (Some(6), Some(6))
                }
            );
            // The second file's sectors on the disk: 2 GiB into the partition.
            let sda = kernel_dev(8, 0);
            let sector = ((2u64 << 30) + 2048 * 512 + pos) / 512;
            let dev_bytes = (u64::from(sda) << 32) | len;
            block_request(&mut j, 1_300, 99, 0xb8, 0x9008, sector, dev_bytes);
            let want = if with_inodes { second } else { first };
            assert_eq!(
                j.reqs.get(&0x9008).map(|r| r.owners.to_vec()),
                Some(vec![want]),
                "inode numbers known: {with_inodes}"
            );
        }
    }

    #[test]
    fn linux_aio_direct_ios_pair_with_host_ios_in_submission_order() {
        // Two linux-aio requests at the same offset and length (two disks of a VM) are
        // submitted in one io_submit; the kernel begins their direct IOs in that order.
        // The in-flight list's order is shuffled when another IO leaves it first.
        let layout = Layout::default();
        let mut j = Join::new(&layout, Nothing, JoinConfig::default());
        let qemu = |ts: u64, sub: u8, a: [u64; 4]| RawEvent {
            sub,
            ..ev(ts, 5, EventKind::Qemu, a)
        };
        let (pos, len) = (0x20_0000u64, 4096u64);
        let mut made = Vec::new();
        for (i, off) in [0x90_0000, pos, pos].into_iter().enumerate() {
            let ts = 1_000 + i as u64 * 100;
            j.event(&qemu(ts, q::RAW_CO_PRW, [0x1000 + i as u64, off, len, 0]));
            j.event(&qemu(
                ts + 10,
                q::LAIO_CO_SUBMIT,
                [0x1000 + i as u64, off, len, 0],
            ));
            made.push(j.threads.get(5).and_then(|t| t.last_hio).expect("host IO"));
        }
        // The first (another offset) begins and completes: the list is now [3rd, 2nd].
        j.event(&ev(
            1_500,
            5,
            EventKind::DioBegin,
            [0xa0, 0x90_0000, len, 7],
        ));
        j.event(&ev(1_600, 5, EventKind::DioComplete, [0xa0, 0, 0, 0]));
        assert!(j.hios.get(made[0]).is_none());
        for (ts, kiocb) in [(1_700, 0xa1), (1_710, 0xa2)] {
            j.event(&ev(ts, 5, EventKind::DioBegin, [kiocb, pos, len, 7]));
        }
        assert_eq!(j.kiocb.get(&0xa1), Some(&made[1]));
        assert_eq!(j.kiocb.get(&0xa2), Some(&made[2]));
    }

    #[derive(Default)]
    struct Rows(Vec<IoRow>);
    impl Sink for Rows {
        fn io(&mut self, r: &IoRow) {
            self.0.push(r.clone());
        }
        fn other(&mut self, _: &OtherIo) {}
    }

    #[derive(Default)]
    struct All(Vec<IoRow>, Vec<OtherIo>);
    impl Sink for All {
        fn io(&mut self, r: &IoRow) {
            self.0.push(r.clone());
        }
        fn other(&mut self, o: &OtherIo) {
            self.1.push(o.clone());
        }
    }

    #[test]
    fn a_qemu_probe_the_join_does_not_use_is_ignored_but_an_unknown_kind_is_counted() {
        let layout = Layout::default();
        let mut j = Join::new(&layout, Others::default(), JoinConfig::default());
        for sub in [0, 22, 200, 255] {
            j.event(&sub_ev(1_000, 1, EventKind::Qemu, sub, [0x10, 0, 0, 0]));
        }
        assert_eq!(j.stats.unknown_events, 0);
        assert_eq!(
            j.in_flight(),
            0,
            "no request made for a probe it does not use"
        );
        let mut odd = ev(2_000, 1, EventKind::Qemu, [0; 4]);
        odd.kind = 99;
        j.event(&odd);
        assert_eq!(j.stats.unknown_events, 1);
        // A probe it does use still reaches its handler.
        j.event(&sub_ev(
            3_000,
            1,
            EventKind::Qemu,
            q::VIRTIO_HANDLE_REQUEST,
            [0x20, 0, 0, 0],
        ));
        assert_eq!(j.roots.live, 1);
    }

    fn sub_ev(ts: u64, tid: u32, kind: EventKind, sub: u8, a: [u64; 4]) -> RawEvent {
        RawEvent {
            sub,
            ..ev(ts, tid, kind, a)
        }
    }

    /// A guest's flush on iothread 1 (virtio type 4), between a read already handed to
    /// the block layer and a discard whose job was made: its thread-pool flush job of
    /// fd 8 runs as fdatasync(8) on worker 3, which writes a metadata block and queues
    /// a flush bio; the block layer's flush request (no bio) is issued by kworker 4.
    /// Meanwhile QEMU flushes fd 9 on its own (no guest request) on worker 2, begun
    /// first: jobs pair with syscalls by descriptor, not by order.
    fn guest_flush(flush_syscalls: bool) -> All {
        let layout = Layout::default();
        let cfg = JoinConfig {
            flush_syscalls,
            ..JoinConfig::default()
        };
        let mut j = Join::new(&layout, All::default(), cfg);
        let dev = u64::from(kernel_dev(8, 0)) << 32;
        let q = |ts, tid, sub, a| sub_ev(ts, tid, EventKind::Qemu, sub, a);
        let job = |fd: u64, t: u64| fd << 32 | t;
        // The read: parsed, then in the block layer.
        j.event(&q(1_000, 1, q::VIRTIO_HANDLE_REQUEST, [0xa1, 0, 0, 0]));
        j.event(&q(1_100, 1, q::BLK_AIO_PREADV, [0xa1, 4096, 4096, 0]));
        // The discard, its job made (not followed into the kernel).
        j.event(&q(1_200, 1, q::VIRTIO_HANDLE_REQUEST, [0xd1, 0, 0, 0]));
        j.event(&q(
            1_300,
            1,
            q::THREAD_POOL_SUBMIT_AIO,
            [0xe1, 0, 0, job(8, 0x10)],
        ));
        // The flush, and its job.
        j.event(&q(2_000, 1, q::VIRTIO_HANDLE_REQUEST, [0xf1, 0, 0, 0]));
        j.event(&q(
            2_500,
            1,
            q::THREAD_POOL_SUBMIT_AIO,
            [0xe2, 0, 0, job(8, q::AIO_FLUSH)],
        ));
        j.event(&q(
            2_600,
            6,
            q::THREAD_POOL_SUBMIT_AIO,
            [0xe3, 0, 0, job(9, q::AIO_FLUSH)],
        ));
        j.event(&sub_ev(2_700, 2, EventKind::SysEnter, 11, [9, 0, 0, 0]));
        j.event(&sub_ev(3_000, 3, EventKind::SysEnter, 11, [8, 0, 0, 0]));
        // Its metadata write, then the flush bio and the device's flush request.
        block_request(&mut j, 3_400, 3, 0xb1, 0x71, 5_000, dev | 4096);
        j.event(&ev(
            4_000,
            0,
            EventKind::RqComplete,
            [0x71, 5_000, dev | 4096, 4096],
        ));
        j.event(&ev(4_100, 3, EventKind::BioQueue, [0xb2, 0, dev, 0]));
        j.event(&ev(4_300, 4, EventKind::RqIssue, [0x72, u64::MAX, dev, 0]));
        j.event(&ev(
            9_000,
            4,
            EventKind::RqComplete,
            [0x72, u64::MAX, dev, 0],
        ));
        j.event(&sub_ev(9_500, 3, EventKind::SysExit, 11, [0, 0, 0, 0]));
        j.event(&sub_ev(9_600, 2, EventKind::SysExit, 11, [0, 0, 0, 0]));
        j.event(&q(9_900, 1, q::VIRTIO_REQ_COMPLETE, [0xf1, 0, 4, 0]));
        let (sink, _) = j.finish();
        sink
    }

    #[test]
    fn a_guest_flush_is_followed_through_its_fdatasync_to_the_device_flush() {
        let all = guest_flush(true);
        let flush: Vec<&IoRow> = all.0.iter().filter(|r| r.op == Op::Flush).collect();
        assert_eq!(flush.len(), 1, "{:?}", all.0);
        let f = flush[0];
        assert_eq!(f.partial, 0, "{f:?}");
        assert_eq!(f.host_ios, 1);
        // parsed, fdatasync entered, metadata bio queued, its request issued, the flush
        // request done, fdatasync returned, completion pushed.
        assert_eq!(
            f.b[1..9],
            [2_000, 3_000, 3_400, 3_600, 9_000, 9_500, 0, 9_900]
        );
        assert_eq!(f.requests, 2);
        assert_eq!(f.bottom_dev, kernel_dev(8, 0));
        let (l, e2e) = crate::layers::split(&f.b);
        assert_eq!(l.iter().flatten().sum::<u64>(), e2e);
        assert_eq!(l[4], Some(9_000 - 3_600), "device");
        // QEMU's own flush of fd 9: its fdatasync, from entry to return.
        let own: Vec<&OtherIo> = all
            .1
            .iter()
            .filter(|o| o.class == OtherClass::QemuInternal)
            .collect();
        assert_eq!(own.len(), 1, "{:?}", all.1);
        assert_eq!((own[0].start, own[0].end), (2_700, 9_600));
        // The read and the discard took nothing of it.
        for r in all.0.iter().filter(|r| r.op != Op::Flush) {
            assert_eq!(r.host_ios, 0, "{r:?}");
        }

        // aio=io_uring: QEMU's fsync SQE is the flush, from submission to its CQE.
        let layout = Layout::default();
        let mut j = Join::new(&layout, All::default(), JoinConfig::default());
        let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
        j.event(&q(1_000, q::VIRTIO_HANDLE_REQUEST, [0xf1, 0, 0, 0]));
        j.event(&q(1_500, q::LURING_CO_SUBMIT, [0, 0, 0, q::AIO_FLUSH]));
        j.event(&ev(1_800, 1, EventKind::UringSubmit, [0x5eed, 0, 0, 0]));
        j.event(&ev(7_000, 1, EventKind::UringComplete, [0x5eed, 0, 0, 0]));
        j.event(&q(7_400, q::VIRTIO_REQ_COMPLETE, [0xf1, 0, 4, 0]));
        let (all, _) = j.finish();
        assert_eq!(all.0.len(), 1, "{:?}", all.0);
        assert_eq!(all.0[0].op, Op::Flush);
        assert_eq!(all.0[0].partial, 0);
        assert_eq!(all.0[0].b[1..9], [1_000, 1_800, 0, 0, 0, 7_000, 0, 7_400]);
        assert!(all.1.is_empty(), "{:?}", all.1);

        // Without the fdatasync probes, the flush is QEMU's alone, and complete.
        let all = guest_flush(false);
        let f = all.0.iter().find(|r| r.op == Op::Flush).expect("flush row");
        assert_eq!(f.partial, 0, "{f:?}");
        assert_eq!(f.b[2..8], [0; 6]);
        assert_eq!((f.b[1], f.b[8]), (2_000, 9_900));
    }

    /// Two virtio reads one after the other, QEMU reusing the first's request and qiov
    /// for the second (aio=native) before the first's interrupt, which under TCG never
    /// comes: the second's IO is its own, not the first's.
    #[test]
    fn a_request_awaiting_its_interrupt_gives_up_its_qiov() {
        let layout = Layout::default();
        let cfg = JoinConfig {
            await_msi: true,
            ..JoinConfig::default()
        };
        let mut j = Join::new(&layout, All::default(), cfg);
        let dev = u64::from(kernel_dev(8, 0)) << 32;
        let (req, qiov) = (0x563b_10a3_8ec0, 0x563b_10a3_8f58);
        for (n, t) in [(0u64, 1_000_000u64), (1, 1_500_000)] {
            let q = |dt, sub, a| sub_ev(t + dt, 1, EventKind::Qemu, sub, a);
            let k = |dt, kind, a| ev(t + dt, 1, kind, a);
            j.event(&q(0, q::VIRTIO_HANDLE_REQUEST, [req, 0, 0, 0]));
            j.event(&q(10, q::BLK_AIO_PREADV, [req, 0, 512, 0xc1]));
            // The fourth value differs between the two (as recorded from QEMU 10).
            j.event(&q(
                20,
                q::BDRV_CO_PREADV_PART,
                [qiov, 0, 512, 0xc1 + n * 16],
            ));
            j.event(&q(
                30,
                q::BDRV_CO_PREADV_PART,
                [qiov, 0x5_0000, 512, 0xc2 + n * 16],
            ));
            j.event(&q(40, q::RAW_CO_PRW, [qiov, 0x5_0000, 512, 1]));
            j.event(&q(50, q::LAIO_CO_SUBMIT, [qiov, 0x5_0000, 512, 1]));
            j.event(&sub_ev(t + 60, 1, EventKind::SysEnter, 7, [0x1c, 0, 1, 0]));
            j.event(&k(70, EventKind::DioBegin, [0xd0 + n, 0x5_0000, 512, 11]));
            let (bio, rq) = (0xb0 + n, 0x70 + n);
            j.event(&k(80, EventKind::BioQueue, [bio, 0x280, dev | 512, 0]));
            j.event(&k(90, EventKind::RqIssue, [rq, 0x280, dev | 512, bio]));
            j.event(&sub_ev(t + 100, 1, EventKind::SysExit, 7, [1, 0, 0, 0]));
            j.event(&ev(
                t + 400,
                0,
                EventKind::RqComplete,
                [rq, 0x280, dev | 512, 512],
            ));
            j.event(&q(500, q::VIRTIO_RW_COMPLETE, [req, 0, 0, 0]));
            j.event(&q(510, q::VIRTIO_REQ_COMPLETE, [req, 0, 0, 512]));
        }
        j.event(&ev(9_000_000, 1, EventKind::KvmMmio, [0, 0, 0, 0]));
        let (all, _) = j.finish();
        assert_eq!(all.0.len(), 2, "{:?}", all.0);
        for (r, t) in all.0.iter().zip([1_000_000, 1_500_000]) {
            assert_eq!(r.partial, 0, "{r:?}");
            assert_eq!((r.host_ios, r.requests), (1, 1), "{r:?}");
            assert_eq!(r.b[1], t, "{r:?}");
            assert_eq!((r.b[5], r.b[8]), (t + 400, t + 510), "{r:?}");
        }
    }

    /// A guest's discard with `aio=threads`: qcow2 passes it to the image file as a
    /// thread-pool job (fd 8, 64 KiB at 64 KiB), which worker 3 runs as fallocate (punch
    /// hole, mode 3). Worker 2's fallocate of fd 9, begun first, is no job's.
    #[test]
    fn a_guest_discard_is_followed_into_its_workers_fallocate() {
        let layout = Layout::default();
        let run = |falloc_syscalls: bool, offset: u64| {
            let cfg = JoinConfig {
                falloc_syscalls,
                ..JoinConfig::default()
            };
            let mut j = Join::new(&layout, All::default(), cfg);
            let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
            let sys = |ts, tid, kind, a| sub_ev(ts, tid, kind, 13, a);
            j.event(&q(1_000, q::VIRTIO_HANDLE_REQUEST, [0xd1, 0, 0, 0]));
            let job = 8 << 32 | q::AIO_DISCARD;
            j.event(&q(
                1_500,
                q::THREAD_POOL_SUBMIT_AIO,
                [0xe1, 0x1_0000, 0x1_0000, job],
            ));
            if falloc_syscalls {
                j.event(&sys(1_800, 2, EventKind::SysEnter, [9, 0, 4096, 0]));
                j.event(&sys(
                    2_000,
                    3,
                    EventKind::SysEnter,
                    [8, offset, 0x1_0000, 3],
                ));
                j.event(&sys(2_200, 2, EventKind::SysExit, [0, 0, 0, 0]));
                j.event(&sys(6_000, 3, EventKind::SysExit, [0, 0, 0, 0]));
            }
            // Type 11 (discard); its ranges are in the data, 16 bytes per range.
            j.event(&q(6_500, q::VIRTIO_REQ_COMPLETE, [0xd1, 0, 11, 16]));
            j.finish().0
        };
        let all = run(true, 0x1_0000);
        assert_eq!(all.0.len(), 1, "{:?}", all.0);
        let d = &all.0[0];
        assert_eq!((d.op, d.partial, d.host_ios), (Op::Discard, 0, 1), "{d:?}");
        // Its range is in its data, not read: none is made up from the header.
        assert_eq!((d.offset, d.bytes), (None, 0), "{d:?}");
        // parsed, fallocate entered and returned, completion pushed: the fallocate is
        // host_fs.
        assert_eq!(d.b[1..9], [1_000, 2_000, 0, 0, 0, 6_000, 0, 6_500]);
        assert_eq!(
            all.1
                .iter()
                .map(|o| (o.class, o.start, o.end, o.bytes))
                .collect::<Vec<_>>(),
            [(OtherClass::QemuSyscall, 1_800, 2_200, 4096)]
        );
        // Without the probes, QEMU's alone, and complete; the same where the worker's
        // fallocate is not the job's (its range differs): that one is QEMU's own.
        for (falloc, offset) in [(false, 0), (true, 0x2_0000)] {
            let all = run(falloc, offset);
            let d = &all.0[0];
            assert_eq!((d.op, d.partial, d.host_ios), (Op::Discard, 0, 0), "{d:?}");
            assert_eq!(d.b[2..8], [0; 6]);
            assert_eq!(all.1.len(), if falloc { 2 } else { 0 }, "{:?}", all.1);
        }
    }

    /// A discard's range comes from its first `bdrv_co_pdiscard`, at the top of QEMU's
    /// block stack; qcow2 passing it on to the image file (another node, the host
    /// offset) is the same request. From a guest: two discards on one thread, the
    /// first one's job still running as the second arrives (it frees nothing, so it
    /// has no job). From qemu-io (no virtio): one row per discard command.
    #[test]
    fn a_discard_has_the_range_of_its_block_request() {
        let layout = Layout::default();
        let cfg = JoinConfig {
            falloc_syscalls: true,
            ..JoinConfig::default()
        };
        let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
        let sys = |ts, kind, a| sub_ev(ts, 3, kind, 13, a);
        let job = |ts, key, off, len| {
            q(
                ts,
                q::THREAD_POOL_SUBMIT_AIO,
                [key, off, len, 8 << 32 | q::AIO_DISCARD],
            )
        };
        let pdiscard = |ts, off, len, child| q(ts, q::BDRV_CO_PDISCARD, [0, off, len, child]);
        // Rows in request order, what each is, and that no IO was left over.
        let summary = |j: Join<All>| {
            let All(mut rows, other) = j.finish().0;
            assert!(other.is_empty(), "{other:?}");
            rows.sort_by_key(|r| r.id);
            let got: Vec<_> = rows
                .iter()
                .map(|r| (r.source, r.op, r.offset, r.bytes, r.host_ios, r.partial))
                .collect();
            (rows, got)
        };

        let mut j = Join::new(&layout, All::default(), cfg);
        j.event(&q(1_000, q::VIRTIO_HANDLE_REQUEST, [0xd1, 0, 0, 0]));
        j.event(&pdiscard(1_100, 0x10_0000, 0x1_0000, 0xb5));
        j.event(&pdiscard(1_200, 0x5_0000, 0x1_0000, 0xf1));
        j.event(&job(1_300, 0xe1, 0x5_0000, 0x1_0000));
        j.event(&q(1_400, q::VIRTIO_HANDLE_REQUEST, [0xd2, 0, 0, 0]));
        j.event(&pdiscard(1_500, 0x20_0000, 0x2000, 0xb5));
        j.event(&sys(2_000, EventKind::SysEnter, [8, 0x5_0000, 0x1_0000, 3]));
        j.event(&sys(3_000, EventKind::SysExit, [0; 4]));
        j.event(&q(4_000, q::VIRTIO_REQ_COMPLETE, [0xd2, 0, 11, 16]));
        j.event(&q(6_500, q::VIRTIO_REQ_COMPLETE, [0xd1, 0, 11, 16]));
        let (rows, got) = summary(j);
        assert_eq!(
            got,
            [
                (Source::Virtio, Op::Discard, Some(0x10_0000), 0x1_0000, 1, 0),
                (Source::Virtio, Op::Discard, Some(0x20_0000), 0x2000, 0, 0),
            ],
            "{rows:?}"
        );
        assert_eq!(rows[0].b[1..9], [1_000, 2_000, 0, 0, 0, 3_000, 0, 6_500]);

        let mut j = Join::new(&layout, All::default(), cfg);
        for (t, key, off, len) in [
            (1_000, 0xe1, 0x1_0000, 0x1_0000),
            (2_000, 0xe2, 0, 0x2_0000),
        ] {
            j.event(&pdiscard(t, off, len, 0xb5));
            // The raw driver passes it to its file at the same range.
            j.event(&pdiscard(t + 50, off, len, 0xf1));
            j.event(&job(t + 100, key, off, len));
            j.event(&sys(t + 200, EventKind::SysEnter, [8, off, len, 3]));
            j.event(&sys(t + 800, EventKind::SysExit, [0; 4]));
        }
        let (rows, got) = summary(j);
        assert_eq!(
            got,
            [
                (
                    Source::QemuBlock,
                    Op::Discard,
                    Some(0x1_0000),
                    0x1_0000,
                    1,
                    0
                ),
                (Source::QemuBlock, Op::Discard, Some(0), 0x2_0000, 1, 0),
            ],
            "{rows:?}"
        );
        assert_eq!(rows[0].b[1..8], [1_000, 1_200, 0, 0, 0, 1_800, 0]);
        assert_eq!(rows[1].b[1..8], [2_000, 2_200, 0, 0, 0, 2_800, 0]);
    }

    /// A write of zeroes on a filesystem that refuses `FALLOC_FL_ZERO_RANGE` (tmpfs):
    /// QEMU's block layer passes it down without a buffer (a null qiov) through the raw
    /// driver to the file, and the worker's fallocate is refused (-EOPNOTSUPP) and
    /// retried on the same range as a punched hole, then an allocation. One row, whose
    /// host part runs from the first call's entry to the last one's return; no second
    /// row for the bufferless block request; the worker's next fallocate, of another
    /// range, is QEMU's own. From a guest (virtio) and from qemu-io (no virtio).
    #[test]
    fn a_write_of_zeroes_retried_in_other_modes_is_one_host_part() {
        let layout = Layout::default();
        let run = |virtio: bool| {
            let cfg = JoinConfig {
                falloc_syscalls: true,
                ..JoinConfig::default()
            };
            let mut j = Join::new(&layout, All::default(), cfg);
            let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
            let sys = |ts, kind, a| sub_ev(ts, 3, kind, 13, a);
            if virtio {
                j.event(&q(1_000, q::VIRTIO_HANDLE_REQUEST, [0xd1, 0, 0, 0]));
            }
            let at = [0, 0x1_0000, 0x1_0000];
            j.event(&q(
                1_100,
                q::BDRV_CO_PWRITEV_PART,
                [at[0], at[1], at[2], 0xb5],
            ));
            j.event(&q(
                1_200,
                q::BDRV_CO_PWRITEV_PART,
                [at[0], at[1], at[2], 0xf1],
            ));
            let job = 8 << 32 | q::AIO_WRITE_ZEROES;
            j.event(&q(
                1_500,
                q::THREAD_POOL_SUBMIT_AIO,
                [0xe1, at[1], at[2], job],
            ));
            let call = |mode| [8, at[1], at[2], mode];
            j.event(&sys(2_000, EventKind::SysEnter, call(0x10)));
            j.event(&sys(2_100, EventKind::SysExit, [-95i64 as u64, 0, 0, 0]));
            j.event(&sys(2_300, EventKind::SysEnter, call(3)));
            j.event(&sys(3_000, EventKind::SysExit, [0; 4]));
            j.event(&sys(3_200, EventKind::SysEnter, call(0)));
            j.event(&sys(4_000, EventKind::SysExit, [0; 4]));
            j.event(&sys(4_500, EventKind::SysEnter, [8, 0x3_0000, 0x1_0000, 3]));
            j.event(&sys(4_600, EventKind::SysExit, [0; 4]));
            if virtio {
                // Type 13 (write zeroes), one 16-byte range.
                j.event(&q(6_500, q::VIRTIO_REQ_COMPLETE, [0xd1, 0, 13, 16]));
            }
            j.finish().0
        };
        for virtio in [true, false] {
            let All(rows, other) = run(virtio);
            assert_eq!(rows.len(), 1, "virtio {virtio}: {rows:?}");
            let r = &rows[0];
            assert_eq!(
                (r.op, r.partial, r.host_ios, r.flags),
                (Op::WriteZeroes, 0, 1, 0),
                "{r:?}"
            );
            let (start, done) = if virtio { (1_000, 6_500) } else { (1_100, 0) };
            assert_eq!(r.b[1..9], [start, 2_000, 0, 0, 0, 4_000, 0, done], "{r:?}");
            if !virtio {
                assert_eq!((r.offset, r.bytes), (Some(0x1_0000), 0x1_0000));
            }
            assert_eq!(
                other
                    .iter()
                    .map(|o| (o.class, o.start, o.end, o.bytes))
                    .collect::<Vec<_>>(),
                [(OtherClass::QemuSyscall, 4_500, 4_600, 0x1_0000)],
                "virtio {virtio}"
            );
        }
    }

    /// The row of `op` (the only one), or a panic listing all.
    fn row_of(rows: &[IoRow], op: Op) -> &IoRow {
        rows.iter()
            .find(|r| r.op == op)
            .unwrap_or_else(|| panic!("{rows:?}"))
    }

    /// A thread-pool worker (thread 3) running job `aiocb`: syscall `sc` on `fd`, 100 to
    /// 500 ns after `ts`.
    fn pool_worker(j: &mut Join<'_, All>, ts: u64, aiocb: u64, sc: u8, fd: u64) {
        j.event(&sub_ev(
            ts,
            3,
            EventKind::Qemu,
            q::HANDLE_AIOCB_RW,
            [aiocb, 0, 0, 0],
        ));
        j.event(&sub_ev(ts + 100, 3, EventKind::SysEnter, sc, [fd, 0, 0, 0]));
        j.event(&sub_ev(ts + 500, 3, EventKind::SysExit, sc, [0; 4]));
    }

    /// A join awaiting interrupts that has seen a guest write of 4 KiB at 0x10_0000
    /// through qcow2 on thread 1 (VirtIOBlockReq 0xd1): its L2 table, at 0x1_0000, was in
    /// the cache (no read follows the lookup); its data went to 0x5_0000 by a thread-pool
    /// job (2_000..2_500), and it was answered at 3_100, its interrupt not yet seen.
    fn answered_write_after_a_cache_hit(layout: &Layout) -> Join<'_, All> {
        let cfg = JoinConfig {
            await_msi: true,
            ..JoinConfig::default()
        };
        let mut j = Join::new(layout, All::default(), cfg);
        let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
        let (off, len) = (0x10_0000, 4096);
        j.event(&q(1_000, q::VIRTIO_HANDLE_REQUEST, [0xd1, 0, 0, 0]));
        j.event(&q(1_100, q::BLK_AIO_PWRITEV, [0xd1, off, len, 0xb1]));
        j.event(&q(1_200, q::BLK_CO_PWRITEV_PART, [0x9a, off, len, 0xb1]));
        j.event(&q(1_300, q::BDRV_CO_PWRITEV_PART, [0x9a, off, len, 0xc0]));
        j.event(&q(1_400, q::QCOW2_CO_PWRITEV_PART, [0x9a, off, len, 0xb5]));
        j.event(&q(1_500, q::QCOW2_CACHE_GET, [0xcac4e, 0x1_0000, 0, 0xb5]));
        j.event(&q(
            1_600,
            q::BDRV_CO_PWRITEV_PART,
            [0x9a, 0x5_0000, len, 0xf1],
        ));
        j.event(&q(1_700, q::RAW_CO_PRW, [0x9a, 0x5_0000, len, 2]));
        let job = 8 << 32 | q::AIO_WRITE;
        j.event(&q(
            1_800,
            q::THREAD_POOL_SUBMIT_AIO,
            [0xa1, 0x5_0000, len, job],
        ));
        pool_worker(&mut j, 2_000, 0xa1, 2, 8);
        j.event(&q(3_000, q::VIRTIO_RW_COMPLETE, [0xd1, 0, 0, 0]));
        j.event(&q(3_100, q::VIRTIO_REQ_COMPLETE, [0xd1, off / 512, 1, len]));
        j
    }

    /// A guest write through qcow2 completes and waits for its interrupt; meanwhile its
    /// VirtIOBlockReq comes back for a discard, whose way through qcow2 has no probe:
    /// the refcount block qcow2 then looks up and reads is the discard's metadata, not
    /// the finished write's (whose qcow2 probe was the thread's last).
    #[test]
    fn metadata_io_after_a_request_completed_is_not_that_requests() {
        let layout = Layout::default();
        let mut j = answered_write_after_a_cache_hit(&layout);
        let q = |ts, tid, sub, a| sub_ev(ts, tid, EventKind::Qemu, sub, a);
        // The discard, before the write's interrupt.
        j.event(&q(4_000, 1, q::VIRTIO_HANDLE_REQUEST, [0xd1, 0, 0, 0]));
        j.event(&q(
            4_100,
            1,
            q::QCOW2_CACHE_GET,
            [0xcac4e, 0x2_0000, 0, 0xb5],
        ));
        j.event(&q(
            4_200,
            1,
            q::BDRV_CO_PREADV_PART,
            [0x7f, 0x2_0000, 0x1_0000, 0xf1],
        ));
        j.event(&q(4_300, 1, q::RAW_CO_PRW, [0x7f, 0x2_0000, 0x1_0000, 1]));
        let job = 8 << 32 | q::AIO_READ;
        j.event(&q(
            4_400,
            1,
            q::THREAD_POOL_SUBMIT_AIO,
            [0xa2, 0x2_0000, 0x1_0000, job],
        ));
        pool_worker(&mut j, 4_500, 0xa2, 1, 8);
        j.event(&ev(5_500, 0, EventKind::KvmMsi, [0; 4]));
        j.event(&q(6_000, 1, q::VIRTIO_REQ_COMPLETE, [0xd1, 0, 11, 16]));
        j.event(&ev(6_100, 0, EventKind::KvmMsi, [0; 4]));
        let All(rows, other) = j.finish().0;
        let (w, d) = (row_of(&rows, Op::Write), row_of(&rows, Op::Discard));
        assert_eq!((w.host_ios, w.meta_ios, w.partial), (1, 0, 0), "{w:?}");
        assert_eq!((d.host_ios, d.meta_ios, d.partial), (0, 1, 0), "{d:?}");
        // The worker's read of the block: 4_600 to 5_000.
        assert_eq!(d.meta_ns, 400, "{d:?}");
        assert!(other.is_empty(), "{other:?}");
    }

    /// A guest write finds its L2 table in qcow2's cache and completes; a flush then
    /// writes that table back, on the same thread, before the write's interrupt. The
    /// table's offset matches the write's last cache lookup, but the write-back is the
    /// flush's metadata IO: the answered write takes none (seen on a real guest, where
    /// the write stayed open for that IO and was reported partial).
    #[test]
    fn a_table_written_back_after_its_lookup_is_not_the_answered_requests() {
        let layout = Layout::default();
        let mut j = answered_write_after_a_cache_hit(&layout);
        let q = |ts, tid, sub, a| sub_ev(ts, tid, EventKind::Qemu, sub, a);
        let (job, table) = (8 << 32 | q::AIO_WRITE, 0x1_0000);
        // The flush writes the dirty table out.
        j.event(&q(4_000, 1, q::VIRTIO_HANDLE_REQUEST, [0xd2, 0, 0, 0]));
        j.event(&q(
            4_100,
            1,
            q::BDRV_CO_PWRITEV_PART,
            [0x7e, table, 0x1_0000, 0xf1],
        ));
        j.event(&q(4_200, 1, q::RAW_CO_PRW, [0x7e, table, 0x1_0000, 2]));
        j.event(&q(
            4_300,
            1,
            q::THREAD_POOL_SUBMIT_AIO,
            [0xa2, table, 0x1_0000, job],
        ));
        pool_worker(&mut j, 4_400, 0xa2, 2, 8);
        j.event(&ev(5_500, 0, EventKind::KvmMsi, [0; 4]));
        // Type 4: flush.
        j.event(&q(6_000, 1, q::VIRTIO_REQ_COMPLETE, [0xd2, 0, 4, 0]));
        j.event(&ev(6_100, 0, EventKind::KvmMsi, [0; 4]));
        let All(rows, other) = j.finish().0;
        let (w, f) = (row_of(&rows, Op::Write), row_of(&rows, Op::Flush));
        assert_eq!((w.host_ios, w.meta_ios, w.partial), (1, 0, 0), "{w:?}");
        assert_eq!((f.meta_ios, f.partial), (1, 0), "{f:?}");
        // The worker's write of the table: 4_500 to 4_900.
        assert_eq!(f.meta_ns, 400, "{f:?}");
        assert!(other.is_empty(), "{other:?}");
    }

    /// A VM with two disks, each one image file (inodes 11 and 12) on /dev/sda.
    fn two_disks() -> Layout {
        let file = |name: &str, ino: u64| {
            serde_json::json!({"file": name, "len": 1u64 << 30, "ino": ino, "host": [
            {"offset": 0, "len": 1u64 << 30, "hops": [
                {"hop": "file", "path": name, "offset": 0, "state": "mapped"},
                {"hop": "device", "device": "/dev/sda", "dev": "8:0", "byte": ino << 30, "via": "filesystem"}
            ]}]})
        };
        let layout = Layout::from_snapshot(&serde_json::json!({
            "images": [
                {"path": "/vm/a.qcow2", "file_hosts": [file("/vm/a.qcow2", 11)]},
                {"path": "/vm/b.qcow2", "file_hosts": [file("/vm/b.qcow2", 12)]}
            ],
            "devices": []
        }));
        assert_eq!(layout.disks.len(), 2);
        layout
    }

    /// A flush's or discard's thread-pool job names only a file descriptor: its disk is
    /// that of the file an earlier job of the descriptor read, as the kernel named it.
    #[test]
    fn a_job_of_a_descriptor_gets_the_disk_of_the_file_it_opened() {
        let layout = two_disks();
        let cfg = JoinConfig {
            flush_syscalls: true,
            falloc_syscalls: true,
            ..JoinConfig::default()
        };
        let mut j = Join::new(&layout, All::default(), cfg);
        let dev = u64::from(kernel_dev(8, 0)) << 32;
        let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
        // QEMU reads 4 KiB of b.qcow2 (fd 7) at start-up: worker 3, direct IO.
        let read = 7 << 32 | q::AIO_READ;
        j.event(&q(1_000, q::THREAD_POOL_SUBMIT_AIO, [0xe0, 0, 4096, read]));
        j.event(&sub_ev(
            1_100,
            3,
            EventKind::Qemu,
            q::HANDLE_AIOCB_RW,
            [0xe0, 0, 4096, read],
        ));
        j.event(&sub_ev(1_200, 3, EventKind::SysEnter, 1, [7, 0, 4096, 0]));
        j.event(&ev(1_300, 3, EventKind::DioBegin, [0xd0, 0, 4096, 12]));
        let sector = (12u64 << 30) / 512;
        j.event(&ev(
            1_400,
            3,
            EventKind::BioQueue,
            [0xb0, sector, dev | 4096, 0],
        ));
        j.event(&ev(
            1_500,
            3,
            EventKind::RqIssue,
            [0x70, sector, dev | 4096, 0xb0],
        ));
        j.event(&ev(
            1_900,
            0,
            EventKind::RqComplete,
            [0x70, sector, dev | 4096, 4096],
        ));
        j.event(&sub_ev(2_000, 3, EventKind::SysExit, 1, [4096, 0, 0, 0]));
        // Then the guest's flush and discard of that disk.
        for (t, req, job, virtio_type) in [
            (10_000, 0xf1, q::AIO_FLUSH, 4),
            (20_000, 0xd1, q::AIO_DISCARD, 11),
        ] {
            j.event(&q(t, q::VIRTIO_HANDLE_REQUEST, [req, 0, 0, 0]));
            j.event(&q(
                t + 100,
                q::THREAD_POOL_SUBMIT_AIO,
                [0xe1, 0, 0, 7 << 32 | job],
            ));
            let sc = if job == q::AIO_FLUSH { 11 } else { 13 };
            j.event(&sub_ev(t + 200, 3, EventKind::SysEnter, sc, [7, 0, 0, 0]));
            j.event(&sub_ev(t + 900, 3, EventKind::SysExit, sc, [0, 0, 0, 0]));
            j.event(&q(
                t + 1_000,
                q::VIRTIO_REQ_COMPLETE,
                [req, 0, virtio_type, 0],
            ));
        }
        let (all, _) = j.finish();
        for op in [Op::Flush, Op::Discard] {
            let r = all.0.iter().find(|r| r.op == op).expect("row");
            assert_eq!((r.host_ios, r.partial), (1, 0), "{r:?}");
            assert_eq!(r.disk, Some(1), "{r:?}");
        }
    }

    /// Inside a kernel worker's fsync (thread 51): the flush bio queued at 2 100, the
    /// device's flush request issued at 2 200 and done at 5 000.
    fn worker_flushes_device<S: Sink>(j: &mut Join<S>, dev: u64) {
        j.event(&ev(2_100, 51, EventKind::BioQueue, [0xb1, 0, dev, 0]));
        j.event(&ev(2_200, 60, EventKind::RqIssue, [0x71, u64::MAX, dev, 0]));
        j.event(&ev(
            5_000,
            0,
            EventKind::RqComplete,
            [0x71, u64::MAX, dev, 0],
        ));
    }

    /// A guest's flush with `aio=native` on iothread 1: linux-aio hands the fsync to a
    /// kernel worker (thread 51), outside QEMU, which queues a flush bio; the block
    /// layer's flush request follows. Another process's fsync (inode 99, worker 50)
    /// comes first. The VM has two disks, each one image file (inodes 11 and 12).
    #[test]
    fn a_linux_aio_flush_is_followed_into_the_kernel_workers_fsync() {
        let layout = two_disks();
        let dev = u64::from(kernel_dev(8, 0)) << 32;
        let run = |fs_sync: bool, sync_shown: bool| {
            let cfg = JoinConfig {
                fs_sync,
                ..JoinConfig::default()
            };
            let mut j = Join::new(&layout, All::default(), cfg);
            let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
            let sync =
                |ts, tid, sub, ino| sub_ev(ts, tid, EventKind::FsSync, sub, [ino, 8 << 20, 1, 0]);
            j.event(&q(1_000, q::VIRTIO_HANDLE_REQUEST, [0xf1, 0, 0, 0]));
            j.event(&q(1_100, q::LAIO_CO_SUBMIT, [0, 0, 0, q::AIO_FLUSH]));
            j.event(&sub_ev(1_200, 1, EventKind::SysEnter, 7, [0x1c, 0, 1, 0]));
            j.event(&sub_ev(1_300, 1, EventKind::SysExit, 7, [1, 0, 0, 0]));
            j.event(&sync(1_400, 50, 0, 99));
            j.event(&sync(1_500, 50, 1, 99));
            if sync_shown {
                j.event(&sync(2_000, 51, 0, 11));
            }
            worker_flushes_device(&mut j, dev);
            if sync_shown {
                j.event(&sync(5_200, 51, 1, 11));
            }
            j.event(&q(5_600, q::VIRTIO_REQ_COMPLETE, [0xf1, 0, 4, 0]));
            let (all, _) = j.finish();
            let f = all
                .0
                .iter()
                .find(|r| r.op == Op::Flush)
                .expect("flush row")
                .clone();
            (f, all.1)
        };
        let (f, others) = run(true, true);
        assert_eq!(f.partial, 0, "{f:?}");
        assert_eq!(f.host_ios, 1);
        // parsed, io_submit entered, the flush bio queued, the flush request issued and
        // done, the kernel worker's fsync returned, completion pushed.
        assert_eq!(
            f.b[1..9],
            [1_000, 1_200, 2_100, 2_200, 5_000, 5_200, 0, 5_600]
        );
        // The file the kernel synced names the disk; its flush request, the device.
        assert_eq!(f.disk, Some(0));
        assert_eq!(f.bottom_dev, kernel_dev(8, 0));
        // Neither the other process's fsync nor the flush bio is other IO.
        assert!(others.is_empty(), "{others:?}");

        // A filesystem without the probed tracepoint: nothing of the flush is seen in
        // the kernel. QEMU's alone, complete, as without the probes.
        for (fs_sync, sync_shown) in [(true, false), (false, false)] {
            let (f, _) = run(fs_sync, sync_shown);
            assert_eq!(f.partial, 0, "{f:?}");
            assert_eq!(f.host_ios, 0, "{f:?}");
            assert_eq!(f.b[2..8], [0; 6], "{f:?}");
            assert_eq!((f.b[1], f.b[8]), (1_000, 5_600));
        }
    }

    /// A linux-aio flush on a filesystem without fsync tracepoints of its own: the kernel
    /// worker's work item (its start names the file) begins and ends it. Another
    /// process's linux-aio fsync (inode 99) runs first and is not the VM's. With ext4's
    /// events inside the work item as well, the fsync's own return is the host end.
    #[test]
    fn a_linux_aio_flush_on_any_filesystem_ends_with_its_work_item() {
        let layout = two_disks();
        let dev = u64::from(kernel_dev(8, 0)) << 32;
        let run = |ext4: bool| {
            let cfg = JoinConfig {
                fs_sync: ext4,
                aio_fsync: true,
                ..JoinConfig::default()
            };
            let mut j = Join::new(&layout, All::default(), cfg);
            let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
            let sync = |ts, tid, sub, ino, work| {
                sub_ev(ts, tid, EventKind::FsSync, sub, [ino, 8 << 20, 1, work])
            };
            j.event(&q(1_000, q::VIRTIO_HANDLE_REQUEST, [0xf1, 0, 0, 0]));
            j.event(&q(1_100, q::LAIO_CO_SUBMIT, [0, 0, 0, q::AIO_FLUSH]));
            j.event(&sub_ev(1_200, 1, EventKind::SysEnter, 7, [0x1c, 0, 1, 0]));
            j.event(&sub_ev(1_300, 1, EventKind::SysExit, 7, [1, 0, 0, 0]));
            j.event(&sync(1_400, 50, 2, 99, 0x990));
            j.event(&sync(1_500, 50, 3, 0, 0x990));
            j.event(&sync(2_000, 51, 2, 11, 0x110));
            if ext4 {
                j.event(&sync(2_050, 51, 0, 11, 0));
            }
            worker_flushes_device(&mut j, dev);
            if ext4 {
                j.event(&sync(5_200, 51, 1, 11, 0));
            }
            j.event(&sync(5_300, 51, 3, 0, 0x110));
            j.event(&q(5_600, q::VIRTIO_REQ_COMPLETE, [0xf1, 0, 4, 0]));
            let (all, _) = j.finish();
            let f = all
                .0
                .iter()
                .find(|r| r.op == Op::Flush)
                .expect("flush")
                .clone();
            assert!(all.1.is_empty(), "{:?}", all.1);
            f
        };
        let f = run(false);
        assert_eq!((f.partial, f.host_ios), (0, 1), "{f:?}");
        assert_eq!(
            f.b[1..9],
            [1_000, 1_200, 2_100, 2_200, 5_000, 5_300, 0, 5_600]
        );
        assert_eq!(f.disk, Some(0));
        let f = run(true);
        assert_eq!(f.b[6], 5_200, "{f:?}");
    }

    /// Two disks' flushes with `aio=native`, submitted by one io_submit (disk a's first),
    /// whose kernel workers begin them the other way round: each flush is paired with the
    /// fsync of its own disk's file, which the descriptor it named says (learned from a
    /// read of each disk: fd 5 read inode 11, fd 6 inode 12).
    #[test]
    fn linux_aio_flushes_of_two_disks_pair_with_their_own_disks_fsync() {
        let layout = two_disks();
        let run = |with_fds: bool| {
            let cfg = JoinConfig {
                fs_sync: true,
                ..JoinConfig::default()
            };
            let mut j = Join::new(&layout, All::default(), cfg);
            let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
            let fd = |fd: u64| if with_fds { fd << 32 } else { 0 };
            for (t, fd_, ino) in [(100, 5, 11), (1_100, 6, 12)] {
                j.event(&q(
                    t,
                    q::LAIO_CO_SUBMIT,
                    [0x100 + t, 0, 4096, fd(fd_) | q::AIO_READ],
                ));
                j.event(&sub_ev(t + 100, 1, EventKind::SysEnter, 7, [0x1c, 0, 1, 0]));
                j.event(&ev(
                    t + 200,
                    1,
                    EventKind::DioBegin,
                    [0xd0 + t, 0, 4096, ino],
                ));
                j.event(&sub_ev(t + 300, 1, EventKind::SysExit, 7, [1, 0, 0, 0]));
                j.event(&ev(t + 800, 0, EventKind::DioComplete, [0xd0 + t, 0, 0, 0]));
            }
            for (t, req, fd_) in [(10_000, 0xfa, 5), (10_100, 0xfb, 6)] {
                j.event(&q(t, q::VIRTIO_HANDLE_REQUEST, [req, 0, 0, 0]));
                j.event(&q(
                    t + 50,
                    q::LAIO_CO_SUBMIT,
                    [0, 0, 0, fd(fd_) | q::AIO_FLUSH],
                ));
            }
            j.event(&sub_ev(10_200, 1, EventKind::SysEnter, 7, [0x1c, 0, 2, 0]));
            j.event(&sub_ev(10_300, 1, EventKind::SysExit, 7, [2, 0, 0, 0]));
            let sync =
                |ts, tid, sub, ino| sub_ev(ts, tid, EventKind::FsSync, sub, [ino, 8 << 20, 1, 0]);
            j.event(&sync(11_000, 51, 0, 12));
            j.event(&sync(11_500, 52, 0, 11));
            j.event(&sync(12_000, 51, 1, 12));
            j.event(&q(12_500, q::VIRTIO_REQ_COMPLETE, [0xfb, 0, 4, 0]));
            j.event(&sync(13_000, 52, 1, 11));
            j.event(&q(13_500, q::VIRTIO_REQ_COMPLETE, [0xfa, 0, 4, 0]));
            let (all, _) = j.finish();
            let flushes: Vec<IoRow> = all.0.into_iter().filter(|r| r.op == Op::Flush).collect();
            assert_eq!(flushes.len(), 2);
            flushes
        };
        let f = run(true);
        // Disk b's flush completed first; its fsync returned at 12 000, disk a's at 13 000.
        assert_eq!((f[0].b[8], f[0].b[6], f[0].disk), (12_500, 12_000, Some(1)));
        assert_eq!((f[1].b[8], f[1].b[6], f[1].disk), (13_500, 13_000, Some(0)));
        assert!(f.iter().all(|r| r.partial == 0 && r.host_ios == 1), "{f:?}");

        // A trace whose submissions name no descriptor: submission order, swapped. Disk
        // a's flush takes disk b's fsync; disk b's flush, which completed before the
        // fsync it took ended, has no host end.
        let f = run(false);
        assert_eq!((f[1].b[8], f[1].b[6], f[1].disk), (13_500, 12_000, Some(1)));
        assert_eq!((f[0].b[8], f[0].b[6]), (12_500, 0), "{f:?}");
    }

    /// qemu-io's aio_read on thread 5: blk_aio_preadv with its context as opaque, the
    /// data read by thread-pool worker 9 (pread64 returns 25 µs in), then, `cb` after
    /// `t0`, qemu-io's callback with that context. Request `n` has its own context and
    /// qiov pointers.
    fn qemu_io_aio_read<S: Sink>(j: &mut Join<S>, n: u64, t0: u64, cb: Option<u64>) {
        qemu_io_aio_read_of(j, n, t0, cb, None)
    }

    /// [`qemu_io_aio_read`], its `pread64` a direct IO of the file with inode `ino`
    /// when given (the kernel names the file).
    fn qemu_io_aio_read_of<S: Sink>(
        j: &mut Join<S>,
        n: u64,
        t0: u64,
        cb: Option<u64>,
        ino: Option<u64>,
    ) {
        qemu_io_aio_read_on(j, n, t0, cb, ino, 0xc1);
    }

    /// [`qemu_io_aio_read_of`] from the drive whose root BdrvChild is `child`.
    fn qemu_io_aio_read_on<S: Sink>(
        j: &mut Join<S>,
        n: u64,
        t0: u64,
        cb: Option<u64>,
        ino: Option<u64>,
        child: u64,
    ) {
        let qemu = |ts: u64, tid: u32, sub: u8, a: [u64; 4]| RawEvent {
            sub,
            ..ev(ts, tid, EventKind::Qemu, a)
        };
        let sys = |ts: u64, kind: EventKind, a: [u64; 4]| RawEvent {
            sub: 1, // pread64
            ..ev(ts, 9, kind, a)
        };
        let (ctx, qiov, aiocb, off, len) = QEMU_IO_READ;
        let (ctx, qiov) = (ctx + n * 0x100, qiov + n * 0x100);
        j.event(&qemu(t0, 5, q::BLK_AIO_PREADV, [ctx, off, len, 0xb1]));
        j.event(&qemu(
            t0 + 1_000,
            5,
            q::BDRV_CO_PREADV_PART,
            [qiov, off, len, child],
        ));
        j.event(&qemu(
            t0 + 2_000,
            5,
            q::RAW_CO_PRW,
            [qiov, off, len, q::AIO_READ],
        ));
        j.event(&qemu(
            t0 + 3_000,
            5,
            q::THREAD_POOL_SUBMIT_AIO,
            [aiocb, off, len, q::AIO_READ],
        ));
        j.event(&qemu(
            t0 + 4_000,
            9,
            q::HANDLE_AIOCB_RW,
            [aiocb, off, len, q::AIO_READ],
        ));
        j.event(&sys(t0 + 5_000, EventKind::SysEnter, [3, off, len, 0]));
        if let Some(ino) = ino {
            j.event(&ev(
                t0 + 6_000,
                9,
                EventKind::DioBegin,
                [0xa000 + n, off, len, ino],
            ));
        }
        j.event(&sys(t0 + 25_000, EventKind::SysExit, [len, 0, 0, 0]));
        if let Some(cb) = cb {
            j.event(&qemu(t0 + cb, 5, q::QEMU_IO_AIO_READ_DONE, [ctx, 0, 0, 0]));
        }
    }

    /// (context, qiov, aiocb, offset, length) of [`qemu_io_aio_read`].
    const QEMU_IO_READ: (u64, u64, u64, u64, u64) =
        (0x5555_0000, 0x5555_1000, 0x7f00_2000, 0x10000, 4096);

    /// Another process's events on thread 77 every 500 µs in `[from, to)`: the trace's
    /// clock runs on while QEMU's threads are off the CPU.
    fn others<S: Sink>(j: &mut Join<S>, from: u64, to: u64) {
        for ts in (from..to).step_by(500_000) {
            j.event(&ev(ts, 77, EventKind::BioComplete, [0xdead_0000, 0, 0, 0]));
        }
    }

    #[test]
    fn a_request_is_given_the_disk_whose_file_the_kernel_named() {
        // Two disks: a.qcow2 over base.qcow2 and b.qcow2 over the same base, their
        // drives' root BdrvChild 0xca and 0xcb. A request whose IO went to a.qcow2 or
        // b.qcow2 is that disk's; one that read only the shared base, or whose file was
        // never named (no direct IO seen), is its drive's disk if an earlier request
        // of that drive named it, else unknown.
        let file = |name: &str, ino: u64, part_byte: u64| {
            serde_json::json!({
                "file": name, "len": 1u64 << 30, "ino": ino,
                "host": [{"offset": 0, "len": 1u64 << 30, "hops": [
                    {"hop": "device", "device": "/dev/sda1", "dev": "8:1", "byte": part_byte, "via": "filesystem"}
                ]}]
            })
        };
        let base = || file("/vm/base.qcow2", 13, 3 << 30);
        let layout = Layout::from_snapshot(&serde_json::json!({
            "images": [
                {"path": "/vm/a.qcow2", "file_hosts": [file("/vm/a.qcow2", 11, 1 << 30), base()]},
                {"path": "/vm/b.qcow2", "file_hosts": [file("/vm/b.qcow2", 12, 2 << 30), base()]}
            ],
            "devices": []
        }));
        assert_eq!(layout.disks.len(), 2);
        let mut j = Join::new(&layout, Rows::default(), JoinConfig::default());
        let cases = [
            // Drive 0xcc, not seen before, reads only the base.
            (Some(13), 0xcc, None),
            (Some(11), 0xca, Some(0)),
            (Some(12), 0xcb, Some(1)),
            (Some(13), 0xca, Some(0)),
            (None, 0xcb, Some(1)),
            // An inode no image file has (another filesystem's file) names nothing.
            (Some(99), 0xcd, None),
        ];
        for (n, (ino, child, _)) in cases.iter().enumerate() {
            let t0 = 1_000_000 * (n as u64 + 1);
            qemu_io_aio_read_on(&mut j, n as u64, t0, Some(40_000), *ino, *child);
        }
        let (Rows(rows), _) = j.finish();
        let got: Vec<_> = cases
            .iter()
            .zip(&rows)
            .map(|(&(ino, child, _), r)| (ino, child, r.disk))
            .collect();
        let want = cases.to_vec();
        assert_eq!(rows.len(), cases.len());
        assert_eq!(got, want);
        assert_eq!(layout.disk_name(1), "/vm/b.qcow2");

        // One disk: every request is its, named or not.
        let one = Layout::from_snapshot(&serde_json::json!({
            "images": [{"path": "/vm/a.qcow2", "file_hosts": [file("/vm/a.qcow2", 11, 1 << 30)]}],
            "devices": []
        }));
        let mut j = Join::new(&one, Rows::default(), JoinConfig::default());
        qemu_io_aio_read_of(&mut j, 0, 1_000_000, Some(40_000), None);
        let (Rows(rows), _) = j.finish();
        assert_eq!(rows.iter().map(|r| r.disk).collect::<Vec<_>>(), [Some(0)]);
        // No layout: no disk.
        let none = Layout::default();
        let mut j = Join::new(&none, Rows::default(), JoinConfig::default());
        qemu_io_aio_read_of(&mut j, 0, 1_000_000, Some(40_000), Some(11));
        let (Rows(rows), _) = j.finish();
        assert_eq!(rows.iter().map(|r| r.disk).collect::<Vec<_>>(), [None]);
    }

    /// A guest's discard that frees nothing in a file has no host IO to name its disk:
    /// its drive's root BdrvChild (its `bdrv_co_pdiscard`'s) does, learnt from an
    /// earlier request of that drive whose host IO named the disk. A drive never seen
    /// with host IO leaves it unknown.
    #[test]
    fn a_discard_without_host_io_gets_its_drives_disk() {
        let layout = two_disks();
        let mut j = Join::new(&layout, All::default(), JoinConfig::default());
        // Drive 0xcb reads b.qcow2 (inode 12).
        qemu_io_aio_read_on(&mut j, 0, 1_000_000, Some(40_000), Some(12), 0xcb);
        let q = |ts, sub, a| sub_ev(ts, 1, EventKind::Qemu, sub, a);
        for (t, req, child) in [(2_000_000, 0xd1, 0xcb), (3_000_000, 0xd2, 0xca)] {
            j.event(&q(t, q::VIRTIO_HANDLE_REQUEST, [req, 0, 0, 0]));
            j.event(&q(
                t + 100,
                q::BDRV_CO_PDISCARD,
                [0, 0x10_0000, 0x1_0000, child],
            ));
            j.event(&q(t + 900, q::VIRTIO_REQ_COMPLETE, [req, 0, 11, 16]));
        }
        let (All(rows, _), _) = j.finish();
        let got: Vec<_> = rows.iter().map(|r| (r.op, r.host_ios, r.disk)).collect();
        assert_eq!(
            got,
            [
                (Op::Read, 1, Some(1)),
                (Op::Discard, 0, Some(1)),
                (Op::Discard, 0, None)
            ],
            "{rows:?}"
        );
    }

    #[test]
    fn a_qemu_io_aio_request_ends_at_its_completion_callback() {
        // The row runs to the callback, and is reported then, not when it goes idle.
        let layout = Layout::default();
        let mut j = Join::new(&layout, Rows::default(), JoinConfig::default());
        let (_, _, _, off, len) = QEMU_IO_READ;
        let read = qemu_io_aio_read::<Rows>;
        read(&mut j, 0, 1_000_000, Some(31_000));
        assert_eq!(j.sink.0.len(), 1, "reported at the callback");
        let row = &j.sink.0[0];
        assert_eq!((row.offset, row.bytes, row.partial), (Some(off), len, 0));
        assert_eq!(row.b[1], 1_000_000);
        assert_eq!(
            row.b[6], 1_025_000,
            "host_done: the worker's pread returned"
        );
        assert_eq!(row.b[7], 1_031_000, "qemu_done: the callback");
        let (layers, e2e) = crate::layers::split(&row.b);
        assert_eq!(e2e, 31_000);
        assert_eq!(layers.iter().flatten().sum::<u64>(), e2e);
        // The context comes back for the next request: a new row. Without a callback
        // (probe not attached) it ends at host_done as before.
        read(&mut j, 0, 2_000_000, None);
        let (sink, _) = j.finish();
        assert_eq!(sink.0.len(), 2);
        assert_eq!((sink.0[1].b[6], sink.0[1].b[7]), (2_025_000, 0));
        assert_eq!(crate::layers::split(&sink.0[1].b).1, 25_000);
    }

    #[test]
    fn a_late_callback_ends_its_request_however_long_its_thread_was_off_the_cpu() {
        // qemu-io's thread is off the CPU for 6 ms between the host IO and the callback
        // while other processes' events run the trace's clock on (as in a CI run with
        // both CPUs busy): the request still ends at its callback.
        let layout = Layout::default();
        let mut j = Join::new(&layout, Rows::default(), JoinConfig::default());
        qemu_io_aio_read(&mut j, 0, 1_000_000, None);
        others(&mut j, 1_100_000, 7_100_000);
        assert!(j.sink.0.is_empty(), "reported before its thread went on");
        let (ctx, ..) = QEMU_IO_READ;
        j.event(&RawEvent {
            sub: q::QEMU_IO_AIO_READ_DONE,
            ..ev(7_200_000, 5, EventKind::Qemu, [ctx, 0, 0, 0])
        });
        assert_eq!(j.sink.0.len(), 1, "reported at the callback");
        assert_eq!(j.sink.0[0].b[7], 7_200_000, "qemu_done: the late callback");
        // Without a callback (a caller whose completion is not probed), the request is
        // over once its thread has been seen 2 ms after it: here its next request.
        qemu_io_aio_read(&mut j, 1, 10_000_000, None);
        others(&mut j, 10_100_000, 20_000_000);
        assert_eq!(j.sink.0.len(), 1, "its thread has not gone on");
        qemu_io_aio_read(&mut j, 2, 20_000_000, None);
        others(&mut j, 20_100_000, 22_100_000);
        assert_eq!(j.sink.0.len(), 2, "over once its thread went on");
        let row = &j.sink.0[1];
        assert_eq!((row.b[1], row.b[6], row.b[7]), (10_000_000, 10_025_000, 0));
        assert_eq!(row.partial, 0);
        // A thread that stays quiet: its request is over (not partial) when stale.
        others(&mut j, 22_100_000, 22_200_000);
        j.event(&ev(
            20_025_000 + STALE_NS + 1_000_000,
            77,
            EventKind::BioComplete,
            [0xdead_0000, 0, 0, 0],
        ));
        assert_eq!(j.sink.0.len(), 3, "stale");
        let row = &j.sink.0[2];
        assert_eq!((row.b[6], row.partial), (20_025_000, 0));
    }

    #[test]
    fn a_direct_io_pairs_with_a_host_io_its_own_thread_submitted() {
        // A guest mirror writes the same offset and length to two disks, each with its
        // own iothread and linux-aio (and one with io_uring). Thread 6 makes its request
        // first, but thread 5 calls io_submit first: the kernel begins thread 5's direct
        // IO inside that call, and it is thread 5's request, not the earlier one.
        let layout = Layout::default();
        let mut j = Join::new(&layout, Nothing, JoinConfig::default());
        let qemu = |ts: u64, tid: u32, sub: u8, a: [u64; 4]| RawEvent {
            sub,
            ..ev(ts, tid, EventKind::Qemu, a)
        };
        let sys = |ts: u64, tid: u32, kind: EventKind, sub: u8| RawEvent {
            sub,
            ..ev(ts, tid, kind, [0; 4])
        };
        let (pos, len) = (0x20_0000u64, 65536u64);
        let mut made = Vec::new();
        for (ts, tid, qiov, submit) in [
            (1_000, 6, 0x6000, q::LAIO_CO_SUBMIT),
            (1_100, 5, 0x5000, q::LAIO_CO_SUBMIT),
            (1_200, 7, 0x7000, q::LURING_CO_SUBMIT),
        ] {
            j.event(&qemu(ts, tid, q::RAW_CO_PRW, [qiov, pos, len, 2]));
            j.event(&qemu(ts + 10, tid, submit, [qiov, pos, len, 2]));
            made.push(
                j.threads
                    .get(tid)
                    .and_then(|t| t.last_hio)
                    .expect("host IO"),
            );
        }
        // Thread 5's io_submit: its direct IO begins inside it.
        j.event(&sys(2_000, 5, EventKind::SysEnter, 7));
        j.event(&ev(2_010, 5, EventKind::DioBegin, [0xa5, pos, len, 7]));
        j.event(&sys(2_020, 5, EventKind::SysExit, 7));
        assert_eq!(j.kiocb.get(&0xa5), Some(&made[1]));
        // Thread 7's io_uring submission, begun inline by the kernel.
        j.event(&RawEvent {
            sub: 0,
            ..ev(2_100, 7, EventKind::UringSubmit, [0x77, 0xf7, 0xc7, 22])
        });
        j.event(&ev(2_110, 7, EventKind::DioBegin, [0xa7, pos, len, 7]));
        assert_eq!(j.kiocb.get(&0xa7), Some(&made[2]));
        // Thread 6's, last.
        j.event(&sys(2_200, 6, EventKind::SysEnter, 7));
        j.event(&ev(2_210, 6, EventKind::DioBegin, [0xa6, pos, len, 7]));
        assert_eq!(j.kiocb.get(&0xa6), Some(&made[0]));
    }

    #[test]
    fn an_io_uring_write_run_again_by_an_io_wq_worker_stays_one_host_io() {
        // io_uring first tries the write inside io_uring_enter without waiting; the
        // filesystem refuses after the direct IO began (-EAGAIN), and an io-wq worker
        // (thread 9) runs it again with the same kiocb. That is the same host IO: it
        // takes the worker's bios, and no second one is left in flight to take the
        // bios of a later IO at the same place.
        let layout = two_disks();
        let mut j = Join::new(&layout, Nothing, JoinConfig::default());
        let qemu = |ts: u64, sub: u8, a: [u64; 4]| RawEvent {
            sub,
            ..ev(ts, 7, EventKind::Qemu, a)
        };
        let (pos, len, ino) = (0x20_0000u64, 4096u64, 11u64);
        let dev = u64::from(kernel_dev(8, 0)) << 32;
        let sector = ((ino << 30) + pos) / 512;
        let mut made = Vec::new();
        for (t, user_data, kiocb, bio, rq) in [
            (1_000, 0x77, 0xa7, 0xb7, 0x97),
            (50_000, 0x78, 0xa8, 0xb8, 0x98),
        ] {
            j.event(&qemu(t, q::RAW_CO_PRW, [0x7000, pos, len, 2]));
            j.event(&qemu(
                t + 10,
                q::LURING_CO_SUBMIT,
                [0x7000, pos, len, 5 << 32 | 2],
            ));
            let h = j.threads.get(7).and_then(|t| t.last_hio).expect("host IO");
            made.push(h);
            j.event(&ev(
                t + 100,
                7,
                EventKind::UringSubmit,
                [user_data, 0, 0, 0],
            ));
            if made.len() == 1 {
                j.event(&ev(t + 110, 7, EventKind::DioBegin, [kiocb, pos, len, ino]));
            }
            let live = j.hios.live;
            j.event(&ev(t + 500, 9, EventKind::DioBegin, [kiocb, pos, len, ino]));
            assert_eq!(j.hios.live, live, "a second host IO for the same kiocb");
            assert_eq!(j.kiocb.get(&kiocb), Some(&h));
            block_request(&mut j, t + 600, 9, bio, rq, sector, dev | len);
            assert!(
                matches!(j.bios.get(&bio).map(|b| b.owner), Some(BioOwner::Hio(o)) if o == h),
                "the worker's bio is not the IO's"
            );
            j.event(&ev(
                t + 2_000,
                0,
                EventKind::RqComplete,
                [rq, sector, dev | len, len],
            ));
            j.event(&ev(t + 2_100, 0, EventKind::DioComplete, [kiocb, 0, 0, 0]));
            j.event(&ev(
                t + 2_200,
                7,
                EventKind::UringComplete,
                [user_data, 0, 0, 0],
            ));
            assert!(j.hios.get(h).is_none(), "the host IO did not complete");
        }
    }

    #[test]
    fn requests_that_never_complete_are_dropped_in_time() {
        let layout = Layout::default();
        let mut j = Join::new(&layout, Others::default(), JoinConfig::default());
        let dev = u64::from(kernel_dev(254, 0)) << 32;
        for i in 0..100u64 {
            let (ts, bio, rq) = (1_000 + i * 10_000, 0x1000 + i, 0x9000 + i);
            block_request(&mut j, ts, 5, bio, rq, i * 8, dev | 4096);
        }
        assert_eq!(j.reqs.len(), 100);
        j.event(&ev(2_000_000 + STALE_NS, 1, EventKind::KvmMmio, [0; 4]));
        assert_eq!((j.reqs.len(), j.stats.requests_lost), (0, 100));
        assert_eq!(j.sink.0.len(), 100);
    }

    #[test]
    fn contexts_of_threads_gone_quiet_are_dropped() {
        // Direct IO by many short-lived processes (no QEMU probes): each thread gets a
        // context, and once quiet for STALE_NS it must be gone, not kept forever.
        let layout = Layout::default();
        let mut j = Join::new(&layout, Nothing, JoinConfig::default());
        for i in 0..1000u32 {
            let (ts, tid, kiocb) = (
                1_000_000 + u64::from(i) * 1_000,
                10_000 + i,
                0x1000 + u64::from(i),
            );
            j.event(&ev(ts, tid, EventKind::DioBegin, [kiocb, 0, 4096, 7]));
            j.event(&ev(ts + 10, tid, EventKind::DioComplete, [kiocb, 0, 0, 0]));
        }
        assert!(j.threads.len() >= 1000, "{} contexts", j.threads.len());
        // Later, one event from one thread.
        j.event(&ev(2_000_000 + STALE_NS, 1, EventKind::KvmMmio, [0; 4]));
        assert_eq!(j.threads.len(), 0);
    }
}
