//! Trace file format v1 (specified in docs/trace-format.md): an 8-byte magic, then
//! checksummed chunks. The first chunk is the JSON header; event chunks hold 44-byte
//! records with timestamps relative to the chunk; losses, the layout snapshot and the
//! end summary are JSON chunks. A truncated or damaged file reads up to its last good
//! chunk.

use crate::abi::RawEvent;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"VIOPATH\x01";
pub const FORMAT_VERSION: u32 = 1;
/// "VPCK" as bytes in the file.
pub const CHUNK_MAGIC: u32 = u32::from_le_bytes(*b"VPCK");
pub const CHUNK_HEADER_SIZE: usize = 24;
/// No chunk is larger; a reader never allocates more on a file's say-so.
pub const MAX_CHUNK_PAYLOAD: usize = 64 << 20;
pub const FILE_EVENT_SIZE: usize = 44;
/// Event chunks are cut at this size (and on a timer by the recorder).
pub const EVENT_CHUNK_TARGET: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u16)]
pub enum ChunkKind {
    Header = 1,
    Events = 2,
    Losses = 3,
    Layout = 4,
    End = 5,
}

impl ChunkKind {
    pub fn from_u16(v: u16) -> Option<ChunkKind> {
        [
            ChunkKind::Header,
            ChunkKind::Events,
            ChunkKind::Losses,
            ChunkKind::Layout,
            ChunkKind::End,
        ]
        .into_iter()
        .find(|k| *k as u16 == v)
    }
}

/// Writes a trace: header first, then events and JSON chunks, `finish` last.
pub struct TraceWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    base: u64,
    events_in_chunk: usize,
    pub events_written: u64,
    pub bytes_written: u64,
}

impl TraceWriter<BufWriter<File>> {
    /// Create (or truncate) `path` with mode 0600: traces show what a VM did.
    pub fn create(path: &Path, header: &impl Serialize) -> io::Result<Self> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        // An existing file keeps its mode on truncation: tighten it.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        TraceWriter::new(BufWriter::with_capacity(1 << 20, f), header)
    }
}

impl<W: Write> TraceWriter<W> {
    pub fn new(mut out: W, header: &impl Serialize) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        let mut w = TraceWriter {
            out,
            buf: Vec::with_capacity(EVENT_CHUNK_TARGET + FILE_EVENT_SIZE),
            base: 0,
            events_in_chunk: 0,
            events_written: 0,
            bytes_written: MAGIC.len() as u64,
        };
        w.json_chunk(ChunkKind::Header, header)?;
        Ok(w)
    }

    fn chunk(&mut self, kind: ChunkKind, base: u64, payload: &[u8]) -> io::Result<()> {
        let mut h = [0u8; CHUNK_HEADER_SIZE];
        h[0..4].copy_from_slice(&CHUNK_MAGIC.to_le_bytes());
        h[4..6].copy_from_slice(&(kind as u16).to_le_bytes());
        h[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        h[12..16].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
        h[16..24].copy_from_slice(&base.to_le_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(payload)?;
        self.bytes_written += (CHUNK_HEADER_SIZE + payload.len()) as u64;
        Ok(())
    }

    pub fn json_chunk(&mut self, kind: ChunkKind, value: &impl Serialize) -> io::Result<()> {
        let payload = serde_json::to_vec(value).map_err(io::Error::other)?;
        if payload.len() > MAX_CHUNK_PAYLOAD {
            return Err(io::Error::other(format!(
                "{kind:?} chunk of {} bytes is over the 64 MiB limit",
                payload.len()
            )));
        }
        self.flush_events()?;
        self.chunk(kind, 0, &payload)
    }

    /// Add one event. Timestamps are stored as signed 32-bit offsets from the chunk's
    /// base, so a chunk is cut when an event is more than ~2 s from it.
    pub fn push(&mut self, e: &RawEvent) -> io::Result<()> {
        if self.events_in_chunk == 0 {
            self.base = e.ts;
        }
        let delta = e.ts as i64 - self.base as i64;
        let delta = match i32::try_from(delta) {
            Ok(d) => d,
            Err(_) => {
                self.flush_events()?;
                self.base = e.ts;
                0
            }
        };
        let b = &mut self.buf;
        b.extend_from_slice(&delta.to_le_bytes());
        b.extend_from_slice(&e.tid.to_le_bytes());
        b.push(e.kind);
        b.push(e.sub);
        b.extend_from_slice(&e.cpu.to_le_bytes());
        for a in e.a {
            b.extend_from_slice(&a.to_le_bytes());
        }
        self.events_in_chunk += 1;
        self.events_written += 1;
        if self.buf.len() >= EVENT_CHUNK_TARGET {
            self.flush_events()?;
        }
        Ok(())
    }

    /// Write buffered events as a chunk (the recorder calls this on a timer, so an
    /// interrupted recording loses little).
    pub fn flush_events(&mut self) -> io::Result<()> {
        if self.events_in_chunk > 0 {
            let payload = std::mem::take(&mut self.buf);
            self.chunk(ChunkKind::Events, self.base, &payload)?;
            self.buf = payload;
            self.buf.clear();
            self.events_in_chunk = 0;
        }
        self.out.flush()
    }

    /// Write the end chunk and flush; returns the underlying writer.
    pub fn finish(mut self, end: &impl Serialize) -> io::Result<W> {
        self.json_chunk(ChunkKind::End, end)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    #[error("not a viopath trace (bad magic)")]
    BadMagic,
    #[error("chunk at byte {offset}: {problem}")]
    BadChunk { offset: u64, problem: String },
    /// A JSON chunk whose payload fails its checksum, in a file whose framing holds:
    /// the chunks after it are still read.
    #[error("{kind:?} chunk at byte {offset}: {problem}")]
    DamagedChunk {
        offset: u64,
        kind: ChunkKind,
        problem: String,
    },
}

/// One chunk, borrowed from the file's bytes.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    pub offset: u64,
    pub kind: ChunkKind,
    pub base: u64,
    pub payload: &'a [u8],
    /// The checksum the chunk header claims.
    pub crc: u32,
}

impl<'a> Chunk<'a> {
    /// Whether the payload matches its checksum (for chunks read with
    /// [`chunks_deferred`], whose event payloads are not checked up front).
    pub fn verify(&self) -> bool {
        crc32fast::hash(self.payload) == self.crc
    }

    pub fn event_count(&self) -> usize {
        self.payload.len() / FILE_EVENT_SIZE
    }

    /// Decode the events of an Events chunk.
    pub fn events(&self) -> impl Iterator<Item = RawEvent> + 'a {
        let base = self.base;
        self.payload.chunks_exact(FILE_EVENT_SIZE).map(move |r| {
            let u64_at = |o: usize| u64::from_le_bytes(r[o..o + 8].try_into().expect("8 bytes"));
            let delta = i32::from_le_bytes(r[0..4].try_into().expect("4 bytes"));
            RawEvent {
                ts: base.wrapping_add_signed(delta as i64),
                tid: u32::from_le_bytes(r[4..8].try_into().expect("4 bytes")),
                kind: r[8],
                sub: r[9],
                cpu: u16::from_le_bytes([r[10], r[11]]),
                a: [u64_at(12), u64_at(20), u64_at(28), u64_at(36)],
            }
        })
    }

    pub fn json(&self) -> Result<serde_json::Value, TraceError> {
        serde_json::from_slice(self.payload).map_err(|e| TraceError::BadChunk {
            offset: self.offset,
            problem: format!("{:?} JSON: {e}", self.kind),
        })
    }
}

/// Iterates the chunks of a trace in memory. After the last good chunk it yields one
/// error saying where and why reading stopped (a truncated tail, a bad checksum).
pub struct Chunks<'a> {
    data: &'a [u8],
    pos: usize,
    done: bool,
    /// Leave Events payloads unchecksummed (the caller verifies them when it reads them).
    defer_events: bool,
}

/// Start reading a trace held in memory (a file's bytes or a memory map).
pub fn chunks(data: &[u8]) -> Result<Chunks<'_>, TraceError> {
    if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
        return Err(TraceError::BadMagic);
    }
    Ok(Chunks {
        data,
        pos: MAGIC.len(),
        done: false,
        defer_events: false,
    })
}

/// Like [`chunks`], but Events chunks are only checked for structure, not checksummed:
/// a streaming reader verifies each ([`Chunk::verify`]) when it gets to it, so the file
/// is read once for the JSON chunks' sake and once for the events, not twice for both.
pub fn chunks_deferred(data: &[u8]) -> Result<Chunks<'_>, TraceError> {
    let mut c = chunks(data)?;
    c.defer_events = true;
    Ok(c)
}

/// Like [`chunks_deferred`], over the chunks in `data[from..to]`: `from` must be where
/// a chunk starts (the end of one already read), and offsets stay those of `data`.
pub fn chunks_deferred_between(data: &[u8], from: usize, to: usize) -> Chunks<'_> {
    let to = to.min(data.len());
    Chunks {
        data: &data[..to],
        pos: from.min(to),
        done: false,
        defer_events: true,
    }
}

/// The chunk that ends exactly at `end` and starts at or after `from`, if there is one
/// whose checksum holds. Chunks link forward only, so this searches back from `end` for
/// the chunk magic (payloads are not aligned) and takes the nearest header whose length
/// reaches `end` and whose payload matches its checksum. It lets a reader take the
/// chunks at the end of a trace (losses, layout, end) without walking the whole file.
pub fn chunk_ending_at(data: &[u8], end: usize, from: usize) -> Option<Chunk<'_>> {
    let end = end.min(data.len());
    let lowest = from.max(end.saturating_sub(CHUNK_HEADER_SIZE + MAX_CHUNK_PAYLOAD));
    let magic = CHUNK_MAGIC.to_le_bytes();
    let mut p = end.checked_sub(CHUNK_HEADER_SIZE)?;
    loop {
        if p < lowest {
            return None;
        }
        if data[p..p + 4] == magic {
            let h = &data[p..p + CHUNK_HEADER_SIZE];
            let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4 bytes"));
            let kind = ChunkKind::from_u16(u16::from_le_bytes([h[4], h[5]]));
            let len = u32_at(8) as usize;
            if let Some(kind) = kind
                && p + CHUNK_HEADER_SIZE + len == end
            {
                let payload = &data[p + CHUNK_HEADER_SIZE..end];
                if crc32fast::hash(payload) == u32_at(12)
                    && (kind != ChunkKind::Events || len.is_multiple_of(FILE_EVENT_SIZE))
                {
                    return Some(Chunk {
                        offset: p as u64,
                        kind,
                        base: u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")),
                        payload,
                        crc: u32_at(12),
                    });
                }
            }
        }
        p = p.checked_sub(1)?;
    }
}

impl<'a> Chunks<'a> {
    /// Bytes read so far (the end of the last good chunk).
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Chunks<'a> {
    type Item = Result<Chunk<'a>, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos == self.data.len() {
            return None;
        }
        let offset = self.pos as u64;
        let bad = |problem: String| Some(Err(TraceError::BadChunk { offset, problem }));
        let rest = &self.data[self.pos..];
        self.done = true; // until proven good
        if rest.len() < CHUNK_HEADER_SIZE {
            return bad(format!(
                "truncated chunk header ({} of {CHUNK_HEADER_SIZE} bytes)",
                rest.len()
            ));
        }
        let u32_at = |o: usize| u32::from_le_bytes(rest[o..o + 4].try_into().expect("4 bytes"));
        if u32_at(0) != CHUNK_MAGIC {
            return bad("no chunk magic".into());
        }
        let kind_raw = u16::from_le_bytes([rest[4], rest[5]]);
        let Some(kind) = ChunkKind::from_u16(kind_raw) else {
            return bad(format!("unknown chunk kind {kind_raw}"));
        };
        let len = u32_at(8) as usize;
        if len > MAX_CHUNK_PAYLOAD {
            return bad(format!("payload of {len} bytes is over the 64 MiB limit"));
        }
        if rest.len() < CHUNK_HEADER_SIZE + len {
            return bad(format!(
                "truncated: {} of {len} payload bytes present",
                rest.len() - CHUNK_HEADER_SIZE
            ));
        }
        let payload = &rest[CHUNK_HEADER_SIZE..CHUNK_HEADER_SIZE + len];
        let crc = u32_at(12);
        let deferred = self.defer_events && kind == ChunkKind::Events;
        if !deferred && crc32fast::hash(payload) != crc {
            if kind == ChunkKind::Events {
                return bad("checksum mismatch".into());
            }
            // Its header holds (magic, known kind, a length within the file): the
            // next chunk is where it says.
            self.pos += CHUNK_HEADER_SIZE + len;
            self.done = false;
            return Some(Err(TraceError::DamagedChunk {
                offset,
                kind,
                problem: "checksum mismatch".into(),
            }));
        }
        if kind == ChunkKind::Events && !len.is_multiple_of(FILE_EVENT_SIZE) {
            return bad(format!(
                "event payload of {len} bytes is not a whole number of events"
            ));
        }
        let base = u64::from_le_bytes(rest[16..24].try_into().expect("8 bytes"));
        self.pos += CHUNK_HEADER_SIZE + len;
        self.done = false;
        Some(Ok(Chunk {
            offset,
            kind,
            base,
            payload,
            crc,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: u64, i: u64) -> RawEvent {
        RawEvent {
            ts,
            tid: i as u32,
            kind: 7,
            sub: 1,
            cpu: (i % 2) as u16,
            a: [i, i * 2, u64::MAX - i, 0],
        }
    }

    fn sample(n: u64) -> (Vec<u8>, Vec<RawEvent>) {
        let mut w = TraceWriter::new(Vec::new(), &serde_json::json!({"format": 1})).unwrap();
        let mut evs = Vec::new();
        for i in 0..n {
            // Mostly increasing, sometimes out of order, with a 3 s jump in the middle.
            let ts = 1_000_000_000
                + i * 1000
                + if i % 7 == 0 { 0 } else { 500 }
                + if i > n / 2 { 3_000_000_000 } else { 0 };
            let e = ev(ts, i);
            w.push(&e).unwrap();
            evs.push(e);
        }
        let out = w.finish(&serde_json::json!({"end": true})).unwrap();
        (out, evs)
    }

    #[test]
    fn round_trip_and_compactness() {
        let (bytes, evs) = sample(100_000);
        let mut got = Vec::new();
        let mut kinds = Vec::new();
        for c in chunks(&bytes).unwrap() {
            let c = c.unwrap();
            kinds.push(c.kind);
            if c.kind == ChunkKind::Events {
                got.extend(c.events());
            }
        }
        assert_eq!(got, evs);
        assert_eq!(kinds.first(), Some(&ChunkKind::Header));
        assert_eq!(kinds.last(), Some(&ChunkKind::End));
        // Compact: at most 48 bytes per event on average, everything included.
        assert!(
            bytes.len() as f64 / evs.len() as f64 <= 48.0,
            "{} bytes/event",
            bytes.len() as f64 / evs.len() as f64
        );
    }

    #[test]
    fn chunks_are_found_back_from_the_end() {
        let (mut data, _) = sample(20_000);
        // The forward walk is the oracle: every chunk's start and end.
        let all: Vec<(usize, usize, ChunkKind)> = chunks(&data)
            .unwrap()
            .map(|c| c.unwrap())
            .map(|c| {
                (
                    c.offset as usize,
                    c.offset as usize + CHUNK_HEADER_SIZE + c.payload.len(),
                    c.kind,
                )
            })
            .collect();
        assert!(all.len() > 3, "{} chunks", all.len());
        let from = all[0].1;
        // Every chunk after the header is found from its end, walking back to the first.
        let mut end = data.len();
        for &(start, stop, kind) in all[1..].iter().rev() {
            assert_eq!(stop, end);
            let c = chunk_ending_at(&data, end, from).expect("found");
            assert_eq!((c.offset as usize, c.kind), (start, kind));
            end = start;
        }
        assert_eq!(end, from);
        assert!(
            chunk_ending_at(&data, from, from).is_none(),
            "nothing before `from`"
        );
        // The walk between two chunk boundaries sees the chunks in between, offsets kept.
        let (a, b) = (all[1].0, all[all.len() - 1].0);
        let between: Vec<usize> = chunks_deferred_between(&data, a, b)
            .map(|c| c.unwrap().offset as usize)
            .collect();
        let expect: Vec<usize> = all[1..all.len() - 1].iter().map(|c| c.0).collect();
        assert_eq!(between, expect);
        // Not at a chunk's end (a truncated file), or a payload that fails its checksum:
        // nothing is found there.
        assert!(chunk_ending_at(&data, data.len() - 1, from).is_none());
        let last = all[all.len() - 1];
        data[last.0 + CHUNK_HEADER_SIZE] ^= 1;
        assert!(chunk_ending_at(&data, data.len(), from).is_none());
    }

    #[test]
    fn damaged_files_read_up_to_the_last_good_chunk() {
        let (bytes, _) = sample(60_000);
        let good: Vec<Chunk> = chunks(&bytes).unwrap().map(Result::unwrap).collect();
        assert!(good.len() >= 4);
        // Truncated in the middle of the third chunk: two chunks, then an error.
        let cut = good[2].offset as usize + 100;
        let r: Vec<_> = chunks(&bytes[..cut]).unwrap().collect();
        assert_eq!(r.len(), 3);
        assert!(r[0].is_ok() && r[1].is_ok());
        assert!(
            matches!(&r[2], Err(TraceError::BadChunk { problem, .. }) if problem.contains("truncated"))
        );
        // A flipped byte in a payload fails its checksum, and reading stops there.
        let mut flipped = bytes.clone();
        flipped[good[1].offset as usize + CHUNK_HEADER_SIZE + 10] ^= 0xff;
        let r: Vec<_> = chunks(&flipped).unwrap().collect();
        assert_eq!(r.len(), 2);
        assert!(
            matches!(&r[1], Err(TraceError::BadChunk { problem, .. }) if problem.contains("checksum"))
        );
        // A huge claimed length is refused without allocating.
        let mut huge = bytes.clone();
        let at = good[1].offset as usize + 8;
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let r: Vec<_> = chunks(&huge).unwrap().collect();
        assert!(
            matches!(&r[1], Err(TraceError::BadChunk { problem, .. }) if problem.contains("limit"))
        );
        assert_eq!(chunks(b"not a trace").err(), Some(TraceError::BadMagic));
    }

    #[test]
    fn files_are_private() {
        let dir = std::env::temp_dir().join(format!("viopath-trace-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.trace");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = TraceWriter::create(&p, &serde_json::json!({})).unwrap();
        w.finish(&serde_json::json!({})).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(mode, 0o600);
    }
}
