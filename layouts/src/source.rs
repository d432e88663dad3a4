//! Random-access byte sources. Every reader in this crate reads through [`ReadAt`] so the
//! same parsing code runs on files, on in-memory images (tests, fuzzing) and on the guest
//! disk as seen through a qcow2 chain.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Positioned reads with a known length. Reads past the end are errors, never short reads,
/// so callers cannot mistake a truncated file for zeros.
pub trait ReadAt: Send + Sync {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A host file with its length captured at open time.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    len: u64,
}

impl FileSource {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = file_len(&file)?;
        Ok(Self { file, len })
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

/// A file's length; a block device's size (its metadata says 0).
pub fn file_len(file: &File) -> io::Result<u64> {
    let md = file.metadata()?;
    if std::os::unix::fs::FileTypeExt::is_block_device(&md.file_type()) {
        use std::io::Seek;
        let mut f = file;
        f.seek(io::SeekFrom::End(0))
    } else {
        Ok(md.len())
    }
}

fn past_end(offset: u64, want: usize, len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("read of {want} bytes at offset {offset:#x} runs past the end ({len:#x})"),
    )
}

fn check_range(offset: u64, want: usize, len: u64) -> io::Result<()> {
    match offset.checked_add(want as u64) {
        Some(end) if end <= len => Ok(()),
        _ => Err(past_end(offset, want, len)),
    }
}

impl ReadAt for FileSource {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), self.len)?;
        self.file.read_exact_at(buf, offset)
    }
    fn len(&self) -> u64 {
        self.len
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
}

impl ReadAt for &[u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), self.len())?;
        let start = offset as usize;
        buf.copy_from_slice(&self[start..start + buf.len()]);
        Ok(())
    }
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
}

/// A window `[start, start + len)` of another source: a partition inside a disk.
pub struct Window<'a> {
    pub inner: &'a dyn ReadAt,
    pub start: u64,
    pub len: u64,
}

impl ReadAt for Window<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), self.len)?;
        self.inner.read_exact_at(buf, self.start + offset)
    }
    fn len(&self) -> u64 {
        self.len
    }
}

pub(crate) fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
pub(crate) fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub(crate) fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
