//! Function symbols of a QEMU binary, resolved to file offsets for uprobes: from its
//! .symtab, its .dynsym (distro builds export the global block functions), or a
//! separate debug file found by build-id or .gnu_debuglink. aya cannot read separate
//! debug files, so offsets are computed here and uprobes attach by offset.

use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an ELF file we can read: {why}")]
    Parse { path: PathBuf, why: String },
}

/// Where a symbol lookup failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// No symbol of that name in any table we found.
    NotFound,
    /// Several functions share the name (static functions in different files).
    Ambiguous(usize),
}

#[derive(Debug, Clone, Serialize)]
pub struct Symbols {
    pub binary: PathBuf,
    pub build_id: Option<String>,
    /// What the symbols came from: ".symtab", ".dynsym", "debug file <path>".
    pub sources: Vec<String>,
    /// True when a full symbol table (not only exports) was found.
    pub full: bool,
    #[serde(skip)]
    funcs: HashMap<String, Vec<u64>>,
    #[serde(skip)]
    segments: Vec<(u64, u64, u64)>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn collect(file: &object::File, dynamic: bool, into: &mut HashMap<String, Vec<u64>>) -> usize {
    let mut n = 0;
    let syms: Box<dyn Iterator<Item = object::Symbol>> = if dynamic {
        Box::new(file.dynamic_symbols())
    } else {
        Box::new(file.symbols())
    };
    for s in syms {
        if s.kind() != SymbolKind::Text || !s.is_definition() || s.address() == 0 {
            continue;
        }
        if let Ok(name) = s.name() {
            let v = into.entry(name.to_owned()).or_default();
            if !v.contains(&s.address()) {
                v.push(s.address());
                n += 1;
            }
        }
    }
    n
}

impl Symbols {
    pub fn load(binary: &Path) -> Result<Symbols, ElfError> {
        let data = std::fs::read(binary).map_err(|source| ElfError::Io {
            path: binary.to_owned(),
            source,
        })?;
        let file = object::File::parse(&*data).map_err(|e| ElfError::Parse {
            path: binary.to_owned(),
            why: e.to_string(),
        })?;
        let segments = file
            .segments()
            .filter_map(|s| {
                let (off, size) = s.file_range();
                (size > 0).then_some((s.address(), size, off))
            })
            .collect();
        let build_id = file.build_id().ok().flatten().map(hex);
        let mut funcs = HashMap::new();
        let mut sources = Vec::new();
        let mut full = false;
        if collect(&file, false, &mut funcs) > 0 {
            sources.push(".symtab".to_owned());
            full = true;
        }
        if collect(&file, true, &mut funcs) > 0 {
            sources.push(".dynsym".to_owned());
        }
        if !full {
            for dbg in debug_file_candidates(
                binary,
                build_id.as_deref(),
                file.gnu_debuglink().ok().flatten().map(|(n, _)| n),
            ) {
                let Ok(d) = std::fs::read(&dbg) else { continue };
                let Ok(df) = object::File::parse(&*d) else {
                    continue;
                };
                if let (Some(want), Ok(Some(got))) = (&build_id, df.build_id())
                    && *want != hex(got)
                {
                    continue; // a debug file for another build
                }
                if collect(&df, false, &mut funcs) > 0 {
                    sources.push(format!("debug file {}", dbg.display()));
                    full = true;
                    break;
                }
            }
        }
        Ok(Symbols {
            binary: binary.to_owned(),
            build_id,
            sources,
            full,
            funcs,
            segments,
        })
    }

    /// The file offset of function `name`'s first instruction.
    pub fn file_offset(&self, name: &str) -> Result<u64, Missing> {
        let addrs = self.funcs.get(name).ok_or(Missing::NotFound)?;
        if addrs.len() > 1 {
            return Err(Missing::Ambiguous(addrs.len()));
        }
        let a = addrs[0];
        self.segments
            .iter()
            .find(|(va, size, _)| *va <= a && a < va + size)
            .map(|(va, _, off)| a - va + off)
            .ok_or(Missing::NotFound)
    }
}

/// Where separate debug info may live: the build-id tree, then .gnu_debuglink's name
/// beside the binary, in .debug/, and under /usr/lib/debug.
fn debug_file_candidates(
    binary: &Path,
    build_id: Option<&str>,
    debuglink: Option<&[u8]>,
) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let roots: Vec<PathBuf> = std::env::var("VIOPATH_DEBUG_DIRS")
        .map(|s| s.split(':').map(PathBuf::from).collect())
        .unwrap_or_else(|_| vec![PathBuf::from("/usr/lib/debug")]);
    if let Some(id) = build_id
        && id.len() > 2
    {
        for r in &roots {
            v.push(
                r.join(".build-id")
                    .join(&id[..2])
                    .join(format!("{}.debug", &id[2..])),
            );
        }
    }
    if let Some(link) = debuglink {
        let name = String::from_utf8_lossy(link).into_owned();
        let dir = binary.parent().unwrap_or(Path::new("/"));
        v.push(dir.join(&name));
        v.push(dir.join(".debug").join(&name));
        for r in &roots {
            v.push(r.join(dir.strip_prefix("/").unwrap_or(dir)).join(&name));
        }
    }
    v.retain(|p| p != binary);
    v
}

impl From<&Symbols> for viopath_probes::chunks::SymbolSource {
    fn from(s: &Symbols) -> Self {
        viopath_probes::chunks::SymbolSource {
            binary: s.binary.clone(),
            build_id: s.build_id.clone(),
            sources: s.sources.clone(),
            full: s.full,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our own test binary has a symbol table: offsets must land inside the file and
    /// the bytes there must be the function's (checked against the loaded image).
    #[test]
    fn resolves_functions_in_this_binary() {
        let me = std::env::current_exe().unwrap();
        let s = Symbols::load(&me).unwrap();
        assert!(s.full, "{:?}", s.sources);
        let (name, _) = s.funcs.iter().find(|(_, a)| a.len() == 1).unwrap();
        let off = s.file_offset(name).unwrap();
        assert!(off < std::fs::metadata(&me).unwrap().len());
        assert_eq!(
            s.file_offset("no_such_function_anywhere"),
            Err(Missing::NotFound)
        );
    }

    /// Debian's qemu-io is stripped but exports the block layer in .dynsym.
    #[test]
    fn distro_qemu_exports_block_functions() {
        let qemu_io = Path::new("/usr/bin/qemu-io");
        if !qemu_io.exists() {
            assert!(
                std::env::var_os("VIOPATH_NO_SKIP").is_none(),
                "would be skipped (VIOPATH_NO_SKIP): SKIPPED: /usr/bin/qemu-io (qemu-utils) is not installed"
            );
            eprintln!("SKIPPED: /usr/bin/qemu-io (qemu-utils) is not installed");
            return;
        }
        let s = Symbols::load(qemu_io).unwrap();
        assert!(s.sources.iter().any(|x| x == ".dynsym"));
        for f in [
            "blk_co_preadv_part",
            "bdrv_co_pwritev_part",
            "laio_co_submit",
            "luring_co_submit",
        ] {
            let off = s.file_offset(f).unwrap_or_else(|e| panic!("{f}: {e:?}"));
            // Cross-check with readelf's view: the .dynsym value maps to this offset.
            let out = std::process::Command::new("readelf")
                .args(["-W", "--dyn-syms"])
                .arg(qemu_io)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text
                .lines()
                .find(|l| l.split_whitespace().nth(7) == Some(f))
                .unwrap();
            let vaddr = u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap();
            // The LOAD segment holding it, as readelf -l prints the program headers.
            let ph = std::process::Command::new("readelf")
                .args(["-lW"])
                .arg(qemu_io)
                .output()
                .unwrap();
            let ph = String::from_utf8_lossy(&ph.stdout);
            let (o, va) = ph
                .lines()
                .filter(|l| l.trim_start().starts_with("LOAD"))
                .map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let n = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
                    (n(f[1]), n(f[2]), n(f[4]))
                })
                .find(|(_, va, filesz)| *va <= vaddr && vaddr < va + filesz)
                .map(|(o, va, _)| (o, va))
                .unwrap();
            assert_eq!(off, vaddr - va + o, "{f}");
        }
        // Static functions need a symbol table this binary does not have.
        assert_eq!(
            s.file_offset("qcow2_co_preadv_part"),
            Err(Missing::NotFound)
        );
    }
}
