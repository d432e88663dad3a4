//! Kernel modules' BTF: split BTF over vmlinux's, in `/sys/kernel/btf/<module>`.
//!
//! fentry/fexit on a module's function and tp_btf on a module's tracepoint (ext4 and
//! dm_mod are modules in distribution kernels) are loaded against a type of the
//! module's BTF: its id, numbered on from vmlinux's last, and the module's BTF object.
//! This finds that id; `record::module_attach` loads and attaches.

use std::path::Path;
use thiserror::Error;

const MAGIC: u16 = 0xeb9f;
const HEADER_MIN: usize = 24;
/// `struct btf_type`: name_off, info, size/type.
const TYPE_LEN: usize = 12;

/// The BTF kinds looked up here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BtfKind {
    Typedef = 8,
    Func = 12,
}

#[derive(Debug, Error)]
pub enum ModuleBtfError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("BTF {what}: {problem}")]
    Malformed { what: String, problem: String },
}

/// One BTF blob's sections.
struct Sections<'a> {
    types: &'a [u8],
    strings: &'a [u8],
}

fn sections<'a>(what: &str, b: &'a [u8]) -> Result<Sections<'a>, ModuleBtfError> {
    let bad = |problem: &str| ModuleBtfError::Malformed {
        what: what.to_owned(),
        problem: problem.to_owned(),
    };
    if b.len() < HEADER_MIN {
        return Err(bad("shorter than its header"));
    }
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes")) as usize;
    match u16::from_le_bytes([b[0], b[1]]) {
        MAGIC => {}
        0x9feb => return Err(bad("big-endian BTF is not read")),
        _ => return Err(bad("no BTF magic")),
    }
    let hdr_len = u32_at(4);
    let (type_off, type_len, str_off, str_len) = (u32_at(8), u32_at(12), u32_at(16), u32_at(20));
    let slice = |off: usize, len: usize, name: &str| {
        hdr_len
            .checked_add(off)
            .and_then(|s| Some((s, s.checked_add(len)?)))
            .filter(|&(_, e)| e <= b.len())
            .map(|(s, e)| &b[s..e])
            .ok_or_else(|| bad(&format!("{name} section outside the blob")))
    };
    Ok(Sections {
        types: slice(type_off, type_len, "type")?,
        strings: slice(str_off, str_len, "string")?,
    })
}

/// Each type record of a type section: (name offset, kind), in id order.
fn walk(what: &str, types: &[u8], mut f: impl FnMut(u32, u32)) -> Result<u32, ModuleBtfError> {
    let mut pos = 0;
    let mut n = 0u32;
    while pos < types.len() {
        if pos + TYPE_LEN > types.len() {
            return Err(ModuleBtfError::Malformed {
                what: what.to_owned(),
                problem: format!("type record cut at byte {pos}"),
            });
        }
        let word = |o: usize| u32::from_le_bytes(types[o..o + 4].try_into().expect("4 bytes"));
        let (name_off, info) = (word(pos), word(pos + 4));
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let extra = match kind {
            1 | 14 | 17 => 4,             // int, var, decl tag
            3 => 12,                      // array
            4 | 5 | 15 | 19 => 12 * vlen, // struct, union, datasec, enum64
            6 | 13 => 8 * vlen,           // enum, func proto
            2 | 7..=12 | 16 | 18 => 0,    // ptr, fwd, typedef, qualifiers, func, float, type tag
            k => {
                return Err(ModuleBtfError::Malformed {
                    what: what.to_owned(),
                    problem: format!("unknown kind {k} at byte {pos}"),
                });
            }
        };
        if pos + TYPE_LEN + extra > types.len() {
            return Err(ModuleBtfError::Malformed {
                what: what.to_owned(),
                problem: format!("kind {kind} record at byte {pos} runs past the section"),
            });
        }
        f(name_off, kind);
        n += 1;
        pos += TYPE_LEN + extra;
    }
    Ok(n)
}

fn name_at(strings: &[u8], off: usize) -> Option<&[u8]> {
    let s = strings.get(off..)?;
    Some(&s[..s.iter().position(|&c| c == 0)?])
}

/// vmlinux's BTF, which module BTF continues: its types are numbered first and its
/// strings come before the module's.
pub struct BaseBtf {
    bytes: Vec<u8>,
    types: u32,
}

impl BaseBtf {
    pub fn read(path: &Path) -> Result<BaseBtf, ModuleBtfError> {
        let bytes = std::fs::read(path).map_err(|source| ModuleBtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        BaseBtf::parse(bytes)
    }

    pub fn parse(bytes: Vec<u8>) -> Result<BaseBtf, ModuleBtfError> {
        let s = sections("vmlinux", &bytes)?;
        let types = walk("vmlinux", s.types, |_, _| {})?;
        Ok(BaseBtf { bytes, types })
    }

    fn strings(&self) -> &[u8] {
        sections("vmlinux", &self.bytes)
            .map(|s| s.strings)
            .unwrap_or_default()
    }

    /// The id of the type `name` of `kind` in a module's split BTF, if it has one.
    pub fn find_in_module(
        &self,
        module: &str,
        blob: &[u8],
        name: &str,
        kind: BtfKind,
    ) -> Result<Option<u32>, ModuleBtfError> {
        let s = sections(module, blob)?;
        let base_strings = self.strings();
        let mut found = None;
        let mut id = self.types;
        walk(module, s.types, |name_off, k| {
            id += 1;
            if found.is_some() || k != kind as u32 {
                return;
            }
            // Split BTF's string offsets run on from the base's.
            let off = name_off as usize;
            let text = if off < base_strings.len() {
                name_at(base_strings, off)
            } else {
                name_at(s.strings, off - base_strings.len())
            };
            if text == Some(name.as_bytes()) {
                found = Some(id);
            }
        })?;
        Ok(found)
    }
}

/// The modules with BTF here (`/sys/kernel/btf/*` but vmlinux), sorted.
pub fn modules_with_btf(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "vmlinux")
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob from type records and a string section.
    fn blob(types: &[u8], strings: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(types);
        b.extend_from_slice(strings);
        b
    }

    fn ty(name_off: u32, kind: u32, vlen: u32, extra: usize) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&name_off.to_le_bytes());
        t.extend_from_slice(&((kind << 24) | vlen).to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend(std::iter::repeat_n(0u8, extra));
        t
    }

    #[test]
    fn a_module_function_is_numbered_after_vmlinux_types() {
        // vmlinux: an int, a struct of two members, a func proto of one parameter and
        // the function "vfs_read" (ids 1..4); strings "\0int\0s\0vfs_read\0".
        let base_strings = b"\0int\0s\0vfs_read\0";
        let mut types = ty(1, 1, 0, 4);
        types.extend(ty(5, 4, 2, 24));
        types.extend(ty(0, 13, 1, 8));
        types.extend(ty(7, 12, 0, 0));
        let base = BaseBtf::parse(blob(&types, base_strings)).unwrap();
        assert_eq!(base.types, 4);
        // ext4: a typedef and two functions; names by module string offsets (after
        // the base's 16 bytes), one reusing a vmlinux string.
        let strings = b"\0ext4_file_read_iter\0btf_trace_x\0";
        let o = base_strings.len() as u32;
        let mut m = ty(o + 21, 8, 0, 0);
        m.extend(ty(7, 12, 0, 0));
        m.extend(ty(o + 1, 12, 0, 0));
        let m = blob(&m, strings);
        let find = |n, k| base.find_in_module("ext4", &m, n, k).unwrap();
        assert_eq!(find("ext4_file_read_iter", BtfKind::Func), Some(7));
        assert_eq!(find("vfs_read", BtfKind::Func), Some(6));
        assert_eq!(find("btf_trace_x", BtfKind::Typedef), Some(5));
        assert_eq!(find("btf_trace_x", BtfKind::Func), None);
        assert_eq!(find("nothing", BtfKind::Func), None);
    }

    #[test]
    fn damaged_btf_is_an_error_not_a_panic() {
        assert!(BaseBtf::parse(vec![0x9f, 0xeb]).is_err());
        assert!(BaseBtf::parse(vec![0; 40]).is_err());
        let mut b = blob(&ty(0, 4, 3, 0), b"\0");
        assert!(BaseBtf::parse(b.clone()).is_err(), "struct members cut off");
        b[12] = 0xff; // type section length past the end
        assert!(BaseBtf::parse(b).is_err());
        assert!(
            BaseBtf::parse(blob(&ty(0, 31, 0, 0), b"\0")).is_err(),
            "unknown kind"
        );
    }

    #[test]
    fn this_kernels_vmlinux_btf_parses() {
        let p = Path::new("/sys/kernel/btf/vmlinux");
        if p.exists() {
            let base = BaseBtf::read(p).unwrap();
            assert!(base.types > 1000, "{}", base.types);
        }
    }
}
