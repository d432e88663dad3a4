//! `viopath map`: the extent map of an image with host device sectors, or one address
//! through every layer.

use crate::units::parse_size;
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use tabled::builder::Builder;
use viopath_layouts::guest::{GuestOwner, Owner};
use viopath_layouts::host::{Hop, HostSegment, Via};
use viopath_layouts::qcow2::{Chain, Content, FileRole, LocatedKind, MapEntry};
use viopath_layouts::stack::{HostLookup, Stack, StackOptions, Translation};
use viopath_layouts::{GuestOffset, HostFileOffset, SECTOR_SIZE};
use viopath_reporter::units::{human, human_bytes};

#[derive(Args, Debug)]
pub struct MapArgs {
    /// Disk image (qcow2 or raw): the top of its backing chain
    pub image: PathBuf,
    /// Follow this guest disk byte offset down every layer
    #[arg(long, value_parser = parse_size, conflicts_with_all = ["guest_path", "host_offset"])]
    pub guest_offset: Option<u64>,
    /// Follow a file inside the guest's filesystem (read offline from the image)
    #[arg(long, conflicts_with = "host_offset")]
    pub guest_path: Option<String>,
    /// Byte offset inside --guest-path
    #[arg(long, value_parser = parse_size, default_value = "0", requires = "guest_path")]
    pub offset: u64,
    /// Bytes to follow from the offset
    #[arg(long, value_parser = parse_size, default_value = "512")]
    pub length: u64,
    /// Guest partition number for --guest-path when several filesystems hold the path
    #[arg(long)]
    pub partition: Option<u32>,
    /// Say what this byte offset of a host file of the chain holds (reverse map)
    #[arg(long, value_parser = parse_size)]
    pub host_offset: Option<u64>,
    /// File of the chain for --host-offset: its path or index (0 = top image)
    #[arg(long, requires = "host_offset")]
    pub file: Option<String>,
    /// Machine-readable output (qemu-img map's JSON layout, extended)
    #[arg(long)]
    pub json: bool,
    /// Do not resolve host files to device sectors
    #[arg(long)]
    pub no_host: bool,
    /// Device-mapper tables (`dmsetup table` output) to use instead of the kernel's
    #[arg(long)]
    pub dm_table: Option<PathBuf>,
}

pub fn run(args: &MapArgs, out: &mut dyn Write) -> Result<()> {
    let dm_tables = match &args.dm_table {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read --dm-table {}", p.display()))?,
        ),
        None => None,
    };
    let opts = StackOptions {
        guest: args.guest_path.is_some()
            || args.guest_offset.is_some()
            || args.host_offset.is_some(),
        host: !args.no_host,
        dm_tables,
    };
    let mut stack = Stack::open(&args.image, &opts)?;
    for w in &stack.chain.warnings {
        eprintln!("viopath: warning: {w}");
    }
    if let Some(e) = &stack.guest_error {
        eprintln!("viopath: warning: guest partitions and filesystems not read: {e}");
    }
    if let Some(path) = &args.guest_path {
        let t = stack.translate_file(path, args.offset, args.length, args.partition)?;
        return print_translation(&stack, &t, args.json, out);
    }
    if let Some(off) = args.guest_offset {
        let t = stack.translate(GuestOffset(off), args.length)?;
        return print_translation(&stack, &t, args.json, out);
    }
    if let Some(off) = args.host_offset {
        let file = pick_file(&stack.chain, args.file.as_deref())?;
        let l = stack.lookup_host(file, HostFileOffset(off))?;
        return print_lookup(&l, args.json, out);
    }
    print_map(&mut stack, args.json, out)
}

fn pick_file(chain: &Chain, which: Option<&str>) -> Result<usize> {
    let Some(w) = which else { return Ok(0) };
    if let Ok(i) = w.parse::<usize>() {
        if i < chain.files.len() {
            return Ok(i);
        }
        bail!(
            "--file {i}: the chain has {} files (0..{})",
            chain.files.len(),
            chain.files.len() - 1
        );
    }
    let want = std::fs::canonicalize(w).unwrap_or_else(|_| PathBuf::from(w));
    chain
        .files
        .iter()
        .position(|f| std::fs::canonicalize(&f.path).unwrap_or_else(|_| f.path.clone()) == want)
        .with_context(|| {
            let names: Vec<String> = chain
                .files
                .iter()
                .map(|f| f.path.display().to_string())
                .collect();
            format!("--file {w} is not in the chain ({})", names.join(", "))
        })
}

fn describe_chain(chain: &Chain) -> Vec<String> {
    let mut lines = Vec::new();
    for f in &chain.files {
        let indent = if f.depth == 0 {
            String::new()
        } else {
            format!("{}└ ", "  ".repeat(f.depth - 1))
        };
        let what = match (f.role, chain.image(f.depth)) {
            (FileRole::Qcow2, Some(img)) => {
                let h = &img.header;
                let mut facts = vec![
                    format!("qcow2 v{}", h.version),
                    format!("{} virtual", human(h.virtual_size)),
                    format!("{} clusters", human(h.cluster_size())),
                ];
                if h.extended_l2() {
                    facts.push("extended L2".into());
                }
                if h.compression != viopath_layouts::qcow2::Compression::Zlib {
                    facts.push("zstd".into());
                }
                if h.dirty() {
                    facts.push("DIRTY".into());
                }
                if h.crypt_method != 0 {
                    facts.push("encrypted".into());
                }
                facts.join(", ")
            }
            (FileRole::DataFile, _) => "external data file".into(),
            _ => "raw".into(),
        };
        let role = if f.depth == 0 { "image" } else { "backing" };
        lines.push(format!("{indent}{role} {}: {what}", f.path.display()));
    }
    lines
}

fn entry_kind(e: &MapEntry) -> &'static str {
    match (e.present, e.data, e.zero, e.compressed, e.offset.is_some()) {
        (false, _, _, _, true) => "unallocated (reserved)",
        (false, ..) => "unallocated",
        (_, _, _, true, _) => "compressed",
        (_, true, true, ..) => "data (host hole)",
        (_, true, ..) => "data",
        (_, _, true, _, true) => "zero (preallocated)",
        _ => "zero",
    }
}

fn bottom_cells(segs: &[HostSegment]) -> String {
    let mut lines: Vec<String> = segs
        .iter()
        .take(3)
        .map(|s| match s.bottom() {
            Some((dev, _, sector)) if s.stopped.is_none() => {
                format!("{dev} {}+{}", sector.0, s.len.div_ceil(SECTOR_SIZE))
            }
            _ => s.stopped.clone().unwrap_or_else(|| "-".into()),
        })
        .collect();
    if segs.len() > 3 {
        lines.push(format!("… {} more", segs.len() - 3));
    }
    lines.join("\n")
}

fn print_map(stack: &mut Stack, json_out: bool, out: &mut dyn Write) -> Result<()> {
    let entries = stack.chain.map_entries();
    let mut failed: HashMap<usize, String> = HashMap::new();
    let mut rows = Vec::with_capacity(entries.len());
    for e in &entries {
        let segs = match (e.offset, e.file) {
            (Some(off), Some(file)) if !failed.contains_key(&file) => {
                match stack.host_segments(file, HostFileOffset(off), e.length) {
                    Some(Ok(s)) => Some(s),
                    Some(Err(err)) => {
                        let err = viopath_layouts::error_text(&err);
                        eprintln!(
                            "viopath: warning: no device sectors for {}: {err}",
                            stack.chain.files[file].path.display()
                        );
                        failed.insert(file, err);
                        None
                    }
                    None => None,
                }
            }
            _ => None,
        };
        rows.push((e, segs));
    }
    if json_out {
        writeln!(out, "[")?;
        for (i, (e, segs)) in rows.iter().enumerate() {
            let mut v = serde_json::to_value(e)?;
            if let Some(f) = e.file {
                v["filename"] = json!(stack.chain.files[f].path);
            }
            if let Some(s) = segs {
                v["host"] = serde_json::to_value(s)?;
            }
            let sep = if i + 1 < rows.len() { "," } else { "" };
            writeln!(out, "{v}{sep}")?;
        }
        writeln!(out, "]")?;
        return Ok(());
    }
    for l in describe_chain(&stack.chain) {
        writeln!(out, "{l}")?;
    }
    let mut b = Builder::default();
    b.push_record([
        "start",
        "length",
        "depth",
        "kind",
        "file",
        "host offset",
        "device sectors (bottom)",
    ]);
    for (e, segs) in &rows {
        b.push_record([
            e.start.to_string(),
            human(e.length),
            e.depth.to_string(),
            entry_kind(e).to_string(),
            e.file
                .map(|f| file_name(&stack.chain, f))
                .unwrap_or_default(),
            e.offset.map(|o| o.to_string()).unwrap_or_default(),
            segs.as_deref().map(bottom_cells).unwrap_or_default(),
        ]);
    }
    let t = crate::ui::table(b);
    writeln!(out, "{t}")?;
    let data: u64 = entries.iter().filter(|e| e.data).map(|e| e.length).sum();
    writeln!(
        out,
        "{} extents, {} of guest data",
        entries.len(),
        human_bytes(data)
    )?;
    Ok(())
}

fn file_name(chain: &Chain, f: usize) -> String {
    let p = &chain.files[f].path;
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

fn owner_text(o: &GuestOwner) -> String {
    let part = o
        .partition
        .map(|p| format!("partition {p}"))
        .unwrap_or_else(|| "outside partitions".into());
    let what = match (&o.owner, &o.path, o.file_offset) {
        (Some(Owner::File { inode, .. }), Some(path), Some(off)) => {
            format!("{path} @ {off} (inode {inode})")
        }
        (Some(other), _, _) => format!("{other:?}"),
        (None, ..) if o.partition.is_some() => "no file (free, or not an ext filesystem)".into(),
        _ => String::new(),
    };
    if what.is_empty() {
        part
    } else {
        format!("{part}: {what}")
    }
}

fn hop_rows(seg: &HostSegment, rows: &mut Vec<[String; 3]>) {
    // The first hop is the chain file itself, already shown on the qcow2 row.
    for h in seg.hops.iter().skip(1) {
        rows.push(match h {
            Hop::File {
                path,
                offset,
                state,
            } => [
                "host file".into(),
                format!("{} @ {}", path.display(), offset.0),
                format!("loop backing file, {state:?}").to_lowercase(),
            ],
            Hop::Device {
                device,
                dev,
                sector,
                via,
                ..
            } => {
                let via = match via {
                    Via::Filesystem => "filesystem extent (FIEMAP)",
                    Via::Node => "the device itself (QEMU opened its node)",
                    Via::Partition => "partition",
                    Via::DmLinear => "dm linear",
                    Via::DmStriped => "dm striped",
                    Via::DmCrypt => "dm crypt",
                    Via::MdMirror => "md raid1 member",
                };
                [
                    "host device".into(),
                    format!("{device} sector {}", sector.0),
                    format!("{dev}, via {via}"),
                ]
            }
        });
    }
    if let Some(s) = &seg.stopped {
        rows.push(["host".into(), "-".into(), s.clone()]);
    }
}

fn print_translation(
    stack: &Stack,
    t: &Translation,
    json_out: bool,
    out: &mut dyn Write,
) -> Result<()> {
    if json_out {
        writeln!(out, "{}", serde_json::to_string_pretty(t)?)?;
        return Ok(());
    }
    let mut rows: Vec<[String; 3]> = Vec::new();
    if let Some(f) = &t.guest_file {
        let part = f
            .partition
            .map(|p| format!(", partition {p}"))
            .unwrap_or_default();
        let unw = if f.unwritten {
            ", unwritten extent"
        } else {
            ""
        };
        rows.push([
            "guest file".into(),
            format!("{} @ {}", f.path, f.file_offset),
            format!("inode {}{part}, fs block {}{unw}", f.inode, f.fs_block),
        ]);
    }
    rows.push([
        "guest disk".into(),
        format!("LBA {} (byte {})", t.guest_lba.0, t.guest_offset.0),
        t.guest_owner.as_ref().map(owner_text).unwrap_or_default(),
    ]);
    for (i, p) in t.pieces.iter().enumerate() {
        if t.pieces.len() > 1 {
            rows.push([
                format!("piece {}", i + 1),
                format!("guest {}+{}", p.guest_offset.0, p.len),
                String::new(),
            ]);
        }
        let name = p
            .file
            .as_ref()
            .map(|f| f.display().to_string())
            .unwrap_or_default();
        let layer = stack
            .chain
            .files
            .iter()
            .find(|f| Some(&f.path) == p.file.as_ref())
            .map(|f| f.role);
        let (addr, what) = match p.kind {
            LocatedKind::Data { host } => (
                format!("{name} @ {host}"),
                format!("data, depth {}", p.depth),
            ),
            LocatedKind::ZeroAlloc { host } => (
                format!("{name} @ {host}"),
                format!("zeros (preallocated), depth {}", p.depth),
            ),
            LocatedKind::Zero => (
                "-".into(),
                format!("zeros (no host cluster), depth {}", p.depth),
            ),
            LocatedKind::Compressed {
                host,
                len,
                offset_in_cluster,
            } => (
                format!("{name} @ {host}"),
                format!(
                    "compressed: {len} bytes hold the cluster; byte {offset_in_cluster} of it, depth {}",
                    p.depth
                ),
            ),
            LocatedKind::Unallocated { .. } => (
                "-".into(),
                "unallocated in every layer: reads as zeros".into(),
            ),
        };
        let label = match layer {
            Some(FileRole::Raw) => "raw image",
            Some(FileRole::DataFile) => "qcow2 data file",
            _ => "qcow2",
        };
        rows.push([label.into(), addr, what]);
        if let Some(e) = &p.host_error {
            rows.push(["host".into(), "-".into(), e.clone()]);
        }
        for seg in &p.host {
            hop_rows(seg, &mut rows);
        }
    }
    let mut b = Builder::default();
    b.push_record(["layer", "address", "detail"]);
    for r in rows {
        b.push_record(r);
    }
    let tab = crate::ui::table(b);
    writeln!(out, "{tab}")?;
    Ok(())
}

fn print_lookup(l: &HostLookup, json_out: bool, out: &mut dyn Write) -> Result<()> {
    if json_out {
        writeln!(out, "{}", serde_json::to_string_pretty(l)?)?;
        return Ok(());
    }
    let e = &l.extent;
    let holds = match &e.content {
        Content::GuestData { .. } => "guest data".to_string(),
        other => {
            let v: Value = serde_json::to_value(other)?;
            let kind = v["kind"].as_str().unwrap_or("?").replace('_', " ");
            let rest: Vec<String> = v
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| *k != "kind")
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            if rest.is_empty() {
                kind
            } else {
                format!("{kind} ({})", rest.join(", "))
            }
        }
    };
    let mut b = Builder::default();
    b.push_record(["layer", "address", "detail"]);
    b.push_record([
        "host file".into(),
        format!("{} @ {}", l.file.display(), l.offset.0),
        format!("in extent {}+{}", e.start, e.len),
    ]);
    b.push_record(["holds".into(), String::new(), holds]);
    if let Some(g) = l.guest_offset {
        b.push_record([
            "guest disk".into(),
            format!("LBA {} (byte {})", g.lba().0, g.0),
            l.guest_owner.as_ref().map(owner_text).unwrap_or_default(),
        ]);
    }
    let t = crate::ui::table(b);
    writeln!(out, "{t}")?;
    Ok(())
}
