//! A backing chain of images, as QEMU opens it, and its combined forward map.

use super::{LayerMap, Qcow2Error, Qcow2Image, Result, Run, RunKind, header::MAGIC};
use crate::addr::{GuestOffset, HostFileOffset};
use crate::source::{FileSource, ReadAt};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// QEMU has no fixed limit; this only stops pathological chains.
pub const MAX_CHAIN_DEPTH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileRole {
    /// A qcow2 image file (metadata, and data unless it has an external data file).
    Qcow2,
    /// The external data file of the qcow2 image at the same depth.
    DataFile,
    /// A raw image (the whole file is guest data).
    Raw,
}

/// One host file that holds part of the virtual disk or its metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainFile {
    pub path: PathBuf,
    pub role: FileRole,
    /// 0 for the top image, 1 for its backing file, ...
    pub depth: usize,
}

enum Layer {
    Qcow2 {
        image: Box<Qcow2Image>,
        map: LayerMap,
        image_file: usize,
        /// Where data clusters live: `image_file`, or the external data file.
        data_file: usize,
        /// Data and holes of the data file, when QEMU would look at them: it does so
        /// when it believes the image has metadata preallocation (see
        /// [`looks_metadata_preallocated`]); then data clusters over host-file holes
        /// read as zeros in `qemu-img map`.
        host_holes: Option<Vec<Run>>,
    },
    Raw {
        size: u64,
        runs: Vec<Run>,
        file: usize,
    },
}

impl Layer {
    fn size(&self) -> u64 {
        match self {
            Layer::Qcow2 { image, .. } => image.header.virtual_size,
            Layer::Raw { size, .. } => *size,
        }
    }
    fn runs(&self) -> &[Run] {
        match self {
            Layer::Qcow2 { map, .. } => &map.runs,
            Layer::Raw { runs, .. } => runs,
        }
    }
    fn data_file(&self) -> usize {
        match self {
            Layer::Qcow2 { data_file, .. } => *data_file,
            Layer::Raw { file, .. } => *file,
        }
    }
}

/// Where one guest byte comes from, and for how many bytes that stays true.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    /// Index of the layer that answered (0 = top image).
    pub depth: usize,
    pub kind: LocatedKind,
    /// The file holding the bytes, for kinds with a host location.
    pub file: Option<usize>,
    /// Bytes from the asked offset that share this mapping (host offsets advance with it).
    pub len: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LocatedKind {
    /// Guest data at `host` in `file`.
    Data { host: u64 },
    /// Reads as zeros; a host cluster is preallocated at `host`.
    ZeroAlloc { host: u64 },
    /// Reads as zeros, no host cluster.
    Zero,
    /// Inside a compressed cluster: the compressed bytes are `[host, host + len)`, and the
    /// byte asked for is `offset_in_cluster` into the decompressed cluster.
    Compressed {
        host: u64,
        len: u64,
        offset_in_cluster: u64,
    },
    /// Allocated nowhere in the chain; reads as zeros. `host` is a reserved but unused
    /// host cluster at the bottom layer (extended L2), if any.
    Unallocated { host: Option<u64> },
}

/// One row of the extent map, with the fields and merging rules of
/// `qemu-img map --output=json`, plus the file name for rows with an offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapEntry {
    pub start: u64,
    pub length: u64,
    pub depth: usize,
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    pub compressed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Index into [`Chain::files`] of the file `offset` is in.
    #[serde(skip)]
    pub file: Option<usize>,
}

impl MapEntry {
    fn mergeable(&self, next: &MapEntry) -> bool {
        self.start + self.length == next.start
            && self.depth == next.depth
            && self.present == next.present
            && self.zero == next.zero
            && self.data == next.data
            && self.compressed == next.compressed
            && self.file == next.file
            && match (self.offset, next.offset) {
                (None, None) => true,
                (Some(a), Some(b)) => a + self.length == b,
                _ => false,
            }
    }
}

/// A backing chain: the top image, its backing file, and so on, plus external data files.
pub struct Chain {
    layers: Vec<Layer>,
    pub files: Vec<ChainFile>,
    /// Sources of raw images and data files; qcow2 files are read through their image.
    sources: Vec<Option<Box<dyn ReadAt>>>,
    /// Human-readable facts worth showing: dirty or corrupt flags, lazy refcounts.
    pub warnings: Vec<String>,
    compressed_cache: Mutex<Option<(usize, u64, Vec<u8>)>>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// Resolve a backing or data file name as QEMU does: relative names are relative to the
/// directory of the image that names them.
pub fn resolve_relative(image: &Path, name: &str) -> Result<PathBuf> {
    if name.starts_with("json:") || (name.contains("://") || is_protocol_prefix(name)) {
        return Err(Qcow2Error::Unsupported {
            path: image.to_owned(),
            what: format!("backing or data file '{name}' is not a plain file name"),
        });
    }
    let p = Path::new(name);
    Ok(if p.is_absolute() {
        p.to_owned()
    } else {
        image.parent().unwrap_or(Path::new(".")).join(p)
    })
}

fn is_protocol_prefix(name: &str) -> bool {
    // QEMU treats "proto:rest" as a protocol when the prefix is alphanumeric and the name
    // does not start with a path component.
    match name.split_once(':') {
        Some((proto, _)) => {
            !proto.is_empty()
                && !proto.contains('/')
                && proto
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '+')
        }
        None => false,
    }
}

fn is_qcow2(path: &Path) -> Result<bool> {
    let src = FileSource::open(path).map_err(|e| Qcow2Error::io(path, e))?;
    if src.len() < 4 {
        return Ok(false);
    }
    let mut m = [0u8; 4];
    src.read_exact_at(&mut m, 0)
        .map_err(|e| Qcow2Error::io(path, e))?;
    Ok(u32::from_be_bytes(m) == MAGIC)
}

impl Chain {
    /// Open `path` and every image below it. The format of each is probed from its magic
    /// unless the overlay names the backing format.
    pub fn open(path: &Path) -> Result<Chain> {
        let mut chain = Chain::empty();
        let mut seen = HashSet::new();
        let mut next = Some((path.to_owned(), None::<String>));
        while let Some((p, format)) = next.take() {
            let depth = chain.layers.len();
            if depth >= MAX_CHAIN_DEPTH {
                return Err(Qcow2Error::ChainTooDeep(MAX_CHAIN_DEPTH));
            }
            let canonical = p.canonicalize().map_err(|e| Qcow2Error::io(&p, e))?;
            if !seen.insert(canonical) {
                return Err(Qcow2Error::BackingLoop { path: p });
            }
            let raw = match format.as_deref() {
                Some("raw") => true,
                Some("qcow2") => false,
                Some(other) => {
                    return Err(Qcow2Error::Unsupported {
                        path: p,
                        what: format!("backing format '{other}' (only qcow2 and raw are mapped)"),
                    });
                }
                None => !is_qcow2(&p)?,
            };
            if raw {
                chain.push_raw(&p, depth)?;
                break;
            }
            let image = Qcow2Image::open(&p)?;
            next = match &image.header.backing_file {
                Some(name) => Some((
                    resolve_relative(&p, name)?,
                    image.header.backing_format.clone(),
                )),
                None => None,
            };
            chain.push_qcow2(image, depth)?;
        }
        Ok(chain)
    }

    fn empty() -> Chain {
        Chain {
            layers: Vec::new(),
            files: Vec::new(),
            sources: Vec::new(),
            warnings: Vec::new(),
            compressed_cache: Mutex::new(None),
        }
    }

    /// A chain of one already-parsed image, without opening backing or data files (for
    /// in-memory images). Fails if the image needs an external data file.
    pub fn single(image: Qcow2Image) -> Result<Chain> {
        if image.header.has_data_file() {
            return Err(Qcow2Error::Unsupported {
                path: image.path.clone(),
                what: "external data file with an in-memory image".into(),
            });
        }
        let mut chain = Chain::empty();
        chain.push_qcow2_inner(image, 0, None)?;
        Ok(chain)
    }

    fn push_qcow2(&mut self, image: Qcow2Image, depth: usize) -> Result<()> {
        let data = if image.header.has_data_file() {
            let name = image
                .header
                .data_file
                .clone()
                .ok_or_else(|| Qcow2Error::Unsupported {
                    path: image.path.clone(),
                    what: "external data file without a name in the header".into(),
                })?;
            let dpath = self.resolve_data_file(&image.path, &name)?;
            let src = FileSource::open(&dpath).map_err(|e| Qcow2Error::io(&dpath, e))?;
            Some((dpath, src))
        } else {
            None
        };
        self.push_qcow2_inner(image, depth, data)
    }

    /// QEMU opens a relative data-file name against its working directory, not the
    /// image's; do the same, and fall back to the image's directory (saying so) because
    /// offline analysis rarely runs where QEMU ran.
    fn resolve_data_file(&mut self, image: &Path, name: &str) -> Result<PathBuf> {
        let by_image = resolve_relative(image, name)?;
        let as_qemu = PathBuf::from(name);
        if as_qemu.is_absolute() || as_qemu.exists() || !by_image.exists() {
            return Ok(as_qemu);
        }
        self.warnings.push(format!(
            "{}: data file '{name}' is not in the working directory (where QEMU looks); using {}",
            image.display(),
            by_image.display()
        ));
        Ok(by_image)
    }

    fn push_qcow2_inner(
        &mut self,
        image: Qcow2Image,
        depth: usize,
        data: Option<(PathBuf, FileSource)>,
    ) -> Result<()> {
        let h = &image.header;
        let name = image.path.display().to_string();
        if h.dirty() {
            self.warnings.push(format!(
                "{name}: dirty bit set (open in a running VM, or not closed cleanly): refcounts may be stale; mappings are read as they are on disk"
            ));
        }
        if h.corrupt_flag() {
            self.warnings
                .push(format!("{name}: QEMU marked this image corrupt"));
        }
        if h.crypt_method != 0 {
            self.warnings.push(format!(
                "{name}: encrypted; like qemu-img, the map shows no host offsets for its data"
            ));
        }
        let map = image.layer_map()?;
        let image_file = self.files.len();
        self.files.push(ChainFile {
            path: image.path.clone(),
            role: FileRole::Qcow2,
            depth,
        });
        self.sources.push(None);
        let data_file = match data {
            Some((dpath, src)) => {
                self.files.push(ChainFile {
                    path: dpath,
                    role: FileRole::DataFile,
                    depth,
                });
                self.sources.push(Some(Box::new(src)));
                self.files.len() - 1
            }
            None => image_file,
        };
        let host_holes = if looks_metadata_preallocated(&image).unwrap_or(false) {
            let path = &self.files[data_file].path;
            let f = std::fs::File::open(path).map_err(|e| Qcow2Error::io(path, e))?;
            let len = crate::source::file_len(&f).map_err(|e| Qcow2Error::io(path, e))?;
            Some(raw_runs(&f, len).map_err(|e| Qcow2Error::io(path, e))?)
        } else {
            None
        };
        self.layers.push(Layer::Qcow2 {
            image: Box::new(image),
            map,
            image_file,
            data_file,
            host_holes,
        });
        Ok(())
    }

    fn push_raw(&mut self, path: &Path, depth: usize) -> Result<()> {
        let src = FileSource::open(path).map_err(|e| Qcow2Error::io(path, e))?;
        let size = src.len();
        let runs = raw_runs(src.file(), size).map_err(|e| Qcow2Error::io(path, e))?;
        let file = self.files.len();
        self.files.push(ChainFile {
            path: path.to_owned(),
            role: FileRole::Raw,
            depth,
        });
        self.sources.push(Some(Box::new(src)));
        self.layers.push(Layer::Raw { size, runs, file });
        Ok(())
    }

    /// Number of layers (images) in the chain.
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// The virtual disk size the guest sees.
    pub fn virtual_size(&self) -> u64 {
        self.layers[0].size()
    }

    /// The qcow2 image at `depth`, if that layer is qcow2.
    pub fn image(&self, depth: usize) -> Option<&Qcow2Image> {
        match self.layers.get(depth)? {
            Layer::Qcow2 { image, .. } => Some(image),
            Layer::Raw { .. } => None,
        }
    }

    /// The forward map of the layer at `depth` alone.
    pub fn layer_map(&self, depth: usize) -> Option<&LayerMap> {
        match self.layers.get(depth)? {
            Layer::Qcow2 { map, .. } => Some(map),
            Layer::Raw { .. } => None,
        }
    }

    /// Layer depth and role of a file.
    pub fn file(&self, id: usize) -> &ChainFile {
        &self.files[id]
    }

    /// Random access to file `id` of the chain.
    pub fn file_source(&self, id: usize) -> &dyn ReadAt {
        match (&self.sources[id], &self.layers[self.files[id].depth]) {
            (Some(src), _) => src.as_ref(),
            (None, Layer::Qcow2 { image, .. }) => image.source(),
            (None, Layer::Raw { .. }) => unreachable!("raw layers keep their source"),
        }
    }

    /// Where guest byte `guest` comes from, following the chain as QEMU does.
    pub fn locate(&self, guest: GuestOffset) -> Located {
        let guest = guest.0;
        let mut bound = self.virtual_size().saturating_sub(guest);
        for (depth, layer) in self.layers.iter().enumerate() {
            if guest >= layer.size() {
                if depth == 0 {
                    return Located {
                        depth,
                        kind: LocatedKind::Zero,
                        file: None,
                        len: 0,
                    };
                }
                // Past the end of a shorter backing file: zeros, answered by the overlay
                // but not allocated there (qemu-img: present false).
                return Located {
                    depth: depth - 1,
                    kind: LocatedKind::Unallocated { host: None },
                    file: None,
                    len: bound,
                };
            }
            bound = bound.min(layer.size() - guest);
            let runs = layer.runs();
            let i = runs.partition_point(|r| r.end() <= guest);
            let hit = runs.get(i).filter(|r| r.guest <= guest);
            let last = depth + 1 == self.layers.len();
            match hit {
                Some(r) => {
                    let delta = guest - r.guest;
                    let len = bound.min(r.end() - guest);
                    let file = Some(layer.data_file());
                    let kind = match r.kind.advance(delta) {
                        RunKind::Data { host } => LocatedKind::Data { host },
                        RunKind::ZeroAlloc { host } => LocatedKind::ZeroAlloc { host },
                        RunKind::ZeroPlain => LocatedKind::Zero,
                        RunKind::Compressed { host, len: clen } => LocatedKind::Compressed {
                            host,
                            len: clen,
                            offset_in_cluster: delta,
                        },
                        RunKind::UnallocAlloc { host } => {
                            if last {
                                return Located {
                                    depth,
                                    kind: LocatedKind::Unallocated { host: Some(host) },
                                    file,
                                    len,
                                };
                            }
                            bound = len;
                            continue;
                        }
                    };
                    let file = match kind {
                        LocatedKind::Zero => None,
                        _ => file,
                    };
                    return Located {
                        depth,
                        kind,
                        file,
                        len,
                    };
                }
                None => {
                    if let Some(next) = runs.get(i) {
                        bound = bound.min(next.guest - guest);
                    }
                    if last {
                        return Located {
                            depth,
                            kind: LocatedKind::Unallocated { host: None },
                            file: None,
                            len: bound,
                        };
                    }
                }
            }
        }
        unreachable!("a chain has at least one layer")
    }

    fn encrypted(&self, depth: usize) -> bool {
        self.image(depth)
            .is_some_and(|i| i.header.crypt_method != 0)
    }

    fn entry_for(&self, start: u64, l: &Located) -> MapEntry {
        let mut e = MapEntry {
            start,
            length: l.len,
            depth: l.depth,
            present: true,
            zero: false,
            data: false,
            compressed: false,
            offset: None,
            file: None,
        };
        match l.kind {
            LocatedKind::Data { host } => {
                e.data = true;
                e.offset = Some(host);
            }
            LocatedKind::ZeroAlloc { host } => {
                e.zero = true;
                e.offset = Some(host);
            }
            LocatedKind::Zero => e.zero = true,
            LocatedKind::Compressed { .. } => {
                e.data = true;
                e.compressed = true;
            }
            LocatedKind::Unallocated { host } => {
                e.present = false;
                e.zero = true;
                e.offset = host;
            }
        }
        if e.offset.is_some() {
            if self.encrypted(l.depth) {
                e.offset = None;
            } else {
                e.file = l.file;
            }
        }
        e
    }

    /// The whole extent map, row for row what `qemu-img map --output=json` prints.
    pub fn map_entries(&self) -> Vec<MapEntry> {
        self.map_range(GuestOffset(0), self.virtual_size())
    }

    /// The extent map of `[start, start + len)`.
    pub fn map_range(&self, start: GuestOffset, len: u64) -> Vec<MapEntry> {
        let start = start.0;
        let end = start.saturating_add(len).min(self.virtual_size());
        let mut out: Vec<MapEntry> = Vec::new();
        let mut pos = start;
        while pos < end {
            let mut l = self.locate(GuestOffset(pos));
            l.len = l.len.min(end - pos);
            let mut e = self.entry_for(pos, &l);
            if let (
                LocatedKind::Data { host },
                Layer::Qcow2 {
                    host_holes: Some(runs),
                    ..
                },
            ) = (l.kind, &self.layers[l.depth])
            {
                // QEMU's recursion into the host file: holes (and bytes past its end)
                // in a data cluster read as zeros, and split the entry.
                let i = runs.partition_point(|r| r.end() <= host);
                match runs.get(i).filter(|r| r.guest <= host) {
                    Some(r) => {
                        l.len = l.len.min(r.end() - host);
                        e.length = l.len;
                        e.zero = matches!(r.kind, RunKind::ZeroAlloc { .. });
                    }
                    None => e.zero = true,
                }
            }
            pos += l.len;
            match out.last_mut() {
                Some(last) if last.mergeable(&e) => last.length += e.length,
                _ => out.push(e),
            }
        }
        out
    }

    /// Read guest bytes through the chain, decompressing compressed clusters.
    pub fn read_guest(&self, buf: &mut [u8], guest: GuestOffset) -> Result<()> {
        let guest = guest.0;
        let size = self.virtual_size();
        if guest.checked_add(buf.len() as u64).is_none_or(|e| e > size) {
            return Err(Qcow2Error::io(
                &self.files[0].path,
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "guest read at {guest:#x}+{} is past the virtual size {size:#x}",
                        buf.len()
                    ),
                ),
            ));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = guest + done as u64;
            let l = self.locate(GuestOffset(pos));
            let n = (l.len.min((buf.len() - done) as u64)) as usize;
            let out = &mut buf[done..done + n];
            match l.kind {
                LocatedKind::Data { host } => {
                    let id = l.file.expect("data has a file");
                    self.file_source(id)
                        .read_exact_at(out, host)
                        .map_err(|e| Qcow2Error::io(&self.files[id].path, e))?;
                }
                LocatedKind::Compressed {
                    host,
                    len,
                    offset_in_cluster,
                } => {
                    let mut cache = self
                        .compressed_cache
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    let hit = matches!(&*cache, Some((d, h, _)) if *d == l.depth && *h == host);
                    if !hit {
                        let image = self.image(l.depth).expect("compressed clusters are qcow2");
                        *cache = Some((
                            l.depth,
                            host,
                            image.read_compressed(HostFileOffset(host), len)?,
                        ));
                    }
                    let data = &cache.as_ref().expect("filled").2;
                    let o = offset_in_cluster as usize;
                    out.copy_from_slice(&data[o..o + n]);
                }
                _ => out.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    pub(crate) fn layer_parts(&self, depth: usize) -> (Option<&Qcow2Image>, usize, usize) {
        match &self.layers[depth] {
            Layer::Qcow2 {
                image,
                image_file,
                data_file,
                ..
            } => (Some(image), *image_file, *data_file),
            Layer::Raw { file, .. } => (None, *file, *file),
        }
    }
}

/// QEMU's test for metadata preallocation (qcow2_detect_metadata_preallocation): the
/// image counts notably more refcounted clusters than its file has allocated on disk.
fn looks_metadata_preallocated(image: &Qcow2Image) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata(&image.path) else {
        return Ok(false);
    };
    if md.len() != image.file_len() {
        return Ok(false); // not the file we parsed (an in-memory image)
    }
    let cs = image.header.cluster_size();
    let real_clusters = md.blocks() * 512 / cs;
    let threshold = (real_clusters * 10 / 9).max(real_clusters + 2);
    let end = md.len().div_ceil(cs);
    let mut count = 0;
    let mut i = 0;
    while i < end && count < threshold {
        if image.refcount(HostFileOffset(i * cs))? > 0 {
            count += 1;
        }
        i += 1;
    }
    Ok(count >= threshold)
}

/// The guest view of a raw image, the way QEMU's file-posix reports it: data regions
/// (SEEK_DATA) as data, holes as zeros, both with their offset.
fn raw_runs(file: &std::fs::File, size: u64) -> io::Result<Vec<Run>> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut runs = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        // SAFETY: lseek on an fd we own; no memory is passed.
        let data = unsafe { libc::lseek(fd, pos as i64, libc::SEEK_DATA) };
        let data = if data < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ENXIO) => size,
                // Filesystems without SEEK_DATA: everything is data.
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => pos,
                _ => return Err(err),
            }
        } else {
            data as u64
        };
        if data > pos {
            let end = data.min(size);
            runs.push(Run {
                guest: pos,
                len: end - pos,
                kind: RunKind::ZeroAlloc { host: pos },
            });
            pos = end;
            continue;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, pos as i64, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            size
        } else {
            (hole as u64).min(size)
        };
        let end = hole.max(pos + 1).min(size);
        runs.push(Run {
            guest: pos,
            len: end - pos,
            kind: RunKind::Data { host: pos },
        });
        pos = end;
    }
    Ok(runs)
}

/// The chain is the guest's disk: reading it reads guest bytes.
impl ReadAt for Chain {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_guest(buf, GuestOffset(offset))
            .map_err(|e| match e {
                Qcow2Error::Io { source, .. } => source,
                other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
            })
    }
    fn len(&self) -> u64 {
        self.virtual_size()
    }
}
