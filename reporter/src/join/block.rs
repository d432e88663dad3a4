//! The block layer: bios and requests on every device below the image files. A bio
//! queued on sectors a host IO in flight covers belongs to it; after that, bios and
//! requests are followed by pointer until they complete, and a merged request belongs
//! to every host IO it carries.

use super::row::{Op, Sink, flags};
use super::slab::Ref;
use super::slab::Slab;
use super::state::{
    Api, BioEntry, BioOwner, Fill, Hio, Join, PluggedBio, RECENT_FILLS, REQ_OP_READ, REQ_OP_WRITE,
    Req, dev_bytes, min0,
};
use crate::layout::Layout;
use smallvec::{SmallVec, smallvec};
use viopath_layouts::DeviceSector;
use viopath_probes::abi::{EventKind, RawEvent, req_flags};

impl<S: Sink> Join<'_, S> {
    /// Whose is a bio queued at `dev`/`sector`: a host IO in flight covering it.
    /// When several cover it (IO to the same blocks in flight at once), the one the
    /// queueing thread is inside, if it is one of them: a direct IO queues its bios
    /// from its own syscall. Otherwise the first registered.
    pub(super) fn owner_by_address(
        &self,
        tid: u32,
        dev: u32,
        sector: DeviceSector,
        sectors: u64,
    ) -> Option<Ref> {
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

    /// Whether a request of `hio` on `dev` is on the bottom device. Without blocks of
    /// its own (a flush), the layout's stacks say; `None` if it knows no devices.
    pub(super) fn is_bottom(hio: &Hio, layout: &Layout, dev: u32) -> Option<bool> {
        if hio.ranges.is_empty() {
            layout.is_bottom_device(dev)
        } else if hio.ranges.iter().any(|r| r.dev == dev && r.bottom) {
            Some(true)
        } else {
            // Its chain stops at a device the layout does not map (a thin volume): any
            // request-based device its bios reach below that, not on its chain, is as
            // low as it goes (the disk under a thin pool's data).
            Some(
                hio.ranges
                    .iter()
                    .any(|r| r.bottom && layout.stops_chain(r.dev))
                    && !hio.ranges.iter().any(|r| r.dev == dev)
                    && !layout.is_loop(dev),
            )
        }
    }

    /// Whether a request of `hio` on `dev`, a device above the bottom, may be as low as
    /// it goes: a loop device's backing page cache takes its IO whole, and a flush
    /// (blocks not known) ends on a loop device whose worker's sync of the backing file
    /// sends nothing below (its filesystem's journal thread flushes the disk, or no
    /// flush is needed). Used only where nothing below is found.
    fn stops_at_loop(hio: &Hio, layout: &Layout, dev: u32) -> bool {
        layout.is_buffered_loop(dev) || (hio.ranges.is_empty() && layout.is_loop(dev))
    }

    pub(super) fn bio_queue(&mut self, e: &RawEvent) {
        let [bio, sector, a2, opf] = e.a;
        let sector = DeviceSector(sector);
        let (dev, bytes) = dev_bytes(a2);
        // The same bio moving down (a remap): its entry is kept, only no longer marked,
        // instead of looked up again to be replaced.
        let known = match self.bios.get_mut(&bio) {
            Some(b) if b.remapped => {
                b.remapped = false;
                b.dev = dev;
                b.sector = sector;
                b.sectors = u32::try_from(bytes.div_ceil(512)).unwrap_or(u32::MAX);
                Some(b.owner)
            }
            _ => None,
        };
        let sectors = bytes.div_ceil(512);
        // Seen before, remapped from its partition on the thread that submitted it:
        // block-cgroup throttling may have held it since, and a kworker queues it now.
        // It is that thread's all the same.
        let entered = if known.is_none() {
            self.entered.remove(&bio)
        } else {
            None
        };
        let tid = entered.map_or(e.tid, |(_, t)| t);
        // A sync job's thread (a worker's fdatasync, a loop worker's fsync of its
        // backing file) writes back dirty pages: its bios are the job's even where a
        // buffered write in flight covers the same blocks.
        let sync_job = known
            .is_none()
            .then(|| self.threads.get(tid).and_then(|t| t.worker.or(t.loop_sync)))
            .flatten()
            .filter(|&h| self.hios.get(h).is_some_and(|x| x.sync));
        let by_address = known
            .is_none()
            .then(|| sync_job.or_else(|| self.owner_by_address(tid, dev, sector, sectors)))
            .flatten();
        let owner = match known {
            Some(o) => Some(o),
            None => by_address
                .or_else(|| {
                    // Submitted synchronously by the thread doing a traced direct IO or
                    // syscall whose blocks are not known (a flush, an empty layout).
                    self.threads
                        .get(tid)
                        .and_then(|t| t.dio.or(t.worker).or(t.loop_sync))
                        .filter(|&h| self.hios.get(h).is_some_and(|x| x.ranges.is_empty()))
                })
                .or_else(|| {
                    // Queued by the thread inside io_submit, at blocks no IO in flight
                    // has: the IO it submitted that the kernel began no direct IO for
                    // (a filesystem's buffered fallback, written back in the call), its
                    // blocks moved since (btrfs writes every rewrite elsewhere, and the
                    // layout has where the last one went).
                    let write = e.sub == REQ_OP_WRITE;
                    self.threads.get(tid)?.submitted.iter().copied().find(|&h| {
                        self.hios.get(h).is_some_and(|x| {
                            x.api == Api::Native && !x.has_kiocb && !x.job && x.aio_write == write
                        })
                    })
                })
                .or_else(|| {
                    // A block device given as a disk has no filesystem fsync event: its
                    // flush bio, where no thread's context claims it, is the first
                    // flush handed to the kernel (io_uring runs it in a worker).
                    (bytes == 0 && self.layout.is_image_node(dev))
                        .then(|| self.block_device_flush())
                        .flatten()
                })
                .or_else(|| {
                    // A read the thread's buffered read queued beyond its range: the
                    // kernel's readahead, issued in that read's syscall.
                    (e.sub == REQ_OP_READ)
                        .then(|| self.buffered_read_of(tid))
                        .flatten()
                })
                .or_else(|| {
                    // The journal commit a flush's fsync waits for, written by the
                    // journal's thread: its cache flush and its write through, on the
                    // device of the filesystem being synced.
                    (opf & (req_flags::PREFLUSH | req_flags::FUA) != 0 || bytes == 0)
                        .then(|| {
                            self.syncing
                                .iter()
                                .find(|&&(d, h)| d == dev && self.hios.get(h).is_some())
                        })
                        .flatten()
                        .map(|&(_, h)| h)
                })
                .map(BioOwner::Hio),
        };
        let owner = match owner {
            Some(o) => o,
            None => {
                let id = self.new_other(e.ts, dev, sector, bytes, e.sub);
                BioOwner::Other(id)
            }
        };
        if known.is_none()
            && let BioOwner::Hio(h) = owner
        {
            let ahead = self.note_bio_bytes(h, e.sub, dev, sector, sectors);
            // Only where a device below makes bios of its own (a loop device's worker,
            // device-mapper's clones): a partition's are the same bio, remapped.
            let synced = e.sub == REQ_OP_WRITE && sync_job == Some(h);
            if (synced || ahead) && self.layout.new_bios_below(dev) {
                self.owns_below(h, dev, sector, sectors, synced);
            }
        }
        // A partition's bios are queued as the partition's (at the disk's sectors).
        let disk = self.layout.whole_disk(dev);
        // (By the layout's chains only: below a device whose mapping it does not have,
        // bios go through devices it does not know, and only requests are surely on
        // the bottom.)
        let bottom = match owner {
            BioOwner::Hio(h) => self.hios.get(h).is_some_and(|x| {
                x.ranges.iter().any(|r| r.dev == disk && r.bottom)
                    || (x.ranges.is_empty() && self.layout.is_bottom_device(disk) == Some(true))
            }),
            BioOwner::Other(_) => false,
        };
        if let BioOwner::Hio(h) = owner
            && let Some(hio) = self.hios.get_mut(h)
        {
            if hio.first_q == 0 {
                hio.first_q_dev = disk;
            } else if bottom && disk != hio.first_q_dev {
                hio.bottom_q = min0(hio.bottom_q, e.ts);
            }
            hio.first_q = min0(hio.first_q, e.ts);
            if let Some((at, _)) = entered {
                hio.first_seen = min0(hio.first_seen, at);
            }
            hio.bios += 1;
            // Once per bio (not again where it is queued after a remap): its disk's
            // flush requests will carry it. A flush bio (no data) or a write flushing
            // the cache first makes one; a write through makes one more after the
            // write where the device has no FUA (left unclaimed where it has).
            let flushes = if bytes == 0 || opf & req_flags::PREFLUSH != 0 {
                1 + u8::from(bytes != 0 && opf & req_flags::FUA != 0)
            } else {
                u8::from(bytes != 0 && opf & req_flags::FUA != 0)
            };
            if known.is_none() && flushes > 0 {
                let disk = self.layout.whole_disk(dev);
                for _ in 0..flushes {
                    self.preflush.push((disk, h));
                }
            }
        }
        if known.is_none() {
            self.bios.insert(
                bio,
                BioEntry {
                    owner,
                    remapped: false,
                    dev,
                    sector,
                    sectors: u32::try_from(sectors).unwrap_or(u32::MAX),
                },
            );
        }
    }

    /// The first flush handed to the kernel not yet begun: it begins now.
    fn block_device_flush(&mut self) -> Option<Ref> {
        let i = self.sync_wait.iter().position(|&h| {
            self.hios
                .get(h)
                .is_some_and(|x| x.submit != 0 && !x.fs_begun)
        })?;
        let h = self.sync_wait.remove(i)?;
        if let Some(x) = self.hios.get_mut(h) {
            x.fs_begun = true;
            x.node_flush = true;
        }
        Some(h)
    }

    /// The buffered read thread `tid` is running (a thread-pool worker's syscall, or
    /// the last io_uring submission of the call it is in), if it is one.
    fn buffered_read_of(&self, tid: u32) -> Option<Ref> {
        let t = self.threads.get(tid)?;
        if t.dio.is_some() || !self.cfg.dio_probe {
            return None;
        }
        let h = t.worker.or_else(|| t.submitted.last().copied())?;
        let x = self.hios.get(h)?;
        let read = x
            .root
            .and_then(|r| self.roots.get(r))
            .is_some_and(|r| r.op == Op::Read);
        (read && !x.direct && !x.job).then_some(h)
    }

    /// A sync's write or a read's readahead at `dev`/`sector`, outside the host IO's
    /// own range, goes on below through the stack (a loop device's worker writes it to,
    /// or reads it from, its backing file): the host IO owns those ranges too, so the
    /// bios below are found by address like a direct IO's.
    ///
    /// Readahead's own device (`with_dev` false) stays out: those sectors are still
    /// readahead, not the read's, for the next read that finds them in the cache.
    fn owns_below(&mut self, h: Ref, dev: u32, sector: DeviceSector, sectors: u64, with_dev: bool) {
        let mut below = crate::layout::DevRanges::new();
        self.layout.stack_ranges(dev, sector, sectors, &mut below);
        if !with_dev {
            below.retain(|r| r.dev != dev);
        }
        if below.is_empty() {
            return;
        }
        // Re-indexed whole: a host IO's ranges sit side by side in the index.
        self.unindex_ranges(h);
        if let Some(x) = self.hios.get_mut(h) {
            x.ranges.extend(below);
        }
        self.index_ranges(h);
    }

    /// A bio of `h` queued (first, not moving down): what a sync wrote of image data,
    /// what a buffered read read ahead beyond its range. Whether it read ahead.
    fn note_bio_bytes(
        &mut self,
        h: Ref,
        op: u8,
        dev: u32,
        sector: DeviceSector,
        sectors: u64,
    ) -> bool {
        let layout = self.layout;
        let dio_probe = self.cfg.dio_probe;
        let Some(x) = self.hios.get_mut(h) else {
            return false;
        };
        let end = sector.saturating_add(sectors);
        // Counted where it enters the stack: a loop device's worker writes it again below.
        if x.sync
            && op == REQ_OP_WRITE
            && layout.is_top_device(dev)
            && layout.occupied(dev, sector, end)
        {
            x.synced_bytes = x.synced_bytes.saturating_add(sectors * 512);
            return false;
        }
        // Readahead is of image data: a filesystem's own metadata reads (extent blocks)
        // the read waits for are its, but are not readahead.
        if op != REQ_OP_READ
            || x.direct
            || x.job
            || !dio_probe
            || !layout.occupied(dev, sector, end)
        {
            return false;
        }
        // The part outside its own range on this device is readahead.
        let own = x
            .ranges
            .iter()
            .find(|r| r.dev == dev && r.start_sector < end && sector < r.end_sector)
            .map(|r| (r.start_sector, r.end_sector));
        let mut read_ahead = false;
        let mut ahead = |start: DeviceSector, stop: DeviceSector| {
            if stop > start {
                x.ra_bytes = x.ra_bytes.saturating_add((stop.0 - start.0) * 512);
                self.readahead.add(dev, start, stop);
                read_ahead = true;
            }
        };
        match own {
            Some((lo, hi)) => {
                ahead(sector, lo.min(end));
                ahead(hi.max(sector), end);
            }
            None => ahead(sector, end),
        }
        read_ahead
    }

    #[inline(never)]
    /// A block event with the devices of path disks replaced by their head's. A bio
    /// moving from a bottom disk to a device the layout does not know is moving to one
    /// of its paths: an NVMe multipath head (bio-based, no requests of its own)
    /// resubmits each bio to the hidden disk of a path, where its request is issued.
    pub(super) fn on_head_disk(&mut self, e: &RawEvent) -> RawEvent {
        let mut x = *e;
        let (hi, lo) = ((x.a[2] >> 32) as u32, x.a[2] as u32);
        if e.kind == EventKind::BioRemap as u8
            && hi != lo
            && self.layout.is_bottom_device(lo) == Some(true)
            && !self.layout.stops_chain(lo)
            && !self.layout.knows_device(hi)
        {
            self.path_disks.insert(hi, lo);
        }
        let head = |d: u32| self.path_disks.get(&d).copied().unwrap_or(d);
        x.a[2] = (u64::from(head(hi)) << 32) | u64::from(lo);
        if e.kind == EventKind::BioRemap as u8 {
            x.a[2] = (x.a[2] & !0xffff_ffff) | u64::from(head(lo));
        }
        x
    }

    pub(super) fn bio_remap(&mut self, e: &RawEvent) {
        let old_dev = e.a[2] as u32;
        let (new_sector, old_sector) = (DeviceSector(e.a[1]), DeviceSector(e.a[3]));
        match self.bios.get_mut(&e.a[0]) {
            // Queued where it comes from (a stacked device's bio moving down), or, as
            // some kernels trace a partition's, at the sector it goes to.
            // (A partition's bio is queued as the partition's, at its disk's sectors, and
            // may move on from the disk: an NVMe head's to its path.)
            Some(b)
                if (b.dev == old_dev || self.layout.whole_disk(b.dev) == old_dev)
                    && (b.sector == old_sector || b.sector == new_sector) =>
            {
                b.remapped = true
            }
            // Remapped again before it was queued (a clone followed from the device
            // above, now remapped from its partition): still moving down.
            Some(b) if b.remapped => {}
            // A bio not queued where it comes from is a new one at a freed bio's
            // address (a partition remaps before the bio is first queued); the entry
            // left by the old one (merged, its end never seen) is over.
            Some(_) => {
                self.bios.remove(&e.a[0]);
                if !self.adopt_clone(e) {
                    self.note_entered(e);
                }
            }
            None => {
                if !self.adopt_clone(e) {
                    self.note_entered(e);
                }
            }
        }
    }

    /// A new bio remapped from a device whose mapping the layout does not have (a dm
    /// thin volume, a cache, md RAID5 or 10, or a device below one of them): a clone of
    /// the bio in flight there that covers the sector it comes from, and its IO's. It
    /// is queued below as that bio moving down.
    fn adopt_clone(&mut self, e: &RawEvent) -> bool {
        let (old_dev, new_dev) = (e.a[2] as u32, (e.a[2] >> 32) as u32);
        // Only from where the layout's chains end or do not reach.
        let unmapped = self.layout.stops_chain(old_dev) || !self.layout.on_a_chain(old_dev);
        if old_dev == new_dev || !unmapped {
            return false;
        }
        let old_sector = e.a[3];
        let parent = self.bios.values().find(|b| {
            b.dev == old_dev
                && b.sector.0 <= old_sector
                && old_sector < b.sector.0.saturating_add(u64::from(b.sectors.max(1)))
        });
        let Some(owner) = parent.map(|b| b.owner) else {
            return false;
        };
        self.bios.insert(
            e.a[0],
            BioEntry {
                owner,
                remapped: true,
                dev: old_dev,
                sector: DeviceSector(old_sector),
                sectors: 1,
            },
        );
        true
    }

    /// A bio remapped from its partition before it was queued: its first sighting in
    /// the block layer, on the submitting thread, before block-cgroup throttling
    /// (`Boundary::Entered`). Kept until it is queued; a bio never queued (an error)
    /// leaves its entry, so old entries go once there are many.
    fn note_entered(&mut self, e: &RawEvent) {
        const KEEP: usize = 1 << 16;
        // Only a partition's remap to its disk's sectors (the bio stays the partition's:
        // both devices the event names are the partition): device-mapper remaps its
        // own clones, queued on its device first, after the throttle there.
        let (old_dev, new_dev) = (e.a[2] as u32, (e.a[2] >> 32) as u32);
        if old_dev != new_dev || self.layout.whole_disk(old_dev) == old_dev {
            return;
        }
        if self.entered.len() >= KEEP {
            let horizon = e.ts.saturating_sub(super::state::STALE_NS);
            self.entered.retain(|_, (ts, _)| *ts >= horizon);
            if self.entered.len() >= KEEP {
                self.entered.clear();
            }
        }
        self.entered.insert(e.a[0], (e.ts, e.tid));
    }

    #[inline(never)]
    pub(super) fn bio_split(&mut self, e: &RawEvent) {
        if let Some(BioOwner::Hio(h)) = self.bios.get(&e.a[0]).map(|b| b.owner)
            && let Some(h) = self.hios.get_mut(h)
        {
            h.flags |= flags::BIO_SPLIT;
        }
    }

    pub(super) fn bio_complete(&mut self, e: &RawEvent) {
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
    pub(super) fn find_adjacent_rq(
        &self,
        dev: u32,
        op: u8,
        sector: DeviceSector,
        sectors: u64,
        side: u64,
    ) -> Option<u64> {
        self.reqs.iter().find_map(|(&k, r)| {
            let back = side != 2 && r.sector.saturating_add(r.sectors) == sector;
            let front = side != 1 && sector.saturating_add(sectors) == r.sector;
            (r.dev == dev && r.op == op && !r.started && (back || front)).then_some(k)
        })
    }

    pub(super) fn bio_merge(&mut self, e: &RawEvent) {
        let [bio, sector, a2, side] = e.a;
        let sector = DeviceSector(sector);
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

    pub(super) fn rq_start(&mut self, e: &RawEvent) {
        let [rq, sector, a2, first_bio] = e.a;
        let sector = DeviceSector(sector);
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
                    old.issued = min0(old.issued, e.ts);
                    Self::note_issue(&mut self.hios, self.layout, old, e.ts);
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
                    // One entry of each host IO waiting on this device.
                    let hios = &self.hios;
                    self.preflush.retain(|&(d, h)| {
                        let live = hios.get(h).is_some();
                        if live && d == dev && !owners.contains(&h) {
                            owners.push(h);
                            return false;
                        }
                        live
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
                    served: false,
                    issued: 0,
                },
            );
            if !self.plugged.is_empty() {
                self.attach_plugged(rq);
            }
        }
        if issue && let Some(r) = self.reqs.get_mut(&rq) {
            r.started = true;
            r.issued = min0(r.issued, e.ts);
            Self::note_issue(&mut self.hios, self.layout, r, e.ts);
        }
    }

    /// A request went to its driver: the host IOs it carries were issued then.
    pub(super) fn note_issue(hios: &mut Slab<Hio>, layout: &Layout, r: &Req, ts: u64) {
        for &h in &r.owners {
            if let Some(x) = hios.get_mut(h) {
                x.issue_any = min0(x.issue_any, ts);
                match Self::is_bottom(x, layout, r.dev) {
                    Some(true) => {
                        x.issue_bottom = min0(x.issue_bottom, ts);
                        x.bottom_dev = r.dev;
                    }
                    // Blocks not known (a flush, an empty layout): its device is the
                    // one its requests go to.
                    None => x.bottom_dev = r.dev,
                    Some(false) => {
                        if Self::stops_at_loop(x, layout, r.dev) {
                            x.loop_issue = min0(x.loop_issue, ts);
                        }
                    }
                }
            }
        }
    }

    /// A request just inserted takes the bios that merged into it while it was plugged:
    /// they lie inside its sectors on its device. Their host IOs wait for it as if the
    /// merge had found it, and are marked merged.
    pub(super) fn attach_plugged(&mut self, k: u64) {
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

    pub(super) fn rq_complete(&mut self, e: &RawEvent) {
        let Some(r) = self.reqs.remove(&e.a[0]) else {
            return;
        };
        let mut finished = Vec::new();
        let mut fill = r.other.is_some();
        for &h in &r.owners {
            if let Some(x) = self.hios.get_mut(h) {
                fill |= !x.direct;
                x.done_any = x.done_any.max(e.ts);
                match Self::is_bottom(x, self.layout, r.dev) {
                    Some(true) => x.done_bottom = x.done_bottom.max(e.ts),
                    Some(false) if Self::stops_at_loop(x, self.layout, r.dev) => {
                        x.loop_done = x.loop_done.max(e.ts)
                    }
                    _ => {}
                }
                x.open_rqs = x.open_rqs.saturating_sub(1);
                // linux-aio: the kernel's completion runs in IRQ context, outside the
                // traced process, so the last block completion is the host's. A block
                // device given as the disk does direct IO without iomap (no kiocb
                // event): its bios say it began. (A flush ends with its fsync, unless
                // no filesystem event shows it: a block device's.)
                if x.open_rqs == 0
                    && x.api == Api::Native
                    && (x.has_kiocb || (x.bios > 0 && (!x.job || x.node_flush)))
                {
                    finished.push(h);
                }
            }
        }
        // Fills are looked for only where host IO can be buffered.
        if self.cfg.dio_probe
            && fill
            && r.op == REQ_OP_READ
            && self.layout.is_bottom_device(r.dev) == Some(true)
        {
            if self.fills.len() >= RECENT_FILLS {
                self.fills.pop_front();
            }
            self.fills.push_back(Fill {
                dev: r.dev,
                start: r.sector,
                end: r.sector.saturating_add(r.sectors),
                issued: if r.issued != 0 { r.issued } else { r.since },
                done: e.ts,
            });
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

    pub(super) fn rq_merge(&mut self, e: &RawEvent) {
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
}
