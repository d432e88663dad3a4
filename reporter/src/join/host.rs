//! The host kernel's side of a host IO: thread-pool workers' syscalls, linux-aio and
//! io_uring submissions and completions, the filesystem's direct IO and fsync. A host
//! IO is made by a QEMU probe (or here, when none announced it) and ends in
//! [`super::finish`].

use super::row::{Op, Sink, Source, flags};
use super::slab::Ref;
use super::state::{Api, Hio, HioKind, Join, QiovBind, min0};
use crate::layout::DevRanges;
use viopath_layouts::HostFileOffset;
use viopath_probes::abi::{EventKind, RawEvent, qemu_probe as q};

/// The kernel's REQ_OP_FLUSH: the operation of a device's flush request.
const REQ_OP_FLUSH: u8 = 2;

impl<S: Sink> Join<'_, S> {
    /// A file-posix request: a host IO is coming.
    pub(super) fn new_file_io(
        &mut self,
        e: &RawEvent,
        qiov: u64,
        off: HostFileOffset,
        bytes: u64,
    ) -> Ref {
        let bdrv = self.threads.at(e.tid, e.ts).last_bdrv.take();
        let bind = self.qiov.get(&qiov).copied().or_else(|| {
            // A slice of the block layer's qiov (this IO covers part of it).
            bdrv.filter(|&(_, o, n)| o == off.0 && n == bytes)
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

    /// The guest request a host job without data (flush, discard) made on `tid` serves:
    /// QEMU's block layer has no probe for these, so it is the earliest virtio request
    /// of that thread still in flight that has no block IO and no such job yet, the one
    /// `blk_aio_flush` named first: virtio-blk submits the writes popped before a
    /// flush first, but a read popped before it in the same batch may get its block IO
    /// only after the flush's job.
    ///
    /// Where no virtio layer was traced, a job with a range (`range`: the job's file
    /// offset and length) belongs to a QEMU block request writing zeroes made on the
    /// same thread: the one at that range of a raw image, or, through qcow2 (which maps
    /// the range, and punches out clusters the write frees), the request qcow2 is
    /// serving on that thread.
    pub(super) fn job_root(&self, tid: u32, range: Option<(HostFileOffset, u64)>) -> Option<Ref> {
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
                        // (A SCSI read or write has no range until its DMA, but
                        // its data is its only host IO.)
                        Source::Virtio => {
                            (x.offset.is_none()
                                && !matches!(x.op, Op::Read | Op::Write | Op::Command))
                                || x.nodata
                        }
                        Source::QemuBlock => {
                            x.nodata
                                && range.is_some_and(|(off, len)| {
                                    if x.qcow2 {
                                        serving == Some(r)
                                    } else {
                                        // A raw image: its file offsets are the
                                        // guest's disk offsets.
                                        x.offset.map(|o| o.0) == Some(off.0) && x.bytes == len
                                    }
                                })
                        }
                    }
            })
            // A job with a range goes first to the request known to write zeroes, one
            // without to the request known to flush (`blk_aio_flush` said so).
            .min_by_key(|(_, x)| {
                let known = match range {
                    Some(_) => x.nodata,
                    None => x.op == Op::Flush,
                };
                (!known, x.id)
            })
            .map(|(r, _)| r)
    }

    /// A flush job no request without data waits for, made on `tid` after a write's
    /// data reached the host: QEMU syncing the image for that write. Cache modes
    /// writethrough and directsync make the write's completion wait for it (QEMU
    /// emulates FUA by a flush once the data is written; only asked where the trace
    /// says some disk ran so). The earliest such write of the thread gets it.
    pub(super) fn synced_write(&self, tid: u32) -> Option<Ref> {
        self.active
            .iter()
            .filter_map(|&r| self.roots.get(r).map(|x| (r, x)))
            .filter(|(_, x)| {
                x.tid == tid
                    && x.op == Op::Write
                    && !x.completed
                    && !x.host_job
                    && x.data_hios > 0
                    && x.open_hios == 0
            })
            .min_by_key(|(_, x)| x.id)
            .map(|(r, _)| r)
    }

    /// A linux-aio or io_uring submission names its descriptor (0 in traces recorded
    /// before it did): a job without data takes the disk the descriptor is known for;
    /// one with data teaches the descriptor its disk once the kernel names its file.
    pub(super) fn set_fd(&mut self, h: Ref, fd: u64) {
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
    pub(super) fn fd_names_disks(&mut self, h: Ref, fd: u64) {
        if let Some(&d) = self.fd_disks.get(&fd)
            && let Some(x) = self.hios.get_mut(h)
        {
            x.disks = d;
        }
    }

    /// A host job without data made on `e.tid` (a flush, a discard, a write of zeroes):
    /// the host side of a guest request (see [`Join::job_root`]), or QEMU's own.
    pub(super) fn job_io(
        &mut self,
        e: &RawEvent,
        api: Api,
        range: Option<(HostFileOffset, u64)>,
    ) -> Ref {
        let mut root = self.job_root(e.tid, range);
        let mut synced = false;
        if root.is_none() && range.is_none() && self.cfg.synced_writes {
            root = self.synced_write(e.tid);
            synced = root.is_some();
        }
        if let Some(r) = root
            && let Some(x) = self.roots.get_mut(r)
        {
            x.host_job = true;
            if synced {
                x.flags |= flags::SYNCED;
            }
        }
        let kind = if root.is_some() {
            HioKind::Data
        } else {
            HioKind::Internal
        };
        let h = self.add_hio(root, kind, HostFileOffset(0), 0, e.ts);
        if let Some(hio) = self.hios.get_mut(h) {
            hio.api = api;
            hio.job = true;
            hio.sync = range.is_none();
        }
        // A write's own sync is more of its host part, not another piece of its data.
        if synced && let Some(x) = root.and_then(|r| self.roots.get_mut(r)) {
            x.data_hios = x.data_hios.saturating_sub(1);
            if x.data_hios <= 1 {
                x.flags &= !flags::SPLIT;
            }
        }
        h
    }

    /// A traced thread is about to sleep in the dirty-page throttle: the buffered
    /// write it is running (a thread-pool worker's, or the io_uring submission it is
    /// in) waits that long more.
    pub(super) fn dirty_throttle(&mut self, e: &RawEvent) {
        let pause = e.a[0] as i64;
        let Some(t) = self.threads.get(e.tid) else {
            return;
        };
        let Some(h) = t.worker.or_else(|| t.submitted.last().copied()) else {
            return;
        };
        if let Some(x) = self.hios.get_mut(h) {
            x.dirty_pauses += 1;
            x.dirty_pause_ticks = x.dirty_pause_ticks.saturating_add(pause.max(0) as u64);
        }
    }

    /// The host IO a submission probe (thread pool, linux-aio, io_uring) refers to:
    /// the file-posix request just made on this thread, or a new one from the qiov.
    pub(super) fn file_io_for(
        &mut self,
        e: &RawEvent,
        off: HostFileOffset,
        bytes: u64,
        api: Api,
    ) -> Ref {
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

    pub(super) fn sys_enter(&mut self, e: &RawEvent) {
        match e.sub {
            1..=6 => {
                let h = match self.threads.get(e.tid).and_then(|t| t.worker) {
                    Some(h) => h,
                    None => {
                        // No probe said which job this worker runs (a stripped QEMU has
                        // no `handle_aiocb_rw`): find the file IO by offset and length,
                        // or for a vectored call (whose count is of iovecs) by offset
                        // and descriptor.
                        let vectored = e.sub >= 3;
                        let found = self.earliest_in_flight(|x| {
                            x.submit == 0
                                && x.offset == HostFileOffset(e.a[1])
                                && if vectored {
                                    x.fd == e.a[0]
                                } else {
                                    x.bytes == e.a[2]
                                }
                                && matches!(x.api, Api::Unknown | Api::Threads)
                        });
                        let h = found.unwrap_or_else(|| {
                            let h = self.add_hio(
                                None,
                                HioKind::Syscall,
                                HostFileOffset(e.a[1]),
                                e.a[2],
                                e.ts,
                            );
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
    pub(super) fn falloc_retry(&mut self, e: &RawEvent, key: [u64; 3]) -> Option<Ref> {
        let (k, r) = self.threads.get(e.tid)?.falloc_job?;
        if k != key || self.roots.get(r).is_none_or(|x| x.completed) {
            return None;
        }
        let h = self.add_hio(Some(r), HioKind::Data, HostFileOffset(0), 0, e.ts);
        if let Some(root) = self.roots.get_mut(r) {
            root.data_hios -= 1;
            if root.data_hios <= 1 {
                root.flags &= !flags::SPLIT;
            }
        }
        if let Some(x) = self.hios.get_mut(h) {
            x.api = Api::Threads;
            x.job = true;
            x.offset = HostFileOffset(key[1]);
            x.bytes = key[2];
        }
        self.fd_names_disks(h, key[0]);
        Some(h)
    }

    /// Thread `e.tid` entered the syscall that runs thread-pool job `job`, or, with no
    /// job waiting for it, one of QEMU's own (preallocation, image growth: no
    /// request's) of `bytes`. The syscall's return ends it.
    pub(super) fn worker_runs(&mut self, e: &RawEvent, job: Option<Ref>, bytes: u64) {
        let h = match job.filter(|&h| self.hios.get(h).is_some()) {
            Some(h) => h,
            None => {
                let h = self.add_hio(None, HioKind::Syscall, HostFileOffset(0), 0, e.ts);
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
    pub(super) fn fs_sync(&mut self, e: &RawEvent) {
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
        let fs_dev = e.a[1] as u32;
        // Only image files' (any file's if the layout does not know them by inode).
        let disks = self.layout.disks_of_inode(ino);
        if disks.is_none() && self.layout.files_have_inodes() && !self.layout.is_empty() {
            self.backing_sync(e, fs_dev);
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
            if !self.syncing.contains(&(fs_dev, h)) {
                self.syncing.push((fs_dev, h));
            }
        } else if let Some(h) = mine {
            self.syncing.retain(|&(_, x)| x != h);
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

    /// An fsync of a file that is no image's, on a device under an image's stack: a
    /// loop device's worker carrying out a flush request by syncing its backing file.
    /// Its start takes the earliest such flush not yet served (issued on a device above
    /// the one the file lives on); the flush bios it queues below are that flush's
    /// owners' (see bio_queue), until it ends.
    fn backing_sync(&mut self, e: &RawEvent, fs_dev: u32) {
        if e.sub == 1 {
            if let Some(t) = self.threads.get_mut(e.tid) {
                t.loop_sync = None;
            }
            return;
        }
        if e.sub != 0 {
            return;
        }
        let layout = self.layout;
        let found = self
            .reqs
            .iter()
            .filter(|(_, r)| {
                r.op == REQ_OP_FLUSH
                    && r.started
                    && !r.served
                    && !r.owners.is_empty()
                    && layout.is_below(r.dev, fs_dev)
            })
            .min_by_key(|(_, r)| r.since)
            .map(|(&k, _)| k);
        if let Some(k) = found
            && let Some(r) = self.reqs.get_mut(&k)
        {
            r.served = true;
            let owner = r.owners[0];
            self.threads.at(e.tid, e.ts).loop_sync = Some(owner);
        }
    }

    pub(super) fn sys_exit(&mut self, e: &RawEvent) {
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

    pub(super) fn uring_submit(&mut self, e: &RawEvent) {
        // This VM's submissions in order (the others' wait for their own rings).
        let vm = self.cur_vm;
        let h = loop {
            let mine = self
                .uring_wait
                .iter()
                .position(|&h| self.hios.get(h).is_none_or(|x| x.vm == vm));
            match mine.and_then(|i| self.uring_wait.remove(i)) {
                Some(h) if self.hios.get(h).is_some() => break h,
                Some(_) => continue,
                None => {
                    let h = self.add_hio(None, HioKind::Syscall, HostFileOffset(0), 0, e.ts);
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

    #[inline(never)]
    pub(super) fn uring_complete(&mut self, e: &RawEvent) {
        if let Some(h) = self.user_data.remove(&e.a[0]) {
            self.hio_done(h, e.ts);
        }
    }

    pub(super) fn dio_begin(&mut self, e: &RawEvent) {
        let [kiocb, pos, count, ino] = e.a;
        let pos = HostFileOffset(pos);
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
            // iomap's direct IO, not the filesystem's entry (which buffered IO passes
            // too, where fentry is allowed).
            hio.direct |= e.kind == EventKind::DioBegin as u8;
            if e.kind == EventKind::FsEnter as u8 {
                hio.fs_entered = min0(hio.fs_entered, e.ts);
            }
            hio.submit = min0(hio.submit, e.ts);
            if hio.ranges.is_empty() && hio.bytes == 0 {
                hio.offset = pos;
                hio.bytes = count;
                self.layout.dev_ranges(hio.vm, pos, count, &mut hio.ranges);
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
                    .dev_ranges_of_inode(hio.vm, ino, hio.offset, hio.bytes, &mut ranges)
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

    /// The filesystem's read or write returned (fexit: with its kiocb; a kretprobe:
    /// without, so the thread's direct IO). A linux-aio IO it did not queue (its return
    /// is not -EIOCBQUEUED: a read of holes or past the end, with no bio; a write the
    /// filesystem waited for; an error) is over now, where no iomap completion event
    /// says so (kernels before iomap's tracepoints). One it queued ends with its last
    /// block request.
    #[inline(never)]
    pub(super) fn fs_exit(&mut self, e: &RawEvent) {
        const EIOCBQUEUED: i64 = -529;
        if e.a[1] as i64 == EIOCBQUEUED {
            return;
        }
        let h = if e.a[0] != 0 {
            self.kiocb.get(&e.a[0]).copied()
        } else {
            self.threads.get(e.tid).and_then(|t| t.dio)
        };
        let Some(h) = h else { return };
        if self
            .hios
            .get(h)
            .is_some_and(|x| x.api == Api::Native && x.has_kiocb && x.open_rqs == 0)
        {
            if e.a[0] != 0 {
                self.kiocb.remove(&e.a[0]);
            }
            self.hio_done(h, e.ts);
        }
    }

    #[inline(never)]
    pub(super) fn dio_complete(&mut self, e: &RawEvent) {
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
    pub(super) fn dio_map(&mut self, e: &RawEvent) {
        // iomap type HOLE (0) or UNWRITTEN (3) under a read: the filesystem answers
        // with zeros, no bio follows for that range. (A write there allocates or
        // converts the extent and its data goes to the device.)
        if matches!(e.sub, 0 | 3)
            && let Some(h) = self.threads.get(e.tid).and_then(|t| t.dio)
            && let Some(hio) = self.hios.get(h)
            && hio
                .root
                .and_then(|r| self.roots.get(r))
                .is_some_and(|r| r.op == Op::Read)
            && let Some(hio) = self.hios.get_mut(h)
        {
            hio.flags |= flags::FS_ZEROS;
        }
    }
}
