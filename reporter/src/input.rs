//! What every reader of a trace needs around the join: the layout it joins with (from
//! the trace's snapshot or from images), the join's configuration from the header,
//! and the trace's events on a thread of their own. `analyze`, `compare` and the
//! Perfetto writer all start here.

use crate::{join, layout, reader};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use viopath_layouts::host::{DevId, Hop};
use viopath_layouts::snapshot::Snapshot;
use viopath_probes::chunks::Header;

/// Called while a trace is read with (bytes of events read, bytes in the trace), a few
/// hundred times at most: for progress bars.
#[derive(Clone)]
pub struct Progress(pub std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

/// Feed a trace's events to `each`, telling `progress` how far it got now and then.
///
/// Reading (checksums, decoding, the merge of the CPUs' streams into timestamp order)
/// runs on a thread of its own and hands events over in batches, so it overlaps with
/// `each` (the join): each costs about half the time per event. On a VM that hands
/// freed memory back to its host, a third thread keeps the file ahead of the reading in
/// the page cache ([`reader::Trace::read_ahead`], [`reader::free_pages_go_to_host`]).
pub fn for_each_event<'t>(
    trace: &'t reader::Trace,
    progress: Option<&Progress>,
    mut each: impl FnMut(&viopath_probes::abi::RawEvent),
) -> reader::Events<'t> {
    use std::sync::mpsc::sync_channel;
    let (full_tx, full_rx) = sync_channel::<Vec<viopath_probes::abi::RawEvent>>(4);
    let (empty_tx, empty_rx) = sync_channel::<Vec<viopath_probes::abi::RawEvent>>(6);
    let ahead = std::sync::Arc::new(reader::ReadAhead::default());
    std::thread::scope(|scope| {
        let reading_ahead = ahead.clone();
        if reader::free_pages_go_to_host() {
            scope.spawn(move || trace.read_ahead(&reading_ahead));
        }
        let reading = scope.spawn(move || {
            let _finish = reader::FinishOnDrop(ahead.clone());
            let mut events = trace.events();
            events.report_to(ahead);
            let mut batches = 0u32;
            loop {
                let mut batch = empty_rx.try_recv().unwrap_or_default();
                if !events.next_batch(&mut batch) {
                    break;
                }
                if full_tx.send(batch).is_err() {
                    break;
                }
                batches = batches.wrapping_add(1);
                if let Some(p) = progress
                    && batches.is_multiple_of(64)
                {
                    let (done, total) = events.position();
                    (p.0)(done, total);
                }
            }
            if let Some(p) = progress {
                let (_, total) = events.position();
                (p.0)(total, total);
            }
            events
        });
        // Owned here, so that if `each` panics the receiver drops while unwinding and the
        // reader, blocked on a full channel, stops instead of holding the scope forever.
        let full_rx = full_rx;
        for batch in full_rx.iter() {
            for e in &batch {
                each(e);
            }
            // The reader makes a new one when none comes back in time.
            let _ = empty_tx.try_send(batch);
        }
        reading.join().expect("the trace reader does not panic")
    })
}

/// Where the layout used for the join came from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayoutSource {
    pub from: &'static str,
    pub files: usize,
    pub errors: Vec<String>,
    /// Where a layout taken from images now differs from the trace's own snapshot (an
    /// image moved, copied or rewritten since): the join follows IO by these files'
    /// inodes and sectors, so rows below QEMU would not join. Said on every output.
    pub mismatch: Vec<String>,
}

/// Layers the recording did not trace, from the header's probe list.
pub fn layers_missing(header: &Header) -> Vec<String> {
    let mut attached = BTreeSet::new();
    let mut all = BTreeSet::new();
    // QEMU functions the binary has (or should have) but that could not be probed: no
    // symbol table (a stripped distribution build), an unknown argument layout. Not
    // those the program lacks altogether (qemu-io has no virtio-blk).
    let mut without: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for p in &header.probes {
        all.insert(p.layer.as_str());
        if p.attached {
            attached.insert(p.layer.as_str());
        } else if p.attach == "uprobe"
            && !p
                .note
                .as_deref()
                .is_some_and(|n| n.starts_with("not in this QEMU build"))
        {
            without
                .entry(p.layer.as_str())
                .or_default()
                .push(match qemu_probe_gives(&p.name) {
                    Some(g) => format!("{} ({g})", p.name),
                    None => p.name.clone(),
                });
        }
    }
    let mut out: Vec<String> = all.difference(&attached).map(|l| l.to_string()).collect();
    for (layer, probes) in without {
        if attached.contains(layer) {
            out.push(format!("{layer} without {}", probes.join(", ")));
        }
    }
    out
}

/// What a QEMU probe gives the rows (a boundary, or what the join finds by it), for the
/// summary's "layers missing" when it was not attached.
pub fn qemu_probe_gives(symbol: &str) -> Option<&'static str> {
    Some(match symbol {
        "virtio_blk_handle_request" => "parsed: rows start at the block layer",
        "virtio_blk_submit_multireq" => "virtio-blk's batches",
        "virtio_blk_rw_complete" => "qemu_done",
        "scsi_req_enqueue" => "virtio-scsi's parsed",
        "virtio_scsi_complete_cmd_req" => "virtio-scsi's completed",
        "qcow2_co_preadv_part" | "qcow2_co_pwritev_part" => {
            "qcow2's metadata IO per request, QEMU's own IO told apart"
        }
        "raw_co_prw" => "file-posix's requests: found from their submissions",
        "handle_aiocb_rw" => "the worker running a job: found by offset and length",
        _ => return None,
    })
}

fn from_snapshot(snap: &Snapshot, from: &'static str) -> (layout::Layout, LayoutSource) {
    let l = layout::Layout::from_snapshot(snap);
    let mut errors: Vec<String> = snap.errors.clone();
    let with_guest = l.disks.iter().filter(|d| !d.guest.is_empty()).count();
    if l.disks.len() > 1 && !l.files_have_inodes() {
        errors.push(format!(
            "the layout lists {} images but not their files' inode numbers: which disk an IO was for is not known{}",
            l.disks.len(),
            match with_guest {
                0 => String::new(),
                1 => "; guest files are named from the one image with a guest filesystem".into(),
                n => format!(" and guest files are not named ({n} images hold guest filesystems)"),
            }
        ));
    }
    let files = l.file_count();
    (
        l,
        LayoutSource {
            from,
            files,
            errors,
            mismatch: Vec::new(),
        },
    )
}

/// The layout the join uses: from images (when given) or the trace's snapshot.
pub fn load_layout(trace: &reader::Trace, images: &[PathBuf]) -> (layout::Layout, LayoutSource) {
    let (mut layout, source) = load_layout_of_images(trace, images);
    let vms = trace.end.as_ref().map_or(&[][..], |e| &e.vms[..]);
    if vms.len() > 1 {
        // Each disk is the VM's whose images hold its file.
        for d in &mut layout.disks {
            let of = vms.iter().position(|v| {
                v.images
                    .iter()
                    .any(|p| crate::cache::same_file(&p.to_string_lossy(), &d.path))
            });
            d.vm = of.map_or(0, |i| i as u16);
        }
        for (i, v) in vms.iter().enumerate() {
            layout.name_disks_of(i as u16, &v.command, v.domain.as_ref());
        }
        layout.vms = vms
            .iter()
            .map(|v| layout::VmSpec {
                pid: v.pid,
                threads: v.threads.clone(),
                traced_from_ns: v.traced_from_ns,
                traced_until_ns: v.traced_until_ns,
            })
            .collect();
    } else {
        let target = &trace.header.target;
        layout.name_disks(
            target.command.as_deref().unwrap_or_default(),
            target.domain.as_ref(),
        );
    }
    layout.vm_names = vm_names(trace);
    (layout, source)
}

/// The summary's line per VM of a recording of several: its name and pid, and when
/// its tracing began or ended if not with the recording's (seconds from the start);
/// then each QEMU process not traced, and why. Empty for a recording of one.
pub fn vm_lines(trace: &reader::Trace) -> Vec<String> {
    let Some(end) = trace.end.as_ref() else {
        return Vec::new();
    };
    if end.vms.len() < 2 && end.vms_skipped.is_empty() {
        return Vec::new();
    }
    let start = trace.header.monotonic_ns_at_start.unwrap_or(0);
    let at = |ns: u64| format!("{:.1} s", ns.saturating_sub(start) as f64 / 1e9);
    let mut lines: Vec<String> = end
        .vms
        .iter()
        .map(|v| {
            let mut l = format!("{} (pid {})", v.name, v.pid);
            if v.traced_from_ns > start + 100_000_000 {
                l += &format!(", traced from {}", at(v.traced_from_ns));
            }
            if let (Some(t), Some(why)) = (v.traced_until_ns, &v.ended) {
                l += &format!(", until {} ({why})", at(t));
            }
            l
        })
        .collect();
    lines.extend(
        end.vms_skipped
            .iter()
            .map(|s| format!("not traced: pid {} ({}): {}", s.pid, s.exe, s.why)),
    );
    lines
}

/// What the report calls each of the trace's VMs (`--by vm`), by VM number: its
/// libvirt domain, QEMU's `-name`, else its pid.
pub fn vm_names(trace: &reader::Trace) -> Vec<String> {
    let vms = trace.end.as_ref().map_or(&[][..], |e| &e.vms[..]);
    if !vms.is_empty() {
        return vms.iter().map(|v| v.name.clone()).collect();
    }
    let t = &trace.header.target;
    let name = t
        .domain
        .as_ref()
        .map(|d| d.name.clone())
        .or_else(|| {
            t.command
                .as_deref()
                .and_then(viopath_probes::chunks::qemu_name)
        })
        .or_else(|| t.pid.map(|p| format!("pid {p}")))
        .unwrap_or_else(|| "VM".to_owned());
    vec![name]
}

fn load_layout_of_images(
    trace: &reader::Trace,
    images: &[PathBuf],
) -> (layout::Layout, LayoutSource) {
    if !images.is_empty() {
        let devices: BTreeSet<DevId> = trace
            .header
            .devices
            .iter()
            .filter_map(|d| d.parse().ok())
            .collect();
        let snap = viopath_layouts::snapshot::take(images, &devices);
        let (layout, mut source) = from_snapshot(&snap, "images");
        if let Some(recorded) = &trace.layout {
            source.mismatch = layout_mismatch(recorded, &snap);
        }
        return (layout, source);
    }
    match &trace.layout {
        Some(v) => from_snapshot(v, "trace"),
        None => (
            layout::Layout::default(),
            LayoutSource {
                from: "none",
                files: 0,
                errors: vec!["the trace has no layout snapshot (recording interrupted?) and no --image was given: block IO is joined only where the submitting thread shows it".into()],
                mismatch: Vec::new(),
            },
        ),
    }
}

/// How the image files of a layout taken `now` differ from the `recorded` one, a line
/// each: a file the recording did not have, another inode, or other extents below it
/// (moved, copied, defragmented or rewritten since). Files are matched by path, else by
/// file name (images copied elsewhere for offline analysis).
pub fn layout_mismatch(recorded: &Snapshot, now: &Snapshot) -> Vec<String> {
    use viopath_layouts::snapshot::FileHost;
    let then: Vec<&FileHost> = recorded.images.iter().flat_map(|i| &i.file_hosts).collect();
    let name = |p: &std::path::Path| p.file_name().map(|n| n.to_owned());
    // Where each piece of the file lies on its bottom device (its byte there: what a
    // snapshot read back is sure to have).
    type Place = (u64, u64, Option<(DevId, u64)>);
    let places = |f: &FileHost| -> Vec<Place> {
        f.host
            .iter()
            .map(|s| {
                let bottom = s.hops.iter().rev().find_map(|h| match h {
                    Hop::Device { dev, byte, .. } => Some((*dev, *byte)),
                    Hop::File { .. } => None,
                });
                (s.offset.0, s.len, bottom)
            })
            .collect()
    };
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for f in now.images.iter().flat_map(|i| &i.file_hosts) {
        if !seen.insert(f.file.clone()) {
            continue;
        }
        let shown = f.file.display();
        let Some(r) = then
            .iter()
            .find(|r| r.file == f.file)
            .or_else(|| then.iter().find(|r| name(&r.file) == name(&f.file)))
        else {
            out.push(format!("{shown} is not among the recording's image files"));
            continue;
        };
        match (r.ino, f.ino) {
            (Some(a), Some(b)) if a != b => {
                out.push(format!(
                    "{shown} is inode {b} now, {a} when recorded (moved or copied since?)"
                ));
                continue;
            }
            _ => {}
        }
        if r.len != f.len {
            out.push(format!(
                "{shown} is {} bytes now, {} when recorded",
                f.len, r.len
            ));
        } else if places(r) != places(f) {
            out.push(format!(
                "{shown} lies elsewhere on its device now than when recorded (rewritten or defragmented since?)"
            ));
        }
    }
    out
}

/// How rows end, from which probes the trace's header says were attached.
pub fn join_config(trace: &reader::Trace, layout: &layout::Layout) -> join::JoinConfig {
    let caches = crate::cache::disk_caches(&trace.header, trace.end.as_ref(), layout);
    let all_direct = !caches.is_empty() && caches.iter().all(|c| c.direct() == Some(true));
    join::JoinConfig {
        await_msi: trace.header.attached("kvm_msi_set_irq"),
        expect_qcow2: layout.has_qcow2()
            && (trace.header.attached("qcow2_co_preadv_part")
                || trace.header.attached("qcow2_co_pwritev_part")),
        qcow2_unprobed: layout.has_qcow2()
            && !trace.header.attached("qcow2_co_preadv_part")
            && !trace.header.attached("qcow2_co_pwritev_part")
            && trace.header.attached("bdrv_co_preadv_part"),
        flush_syscalls: trace.header.attached("sys_enter_fdatasync"),
        fs_sync: trace.header.attached("ext4_sync_file_enter"),
        aio_fsync: trace.header.attached("workqueue_execute_start")
            && trace.header.attached("workqueue_execute_end"),
        falloc_syscalls: trace.header.attached("sys_enter_fallocate"),
        caller_callbacks: trace.header.attached("aio_read_done")
            && trace.header.attached("aio_write_done"),
        virtio_from_block: trace.header.attached("virtio_blk_req_complete")
            && !trace.header.attached("virtio_blk_handle_request"),
        // Block devices given to QEMU as disks do direct IO without iomap: where every
        // disk is known to be opened O_DIRECT, no host IO is buffered.
        dio_probe: trace.header.attached("iomap_dio_rw_begin") && !all_direct,
        synced_writes: caches
            .iter()
            .any(|c| c.mode.is_some_and(|m| m.syncs_writes())),
        tick_ns: trace
            .header
            .kernel_hz
            .filter(|&hz| hz > 0)
            .map_or(0, |hz| 1_000_000_000 / u64::from(hz)),
    }
}

#[cfg(test)]
mod tests {
    use super::{Snapshot, layout_mismatch};
    use viopath_probes::chunks::{Header, ProbeStatus};

    fn probe(name: &str, layer: &str, attached: bool, note: Option<&str>) -> ProbeStatus {
        ProbeStatus {
            name: name.into(),
            layer: layer.into(),
            attach: "uprobe".into(),
            attached,
            note: note.map(String::from),
        }
    }

    /// A stripped QEMU: layers with no probe at all, then layers missing some, with
    /// what those would have given; a function the program does not have is no loss.
    #[test]
    fn layers_missing_names_what_unattached_functions_would_give() {
        let no_symtab =
            Some("/usr/bin/qemu-system-x86_64 has no .symtab, only its exported symbols");
        let header = Header {
            probes: vec![
                probe("virtio_blk_handle_request", "virtio", false, no_symtab),
                probe("virtio_blk_req_complete", "virtio", true, None),
                probe("virtio_blk_rw_complete", "virtio", false, no_symtab),
                probe("qcow2_co_preadv_part", "qcow2", false, no_symtab),
                probe("blk_aio_preadv", "qemu-block", true, None),
                probe(
                    "aio_read_done",
                    "qemu-block",
                    false,
                    Some("not in this QEMU build"),
                ),
            ],
            ..Header::default()
        };
        assert_eq!(
            super::layers_missing(&header),
            [
                "qcow2",
                "virtio without virtio_blk_handle_request (parsed: rows start at the block \
                 layer), virtio_blk_rw_complete (qemu_done)",
            ]
        );
    }

    fn snap(file: &str, ino: u64, byte: u64) -> Snapshot {
        serde_json::from_value(serde_json::json!({
            "images": [{"path": file, "file_hosts": [{
                "file": file, "len": 1u64 << 20, "ino": ino,
                "host": [{"offset": 0, "len": 1u64 << 20, "hops": [
                    {"hop": "file", "path": file, "offset": 0, "state": "mapped"},
                    {"hop": "device", "device": "/dev/vda", "dev": "254:0", "byte": byte, "via": "filesystem"}
                ]}]
            }]}],
            "devices": []
        }))
        .unwrap()
    }

    /// The same file in the same place matches, wherever its copy is named from; another
    /// inode, other blocks or a file the recording lacked do not.
    #[test]
    fn a_layout_taken_now_is_checked_against_the_recorded_one() {
        let recorded = snap("/vm/disk.qcow2", 12, 1 << 30);
        assert!(layout_mismatch(&recorded, &snap("/vm/disk.qcow2", 12, 1 << 30)).is_empty());
        assert!(layout_mismatch(&recorded, &snap("/elsewhere/disk.qcow2", 12, 1 << 30)).is_empty());
        let moved = layout_mismatch(&recorded, &snap("/elsewhere/disk.qcow2", 99, 1 << 30));
        assert_eq!(moved.len(), 1);
        assert!(
            moved[0].contains("inode 99 now, 12 when recorded"),
            "{moved:?}"
        );
        let rewritten = layout_mismatch(&recorded, &snap("/vm/disk.qcow2", 12, 2 << 30));
        assert!(rewritten[0].contains("lies elsewhere"), "{rewritten:?}");
        let other = layout_mismatch(&recorded, &snap("/vm/other.qcow2", 13, 1 << 30));
        assert!(other[0].contains("not among the recording's"), "{other:?}");
    }
}
