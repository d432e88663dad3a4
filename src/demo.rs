//! `viopath demo`: what viopath does, on a guest disk embedded in the binary.
//!
//! Recording and per-IO latency reports are not built yet; the demo runs what exists:
//! the address translation that joins a guest IO to the host's devices.

use crate::map::{self, MapArgs};
use anyhow::{Context, Result};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};
use viopath_layouts::stack::{Stack, StackOptions};

const BASE: &[u8] = include_bytes!("../fixtures/demo/base.qcow2");
const OVERLAY: &[u8] = include_bytes!("../fixtures/demo/overlay.qcow2");

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Write the demo images here and keep them (default: a temporary directory)
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

fn map_args(image: &Path) -> MapArgs {
    MapArgs {
        image: image.to_owned(),
        guest_offset: None,
        guest_path: None,
        offset: 0,
        length: 512,
        partition: None,
        host_offset: None,
        file: None,
        json: false,
        no_host: false,
        dm_table: None,
    }
}

pub fn run(args: &DemoArgs, out: &mut dyn Write) -> Result<()> {
    // A disk-backed directory, so FIEMAP can show real device sectors.
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => {
            let parent = ["/var/tmp", "/tmp"]
                .iter()
                .map(Path::new)
                .find(|p| p.is_dir())
                .unwrap_or(Path::new("."));
            tmp = TempDir::new(parent)?;
            tmp.0.clone()
        }
    };
    let overlay = dir.join("overlay.qcow2");
    for (name, bytes) in [("base.qcow2", BASE), ("overlay.qcow2", OVERLAY)] {
        let p = dir.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("cannot write {}", p.display()))?;
    }
    writeln!(
        out,
        "viopath demo: a 64 MiB guest disk (GPT, ext4 on partition 1) as a qcow2 overlay"
    )?;
    writeln!(out, "on a base image, written to {}.", dir.display())?;
    writeln!(
        out,
        "The guest rewrote the first 64 KiB of /var/lib/db/table after the base was taken.\n"
    )?;

    writeln!(
        out,
        "1. The virtual disk's extents, down to host device sectors (viopath map overlay.qcow2):\n"
    )?;
    map::run(&map_args(&overlay), out)?;

    writeln!(
        out,
        "\n2. A guest file offset in the rewritten part lives in the overlay"
    )?;
    writeln!(
        out,
        "   (viopath map overlay.qcow2 --guest-path /var/lib/db/table --offset 4096 --length 4096):\n"
    )?;
    let mut a = map_args(&overlay);
    a.guest_path = Some("/var/lib/db/table".into());
    a.offset = 4096;
    a.length = 4096;
    map::run(&a, out)?;

    writeln!(
        out,
        "\n3. Further into the same file the data still comes from the backing image (depth 1):\n"
    )?;
    a.offset = 256 << 10;
    map::run(&a, out)?;

    // Where step 2 landed in the overlay file, looked up backwards.
    let mut stack = Stack::open(
        &overlay,
        &StackOptions {
            guest: true,
            host: false,
            dm_tables: None,
        },
    )?;
    let host = stack
        .translate_file("/var/lib/db/table", 4096, 4096, None)?
        .pieces[0]
        .host_offset
        .context("the demo image lost its overlay data")?;
    writeln!(
        out,
        "\n4. And back: what is at that offset of the overlay file (viopath map overlay.qcow2 --host-offset {}):\n",
        host.0
    )?;
    let mut r = map_args(&overlay);
    r.host_offset = Some(host.0);
    map::run(&r, out)?;

    writeln!(
        out,
        "\nThis is the address translation viopath's reporter uses to join one guest IO across"
    )?;
    writeln!(
        out,
        "layers. Recording IOs (viopath record) and per-layer latency reports (viopath report)"
    )?;
    writeln!(
        out,
        "are not built yet; when they are, this demo will record and report a real workload."
    )?;
    if args.dir.is_some() {
        writeln!(
            out,
            "The images stay in {} for you to explore with viopath map.",
            dir.display()
        )?;
    }
    Ok(())
}

/// A directory removed when dropped (the demo's default output directory).
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: &Path) -> Result<TempDir> {
        for n in 0..100u32 {
            let p = parent.join(format!("viopath-demo-{}-{n}", std::process::id()));
            if std::fs::create_dir(&p).is_ok() {
                return Ok(TempDir(p));
            }
        }
        anyhow::bail!(
            "cannot create a temporary directory in {}",
            parent.display()
        )
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
