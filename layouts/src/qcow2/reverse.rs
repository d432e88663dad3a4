//! The reverse map of one host file of a chain: what every byte of the file holds.

use super::{Chain, FileRole, LayerMap, Qcow2Image, Result, Run, RunKind, corrupt};
use crate::addr::{GuestOffset, HostFileOffset};
use crate::source::{be_u16, be_u32, be_u64};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// What a range of a host file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Content {
    /// Guest data; `guest` is the guest offset of the range's first byte.
    GuestData {
        guest: u64,
    },
    /// A preallocated host cluster that reads as zeros (`zero`) or is not yet used
    /// (extended L2 subclusters that fall through to the backing file).
    Preallocated {
        guest: u64,
        zero: bool,
    },
    /// Compressed data of the guest cluster at `guest`.
    Compressed {
        guest: u64,
    },
    /// VM state saved by `savevm`, stored past the virtual size.
    VmState {
        offset: u64,
    },
    Header,
    L1Table,
    L2Table {
        l1_index: u32,
        guest: u64,
    },
    RefcountTable,
    RefcountBlock {
        index: u64,
    },
    SnapshotTable,
    SnapshotL1 {
        snapshot: String,
    },
    SnapshotL2 {
        snapshot: String,
    },
    /// Guest data kept only by an internal snapshot.
    SnapshotData {
        snapshot: String,
        guest: u64,
    },
    BitmapDirectory,
    BitmapTable {
        bitmap: String,
    },
    BitmapData {
        bitmap: String,
    },
    EncryptionHeader,
    /// The unused tail of a cluster whose head is in use (compressed data, metadata).
    Slack,
    /// Refcount 0.
    Free,
    /// Refcounted but referenced by nothing (a leak `qemu-img check -r leaks` repairs).
    Leaked {
        refcount: u64,
    },
    /// Not used by any guest cluster (external data files are not refcounted).
    Unused,
}

impl Content {
    /// The guest offset `delta` bytes into an extent with this content, where it has one.
    pub fn guest_at(&self, delta: u64) -> Option<GuestOffset> {
        match self {
            Content::GuestData { guest }
            | Content::Preallocated { guest, .. }
            | Content::SnapshotData { guest, .. } => Some(GuestOffset(guest + delta)),
            Content::Compressed { guest } => Some(GuestOffset(*guest)),
            _ => None,
        }
    }
    pub fn is_metadata(&self) -> bool {
        !matches!(
            self,
            Content::GuestData { .. }
                | Content::Preallocated { .. }
                | Content::Compressed { .. }
                | Content::SnapshotData { .. }
                | Content::VmState { .. }
                | Content::Slack
                | Content::Free
                | Content::Leaked { .. }
                | Content::Unused
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReverseExtent {
    pub start: u64,
    pub len: u64,
    #[serde(flatten)]
    pub content: Content,
}

impl ReverseExtent {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Every byte of one host file, classified. Extents are sorted and disjoint and cover
/// the file from 0 to its length.
#[derive(Debug, Clone, Serialize)]
pub struct ReverseMap {
    pub file: usize,
    pub file_len: u64,
    pub extents: Vec<ReverseExtent>,
    /// Places where two structures claim the same bytes (a corrupt image).
    pub overlaps: Vec<String>,
}

impl ReverseMap {
    /// What holds byte `offset` of the file, and the guest offset of that byte if it is
    /// guest data.
    pub fn lookup(&self, offset: HostFileOffset) -> Option<(&ReverseExtent, Option<GuestOffset>)> {
        let offset = offset.0;
        let i = self.extents.partition_point(|e| e.end() <= offset);
        let e = self.extents.get(i).filter(|e| e.start <= offset)?;
        Some((e, e.content.guest_at(offset - e.start)))
    }
}

struct Builder {
    primary: Vec<ReverseExtent>,
    secondary: Vec<ReverseExtent>,
}

impl Builder {
    fn add(&mut self, start: u64, len: u64, content: Content) {
        if len > 0 {
            self.primary.push(ReverseExtent {
                start,
                len,
                content,
            });
        }
    }
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

fn data_content(run: &Run) -> Content {
    match run.kind {
        RunKind::Data { .. } => Content::GuestData { guest: run.guest },
        RunKind::ZeroAlloc { .. } => Content::Preallocated {
            guest: run.guest,
            zero: true,
        },
        RunKind::UnallocAlloc { .. } => Content::Preallocated {
            guest: run.guest,
            zero: false,
        },
        RunKind::Compressed { .. } => Content::Compressed { guest: run.guest },
        RunKind::ZeroPlain => unreachable!("plain zeros have no host bytes"),
    }
}

fn host_len(run: &Run) -> u64 {
    match run.kind {
        RunKind::Compressed { len, .. } => len,
        _ => run.len,
    }
}

impl Chain {
    /// The reverse map of file `id` of the chain.
    pub fn reverse_map(&self, id: usize) -> Result<ReverseMap> {
        let cf = self.file(id);
        let (image, image_file, data_file) = self.layer_parts(cf.depth);
        let file_len = self.file_source(id).len();
        let mut b = Builder {
            primary: Vec::new(),
            secondary: Vec::new(),
        };
        let map = self.layer_map(cf.depth);
        match cf.role {
            FileRole::Raw => b.add(0, file_len, Content::GuestData { guest: 0 }),
            FileRole::DataFile => {
                for run in &map.expect("qcow2 layer").runs {
                    if let Some(host) = run.kind.host() {
                        b.add(host, run.len, data_content(run));
                    }
                }
            }
            FileRole::Qcow2 => {
                let image = image.expect("qcow2 layer");
                let map = map.expect("qcow2 layer");
                metadata(image, map, &mut b, data_file == image_file)?;
            }
        }
        let mut overlaps = Vec::new();
        let extents = finish(b, file_len, &mut overlaps);
        let mut rm = ReverseMap {
            file: id,
            file_len,
            extents,
            overlaps,
        };
        fill_gaps(&mut rm, image.filter(|_| cf.role == FileRole::Qcow2))?;
        Ok(rm)
    }
}

fn metadata(
    image: &Qcow2Image,
    map: &LayerMap,
    b: &mut Builder,
    internal_data: bool,
) -> Result<()> {
    let h = &image.header;
    let cs = h.cluster_size();
    b.add(0, cs.min(image.file_len()), Content::Header);
    b.add(
        h.l1_table_offset,
        round_up(h.l1_size as u64 * 8, cs),
        Content::L1Table,
    );
    b.add(
        h.refcount_table_offset,
        h.refcount_table_clusters as u64 * cs,
        Content::RefcountTable,
    );
    for (i, &rb) in image.refcount_table().iter().enumerate() {
        if rb != 0 {
            b.add(rb, cs, Content::RefcountBlock { index: i as u64 });
        }
    }
    let mut active_l2 = HashSet::new();
    for &(l1_index, off) in &map.l2_tables {
        active_l2.insert(off);
        b.add(
            off,
            cs,
            Content::L2Table {
                l1_index,
                guest: l1_index as u64 * h.l1_coverage(),
            },
        );
    }
    if internal_data {
        for run in &map.runs {
            if let Some(host) = run.kind.host() {
                b.add(host, host_len(run), data_content(run));
            }
        }
        for run in &map.vmstate {
            if let Some(host) = run.kind.host() {
                b.add(
                    host,
                    host_len(run),
                    Content::VmState {
                        offset: run.guest - h.virtual_size,
                    },
                );
            }
        }
    }
    if let Some((o, l)) = h.crypto_header {
        b.add(o, round_up(l, cs), Content::EncryptionHeader);
    }
    snapshots(image, &active_l2, b, internal_data)?;
    bitmaps(image, b)?;
    Ok(())
}

fn snapshots(
    image: &Qcow2Image,
    active_l2: &HashSet<u64>,
    b: &mut Builder,
    internal_data: bool,
) -> Result<()> {
    let snaps = image.snapshots()?;
    if snaps.is_empty() {
        return Ok(());
    }
    let h = &image.header;
    let cs = h.cluster_size();
    b.add(
        h.snapshots_offset,
        round_up(image.snapshot_table_len(&snaps), cs),
        Content::SnapshotTable,
    );
    let mut seen_l2 = active_l2.clone();
    for s in &snaps {
        b.add(
            s.l1_table_offset,
            round_up(s.l1_size as u64 * 8, cs),
            Content::SnapshotL1 {
                snapshot: s.name.clone(),
            },
        );
        let l1 = image.read_u64_table(s.l1_table_offset, s.l1_size as u64)?;
        let mut smap = LayerMap::default();
        let mut buf = vec![0u8; cs as usize];
        for (i, e) in l1.iter().enumerate() {
            let off = e & super::L1_OFFSET_MASK;
            if off == 0 || !seen_l2.insert(off) {
                continue;
            }
            if !off.is_multiple_of(cs)
                || off.checked_add(cs).is_none_or(|end| end > image.file_len())
            {
                return Err(corrupt(
                    &image.path,
                    &format!("snapshot '{}' L1[{i}]", s.name),
                    s.l1_table_offset + i as u64 * 8,
                    format!("L2 table offset {off:#x} is unaligned or past the end of the file"),
                ));
            }
            b.secondary.push(ReverseExtent {
                start: off,
                len: cs,
                content: Content::SnapshotL2 {
                    snapshot: s.name.clone(),
                },
            });
            image
                .source()
                .read_exact_at(&mut buf, off)
                .map_err(|e| super::Qcow2Error::io(&image.path, e))?;
            image.decode_l2(i as u64, off, &buf, &mut smap)?;
        }
        if internal_data {
            for run in smap.runs.iter().chain(&smap.vmstate) {
                if let Some(host) = run.kind.host() {
                    b.secondary.push(ReverseExtent {
                        start: host,
                        len: host_len(run),
                        content: Content::SnapshotData {
                            snapshot: s.name.clone(),
                            guest: run.guest,
                        },
                    });
                }
            }
        }
    }
    Ok(())
}

fn bitmaps(image: &Qcow2Image, b: &mut Builder) -> Result<()> {
    let Some(ext) = image.header.bitmaps.clone() else {
        return Ok(());
    };
    let cs = image.header.cluster_size();
    b.add(
        ext.directory_offset,
        round_up(ext.directory_size, cs),
        Content::BitmapDirectory,
    );
    let mut dir = vec![0u8; ext.directory_size as usize];
    image
        .source()
        .read_exact_at(&mut dir, ext.directory_offset)
        .map_err(|e| super::Qcow2Error::io(&image.path, e))?;
    let mut at = 0usize;
    for n in 0..ext.nb_bitmaps {
        let field = format!("bitmap directory entry {n}");
        let file_at = ext.directory_offset + at as u64;
        if at + 24 > dir.len() {
            return Err(corrupt(
                &image.path,
                &field,
                file_at,
                "runs past the bitmap directory".into(),
            ));
        }
        let table_offset = be_u64(&dir, at);
        let table_size = be_u32(&dir, at + 8) as u64;
        let name_size = be_u16(&dir, at + 18) as usize;
        let extra = be_u32(&dir, at + 20) as usize;
        let var_end = (at + 24).saturating_add(extra).saturating_add(name_size);
        if var_end > dir.len() {
            return Err(corrupt(
                &image.path,
                &field,
                file_at,
                "name runs past the bitmap directory".into(),
            ));
        }
        let name = String::from_utf8_lossy(&dir[at + 24 + extra..var_end]).into_owned();
        super::header::check_extent(
            &image.path,
            &field,
            file_at,
            table_offset,
            table_size * 8,
            cs,
            image.file_len(),
        )?;
        b.add(
            table_offset,
            round_up(table_size * 8, cs),
            Content::BitmapTable {
                bitmap: name.clone(),
            },
        );
        for (i, e) in image
            .read_u64_table(table_offset, table_size)?
            .into_iter()
            .enumerate()
        {
            let off = e & 0x00ff_ffff_ffff_fe00;
            if off == 0 {
                continue;
            }
            if off % cs != 0 || off.checked_add(cs).is_none_or(|end| end > image.file_len()) {
                return Err(corrupt(
                    &image.path,
                    &format!("bitmap '{name}' table entry {i}"),
                    table_offset + i as u64 * 8,
                    format!("data cluster {off:#x} is unaligned or past the end of the file"),
                ));
            }
            b.add(
                off,
                cs,
                Content::BitmapData {
                    bitmap: name.clone(),
                },
            );
        }
        at = round_up((var_end) as u64, 8) as usize;
    }
    Ok(())
}

/// Sort, resolve overlaps (snapshot-only claims yield to the active image; compressed
/// data may share its last sector with the next compressed cluster) and clip to the file.
fn finish(mut b: Builder, file_len: u64, overlaps: &mut Vec<String>) -> Vec<ReverseExtent> {
    b.primary.sort_by_key(|e| e.start);
    let mut out: Vec<ReverseExtent> = Vec::with_capacity(b.primary.len());
    for mut e in b.primary {
        if let Some(last) = out.last_mut()
            && e.start < last.end()
        {
            let both_compressed = matches!(last.content, Content::Compressed { .. })
                && matches!(e.content, Content::Compressed { .. });
            if both_compressed && last.end() - e.start < 512 {
                last.len = e.start - last.start;
            } else {
                overlaps.push(format!(
                    "{:?} at {:#x}+{:#x} overlaps {:?} at {:#x}+{:#x}",
                    e.content, e.start, e.len, last.content, last.start, last.len
                ));
                let end = e.end();
                e.start = last.end();
                if end <= e.start {
                    continue;
                }
                e.len = end - e.start;
            }
        }
        out.push(e);
    }
    if !b.secondary.is_empty() {
        b.secondary.sort_by_key(|e| e.start);
        let mut extra = Vec::new();
        let mut i = 0;
        for s in b.secondary {
            // Keep only the parts the active image does not explain.
            let mut pos = s.start;
            let end = s.end();
            while i < out.len() && out[i].end() <= pos {
                i += 1;
            }
            let mut j = i;
            while pos < end {
                match out.get(j) {
                    Some(p) if p.start <= pos => {
                        pos = p.end().max(pos);
                        j += 1;
                    }
                    next => {
                        let stop = next.map_or(end, |p| p.start.min(end));
                        let delta = pos - s.start;
                        let content = match &s.content {
                            Content::SnapshotData { snapshot, guest } => Content::SnapshotData {
                                snapshot: snapshot.clone(),
                                guest: guest + delta,
                            },
                            c => c.clone(),
                        };
                        extra.push(ReverseExtent {
                            start: pos,
                            len: stop - pos,
                            content,
                        });
                        pos = stop;
                    }
                }
            }
        }
        // Snapshots may share clusters among themselves: keep the first claim.
        extra.sort_by_key(|e| e.start);
        let mut dedup: Vec<ReverseExtent> = Vec::with_capacity(extra.len());
        for mut e in extra {
            if let Some(last) = dedup.last() {
                if e.end() <= last.end() {
                    continue;
                }
                if e.start < last.end() {
                    let cut = last.end() - e.start;
                    if let Content::SnapshotData { guest, .. } = &mut e.content {
                        *guest += cut;
                    }
                    e.start += cut;
                    e.len -= cut;
                }
            }
            dedup.push(e);
        }
        out.extend(dedup);
        out.sort_by_key(|e| e.start);
    }
    // Clip to the file (the sector-rounded tail of compressed data may pass EOF).
    out.retain_mut(|e| {
        if e.start >= file_len {
            return false;
        }
        e.len = e.len.min(file_len - e.start);
        true
    });
    out
}

/// Classify what no structure claims: slack in used clusters, free or leaked clusters.
fn fill_gaps(rm: &mut ReverseMap, image: Option<&Qcow2Image>) -> Result<()> {
    let mut filled = Vec::with_capacity(rm.extents.len() * 2 + 1);
    let mut pos = 0;
    let extents = std::mem::take(&mut rm.extents);
    let push_gap = |from: u64, to: u64, filled: &mut Vec<ReverseExtent>| -> Result<()> {
        let Some(image) = image else {
            filled.push(ReverseExtent {
                start: from,
                len: to - from,
                content: Content::Unused,
            });
            return Ok(());
        };
        let cs = image.header.cluster_size();
        let mut p = from;
        while p < to {
            let cluster_end = (p / cs + 1) * cs;
            let piece_end = cluster_end.min(to);
            let content = if !p.is_multiple_of(cs) || piece_end < cluster_end.min(rm.file_len) {
                Content::Slack
            } else {
                match image.refcount(HostFileOffset(p))? {
                    0 => Content::Free,
                    n => Content::Leaked { refcount: n },
                }
            };
            match filled.last_mut() {
                Some(ReverseExtent {
                    start,
                    len,
                    content: c,
                }) if *start + *len == p && *c == content => *len += piece_end - p,
                _ => filled.push(ReverseExtent {
                    start: p,
                    len: piece_end - p,
                    content,
                }),
            }
            p = piece_end;
        }
        Ok(())
    };
    for e in extents {
        if e.start > pos {
            push_gap(pos, e.start, &mut filled)?;
        }
        pos = pos.max(e.end());
        filled.push(e);
    }
    if pos < rm.file_len {
        push_gap(pos, rm.file_len, &mut filled)?;
    }
    rm.extents = filled;
    Ok(())
}
