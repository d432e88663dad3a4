//! Reading a trace: memory-mapped, every chunk validated, events handed out in
//! timestamp order with memory bounded by how far apart the recorder wrote them.
//!
//! The join needs the header, layout snapshot, losses and end summary before the first
//! event, and the recorder writes all but the header at the end. A trace that ended
//! properly gives them from its tail (found back from the end of the file, each chunk
//! checked by length and checksum), and its event chunks are walked as they are read:
//! one pass over the file, so a trace on storage is read while it is joined. Any other
//! trace (interrupted, truncated, damaged at the end) takes two passes: the first walks
//! every chunk header (and checksums the JSON chunks), the second streams the event
//! chunks, checksumming each before use. A damaged or truncated file is read up to its
//! last good chunk and the damage is reported, never hidden. [`Trace::read_ahead`], on
//! a thread of its own, keeps the bytes ahead of the decoding in the page cache where
//! that pays ([`free_pages_go_to_host`]).

use memmap2::{Advice, Mmap, UncheckedAdvice};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use viopath_layouts::snapshot::Snapshot;
use viopath_probes::abi::RawEvent;
use viopath_probes::chunks::{self, End, Header, Losses};
use viopath_probes::trace::{
    CHUNK_HEADER_SIZE, ChunkKind, Chunks, FILE_EVENT_SIZE, TraceError, chunk_ending_at,
    chunks_deferred, chunks_deferred_between,
};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    // The cause is the error's source: `{:#}` at the binary prints it after this.
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a viopath trace (no VIOPATH magic)")]
    NotATrace { path: PathBuf },
    #[error("{path} is a directory, not a trace file")]
    Directory { path: PathBuf },
    #[error("{path}: no header chunk: {why}")]
    NoHeader { path: PathBuf, why: String },
    #[error("{path}: trace format {found} (this viopath reads format 1, event ABI 1)")]
    Version { path: PathBuf, found: String },
}

/// What a JSON chunk that failed its checksum costs the report.
fn damaged_chunk_text(kind: ChunkKind, problem: &str) -> String {
    let costs = match kind {
        ChunkKind::Layout => {
            "no layout snapshot: block IO is joined only where the submitting thread shows it (--image rebuilds it)"
        }
        ChunkKind::End => {
            "no recording summary: the VMs, open files and cache modes it listed are unknown"
        }
        ChunkKind::Losses => "what the kernel lost while recording is unknown",
        ChunkKind::Header => "a header chunk is unreadable",
        ChunkKind::Events => "events are unreadable",
    };
    format!("the {kind:?} chunk is damaged ({problem}): {costs}")
}

/// Where and why reading stopped before the end of the file.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset of the first chunk not read.
    pub offset: u64,
    pub problem: String,
    /// Bytes from there to the end of the file, unread.
    pub bytes_unread: u64,
}

/// What the trace says about itself, and what was lost before it reached us.
#[derive(Debug, Clone, Serialize)]
pub struct TraceInfo {
    pub path: PathBuf,
    pub file_bytes: u64,
    /// Event records in chunks that passed their checks; for a trace read tail first
    /// (see the module), an upper bound from the bytes between header and tail, as its
    /// event chunks are only walked while they are read.
    pub events_in_file: u64,
    /// Events the kernel had no ring-buffer room for (the last Losses chunk).
    pub events_lost_in_kernel: u64,
    /// The recording ended with an End chunk (else it was interrupted).
    pub complete: bool,
    /// Set when the file is damaged or truncated.
    pub damage: Option<Damage>,
    /// Event records in chunks after the damage that could not be trusted (an estimate
    /// from the unread bytes, at 44 bytes an event).
    pub events_unread_estimate: u64,
    /// Fields and entries of the JSON chunks (header, losses, layout, end) left out
    /// because they had the wrong shape.
    #[serde(skip_serializing_if = "is_zero")]
    pub json_entries_skipped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A JSON chunk as its type: fields and entries of the wrong shape are skipped and
/// counted in `info`; a chunk that is not an object of that shape at all reads as the
/// type's default, counted once.
fn typed<T: DeserializeOwned + Default>(info: &mut TraceInfo, v: &Value) -> T {
    match chunks::parse::<T>(v) {
        Ok(p) => {
            info.json_entries_skipped += p.skipped as u64;
            p.value
        }
        Err(_) => {
            info.json_entries_skipped += 1;
            T::default()
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct EventChunk {
    offset: usize,
    len: usize,
    base: u64,
    crc: u32,
}

/// An open trace.
pub struct Trace {
    /// Kept for [`Trace::read_ahead`], which reads with `pread`, not through the map.
    file: File,
    map: Mmap,
    pub info: TraceInfo,
    /// The header chunk (the first; a trace without one is refused).
    pub header: Header,
    pub layout: Option<Snapshot>,
    pub end: Option<End>,
    pub losses: Option<Losses>,
    /// Whether a header chunk was found.
    has_header: bool,
    chunks: Vec<EventChunk>,
    /// Read tail first: the event chunks lie in these bytes, walked as they are read.
    lazy: Option<(usize, usize)>,
}

impl Trace {
    pub fn open(path: &Path) -> Result<Trace, ReadError> {
        let io = |source| ReadError::Io {
            path: path.to_owned(),
            source,
        };
        let f = File::open(path).map_err(io)?;
        if f.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(ReadError::Directory {
                path: path.to_owned(),
            });
        }
        // SAFETY: the map is read-only and private; a trace being appended to while we
        // read only ever grows, and everything read is bounds-checked.
        let map = unsafe { Mmap::map(&f) }.map_err(io)?;
        let _ = map.advise(Advice::Sequential);
        let mut t = Trace {
            info: TraceInfo {
                path: path.to_owned(),
                file_bytes: map.len() as u64,
                events_in_file: 0,
                events_lost_in_kernel: 0,
                complete: false,
                damage: None,
                events_unread_estimate: 0,
                json_entries_skipped: 0,
            },
            map,
            file: f,
            header: Header::default(),
            has_header: false,
            layout: None,
            end: None,
            losses: None,
            chunks: Vec::new(),
            lazy: None,
        };
        if !t.open_tail_first() {
            t.scan()?;
        }
        if !t.has_header {
            return Err(ReadError::NoHeader {
                path: path.to_owned(),
                why: t
                    .info
                    .damage
                    .as_ref()
                    .map(|d| format!("{} at byte {}", d.problem, d.offset))
                    .unwrap_or_else(|| "the first chunk is not a header".into()),
            });
        }
        let (format, abi) = (t.header.format, t.header.abi);
        if format != Some(1) || abi != Some(1) {
            return Err(ReadError::Version {
                path: path.to_owned(),
                found: format!("{format:?}, ABI {abi:?}"),
            });
        }
        Ok(t)
    }

    fn damage(&mut self, offset: usize, problem: String) {
        let unread = (self.map.len() - offset) as u64;
        self.info.damage = Some(Damage {
            offset: offset as u64,
            problem,
            bytes_unread: unread,
        });
        self.info.events_unread_estimate = unread / FILE_EVENT_SIZE as u64;
    }

    /// A trace that ended properly: its header from the front, the Losses, Layout and
    /// End chunks back from the end, and the bytes in between left for the event pass
    /// to walk. False (nothing changed) when the trace does not end with a good End
    /// chunk preceded by its tail, or does not start with a good header.
    fn open_tail_first(&mut self) -> bool {
        let data: &[u8] = &self.map;
        let Ok(mut it) = chunks_deferred(data) else {
            return false;
        };
        let header = match it.next() {
            Some(Ok(c)) if c.kind == ChunkKind::Header => c,
            _ => return false,
        };
        let Ok(header_json) = header.json() else {
            return false;
        };
        let from = it.position();
        let mut end = data.len();
        let (mut layout, mut losses, mut end_json) = (None, None, None);
        while let Some(c) = chunk_ending_at(data, end, from) {
            match c.kind {
                ChunkKind::End if end_json.is_none() && end == data.len() => {}
                ChunkKind::Layout if layout.is_none() && end_json.is_some() => {}
                ChunkKind::Losses if losses.is_none() && end_json.is_some() => {}
                _ => break,
            }
            let Ok(v) = c.json() else {
                return false;
            };
            match c.kind {
                ChunkKind::End => end_json = Some(v),
                ChunkKind::Layout => layout = Some(v),
                _ => losses = Some(v),
            }
            end = c.offset as usize;
        }
        let Some(end_json) = end_json else {
            return false;
        };
        // A null header (JSON `null`) says nothing: as if there were none.
        if !header_json.is_null() {
            self.header = typed(&mut self.info, &header_json);
            self.has_header = true;
        }
        self.info.complete = true;
        self.end = Some(typed(&mut self.info, &end_json));
        self.layout = layout.map(|v| typed(&mut self.info, &v));
        if let Some(v) = losses {
            let losses: Losses = typed(&mut self.info, &v);
            self.info.events_lost_in_kernel = losses.total;
            self.losses = Some(losses);
        }
        self.info.events_in_file = (end - from) as u64 / FILE_EVENT_SIZE as u64;
        self.lazy = Some((from, end));
        // Only the header's and the tail's pages were touched; drop them as the walk does.
        release(&self.map, 0, from & !4095);
        release(&self.map, end, self.map.len());
        true
    }

    /// Pass 1: chunk headers, JSON chunks (event payloads are checksummed in pass 2).
    fn scan(&mut self) -> Result<(), ReadError> {
        let data: &[u8] = &self.map;
        let Ok(mut it) = chunks_deferred(data) else {
            return Err(ReadError::NotATrace {
                path: self.info.path.clone(),
            });
        };
        let mut first = true;
        let mut damage = None;
        // Touching a chunk header maps the cached pages around it too (fault-around, a
        // whole large folio on a cold read): on a 4 GB trace that is the whole file unless
        // the walked part is unmapped as the walk goes.
        let mut released = 0;
        for c in &mut it {
            if let Ok(c) = &c
                && c.offset as usize >= released + RELEASE_EVERY
            {
                let to = c.offset as usize & !4095;
                release(&self.map, released, to);
                released = to;
            }
            let c = match c {
                Ok(c) => c,
                Err(TraceError::BadChunk { offset, problem }) => {
                    damage = Some((offset as usize, problem));
                    break;
                }
                // A damaged JSON chunk costs what it held, not the events after it.
                Err(TraceError::DamagedChunk {
                    offset,
                    kind,
                    problem,
                }) => {
                    if self.info.damage.is_none() {
                        self.info.damage = Some(Damage {
                            offset,
                            problem: damaged_chunk_text(kind, &problem),
                            bytes_unread: 0,
                        });
                    }
                    continue;
                }
                Err(TraceError::BadMagic) => unreachable!("checked when opened"),
            };
            if first && c.kind != ChunkKind::Header {
                damage = Some((c.offset as usize, "the first chunk is not a header".into()));
                break;
            }
            first = false;
            if c.kind == ChunkKind::Events {
                self.chunks.push(EventChunk {
                    offset: c.offset as usize + CHUNK_HEADER_SIZE,
                    len: c.payload.len(),
                    base: c.base,
                    crc: c.crc,
                });
                continue;
            }
            let v = match c.json() {
                Ok(v) => v,
                Err(TraceError::BadChunk { offset, problem }) => {
                    damage = Some((offset as usize, problem));
                    break;
                }
                Err(e) => unreachable!("json() gives BadChunk only: {e}"),
            };
            match c.kind {
                ChunkKind::Header if !self.has_header && !v.is_null() => {
                    self.header = typed(&mut self.info, &v);
                    self.has_header = true;
                }
                ChunkKind::Layout => self.layout = Some(typed(&mut self.info, &v)),
                ChunkKind::Losses => {
                    let losses: Losses = typed(&mut self.info, &v);
                    self.info.events_lost_in_kernel = losses.total;
                    self.losses = Some(losses);
                }
                ChunkKind::End => {
                    self.info.complete = true;
                    self.end = Some(typed(&mut self.info, &v));
                }
                _ => {}
            }
        }
        if let Some((at, problem)) = damage {
            self.damage(at, problem);
        }
        release(&self.map, released, self.map.len());
        self.info.events_in_file = self
            .chunks
            .iter()
            .map(|c| (c.len / FILE_EVENT_SIZE) as u64)
            .sum();
        Ok(())
    }

    /// Pass 2: the events in timestamp order. Event chunks are checksummed as they are
    /// reached; at the first bad one the stream ends and [`Events::damage`] says so.
    pub fn events(&self) -> Events<'_> {
        Events {
            map: &self.map,
            released: 0,
            chunks: &self.chunks,
            next_chunk: 0,
            walk: self
                .lazy
                .map(|(from, to)| (chunks_deferred_between(&self.map[..], from, to), from, to)),
            merge: Merger::default(),
            damage: None,
            events_read: 0,
            window: self.window(),
            impossible: 0,
            ahead: None,
        }
    }

    /// The timestamps this recording's events can have: from its start (the header's)
    /// to its end (the End chunk's duration after it), a second of slack either side
    /// for the clocks read around them. Unbounded where the trace does not say.
    pub fn window(&self) -> (u64, u64) {
        const SLACK_NS: u64 = 1_000_000_000;
        let Some(start) = self.header.monotonic_ns_at_start.filter(|&s| s > 0) else {
            return (0, u64::MAX);
        };
        let end = self
            .end
            .as_ref()
            .map(|e| e.duration_s)
            .filter(|d| d.is_finite() && *d >= 0.0 && *d < 1e9)
            .map_or(u64::MAX, |d| {
                start
                    .saturating_add((d * 1e9) as u64)
                    .saturating_add(SLACK_NS)
            });
        (start.saturating_sub(SLACK_NS), end)
    }
}

/// Events in timestamp order.
///
/// The recorder writes each CPU's events in order but interleaves CPUs by drain cycle, so
/// events are merged per CPU: an event is released once every CPU that has produced
/// events has either a later event queued or is known to be past it. A CPU that goes
/// quiet would hold everything back, so the buffer is capped at [`MAX_BUFFERED`] events,
/// after which the oldest are released anyway (and any event that then arrives earlier
/// than one already released is counted in [`Events::late`] and delivered as it is).
pub struct Events<'a> {
    map: &'a Mmap,
    /// Bytes of the map already handed back to the kernel.
    released: usize,
    chunks: &'a [EventChunk],
    next_chunk: usize,
    /// A trace read tail first: its event chunks, walked here, within these bytes.
    walk: Option<(Chunks<'a>, usize, usize)>,
    merge: Merger,
    damage: Option<Damage>,
    events_read: u64,
    /// Timestamps an event of this recording can have (see [`Trace::window`]); events
    /// outside are impossible (a writer's or a file's fault), counted and left out.
    window: (u64, u64),
    impossible: u64,
    /// Told how far the decoding is, if a [`Trace::read_ahead`] keeps ahead of it.
    ahead: Option<std::sync::Arc<ReadAhead>>,
}

/// More than a recorder's drain cycle at full rate (4 rings × 8 MiB / 48 bytes).
pub const MAX_BUFFERED: usize = 1 << 20;

/// Merges the CPUs' event streams into timestamp order.
///
/// Each CPU's events arrive in its own order; an event may be released once no CPU can
/// still produce an earlier one, i.e. once its timestamp is at or below every CPU's
/// latest. Released events are gathered in batches, a prefix of each CPU's queue, and
/// put in order with one stable sort (the batch is a few sorted runs, which the sort
/// merges), rather than one heap operation per event. What is queued, gathered and
/// sorted is an [`EventAt`], a third of an event's size: the event itself is decoded
/// from the map once, when it is handed out.
#[derive(Default)]
struct Merger {
    /// Per CPU, its events not yet released: `.0[.1..]`.
    queues: Vec<(Vec<EventAt>, usize)>,
    /// Latest timestamp pushed per CPU (0: none yet).
    last: Vec<u64>,
    buffered: usize,
    released: u64,
    late: u64,
    draining: bool,
    /// The batch being handed out, in order, and how far.
    ready: Vec<EventAt>,
    next: usize,
}

/// An event's timestamp and where its record lies in the map.
#[derive(Clone, Copy)]
struct EventAt {
    ts: u64,
    at: usize,
}

impl Merger {
    fn push(&mut self, cpu: u16, e: EventAt) {
        let c = cpu as usize;
        if c >= self.queues.len() {
            self.queues.resize_with(c + 1, Default::default);
            self.last.resize(c + 1, 0);
        }
        if e.ts < self.released {
            self.late += 1;
        }
        self.queues[c].0.push(e);
        self.last[c] = self.last[c].max(e.ts);
        self.buffered += 1;
    }

    #[inline]
    fn pop(&mut self) -> Option<EventAt> {
        let e = self.ready.get(self.next).copied()?;
        self.next += 1;
        Some(e)
    }

    /// Where the earliest record still queued lies in the map: the map must keep it
    /// until it is decoded.
    fn first_queued_at(&self) -> Option<usize> {
        self.queues
            .iter()
            .filter_map(|(q, head)| q.get(*head).map(|e| e.at))
            .min()
    }

    /// Gather the next batch of events that can be released; false if none can yet.
    fn refill(&mut self) -> bool {
        self.ready.clear();
        self.next = 0;
        // Every CPU's future events come after its latest one.
        let safe = if self.draining {
            u64::MAX
        } else {
            self.last
                .iter()
                .copied()
                .filter(|&l| l != 0)
                .min()
                .unwrap_or(u64::MAX)
        };
        self.take_up_to(safe);
        if self.ready.is_empty() && self.buffered >= MAX_BUFFERED {
            // A CPU went quiet long ago and holds `safe` back: let the buffer bound the
            // reordering window instead, releasing the earliest queued events.
            let earliest = self
                .queues
                .iter()
                .filter_map(|(q, head)| q.get(*head).map(|e| e.ts))
                .min()
                .unwrap_or(u64::MAX);
            self.take_up_to(earliest);
        }
        if self.ready.is_empty() {
            return false;
        }
        // Stable: a CPU's events with equal timestamps keep their order, and ties across
        // CPUs go to the lower CPU.
        self.ready.sort_by_key(|e| e.ts);
        self.buffered -= self.ready.len();
        if let Some(e) = self.ready.last() {
            self.released = self.released.max(e.ts);
        }
        true
    }

    /// Move each queue's prefix at or below `t` into `ready`.
    fn take_up_to(&mut self, t: u64) {
        for (q, head) in &mut self.queues {
            let n = q[*head..].iter().take_while(|e| e.ts <= t).count();
            self.ready.extend_from_slice(&q[*head..*head + n]);
            *head += n;
            if *head == q.len() {
                q.clear();
                *head = 0;
            } else if *head > q.len() / 2 {
                q.drain(..*head);
                *head = 0;
            }
        }
    }
}

impl Events<'_> {
    /// Tell `ahead` how far the decoding is as it goes, for a [`Trace::read_ahead`] on
    /// another thread.
    pub fn report_to(&mut self, ahead: std::sync::Arc<ReadAhead>) {
        self.ahead = Some(ahead);
    }

    /// Where the event stream stopped early, if it did.
    pub fn damage(&self) -> Option<&Damage> {
        self.damage.as_ref()
    }

    /// Events delivered after a later one had already been released.
    pub fn late(&self) -> u64 {
        self.merge.late
    }

    /// Events left out because their timestamp lies outside the recording.
    pub fn impossible(&self) -> u64 {
        self.impossible
    }

    pub fn events_read(&self) -> u64 {
        self.events_read
    }

    /// Bytes of event chunks loaded so far, and in the whole trace (for progress).
    pub fn position(&self) -> (u64, u64) {
        if let Some((w, from, to)) = &self.walk {
            return ((w.position() - from) as u64, (to - from) as u64);
        }
        let total: usize = self.chunks.iter().map(|c| c.len).sum();
        let done: usize = self.chunks[..self.next_chunk.min(self.chunks.len())]
            .iter()
            .map(|c| c.len)
            .sum();
        (done as u64, total as u64)
    }

    /// The next event chunk: from the list the first pass made, or walked here.
    fn next_event_chunk(&mut self) -> Option<EventChunk> {
        if self.damage.is_some() {
            return None;
        }
        if let Some(c) = self.chunks.get(self.next_chunk).copied() {
            self.next_chunk += 1;
            return Some(c);
        }
        let (walk, _, to) = self.walk.as_mut()?;
        loop {
            match walk.next()? {
                Ok(c) if c.kind == ChunkKind::Events => {
                    return Some(EventChunk {
                        offset: c.offset as usize + CHUNK_HEADER_SIZE,
                        len: c.payload.len(),
                        base: c.base,
                        crc: c.crc,
                    });
                }
                // JSON chunks among the events: everything the join needs came from
                // the tail.
                Ok(_) => {}
                Err(e) => {
                    let (offset, problem) = match e {
                        TraceError::BadChunk { offset, problem } => (offset, problem),
                        // A JSON chunk among the events (one the tail did not take):
                        // said, and the events after it are still read.
                        TraceError::DamagedChunk {
                            offset,
                            kind,
                            problem,
                        } => {
                            if self.damage.is_none() {
                                self.damage = Some(Damage {
                                    offset,
                                    problem: damaged_chunk_text(kind, &problem),
                                    bytes_unread: 0,
                                });
                            }
                            continue;
                        }
                        TraceError::BadMagic => (0, e.to_string()),
                    };
                    self.damage = Some(Damage {
                        offset,
                        problem,
                        bytes_unread: (*to as u64).saturating_sub(offset),
                    });
                    return None;
                }
            }
        }
    }

    fn load_chunk(&mut self) -> bool {
        let Some(c) = self.next_event_chunk() else {
            return false;
        };
        if let Some(a) = &self.ahead {
            a.decoded_to.store(c.offset + c.len, Ordering::Relaxed);
        }
        let payload = &self.map[c.offset..c.offset + c.len];
        if crc32fast::hash(payload) != c.crc {
            let at = c.offset - CHUNK_HEADER_SIZE;
            let rest: u64 = match &self.walk {
                Some((_, _, to)) => (to - at) as u64,
                None => self.chunks[self.next_chunk - 1..]
                    .iter()
                    .map(|c| c.len as u64)
                    .sum(),
            };
            self.damage = Some(Damage {
                offset: at as u64,
                problem: "event chunk checksum mismatch".into(),
                bytes_unread: rest,
            });
            self.next_chunk = self.chunks.len();
            return false;
        }
        // Only what the order needs is read here; the rest when the event is handed out.
        let (from, to) = self.window;
        for (i, r) in payload.chunks_exact(FILE_EVENT_SIZE).enumerate() {
            let delta = i32::from_le_bytes([r[0], r[1], r[2], r[3]]);
            let ts = c.base.wrapping_add_signed(delta as i64);
            if ts < from || ts > to {
                self.impossible += 1;
                continue;
            }
            self.merge.push(
                u16::from_le_bytes([r[10], r[11]]),
                EventAt {
                    ts,
                    at: c.offset + i * FILE_EVENT_SIZE,
                },
            );
        }
        self.events_read += (c.len / FILE_EVENT_SIZE) as u64;
        // Decoded chunks: drop their pages from this process (they stay in the page
        // cache), so the mapping does not count against memory as the file is read. In
        // 32 MiB steps: each drop interrupts the other threads' CPUs to flush their TLBs,
        // and per 1 MiB chunk that cost 2–11% more kernel and ~2.5% more user cycles.
        // Not past an event still queued: it is decoded from the map when released.
        let end =
            (c.offset + c.len).min(self.merge.first_queued_at().unwrap_or(usize::MAX)) & !4095;
        if end >= self.released + RELEASE_EVERY {
            release(self.map, self.released, end);
            self.released = end;
        }
        true
    }
}

/// The event whose record lies at `e.at` of a checked event chunk.
#[inline]
fn decode(map: &[u8], e: EventAt) -> RawEvent {
    let r: &[u8; FILE_EVENT_SIZE] = map[e.at..e.at + FILE_EVENT_SIZE]
        .try_into()
        .expect("an event record");
    let u64_at = |o: usize| u64::from_le_bytes(r[o..o + 8].try_into().expect("8"));
    RawEvent {
        ts: e.ts,
        tid: u32::from_le_bytes([r[4], r[5], r[6], r[7]]),
        kind: r[8],
        sub: r[9],
        cpu: u16::from_le_bytes([r[10], r[11]]),
        a: [u64_at(12), u64_at(20), u64_at(28), u64_at(36)],
    }
}

/// How much of the map the header walk, or the event reading, may hold mapped before
/// unmapping it.
const RELEASE_EVERY: usize = 32 << 20;

/// How far ahead of the decoding [`Trace::read_ahead`] brings the file into the page
/// cache, and in what reads. The reads are small enough for their scratch buffer to
/// stay in a core's L2 (512 KiB here): copied into a 4 MiB buffer, the file went out to
/// memory a second time, and a report of the 100M-event bench trace from storage spent
/// 2.5–3.7 s in the kernel against 1.65–1.89 s now (six alternating pairs).
const READ_AHEAD: usize = 128 << 20;
const READ_AHEAD_STEP: usize = 256 << 10;

/// Where the decoding is, shared with a [`Trace::read_ahead`] keeping ahead of it.
#[derive(Default)]
pub struct ReadAhead {
    /// Bytes of the file up to the end of the event chunk being decoded.
    decoded_to: AtomicUsize,
    done: AtomicBool,
}

impl ReadAhead {
    /// The decoding is over: the read-ahead returns.
    pub fn finish(&self) {
        self.done.store(true, Ordering::Release);
    }
}

/// Finishes its [`ReadAhead`] when dropped, so that the read-ahead stops however the
/// decoding ends (a panic included) instead of waiting for it forever.
pub struct FinishOnDrop<R: std::ops::Deref<Target = ReadAhead>>(pub R);

impl<R: std::ops::Deref<Target = ReadAhead>> Drop for FinishOnDrop<R> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

impl Trace {
    /// Keep the next 128 MiB (`READ_AHEAD`) after the decoding in the page cache, until
    /// `ahead` is finished or the file ends; for a thread of its own, and only worth one
    /// where [`free_pages_go_to_host`]. There, reading from storage through the map
    /// alone, first touching each page freshly read into the cache cost the decoding
    /// thread far more in user mode than the kernel's own copy of it does: from
    /// storage, a report took about twice its time from the page cache. Here the pages
    /// are read with `pread` into a scratch buffer (not mapped, so not counted in this
    /// process's memory); ranges already cached are only checked, with `mincore`.
    pub fn read_ahead(&self, ahead: &ReadAhead) {
        self.read_ahead_by(ahead, READ_AHEAD);
    }

    fn read_ahead_by(&self, ahead: &ReadAhead, window: usize) {
        let len = self.map.len();
        let mut buf = vec![0u8; READ_AHEAD_STEP];
        let mut at = 0usize;
        while at < len && !ahead.done.load(Ordering::Acquire) {
            let pos = ahead.decoded_to.load(Ordering::Relaxed);
            at = at.max(pos & !4095);
            if at >= pos.saturating_add(window) {
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
            let n = READ_AHEAD_STEP.min(len - at);
            if !cached(&self.map, at, n) {
                // A failed read costs nothing but the head start: the decoding reads
                // the same bytes through the map and reports what it cannot.
                let _ = self.file.read_at(&mut buf[..n], at as u64);
            }
            at += n;
        }
    }
}

/// Whether this machine is a VM whose freed memory goes back to its host: a virtio
/// balloon with free page reporting, not switched off (by a `page_reporting_order`
/// above the largest block of pages). The page cache a report (or anything else) frees
/// is then handed back, and the next read's pages cost a fault on the host at their
/// first touch, which [`Trace::read_ahead`] takes off the decoding thread. Elsewhere,
/// bare metal included, it only adds its copy: on a RAM-backed disk with the reporting
/// switched off, 2 s more system time and 13–18% more wall time for a 4.4 GB trace.
pub fn free_pages_go_to_host() -> bool {
    free_pages_go_to_host_in(
        Path::new("/sys/bus/virtio/devices"),
        Path::new("/sys/module/page_reporting/parameters/page_reporting_order"),
    )
}

/// [`free_pages_go_to_host`] of the virtio devices listed in `devices` (sysfs: each
/// device's `device` id, and its negotiated `features` as one '0' or '1' per bit), with
/// the smallest block of free pages reported given as a buddy order in the file `order`
/// (above the largest order, 10 on x86-64, nothing is reported).
fn free_pages_go_to_host_in(devices: &Path, order: &Path) -> bool {
    const VIRTIO_ID_BALLOON: &str = "0x0005";
    const VIRTIO_BALLOON_F_REPORTING: usize = 5;
    const MAX_PAGE_ORDER: u32 = 10;
    let order = std::fs::read_to_string(order).ok();
    if order.and_then(|o| o.trim().parse::<u32>().ok()) > Some(MAX_PAGE_ORDER) {
        return false;
    }
    let Ok(dir) = std::fs::read_dir(devices) else {
        return false;
    };
    dir.flatten().any(|d| {
        let read = |f: &str| std::fs::read_to_string(d.path().join(f)).unwrap_or_default();
        read("device").trim() == VIRTIO_ID_BALLOON
            && read("features").as_bytes().get(VIRTIO_BALLOON_F_REPORTING) == Some(&b'1')
    })
}

/// Whether every page of `[from, from + len)` of the map is in the page cache (`from`
/// page-aligned); false when that cannot be told.
fn cached(map: &Mmap, from: usize, len: usize) -> bool {
    let pages = len.div_ceil(4096);
    let mut v = vec![0u8; pages];
    // SAFETY: the range lies inside the map, starts on a page boundary (the map does),
    // and `v` has one byte per page of it.
    let r = unsafe {
        libc::mincore(
            map.as_ptr().add(from) as *mut libc::c_void,
            len,
            v.as_mut_ptr(),
        )
    };
    r == 0 && v.iter().all(|&b| b & 1 == 1)
}

/// Drop `[from, to)` of the map from this process's page tables; the pages stay in the
/// page cache and refault if read again.
fn release(map: &Mmap, from: usize, to: usize) {
    let from = from & !4095;
    if to > from {
        // SAFETY: MADV_DONTNEED on a read-only private file mapping only drops our view
        // of pages nothing borrows any more; reading them again refaults the file.
        let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, from, to - from) };
    }
}

impl Events<'_> {
    /// The next events in order, at least one, into `out` (cleared first; its buffer
    /// may be swapped for the reader's own): false at the end. Faster than one event at
    /// a time, for callers that hand events on in batches.
    pub fn next_batch(&mut self, out: &mut Vec<RawEvent>) -> bool {
        out.clear();
        loop {
            let m = &mut self.merge;
            if m.next < m.ready.len() {
                let map: &[u8] = self.map;
                out.extend(m.ready[m.next..].iter().map(|e| decode(map, *e)));
                m.ready.clear();
                m.next = 0;
                return true;
            }
            if m.refill() {
                continue;
            }
            if !self.load_chunk() {
                if self.merge.buffered == 0 {
                    return false;
                }
                self.merge.draining = true;
            }
        }
    }
}

impl Iterator for Events<'_> {
    type Item = RawEvent;

    #[inline]
    fn next(&mut self) -> Option<RawEvent> {
        loop {
            if let Some(e) = self.merge.pop() {
                return Some(decode(self.map, e));
            }
            if self.merge.refill() {
                continue;
            }
            if !self.load_chunk() {
                if self.merge.buffered == 0 {
                    return None;
                }
                self.merge.draining = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    /// Pages of `[from, to)` of `path` in the page cache, by `mincore` on a mapping of
    /// the test's own.
    fn pages_cached(path: &Path, from: usize, to: usize) -> usize {
        let f = File::open(path).unwrap();
        // SAFETY: read-only mapping of a file nothing writes during the test.
        let map = unsafe { Mmap::map(&f) }.unwrap();
        let to = to.min(map.len());
        let mut v = vec![0u8; (to - from).div_ceil(4096)];
        // SAFETY: inside the map, page-aligned, one byte per page.
        let r = unsafe {
            libc::mincore(
                map.as_ptr().add(from) as *mut libc::c_void,
                to - from,
                v.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        v.iter().filter(|&&b| b & 1 == 1).count()
    }

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let t = Instant::now();
        while !cond() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "timed out waiting: {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn free_pages_go_to_host_only_with_a_balloon_that_reports_them() {
        let dir = tempfile::tempdir().unwrap();
        let device = |name: &str, id: &str, features: &str| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("device"), format!("{id}\n")).unwrap();
            std::fs::write(d.join("features"), format!("{features}\n")).unwrap();
        };
        // A disk whose feature bit 5 is set, and a balloon without reporting.
        device("virtio0", "0x0002", "0000010000");
        device("virtio1", "0x0005", "0110000100");
        let order = dir.path().join("order");
        assert!(!free_pages_go_to_host_in(dir.path(), &order));
        // Bit 5 of the balloon (VIRTIO_BALLOON_F_REPORTING), as this machine's has it.
        device("virtio2", "0x0005", "0110010100");
        assert!(free_pages_go_to_host_in(dir.path(), &order));
        std::fs::write(&order, "9\n").unwrap();
        assert!(free_pages_go_to_host_in(dir.path(), &order));
        // Reporting switched off: no block of free pages is that large.
        std::fs::write(&order, "11\n").unwrap();
        assert!(!free_pages_go_to_host_in(dir.path(), &order));
        assert!(!free_pages_go_to_host_in(&dir.path().join("none"), &order));
    }

    #[test]
    fn read_ahead_stays_its_window_ahead_of_the_decoding_and_stops_when_told() {
        const MIB: usize = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.trace");
        let cfg = crate::synth::SynthConfig {
            ios: 40_000,
            ..Default::default()
        };
        let f = std::io::BufWriter::new(File::create(&path).unwrap());
        let (f, _) = crate::synth::generate(&cfg, f, |_| {}).unwrap();
        f.into_inner().unwrap().sync_all().unwrap();
        let trace = Trace::open(&path).unwrap();
        let len = trace.map.len();
        assert!(len > 40 * MIB, "{len} bytes");
        // Out of the page cache (written back above, so the kernel can drop it; the
        // pages opening mapped first dropped from the trace's map).
        release(&trace.map, 0, len);
        let fd = File::open(&path).unwrap();
        // SAFETY: advice on an open descriptor.
        assert_eq!(
            unsafe { libc::posix_fadvise(fd.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) },
            0
        );
        assert_eq!(
            pages_cached(&path, 0, len),
            0,
            "the filesystem kept the pages"
        );

        let ahead = ReadAhead::default();
        std::thread::scope(|s| {
            // A failed assertion below must not leave the read-ahead waiting forever.
            let _stop = FinishOnDrop(&ahead);
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let (trace, ahead_ref) = (&trace, &ahead);
            s.spawn(move || {
                trace.read_ahead_by(ahead_ref, 4 * MIB);
                let _ = done_tx.send(());
            });
            // Decoding at the start: the first window comes in, and nothing far past it
            // (the kernel's own readahead adds at most a window of read_ahead_kb).
            wait_until("the first window", || {
                pages_cached(&path, 0, 4 * MIB) == 4 * MIB / 4096
            });
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(pages_cached(&path, 32 * MIB, len), 0);
            // The decoding moves on: so does the window.
            ahead.decoded_to.store(32 * MIB + 100, Ordering::Relaxed);
            wait_until("the window after the decoding", || {
                pages_cached(&path, 32 * MIB, 36 * MIB) == 4 * MIB / 4096
            });
            ahead.finish();
            done_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("the read-ahead returns once finished");
        });
    }
}
