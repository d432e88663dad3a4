//! The ring buffers: one per CPU shard, one epoll set over them all, drained into the
//! trace writer, keeping only events inside the recording's window.

use aya::maps::RingBuf;
use std::io;
use std::os::fd::AsRawFd;
use viopath_probes::abi::RawEvent;
use viopath_probes::trace::TraceWriter;

/// The monotonic-clock span the trace keeps, and how many events fell outside it.
pub(super) struct Window {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) outside: u64,
}

pub(super) fn drain<T: std::borrow::Borrow<aya::maps::MapData>>(
    rings: &mut [RingBuf<T>],
    writer: &mut TraceWriter<impl io::Write>,
    counts: &mut [u64],
    window: &mut Window,
) -> io::Result<()> {
    for ring in rings {
        while let Some(item) = ring.next() {
            if let Some(e) = RawEvent::from_bytes(&item) {
                if e.ts < window.start || e.ts > window.end {
                    window.outside += 1;
                    continue;
                }
                counts[(e.kind as usize) << 8 | e.sub as usize] += 1;
                writer.push(&e)?;
            }
        }
    }
    Ok(())
}

/// Bytes per ring-buffer shard: ~170k events each, a third of a second of a
/// one-CPU flood at full speed.
pub(super) const RING_BYTES: u32 = 8 << 20;

/// An epoll instance watching every ring-buffer shard, so one readiness source wakes
/// the reader whichever shard has data.
pub(super) struct RingSet(std::os::fd::OwnedFd);

impl RingSet {
    pub(super) fn new<T: std::borrow::Borrow<aya::maps::MapData>>(
        rings: &[RingBuf<T>],
    ) -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: epoll_create1 returns a new fd or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new, valid fd we own.
        let set = RingSet(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        for (i, r) in rings.iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: both fds are valid; ev lives across the call.
            if unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, r.as_raw_fd(), &mut ev) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(set)
    }

    /// Consume the pending readiness (the shards themselves were drained).
    pub(super) fn clear(&mut self) {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 8];
        // SAFETY: evs has room for 8 events; timeout 0 never blocks.
        unsafe { libc::epoll_wait(self.0.as_raw_fd(), evs.as_mut_ptr(), 8, 0) };
    }
}

impl AsRawFd for RingSet {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}
